"""`webhook-sidecar sign` and `send`: the request a provider's sender would make, signed with the secret."""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from . import cli_env
from .providers import PROVIDERS, Signed


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `sign` and `send` commands."""
    sign = sub.add_parser("sign", help="print the headers a sender would add to the body on stdin")
    _flags(sign)

    send = sub.add_parser("send", help="sign a payload file, POST it, print the response")
    send.add_argument("url")
    send.add_argument("payload", help="file with the body to send ('-' for stdin)")
    _flags(send)
    send.add_argument("-H", "--header", action="append", default=[], help="extra 'Name: value' header")


def _flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--provider", required=True, choices=sorted(PROVIDERS))
    sp.add_argument("--secret-env", default="WEBHOOK_SECRET", help="variable holding the secret")
    sp.add_argument("--env-file", default=cli_env.env("ENV_FILE"), help="dotenv file to read the secret from")
    sp.add_argument("--event", default="", help="event type to put in the provider's header")
    sp.add_argument("--delivery", default="", help="delivery id (default: a new UUID)")
    sp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="endpoint option of the provider, as in config.yaml (e.g. header=X-Signature)")
    sp.add_argument("--content-type", default="application/json",
                    help="body type (twilio and mailgun sign forms and JSON differently)")
    sp.add_argument("--private-key-env", default=cli_env.env("PRIVATE_KEY_ENV"),
                    help="discord: variable holding the Ed25519 private key (64 hex digits) to sign with"
                         " (SIDECAR_PRIVATE_KEY_ENV, default DISCORD_PRIVATE_KEY)")


def _secret(args: argparse.Namespace) -> bytes:
    cls = PROVIDERS[args.provider]
    if not cls.needs_secret:
        return b""
    # A provider whose endpoint holds a public key signs with a private key from its own variable.
    name = (args.private_key_env or cls.signing_key_env) if cls.signing_key_env else args.secret_env
    env_file = cli_env.env_file(args.env_file)
    value = cli_env.from_env(name, env_file)
    if not value:
        flag = "--private-key-env" if cls.signing_key_env else "--secret-env"
        raise SystemExit(f"webhook-sidecar: secret {name} is not set in the environment or in {env_file}:"
                         f" export it, put it in the env file (--env-file), or name another variable with {flag}")
    return value.encode()


def _provider_options(args: argparse.Namespace) -> dict[str, object]:
    """--option KEY=VALUE pairs, typed by the provider's own option table."""
    cls = PROVIDERS[args.provider]
    out: dict[str, object] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or key not in cls.options:
            known = ", ".join(sorted(cls.options)) or "none"
            raise SystemExit(f"webhook-sidecar: --option {item!r}: expected KEY=VALUE with KEY one of: {known}")
        kind = cls.options[key].type
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def _signed(args: argparse.Namespace, body: bytes, target: str = "/") -> Signed:
    """The request the provider's sender would make: target, headers and (for mailgun, linear) body."""
    try:
        provider = PROVIDERS[args.provider](**_provider_options(args))
        signed = provider.request(body, _secret(args), time.time(), event=args.event, delivery=args.delivery,
                                  target=target, content_type=args.content_type)
    except ValueError as e:
        raise SystemExit(f"webhook-sidecar: {e}") from e
    for note in signed.notes:
        print(f"webhook-sidecar: {note}", file=sys.stderr)
    return signed


def cmd_sign(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read()
    signed = _signed(args, body)
    for name, value in signed.headers.items():
        print(f"{name}: {value}")
    if signed.body != body:  # the signature lives in the body: print it after a blank line, as HTTP does
        sys.stdout.write("\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(signed.body)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    url = urlsplit(args.url)
    signed = _signed(args, body, (url.path or "/") + (f"?{url.query}" if url.query else ""))
    body = signed.body
    headers = {"Content-Type": args.content_type, **signed.headers}
    for extra in args.header:
        name, _, value = extra.partition(":")
        headers[name.strip()] = value.strip()
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request("POST", signed.target, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    except OSError as e:
        print(f"webhook-sidecar: cannot send to {args.url}: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"{resp.status} {resp.reason}")
    print(text)
    return 0 if 200 <= resp.status < 300 else 1
