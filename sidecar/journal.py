"""A sidecar's journal of running hooks (procs.Tracker keeps one in its run directory): a line when a
hook starts (its run number, pid, start time, route and delivery) and one when its run ended, appended
to one open file, so a run costs two writes and no file of its own. After a crash, the runs a dead
sidecar's journal left open are its leftovers (procs.Tracker.reap_leftovers).

No fsync: an entry only matters while its processes live, and a power loss ends them too. A failed
write is not fatal: the run's marker still finds its processes. Not thread-safe: the tracker holds
its lock around every call.
"""

from __future__ import annotations

import json
import os
import time
from json.encoder import encode_basestring_ascii
from pathlib import Path

SUFFIX = ".journal"
COMPACT_BYTES = 1 << 20  # rewritten with only its open runs past this size
EMPTY_BYTES = 64 << 10  # emptied past this size when no run is open (one write per end below it)


class Journal:
    """The journal at `path` (None: none is kept, every call does nothing), opened at the first run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._open: dict[int, bytes] = {}  # the lines of the runs started and not ended
        self._fd = -1
        self._size = 0

    def write_start(self, seq: int, pid: int, route: str | None, delivery: str | None) -> None:
        """Run `seq` started as `pid` now (the line's time stands for the pid's start time)."""
        if self.path is None:
            return
        line = b'{"run":%d,"pid":%d,"t":%.3f,"route":%s,"delivery":%s}\n' % (
            seq, pid, time.time(), _json_str(route), _json_str(delivery))
        self._open[seq] = line
        self._append(line)

    def write_end(self, seq: int) -> None:
        """Run `seq` ended: empty the journal when nothing runs and it grew, compact it when big."""
        if self._open.pop(seq, None) is None or self._fd < 0:
            return
        try:
            if not self._open and self._size > EMPTY_BYTES:
                os.ftruncate(self._fd, 0)  # O_APPEND: the next line goes to the start
                self._size = 0
            elif self._size > COMPACT_BYTES:
                self._compact()
            else:
                self._append(b'{"end":%d}\n' % seq)
        except OSError:
            pass

    def close(self) -> None:
        """At shutdown, after the last run ended: remove the journal (nothing left to recover)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path is not None and not self._open:
            try:
                self.path.unlink()
            except OSError:
                pass

    def _append(self, line: bytes) -> None:
        try:
            if self._fd < 0:
                assert self.path is not None
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                self._size = os.fstat(self._fd).st_size
            os.write(self._fd, line)
            self._size += len(line)
        except OSError:
            pass

    def _compact(self) -> None:
        """Replace the journal by one that holds only the open runs."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            data = b"".join(self._open.values())
            os.write(fd, data)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._size = fd, len(data)


def open_runs(path: Path) -> dict[int, dict[str, object]]:
    """The runs a journal holds as started and not ended: number -> its start line."""
    runs: dict[int, dict[str, object]] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return runs
    for line in lines:
        try:
            d = json.loads(line)
            if "run" in d:
                runs[int(d["run"])] = d
            elif "end" in d:
                runs.pop(int(d["end"]), None)
        except (ValueError, TypeError):
            continue  # a line cut by the crash
    return runs


def _json_str(value: object) -> bytes:
    return b"null" if value is None else encode_basestring_ascii(str(value)).encode()
