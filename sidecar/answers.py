"""The answer a sender gets for a delivery it made: accepted, ignored or a duplicate.

Most senders only read the status, and get the JSON `{"status": ..., "delivery": ...}`. Some need a
specific answer (Discord interactions a deferral, Twilio TwiML, Slack slash commands an empty body):
the provider says so (Provider.answer). An endpoint's `respond` replaces both. Handshakes (a ping, a
URL verification) and errors never come here: they keep their own answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Literal, NamedTuple

from .providers import HeaderMap, Provider

JSON = "application/json"
Kind = Literal["accepted", "ignored", "duplicate"]
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class Answer(NamedTuple):
    """What to send back: the status, the Content-Type and the body."""

    status: HTTPStatus
    content_type: str
    body: bytes


def status_document(kind: Kind, delivery: str, routes: Sequence[str] = ()) -> Answer:
    """The JSON answer every sender without a specific need gets."""
    document: dict[str, Any] = {"status": kind, "delivery": delivery}
    if kind == "accepted":
        document["routes"] = list(routes)
    return Answer(HTTPStatus.OK, JSON, _dumps(document).encode())


def choose(respond: Answer | None, provider: Provider, headers: HeaderMap, event: str, payload: Any, kind: Kind,
           delivery: str, routes: Sequence[str] = ()) -> Answer:
    """The answer to a verified delivery of an endpoint (its `respond`, its `provider`) that was `kind`
    (accepted, ignored, duplicate).

    The endpoint's `respond` first, then what the provider's senders need, then the JSON status.
    A hook's reply falls back to this answer when it cannot be the answer itself.
    """
    if respond is not None:
        return respond
    given = provider.answer(headers, event, payload)
    if given is not None:
        return Answer(HTTPStatus(given.status), given.content_type, given.body)
    return status_document(kind, delivery, routes)
