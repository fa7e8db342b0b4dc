"""A route's `reply:`: the sender waits for that route's first run, whose stdout becomes the answer.

The intake registers a Waiter before the delivery is committed (so a run that starts at once finds it),
the scheduler hands the run's result to it, and whoever is first decides: a result in time makes the
answer, a timeout makes the endpoint's own answer and the result is then only the job's. The run is an
ordinary job either way: recorded, retried, dead-lettered as any other, never run twice for the reply.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .runner import Result


@dataclass(frozen=True)
class ReplySpec:
    """`reply: {timeout_s, max_bytes, content_type}` of a route."""

    timeout_s: float = 2.5
    max_bytes: int = 65536
    content_type: str = ""  # "" : application/json when stdout parses as JSON, else text/plain


class Waiter:
    """One sender waiting for one run."""

    def __init__(self, key: tuple[str, str, str], spec: ReplySpec) -> None:
        self.key, self.spec = key, spec
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Result | None = None
        self._abandoned = False

    def deliver(self, result: Result | None) -> bool:
        """The run's result (None: it did not run): True when it becomes the answer."""
        usable = (result is not None and result.ok and not result.cancelled
                  and len(result.stdout) <= self.spec.max_bytes)
        with self._lock:
            if self._abandoned or self._done.is_set():
                return False
            self._result = result if usable else None
            self._done.set()
        return usable

    def wait(self) -> bytes | None:
        """The answer's body within the spec's timeout, or None (the endpoint's own answer then)."""
        self._done.wait(self.spec.timeout_s)
        with self._lock:
            self._abandoned = not self._done.is_set()
            return self._result.stdout if self._result is not None else None


class Replies:
    """The senders waiting now, by (endpoint, delivery, route)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str, str], Waiter] = {}

    def expect(self, endpoint: str, delivery: str, route: str, spec: ReplySpec) -> Waiter:
        waiter = Waiter((endpoint, delivery, route), spec)
        with self._lock:
            self._waiting[waiter.key] = waiter
        return waiter

    def done(self, waiter: Waiter) -> None:
        """The sender has its answer (or gave up): forget it."""
        with self._lock:
            if self._waiting.get(waiter.key) is waiter:
                del self._waiting[waiter.key]

    def take(self, endpoint: str, delivery: str, route: str) -> Waiter | None:
        """The waiter of a run that starts now, if a sender waits for it."""
        with self._lock:
            return self._waiting.pop((endpoint, delivery, route), None)
