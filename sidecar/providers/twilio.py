"""Twilio: X-Twilio-Signature = base64 HMAC-SHA1 of the URL Twilio requested + the sorted form params."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any
from urllib.parse import ParseResult, parse_qs, urlparse, urlsplit

from ..errors import SignatureError
from . import (
    HeaderMap,
    Option,
    Provider,
    Reply,
    Signed,
    form_fields,
    form_pairs,
    header_text,
    hmac_b64,
    is_form,
    is_form_type,
    new_id,
    parse_json,
    require_match,
    sha256_hex,
    signed_header,
    text,
)

ALGORITHMS = {"HMAC_SHA1": "sha1", "HMAC_SHA256": "sha256"}
STATUS_FIELDS = ("MessageStatus", "SmsStatus", "CallStatus")
# An empty TwiML document: "do nothing" to a call or message; a JSON body would be an error in a call.
EMPTY_TWIML = Reply(b'<?xml version="1.0" encoding="UTF-8"?><Response/>', "text/xml")


def _without_port(uri: ParseResult) -> str:
    return uri._replace(netloc=uri.netloc.split(":")[0]).geturl() if uri.port else uri.geturl()


def _with_port(uri: ParseResult) -> str:
    if uri.port:
        return uri.geturl()
    return uri._replace(netloc=f"{uri.netloc}:{443 if uri.scheme == 'https' else 80}").geturl()


def url_forms(url: str) -> list[str]:
    """The URL without and with its port, as twilio's RequestValidator tries both.

    Twilio's signing back end is inconsistent about an explicit default port, so a
    URL configured as https://host/x may be signed as https://host:443/x and back.
    """
    uri = urlparse(url)
    return list(dict.fromkeys([_without_port(uri), _with_port(uri)]))


def params_string(pairs: list[tuple[str, str]]) -> str:
    """Form params as Twilio signs them: names sorted, each name's distinct values sorted, name+value."""
    values: dict[str, set[str]] = {}
    for name, value in pairs:
        values.setdefault(name, set()).add(value)
    return "".join(name + value for name in sorted(values) for value in sorted(values[name]))


class Twilio(Provider):
    """Twilio: X-Twilio-Signature, base64 HMAC-SHA1 (keyed by the Auth Token) of URL + params.

    The signed URL is the one configured in Twilio, which the sidecar cannot see
    behind a proxy or ingress: set it as the option `url` (scheme, host, optional
    port, path; no query). The query string of the request as received is
    appended, so a webhook configured with `?x=1` verifies. Form bodies add their
    params (sorted by name, then value) to the signed string. Any other body (JSON)
    is covered by `bodySHA256` (hex SHA-256 of the body) in the query, and only
    the URL is signed; a non-form body without it is refused. Both port forms are
    tried, like twilio's RequestValidator. With X-Twilio-Webhooks-Signature-Settings
    `algorithm=HMAC_SHA256` (shared-key webhooks) the MAC is HMAC-SHA256.
    Event type: the form's MessageStatus, SmsStatus or CallStatus ("received",
    "delivered", "ringing"), or a JSON body's `type`. Delivery id:
    I-Twilio-Idempotency-Token (the same on Twilio's retries). Every delivery is
    answered with an empty TwiML document (text/xml).
    """

    name = "twilio"
    options = {"url": Option(str, "")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        url = self.opts["url"]
        if not url:
            raise ValueError("provider 'twilio' needs 'url': the public URL configured in Twilio for this endpoint")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "?" in url or "#" in url:
            raise ValueError(f"url: must be an http(s) URL with a host and no query or fragment, got {url!r}")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as e:
            raise ValueError(f"url: invalid port in {url!r}") from e
        self.url = url

    @staticmethod
    def _digest(headers: HeaderMap) -> str:
        settings = str(headers.get("X-Twilio-Webhooks-Signature-Settings") or "")
        for part in settings.split(","):
            key, eq, value = part.partition("=")
            if eq and key.strip() == "algorithm" and value.strip():
                if value.strip().upper() not in ALGORITHMS:
                    raise SignatureError("X-Twilio-Webhooks-Signature-Settings names an unknown algorithm",
                                         reason="malformed")
                return ALGORITHMS[value.strip().upper()]
        return "sha1"

    def signed_url(self, target: str) -> str:
        return self.url + ("?" + target.partition("?")[2] if "?" in target else "")

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        given = signed_header(headers, "X-Twilio-Signature")
        digest = self._digest(headers)
        url = self.signed_url(target)
        if is_form(headers):
            try:
                params = params_string(form_pairs(body))
            except ValueError as e:
                raise SignatureError("form body is not valid", reason="malformed") from e
        else:
            hashes = parse_qs(target.partition("?")[2], keep_blank_values=True).get("bodySHA256")
            if not hashes:
                raise SignatureError("missing bodySHA256 in the URL (a body that is not a form must be covered)",
                                     reason="missing")
            if not hmac.compare_digest(sha256_hex(body).encode(), hashes[0].encode("utf-8", "replace")):
                raise SignatureError("bodySHA256 does not match the body", reason="mismatch")
            params = ""
        expected = [hmac_b64(s, (u + params).encode("utf-8"), digest) for s in secrets for u in url_forms(url)]
        require_match(expected, given)

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        return form_fields(body) if is_form(headers) else parse_json(body)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        if isinstance(payload, list) and payload:
            payload = payload[0]  # Event Streams: a list of CloudEvents
        if not isinstance(payload, dict):
            return ""
        return next((text(payload[f]) for f in STATUS_FIELDS if text(payload.get(f))), "") or text(payload.get("type"))

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, "I-Twilio-Idempotency-Token") or None

    def answer(self, headers: HeaderMap, event: str, payload: Any) -> Reply | None:
        return EMPTY_TWIML

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        """Headers for a form body POSTed to `url` itself (see request() for JSON and queries)."""
        return self.request(body, secret, now, event, delivery, "", "application/x-www-form-urlencoded").headers

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        notes = []
        if is_form_type(content_type):
            params = params_string(form_pairs(body))
        else:
            target += ("&" if "?" in target else "?") + "bodySHA256=" + sha256_hex(body)
            params = ""
            notes.append(f"POST to {target} (the signature covers bodySHA256 in the URL)")
        signature = hmac_b64(secret, (self.signed_url(target) + params).encode("utf-8"), "sha1")
        headers = {"X-Twilio-Signature": signature, "I-Twilio-Idempotency-Token": delivery or new_id()}
        return Signed(target, headers, body, notes)
