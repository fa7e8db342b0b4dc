"""One JSON object per line on stdout: ts, level, msg, then the event's fields.

json.dumps escapes every control character, so a newline in an event name or a
header value can never split or forge a log line. Written directly (one
json.dumps, and one write for the lines of every thread that logged meanwhile)
rather than through `logging`, whose LogRecord machinery cost twice as much per
line on the request path.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time
import traceback
from typing import IO, Any

LEVELS = ("debug", "info", "warning", "error")
_RANK = {name: i for i, name in enumerate(LEVELS)}


class _Sink:
    def __init__(self) -> None:
        self.rank = _RANK["info"]
        self.stream: IO[str] | None = None  # None: sys.stdout as it is at write time
        self.lock = threading.Lock()
        self.pending: list[str] = []  # lines queued while another thread writes (see _write)
        self.writing = False


_sink = _Sink()
# json.dumps with options builds a new encoder for every call; one, built once, writes the same.
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode
_second: tuple[int, str] = (-1, "")  # the timestamp up to the seconds, formatted once a second


def configure(level: str = "info", stream: IO[str] | None = None) -> None:
    """Send the sidecar's log events to `stream` (stdout) at `level` and above."""
    _sink.rank = _RANK[level.lower()]
    _sink.stream = stream


def _emit(level: str, msg: str, fields: dict[str, Any], exc_info: bool = False) -> None:
    if _RANK[level] < _sink.rank:
        return
    global _second
    now = time.time()
    whole, second = int(now), _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    line: dict[str, Any] = {
        "ts": f"{second[1]}.{int(now % 1 * 1000):03d}Z",
        "level": level,
        "msg": msg,
    }
    for key, value in fields.items():
        if value is not None:
            line[key] = value
    if exc_info:
        line["traceback"] = traceback.format_exc()
    _write(_encode(line) + "\n")


def _write(text: str) -> None:
    """Write `text`, and whatever other threads queued meanwhile, in one write; or queue it when
    another thread is writing: that one writes it next, before it returns (a group write).

    The lock is never held across the write syscall, which releases the GIL: threads logging
    meanwhile neither wait for the lock nor each pay a write and a GIL hand-off of their own.
    """
    sink = _sink
    with sink.lock:
        sink.pending.append(text)
        if sink.writing:
            return
        sink.writing = True
    stream = sink.stream or sys.stdout
    try:
        while True:
            with sink.lock:
                batch, sink.pending = sink.pending, []
                if not batch:
                    sink.writing = False  # under the lock: a line queued after this writes itself
                    return
            try:
                stream.write("".join(batch))
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stdout must not take a request down with it
    except BaseException:
        with sink.lock:
            sink.writing = False  # an interrupt mid-write: the next line's thread writes what is queued
        raise


def flush(timeout_s: float = 1.0) -> None:
    """Return once every queued line is written (or after `timeout_s`): at exit, a line queued behind
    another thread's write (a daemon thread, stopped at interpreter shutdown) still goes out."""
    _write("")  # writes what is queued, unless another thread is writing it
    deadline = time.monotonic() + timeout_s
    while _sink.writing and time.monotonic() < deadline:
        time.sleep(0.001)


atexit.register(flush)


def debug(msg: str, **fields: Any) -> None:
    _emit("debug", msg, fields)


def info(msg: str, **fields: Any) -> None:
    _emit("info", msg, fields)


def warning(msg: str, **fields: Any) -> None:
    _emit("warning", msg, fields)


def error(msg: str, exc_info: bool = False, **fields: Any) -> None:
    _emit("error", msg, fields, exc_info=exc_info)
