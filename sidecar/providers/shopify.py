"""Shopify: X-Shopify-Hmac-Sha256 = base64 HMAC-SHA256 of the raw body."""

from __future__ import annotations

import time

from . import new_id
from .generic import HeaderSigned

# What `sign` puts in the headers Shopify's own validator (@shopify/shopify-api
# webhooks.validate) requires besides the HMAC; the verifier here does not read them.
SAMPLE_SHOP = "webhook-sidecar-test.myshopify.com"
SAMPLE_API_VERSION = "2025-07"


class Shopify(HeaderSigned):
    """Shopify: X-Shopify-Hmac-Sha256 = base64 HMAC-SHA256; X-Shopify-Topic; X-Shopify-Webhook-Id."""

    name = "shopify"
    signature_headers = ("X-Shopify-Hmac-Sha256",)
    encoding = "base64"
    event_headers = ("X-Shopify-Topic",)
    delivery_headers = ("X-Shopify-Webhook-Id",)
    sample_event = "orders/create"

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        out = super().sign(body, secret, now, event=event, delivery=delivery)
        out.update({
            "X-Shopify-Shop-Domain": SAMPLE_SHOP,
            "X-Shopify-API-Version": SAMPLE_API_VERSION,
            "X-Shopify-Event-Id": new_id(),
            "X-Shopify-Triggered-At": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        })
        return out
