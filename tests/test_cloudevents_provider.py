"""provider: cloudevents — requests built with the official `cloudevents` SDK (binary, structured, and a
batch of its structured events) parsed into deliveries; 400s for what is not a CloudEvent; bearer or no
credentials; the abuse-protection OPTIONS handshake."""

from __future__ import annotations

import base64
import http.client
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event, to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from sidecar.errors import BadRequest, SignatureError
from sidecar.providers.cloudevents import BATCH, CloudEvent, CloudEvents, handshake

TOKEN = b"a bearer token"
NOW = 1_700_000_000.0
DATA = {"order": 42, "items": ["a", "b"]}


def sdk_event(data: Any = None, **attributes: Any) -> SdkEvent:
    attrs = {"id": "evt-1", "source": "urn:example:shop", "type": "order.created", "specversion": "1.0",
             "datacontenttype": "application/json", **attributes}
    return SdkEvent(attributes={k: v for k, v in attrs.items() if v is not None}, data=DATA if data is None else data)


def headers_of(items: dict[str, str], bearer: bytes | None = TOKEN) -> http.client.HTTPMessage:
    """Headers as the server hands them over (http.client.HTTPMessage: case-insensitive, with items())."""
    message = http.client.HTTPMessage()
    for name, value in items.items():
        message[name] = value
    if bearer is not None:
        message["Authorization"] = "Bearer " + bearer.decode()
    return message


def received(message: HTTPMessage, provider: CloudEvents | None = None) -> list[CloudEvent]:
    """Verify, then parse, as the intake does."""
    provider = provider or CloudEvents()
    headers = headers_of(message.headers)
    provider.verify(headers, message.body, [TOKEN], NOW)
    return provider.events(headers, message.body)


def bad_request(message: HTTPMessage | tuple[dict[str, str], bytes]) -> str:
    headers, body = (message.headers, message.body) if isinstance(message, HTTPMessage) else message
    with pytest.raises(BadRequest) as caught:
        CloudEvents().events(headers_of(headers), body)
    return str(caught.value)


def test_binary_mode_attributes_data_and_facts() -> None:
    when = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    message = to_binary_event(sdk_event(subject="orders/42", time=when, tenant="acme"))
    [event] = received(message)
    assert (event.id, event.source, event.type, event.content_type) == (
        "evt-1", "urn:example:shop", "order.created", "application/json")
    assert event.data == message.body and event.payload == DATA
    assert event.attributes["tenant"] == "acme" and event.attributes["time"] == "2024-05-01T10:00:00Z"
    assert event.facts() == {"WEBHOOK_CE_ID": "evt-1", "WEBHOOK_CE_SOURCE": "urn:example:shop",
                             "WEBHOOK_CE_TYPE": "order.created", "WEBHOOK_CE_SUBJECT": "orders/42",
                             "WEBHOOK_CE_TIME": "2024-05-01T10:00:00Z"}


def test_structured_mode_gives_the_data_as_json_text() -> None:
    message = to_structured_event(sdk_event(subject="orders/42"))
    assert message.headers["content-type"].startswith("application/cloudevents+json")
    [event] = received(message)
    assert (event.id, event.type, event.attributes["subject"]) == ("evt-1", "order.created", "orders/42")
    assert json.loads(event.data) == DATA and event.payload == DATA
    # The SDK stamps a time when none is given.
    assert set(event.facts()) == {"WEBHOOK_CE_ID", "WEBHOOK_CE_SOURCE", "WEBHOOK_CE_TYPE", "WEBHOOK_CE_SUBJECT",
                                  "WEBHOOK_CE_TIME"}
    [untimed] = CloudEvents().events(headers_of({"Content-Type": "application/cloudevents+json"}),
                                     b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}')
    assert set(untimed.facts()) == {"WEBHOOK_CE_ID", "WEBHOOK_CE_SOURCE", "WEBHOOK_CE_TYPE"} and untimed.data == b""


def test_binary_data_is_passed_as_bytes_in_both_modes() -> None:
    blob = bytes(range(256))
    event = sdk_event(data=blob, datacontenttype="application/octet-stream")
    [binary] = received(to_binary_event(event))
    structured_message = to_structured_event(event)
    assert b"data_base64" in structured_message.body
    [structured] = received(structured_message)
    assert binary.data == structured.data == blob and binary.payload is None and structured.payload is None


def test_text_data_and_data_that_claims_no_type() -> None:
    [text] = received(to_structured_event(sdk_event(data="plain words", datacontenttype="text/plain")))
    assert (text.data, text.payload) == (b"plain words", None)
    # Binary mode without a Content-Type: opaque bytes, no JSON check.
    [opaque] = CloudEvents().events(headers_of({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s",
                                                "ce-type": "t"}), b"not json")
    assert (opaque.data, opaque.content_type, opaque.payload) == (b"not json", "", None)


def test_a_batch_is_one_delivery_per_event_in_order() -> None:
    events = [sdk_event(id=f"evt-{n}") for n in range(3)] + [sdk_event(id="evt-0", source="urn:example:other")]
    body = b"[" + b",".join(JSONFormat().write(e) for e in events) + b"]"
    got = received(HTTPMessage({"content-type": BATCH}, body))
    assert [(e.id, e.source) for e in got] == [("evt-0", "urn:example:shop"), ("evt-1", "urn:example:shop"),
                                              ("evt-2", "urn:example:shop"), ("evt-0", "urn:example:other")]
    assert all(e.payload == DATA for e in got)
    assert len({e.delivery for e in got}) == 4  # the same id from another source is another delivery
    assert received(HTTPMessage({"content-type": BATCH}, b"[]")) == []


def test_the_delivery_id_is_the_source_and_id_pair_in_any_mode() -> None:
    [binary] = received(to_binary_event(sdk_event()))
    [structured] = received(to_structured_event(sdk_event(data={"other": "data"})))
    [elsewhere] = received(to_binary_event(sdk_event(source="urn:example:shop2")))
    assert binary.delivery == structured.delivery != elsewhere.delivery
    assert binary.delivery.startswith("ce_") and len(binary.delivery) == 43


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_a_missing_required_attribute_is_400_in_every_mode(missing: str) -> None:
    document = json.loads(to_structured_event(sdk_event()).body)
    del document[missing]
    structured = ({"Content-Type": "application/cloudevents+json"}, json.dumps(document).encode())
    assert missing in bad_request(structured)
    good = json.loads(to_structured_event(sdk_event()).body)
    batch = ({"Content-Type": BATCH}, json.dumps([good, document]).encode())
    assert missing in bad_request(batch)
    binary = to_binary_event(sdk_event())
    headers = {k: v for k, v in binary.headers.items() if k.lower() != f"ce-{missing}"}
    assert missing in bad_request((headers, binary.body))


@pytest.mark.parametrize(("headers", "body", "message"), [
    ({"Content-Type": "application/json"}, b"{}", "missing: specversion, id, source, type"),
    ({"ce-specversion": "0.3", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"", "specversion '0.3'"),
    ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "Content-Type": "application/json"},
     b"{not json", "body is not valid JSON"),
    ({"Content-Type": "application/cloudevents+avro"}, b"\x00", "event format 'application/cloudevents+avro'"),
    ({"Content-Type": "application/cloudevents+json"}, b"[1]", "must be a JSON object"),
    ({"Content-Type": BATCH}, b'{"id": "1"}', "must be a JSON array"),
    ({"Content-Type": "application/cloudevents+json"},
     b'{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad":"x"}', "'Bad' is not a CloudEvents attribute"),
    ({"Content-Type": "application/cloudevents+json"},
     b'{"specversion":"1.0","id":"1","source":"/s","type":"t\\n"}', "'type' holds control characters"),
    ({"Content-Type": "application/cloudevents+json"},
     b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"%%"}', "data_base64 is not base64"),
    ({"ce-specversion": "1.0", "ce-id": "%FF", "ce-source": "/s", "ce-type": "t"}, b"", "ce-id is not percent"),
])
def test_what_is_not_a_cloudevent_is_400(headers: dict[str, str], body: bytes, message: str) -> None:
    assert message in bad_request((headers, body))


def test_percent_encoded_attributes_round_trip() -> None:
    message = to_binary_event(sdk_event(id='A 1% "q"', subject="ü/ß"))
    assert message.headers["ce-id"] == "A%201%25%20%22q%22"
    [event] = received(message)
    assert (event.id, event.attributes["subject"]) == ('A 1% "q"', "ü/ß")


def test_bearer_credentials_are_required_unless_unauthenticated() -> None:
    message = to_binary_event(sdk_event())
    provider = CloudEvents()
    for bearer, reason in ((None, "missing"), (b"wrong token", "mismatch")):
        with pytest.raises(SignatureError) as caught:
            provider.verify(headers_of(message.headers, bearer), message.body, [TOKEN], NOW)
        assert caught.value.reason == reason and TOKEN.decode() not in str(caught.value)
    open_ = CloudEvents(unauthenticated=True)
    open_.verify(headers_of(message.headers, None), message.body, [], NOW)
    assert CloudEvents.secret_needed({}) and not CloudEvents.secret_needed({"unauthenticated": True})


def test_sign_makes_a_request_the_sdk_and_the_provider_read() -> None:
    provider = CloudEvents()
    signed = provider.request(b'{"a":1}', TOKEN, NOW, event="ping", delivery="d-9")
    event = from_binary_event(HTTPMessage(signed.headers, signed.body))
    assert (event.get_id(), event.get_type(), event.get_data()) == ("d-9", "ping", {"a": 1})
    headers = headers_of(signed.headers, bearer=None)
    provider.verify(headers, signed.body, [TOKEN], NOW)
    [mine] = provider.events(headers, signed.body)
    assert (mine.id, mine.type, mine.payload) == ("d-9", "ping", {"a": 1})
    assert "Authorization" not in CloudEvents(unauthenticated=True).sign(b"", b"", NOW)


def test_the_provider_interface_for_one_event() -> None:
    provider = CloudEvents()
    message = to_binary_event(sdk_event())
    headers = headers_of(message.headers)
    payload = provider.parse(headers, message.body)
    assert provider.event(headers, payload) == "order.created"
    assert provider.delivery(headers, payload) == payload[0].delivery


@pytest.mark.parametrize(("allowed", "origin", "granted"), [
    ((), "eventgrid.azure.net", True),
    (("eventgrid.azure.net",), "EventGrid.Azure.net", True),
    (("eventgrid.azure.net",), "evil.example", False),
    (("eventgrid.azure.net",), "", False),
])
def test_abuse_protection_handshake(allowed: tuple[str, ...], origin: str, granted: bool) -> None:
    headers = headers_of({"WebHook-Request-Origin": origin, "WebHook-Request-Rate": "120"} if origin else {},
                         bearer=None)
    answer = CloudEvents(allowed_origins=list(allowed)).handshake(headers)
    assert answer.status == 200 and answer.headers["Allow"] == "POST"
    if granted:
        assert answer.headers["WebHook-Allowed-Origin"] == origin and answer.headers["WebHook-Allowed-Rate"] == "*"
    else:
        assert "WebHook-Allowed-Origin" not in answer.headers
    assert handshake(headers_of({"WebHook-Request-Origin": "x.example"}, None)).headers[
        "WebHook-Allowed-Origin"] == "x.example"


@pytest.mark.parametrize("options", [{"allowed_origins": ["ok.example", 3]}, {"allowed_origins": ["a b"]},
                                     {"unauthenticated": "yes"}])
def test_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CloudEvents(**options)


def test_a_base64_round_trip_of_the_sdk_matches_ours() -> None:
    blob = b"\x00\xffbinary"
    document = json.loads(to_structured_event(sdk_event(data=blob, datacontenttype="image/png")).body)
    assert base64.b64decode(document["data_base64"]) == blob
    [event] = received(HTTPMessage({"content-type": "application/cloudevents+json"}, json.dumps(document).encode()))
    assert (event.data, event.content_type) == (blob, "image/png")
