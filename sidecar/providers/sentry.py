"""Sentry integration platform: Sentry-Hook-Signature = hex HMAC-SHA256 of the body."""

from __future__ import annotations

from .generic import HeaderSigned


class Sentry(HeaderSigned):
    """Sentry: Sentry-Hook-Signature hex HMAC-SHA256 of the raw body, keyed by the client secret.

    Event type: Sentry-Hook-Resource (installation, issue, event_alert, metric_alert,
    error, comment); filter the action with `if: {action: created}`. Delivery id:
    Request-ID. Sentry-Hook-Timestamp is not signed, so it is not checked.
    """

    name = "sentry"
    signature_headers = ("Sentry-Hook-Signature",)
    event_headers = ("Sentry-Hook-Resource",)
    delivery_headers = ("Request-ID",)
    sample_event = "issue"
