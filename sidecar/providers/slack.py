"""Slack: X-Slack-Signature "v0=" + hex HMAC-SHA256 of "v0:<timestamp>:<body>"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import (
    HeaderMap,
    Reply,
    Timestamped,
    challenge_reply,
    dig,
    form_fields,
    hmac_hex,
    is_form,
    parse_json,
    prefixed,
    signed_header,
    text,
    timestamp,
)


class Slack(Timestamped):
    """Slack: X-Slack-Signature "v0=" + hex HMAC-SHA256 of "v0:<X-Slack-Request-Timestamp>:<body>".

    JSON (Events API) and form bodies are accepted: slash commands (event type
    "slash_command", filter the command with `if: {command: /deploy}`) and
    interactivity (`payload=` JSON, event type from its `type`). A verified
    `url_verification` is answered with its challenge as text/plain. Slash commands
    and interactions (form bodies) are answered with an empty 200: Slack posts a
    non-empty answer into the channel, and an empty one closes a modal.
    """

    name = "slack"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        raw_ts = signed_header(headers, "X-Slack-Request-Timestamp")
        ts = timestamp(raw_ts, "X-Slack-Request-Timestamp")
        given = prefixed(headers, "v0=", "X-Slack-Signature")
        self.require_signed(secrets, b"v0:" + raw_ts.encode("ascii") + b":" + body, given, ts, now)

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        if not is_form(headers):
            return parse_json(body)
        fields = form_fields(body)
        if "payload" in fields:  # interactivity: the JSON is one form field
            return parse_json(fields["payload"])
        return fields  # a slash command (or ssl_check): the fields themselves

    def event(self, headers: HeaderMap, payload: Any) -> str:
        if not isinstance(payload, dict):
            return ""
        kind = text(payload.get("type"))
        if kind == "event_callback":
            return text(dig(payload, "event.type")) or kind
        if kind:
            return kind
        if "command" in payload:
            return "slash_command"
        if "ssl_check" in payload:
            return "ssl_check"
        return ""

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return None
        return text(payload.get("event_id")) or text(payload.get("trigger_id")) or None

    def reply(self, event: str, payload: Any) -> Reply | None:
        if event == "url_verification":
            return challenge_reply(payload, event)
        if event == "ssl_check":
            return Reply(b"", "text/plain")
        return None

    def answer(self, headers: HeaderMap, event: str, payload: Any) -> Reply | None:
        return Reply(b"", "text/plain") if is_form(headers) else None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        signature = hmac_hex(secret, f"v0:{t}:".encode() + body)
        return {"X-Slack-Request-Timestamp": t, "X-Slack-Signature": "v0=" + signature}
