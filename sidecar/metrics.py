"""Prometheus metrics, on their own registry. Labels are bounded: configured endpoint
paths and route names, providers, reasons and outcomes; never delivery ids or raw paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "webhook_sidecar"
# process_* (memory, CPU, open fds; read from /proc/self, which stays readable to the process itself when it
# is non-dumpable and unprivileged) and python_info, as the default registry would have them.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

REQUESTS = Counter(f"{PREFIX}_requests_total", "HTTP requests answered, by endpoint and status code.",
                   ["endpoint", "status"], registry=REGISTRY)
VERIFICATION_FAILURES = Counter(f"{PREFIX}_verification_failures_total",
                                "Deliveries refused with 401, by provider and reason.",
                                ["provider", "reason"], registry=REGISTRY)
DELIVERIES = Counter(f"{PREFIX}_deliveries_total", "Verified deliveries, by endpoint and result.",
                     ["endpoint", "result"], registry=REGISTRY)
HOOK_RUNS = Counter(f"{PREFIX}_hook_runs_total", "Hook runs finished, by endpoint, route and outcome.",
                    ["endpoint", "route", "outcome"], registry=REGISTRY)
HOOK_DURATION = Histogram(f"{PREFIX}_hook_duration_seconds", "Hook run duration, by endpoint and route.",
                          ["endpoint", "route"], registry=REGISTRY,
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
CONFIG_RELOADS = Counter(f"{PREFIX}_config_reloads_total", "Config reload attempts, by result.",
                         ["result"], registry=REGISTRY)
LAST_RELOAD = Gauge(f"{PREFIX}_config_last_reload_success_timestamp_seconds",
                    "When the routing table in use was loaded (Unix time).", registry=REGISTRY)
QUEUE_DEPTH = Gauge(f"{PREFIX}_queue_depth", "Pending jobs: queued, waiting for a retry, or running.",
                    registry=REGISTRY)
HOOKS_RUNNING = Gauge(f"{PREFIX}_hooks_running", "Hooks running now.", registry=REGISTRY)
QUEUE_MAX = Gauge(f"{PREFIX}_queue_max", "max_queue: pending jobs beyond which new deliveries get 503.",
                  registry=REGISTRY)
READY = Gauge(f"{PREFIX}_ready", "1 when /readyz answers 200 (table loaded, spool writable, not draining), else 0.",
              registry=REGISTRY)
DEAD_LETTERS = Counter(f"{PREFIX}_dead_letters_total", "Jobs that failed for good, by endpoint and route.",
                       ["endpoint", "route"], registry=REGISTRY)
SUPERSEDED = Counter(f"{PREFIX}_jobs_superseded_total",
                     "Queued jobs of a lane (latest, debounce) a newer delivery replaced: never run.",
                     ["endpoint", "route"], registry=REGISTRY)
LANES_WAITING = Gauge(f"{PREFIX}_lanes_waiting", "Lanes with a job queued, not running (the whole spool's).",
                      registry=REGISTRY)
CONNECTIONS_EVICTED = Counter(f"{PREFIX}_connections_evicted_total",
                              "Connections closed to make room for a new one, by kind (idle, slow) and the"
                              " limit reached (max_connections, max_connections_per_client).",
                              ["kind", "limit"], registry=REGISTRY)


# The shared (PostgreSQL) spool; zero and absent with the embedded one.
LIVE_REPLICAS = Gauge(f"{PREFIX}_replicas_live",
                      "Replicas seen within lease_s by the shared spool (this one included).", registry=REGISTRY)
TAKEOVERS = Counter(f"{PREFIX}_jobs_taken_over_total",
                    "Jobs whose lease expired on another replica (it died) and that this replica took over.",
                    registry=REGISTRY)
BROADCAST_DROPPED = Counter(f"{PREFIX}_broadcast_jobs_dropped_total",
                            "Pending broadcast jobs dropped because their replica was gone (10 x lease_s).",
                            registry=REGISTRY)
DATABASE_ERRORS = Counter(f"{PREFIX}_database_errors_total",
                          "Failed shared-spool database operations, by operation.", ["operation"], registry=REGISTRY)


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """metric.labels(*labels), kept: labels() checks its arguments and takes a lock on every call.

    The labels are bounded (see above), and so is what is kept. Only for metrics whose children
    are never removed (nothing here calls remove() or clear()).
    """
    found = _children.get((metric, labels))
    if found is None:
        found = _children[(metric, labels)] = metric.labels(*labels)
    return found


def track_queue(depth: Callable[[], int], running: Callable[[], int], limit: int | None = None) -> None:
    """Read queue depth and running hooks at scrape time; `limit` is max_queue (fixed until a restart)."""
    QUEUE_DEPTH.set_function(depth)
    HOOKS_RUNNING.set_function(running)
    if limit is not None:
        QUEUE_MAX.set(limit)


SPOOL_BYTES = Gauge(f"{PREFIX}_spool_bytes", "Bytes the spool's live records use (sqlite: pages in use;"
                    " PostgreSQL: bodies of pending and failed deliveries).", registry=REGISTRY)
SPOOL_MAX_BYTES = Gauge(f"{PREFIX}_spool_max_bytes", "spool_max_bytes: beyond it new deliveries get 503 (0 = none).",
                        registry=REGISTRY)


def track_spool(used: Callable[[], int], limit: int) -> None:
    """Read the spool's size at scrape time; `limit` is spool_max_bytes (fixed until a restart)."""
    SPOOL_BYTES.set_function(used)
    SPOOL_MAX_BYTES.set(limit)


def track_lanes(waiting: Callable[[], int]) -> None:
    """Read the lanes waiting at scrape time."""
    LANES_WAITING.set_function(waiting)


def track_ready(ready: Callable[[], bool]) -> None:
    """Read readiness (what /readyz answers) at scrape time."""
    READY.set_function(lambda: 1.0 if ready() else 0.0)


def exposition() -> tuple[bytes, str]:
    """The body and content type of a /metrics answer."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
