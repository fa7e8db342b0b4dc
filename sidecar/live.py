"""The live table: the one owner of the config in use, and the fan-out of a swap.

Everyone reads the table from here (the server for each new request, the workers for each run);
the reloader only watches and validates, then calls `swap`. A swap tells the subscribers in a
fixed order, whatever order they subscribed in:

- "routes": the new routes become known (a job spooled under the new table may run as stored);
- "sandbox": the hooks' sandbox is built again for the new table;
- "limits": the server's limits follow (descriptors, TLS certificates);
- then the table switches: a new request or run starts on it;
- "warnings": what the new table deserves to be told (reloaded, restart needed, unverified).

Each subscriber gets (old, new). Swapping is one reference assignment for the readers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .config import Config

Subscriber = Callable[[Config, Config], None]
BEFORE = ("routes", "sandbox", "limits")  # before the switch: the new table is ready when it is read
AFTER = ("warnings",)  # after the switch
STAGES = BEFORE + AFTER


class Live:
    """The table in use and who follows it."""

    def __init__(self, config: Config) -> None:
        self._current = config
        self._subscribers: dict[str, list[Subscriber]] = {stage: [] for stage in STAGES}
        self._lock = threading.Lock()

    @property
    def current(self) -> Config:
        """The table a new request or run starts on."""
        return self._current

    def subscribe(self, stage: str, subscriber: Subscriber) -> None:
        """Call `subscriber(old, new)` at `stage` of every swap (see STAGES)."""
        if stage not in self._subscribers:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        self._subscribers[stage].append(subscriber)

    def swap(self, new: Config) -> Config:
        """Make `new` the table in use, fanned out in the fixed order; returns the table it replaced."""
        with self._lock:
            old = self._current
            for stage in BEFORE:
                for subscriber in self._subscribers[stage]:
                    subscriber(old, new)
            self._current = new
            for stage in AFTER:
                for subscriber in self._subscribers[stage]:
                    subscriber(old, new)
            return old
