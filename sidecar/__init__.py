"""webhook-sidecar: verify signed webhook deliveries, route them, run hook scripts."""

__version__ = "0.1.0"
