"""An endpoint's `respond`: the answer its accepted, ignored and duplicate deliveries get instead of
the provider's (sidecar/answers.py). Handshakes and errors keep their own answers."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from .answers import Answer
from .yamldoc import Doc, Path_

RESPOND_KEYS = {"status", "content_type", "body"}
TEXT = "text/plain; charset=utf-8"
NO_BODY = (HTTPStatus.NO_CONTENT, HTTPStatus.RESET_CONTENT)  # HTTP forbids a body on these
MAX_BODY = 65536
KNOWN = {int(s) for s in HTTPStatus}  # the response line needs the status's phrase


def respond(doc: Doc, path: Path_, raw: dict[str, Any]) -> Answer | None:
    """The endpoint's `respond: {status, content_type, body}`, or None when it has none (errors in `doc`).

    `status` is 2xx (default 200): the sender must see success, or it retries a delivery already
    spooled. Without `content_type`, a body that parses as JSON is application/json, else text.
    """
    if "respond" not in raw:
        return None
    where = path + ("respond",)
    given = doc.get(raw, path, "respond", dict, None)
    if given is None:
        return None
    doc.unknown_keys(given, where, RESPOND_KEYS)
    status = doc.get(given, where, "status", int, 200)
    if not 200 <= status <= 299 or status not in KNOWN:
        doc.error(where + ("status",), f"must be a 2xx status (the delivery was received), got {status}")
        return None
    body = doc.get(given, where, "body", str, "")
    data = body.encode("utf-8")
    if HTTPStatus(status) in NO_BODY and data:
        doc.error(where + ("body",), f"a {status} answer has no body")
        return None
    if len(data) > MAX_BODY:
        doc.error(where + ("body",), f"must be at most {MAX_BODY} bytes, got {len(data)}")
        return None
    content_type = doc.get(given, where, "content_type", str, None)
    if content_type is None:
        content_type = "application/json" if _is_json(body) else TEXT
    elif not content_type.strip() or not (content_type.isascii() and content_type.isprintable()):
        doc.error(where + ("content_type",), f"must be a media type in printable ASCII, got {content_type!r}")
        return None
    return Answer(HTTPStatus(status), content_type, data)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return bool(text.strip())
