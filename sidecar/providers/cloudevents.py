"""CloudEvents over HTTP (binding 1.0): binary, structured and batched modes; bearer or no credentials.

One request carries one event (binary: `ce-*` headers, the body is the data; structured:
`application/cloudevents+json`) or several (batched: `application/cloudevents-batch+json`, each its
own delivery). `events()` turns a verified request into CloudEvent values; the intake stores each
one's `data` as the delivery body, routes on its `type` and `payload`, and hands `facts()` to hooks.
The abuse-protection handshake of the CloudEvents web hook spec is `handshake()`, answered before
any credentials are checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from ..errors import BadRequest
from . import HeaderMap, Option, Provider, Signed, new_id, parse_json
from .credentials import Bearer

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
REQUIRED = ("specversion", "id", "source", "type")
SPECVERSIONS = ("1.0",)
MAX_BATCH = 1000
# Binary-mode attribute headers: ce-<name>, names lower-case letters and digits (spec 3.1.1; HTTP is
# case-insensitive, so the name is lowered).
ATTRIBUTE = re.compile(r"[a-z0-9]{1,64}")
JSON_TYPE = re.compile(r"^(application|text)/([A-Za-z0-9.+-]+\+)?json(\s*;.*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class CloudEvent:
    """One event: its context attributes as text (no data), the data as bytes and its content type,
    and the data as JSON values when it is JSON (for route conditions; None otherwise)."""

    attributes: Mapping[str, str]
    data: bytes
    content_type: str  # datacontenttype, "" when the event names none
    payload: Any = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def source(self) -> str:
        return self.attributes["source"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def delivery(self) -> str:
        """The delivery id: one per (source, id) pair, as the spec makes them unique; a safe token."""
        pair = json.dumps([self.source, self.id], ensure_ascii=False).encode()
        return "ce_" + hashlib.sha256(pair).hexdigest()[:40]

    def is_json(self) -> bool:
        return bool(JSON_TYPE.match(self.content_type))

    def parsed(self) -> CloudEvent:
        """This event with its payload: the data as JSON values when its content type is JSON
        (BadRequest when such data is not JSON), else None."""
        if not self.data or not self.is_json():
            return self
        return replace(self, payload=parse_json(self.data))

    def facts(self) -> dict[str, str]:
        """What hooks get: WEBHOOK_CE_ID, _SOURCE, _TYPE, and _SUBJECT, _TIME when present."""
        out = {f"WEBHOOK_CE_{k.upper()}": self.attributes[k] for k in ("id", "source", "type")}
        for key in ("subject", "time"):
            if self.attributes.get(key):
                out[f"WEBHOOK_CE_{key.upper()}"] = self.attributes[key]
        return out


@dataclass(frozen=True)
class Handshake:
    """The answer to an abuse-protection OPTIONS request."""

    status: HTTPStatus
    headers: dict[str, str]


def handshake(headers: HeaderMap, allowed_origins: Sequence[str] = ()) -> Handshake:
    """OPTIONS: 200 with `Allow: POST`, and `WebHook-Allowed-Origin` naming the requested origin when
    `allowed_origins` holds it (any origin when it is empty). Needs no credentials (it precedes them)."""
    out = {"Allow": "POST"}
    origin = str(headers.get("WebHook-Request-Origin") or "").strip()
    if origin and origin.isascii() and origin.isprintable() and _allowed(origin, allowed_origins):
        out["WebHook-Allowed-Origin"] = origin
        if headers.get("WebHook-Request-Rate"):
            out["WebHook-Allowed-Rate"] = "*"
    return Handshake(HTTPStatus.OK, out)


def _allowed(origin: str, allowed: Sequence[str]) -> bool:
    return not allowed or origin.lower() in {a.lower() for a in allowed}


def _text(value: Any, name: str) -> str:
    """An attribute value as text: strings as they are, numbers and booleans as JSON; no control characters."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (str, int, float)):
        text = value if isinstance(value, str) else json.dumps(value)
    else:
        raise BadRequest(f"CloudEvents attribute {name!r} must be a string, number or boolean",
                         reason="invalid_cloudevent")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise BadRequest(f"CloudEvents attribute {name!r} holds control characters", reason="invalid_cloudevent")
    return text


def _checked(attributes: dict[str, str]) -> dict[str, str]:
    missing = [k for k in REQUIRED if not attributes.get(k)]
    if missing:
        raise BadRequest(f"CloudEvents attribute(s) missing: {', '.join(missing)}", reason="invalid_cloudevent")
    if attributes["specversion"] not in SPECVERSIONS:
        raise BadRequest(f"CloudEvents specversion {attributes['specversion']!r} is not supported (1.0 is)",
                         reason="invalid_cloudevent")
    return attributes


def from_binary(headers: HeaderMap, items: Sequence[tuple[str, str]], body: bytes) -> CloudEvent:
    """Binary mode: every ce-<name> header is an attribute (percent-decoded), the body is the data."""
    attributes: dict[str, str] = {}
    for name, value in items:
        lowered = name.lower()
        if not lowered.startswith("ce-"):
            continue
        key = lowered[3:]
        if not ATTRIBUTE.fullmatch(key) or key in ("data", "datacontenttype"):
            raise BadRequest(f"{name} is not a CloudEvents attribute header", reason="invalid_cloudevent")
        if key in attributes:
            raise BadRequest(f"{name} is given twice", reason="invalid_cloudevent")
        try:
            attributes[key] = _text(unquote(value, errors="strict"), key)
        except UnicodeDecodeError as e:
            raise BadRequest(f"{name} is not percent-encoded UTF-8", reason="invalid_cloudevent") from e
    content_type = str(headers.get("Content-Type") or "")
    return CloudEvent(_checked(attributes), body, content_type)


def from_structured(document: Any) -> CloudEvent:
    """One event in the JSON format: attributes are members; `data` (JSON) or `data_base64` (bytes)."""
    if not isinstance(document, dict):
        raise BadRequest("a structured CloudEvent must be a JSON object", reason="invalid_cloudevent")
    if "data" in document and "data_base64" in document:
        raise BadRequest("a CloudEvent has either data or data_base64, not both", reason="invalid_cloudevent")
    names = [k for k in document if k not in ("data", "data_base64")]
    if bad := next((k for k in names if not ATTRIBUTE.fullmatch(k)), None):
        raise BadRequest(f"{bad[:64]!r} is not a CloudEvents attribute name", reason="invalid_cloudevent")
    attributes = {k: _text(document[k], k) for k in names if document[k] is not None}
    # In the JSON format, a `data` member with no datacontenttype is JSON (spec 3.1.1).
    default = "application/json" if document.get("data") is not None else ""
    content_type = attributes.pop("datacontenttype", default)
    event = CloudEvent(_checked(attributes), b"", content_type)
    if "data_base64" in document:
        encoded = document["data_base64"]
        try:
            data = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise BadRequest("data_base64 is not base64", reason="invalid_cloudevent")
    elif "data" not in document or document["data"] is None:
        data = b""
    elif isinstance(document["data"], str) and not event.is_json():
        data = document["data"].encode()
    else:
        data = json.dumps(document["data"], ensure_ascii=False, separators=(",", ":")).encode()
    return CloudEvent(event.attributes, data, content_type)


def media_type(headers: HeaderMap) -> str:
    return str(headers.get("Content-Type") or "").split(";")[0].strip().lower()


class CloudEvents(Provider):
    """`cloudevents`: CloudEvents over HTTP, authenticated like `bearer` or, with
    `unauthenticated: true`, not at all (warned at start, like `none`)."""

    name = "cloudevents"
    options = {"unauthenticated": Option(bool, False), "allowed_origins": Option(list, [])}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        origins = self.opts["allowed_origins"]
        if not all(isinstance(o, str) and o and o.isascii() and o.isprintable() and " " not in o for o in origins):
            raise ValueError("allowed_origins: must be a list of origins such as 'eventgrid.azure.net'")
        if not isinstance(self.opts["unauthenticated"], bool):
            raise ValueError("unauthenticated: must be true or false")
        self.unauthenticated: bool = self.opts["unauthenticated"]
        self.allowed_origins: tuple[str, ...] = tuple(origins)
        self._bearer = Bearer()

    @classmethod
    def secret_needed(cls, options: Mapping[str, Any]) -> bool:
        """Whether an endpoint with these options needs `secret_env`/`secret_file` (not when unauthenticated)."""
        return options.get("unauthenticated") is not True

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        if not self.unauthenticated:
            self._bearer.verify(headers, body, secrets, now, target)

    def events(self, headers: HeaderMap, body: bytes, items: Sequence[tuple[str, str]] = ()) -> list[CloudEvent]:
        """The request's events (one, or a batch's, in order); BadRequest (400) when one is not valid.

        `items` are the request's headers as (name, value) pairs, for binary mode's ce-* attributes;
        a HeaderMap with .items() (http.client.HTTPMessage) is read when none are given."""
        kind = media_type(headers)
        if kind == BATCH:
            document = parse_json(body)
            if not isinstance(document, list):
                raise BadRequest("a CloudEvents batch must be a JSON array", reason="invalid_cloudevent")
            if len(document) > MAX_BATCH:
                raise BadRequest(f"a CloudEvents batch holds at most {MAX_BATCH} events", reason="invalid_cloudevent")
            events = [from_structured(d) for d in document]
        elif kind.startswith("application/cloudevents"):
            if kind != STRUCTURED:
                raise BadRequest(f"event format {kind!r} is not supported (JSON is)", reason="invalid_cloudevent")
            events = [from_structured(parse_json(body))]
        else:
            pairs = list(items) or list(_items(headers))
            events = [from_binary(headers, pairs, body)]
        return [e.parsed() for e in events]  # JSON data must be JSON (400), whatever the mode

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        """The request's events (a list of CloudEvent); see events()."""
        return self.events(headers, body)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return payload[0].type if _single(payload) else ""

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return payload[0].delivery if _single(payload) else None

    def handshake(self, headers: HeaderMap) -> Handshake:
        return handshake(headers, self.allowed_origins)

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        """A binary-mode request's headers (for `webhook-sidecar sign|send`)."""
        out = {"ce-specversion": "1.0", "ce-id": delivery or new_id(), "ce-source": "/webhook-sidecar/send",
               "ce-type": event or "com.example.event"}
        if not self.unauthenticated:
            out["Authorization"] = self._bearer.authorization(secret)
        return out

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        headers = self.sign(body, secret, now, event=event, delivery=delivery)
        headers["Content-Type"] = content_type
        return Signed(target, headers, body)


def _items(headers: HeaderMap) -> list[tuple[str, str]]:
    items = getattr(headers, "items", None)
    return [(str(k), str(v)) for k, v in items()] if callable(items) else []


def _single(payload: Any) -> bool:
    return isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], CloudEvent)
