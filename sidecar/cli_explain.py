"""`webhook-sidecar explain`: which routes of an endpoint a payload would run, and why the others not.

No signature is needed and nothing runs: the config is read as `check --offline` reads it, the payload
is parsed and its event found as the endpoint's provider does, and every route's conditions are
evaluated against the payload, the headers and the query string given."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from email.message import Message
from pathlib import Path

from . import conditions
from . import config as config_mod
from .errors import ConfigError, SidecarError

EXIT_MATCH, EXIT_NO_MATCH, EXIT_CANNOT = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               config_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    explain = sub.add_parser("explain", help="show which routes of an endpoint a payload matches, and why not")
    config_flags(explain)
    explain.add_argument("--path", required=True, help="the endpoint's path, e.g. /webhook")
    explain.add_argument("--event", default="", help="the event type (default: as the provider finds it in"
                                                     " the headers and payload)")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeat it); Content-Type defaults to application/json")
    explain.add_argument("--query", default="", help="the query string, e.g. 'env=prod&x=1'")
    explain.add_argument("payload", help="file with the body ('-' for stdin)")


def _headers(items: list[str]) -> Message:
    """The given headers, looked up case-insensitively like a request's."""
    headers = Message()
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"webhook-sidecar: --header {item!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    if headers.get("Content-Type") is None:
        headers["Content-Type"] = "application/json"
    return headers


def run(args: argparse.Namespace) -> int:
    """Print the verdict of every route; 0 when one matches, 1 when none does, 2 when it cannot say."""
    try:
        cfg = config_mod.load(args.config, None, environ={}, offline=True)
    except ConfigError as e:
        print("\n".join(e.errors), file=sys.stderr)
        return EXIT_CANNOT
    endpoint = cfg.endpoints.get(args.path.split("?", 1)[0])
    if endpoint is None:
        known = ", ".join(sorted(cfg.endpoints))
        print(f"webhook-sidecar: no endpoint at {args.path} in {args.config} (endpoints: {known})", file=sys.stderr)
        return EXIT_CANNOT
    try:
        body = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    except OSError as e:
        print(f"webhook-sidecar: cannot read {args.payload}: {e.strerror}", file=sys.stderr)
        return EXIT_CANNOT
    headers, provider = _headers(args.header), endpoint.provider
    try:
        payload = provider.parse(headers, body)
        event = args.event or provider.event(headers, payload)
        reply = provider.reply(event, payload)
    except SidecarError as e:
        print(f"webhook-sidecar: the {provider.name} endpoint would refuse this delivery: {e}", file=sys.stderr)
        return EXIT_CANNOT
    print(f"endpoint {endpoint.path} ({provider.name}), event {conditions.shown(event)}")
    if reply is not None:
        print(f"  the {provider.name} provider answers this event itself: no route runs")
        return EXIT_NO_MATCH
    request = conditions.Request(event, payload, headers, "?" + args.query.lstrip("?") if args.query else "")
    width = max((len(r.name) for r in endpoint.routes), default=0)
    matched = 0
    for route in endpoint.routes:
        _, miss = conditions.verdict(conditions.rule_of(route), request)
        matched += miss is None
        print(f"  {route.name:{width}}  " + ("match" if miss is None else f"no: {miss}"))
    if not endpoint.routes:
        print("  (no routes)")
    return EXIT_MATCH if matched else EXIT_NO_MATCH
