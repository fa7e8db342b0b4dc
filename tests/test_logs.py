"""The log writer: one JSON object per line, whole, from any number of threads.

A thread that finds another writing queues its line for that one to write (sidecar/logs.py _write);
this checks that no line is lost, split or reordered within its thread when writes are slow.
"""

from __future__ import annotations

import io
import json
import threading
import time

from sidecar import logs


class SlowStream(io.StringIO):
    """A stream whose write takes a while (a pipe to a busy reader), so that threads pile up behind it."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        time.sleep(0.0005)
        return super().write(text)


def test_lines_of_many_threads_are_all_written_whole_and_in_order_with_fewer_writes() -> None:
    stream = SlowStream()
    logs.configure("info", stream)
    try:
        def emit(t: int) -> None:
            for i in range(300):
                logs.info("test.line", thread=t, seq=i, text="x\ny" * (i % 5))

        threads = [threading.Thread(target=emit, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        logs.debug("below the level")  # not written
    finally:
        logs.configure("info", None)
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 8 * 300
    for t in range(8):
        assert [e["seq"] for e in events if e["thread"] == t] == list(range(300))
    # Writers that found one writing queued their lines: fewer writes than lines.
    assert stream.writes < len(lines)
    print(f"\n{len(lines)} lines in {stream.writes} writes")


def test_a_failing_stream_does_not_stop_later_lines() -> None:
    class Broken(io.StringIO):
        fail = True

        def write(self, text: str) -> int:
            if self.fail:
                self.fail = False
                raise OSError("broken pipe")
            return super().write(text)

    stream = Broken()
    logs.configure("info", stream)
    try:
        logs.info("lost")
        logs.info("kept", n=1)
    finally:
        logs.configure("info", None)
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["kept"]


def test_flush_returns_once_a_line_queued_behind_a_write_is_out() -> None:
    """The main thread's last line, queued while a daemon thread writes, is out when flush() returns
    (logs registers it to run at exit, before daemon threads stop)."""
    started, release = threading.Event(), threading.Event()

    class Held(io.StringIO):
        def write(self, text: str) -> int:
            if "held" in text:
                started.set()
                release.wait(5)
            return super().write(text)

    stream = Held()
    logs.configure("info", stream)
    try:
        threading.Thread(target=logs.info, args=("held",), daemon=True).start()
        assert started.wait(5)
        logs.info("last")  # queued: the daemon thread is writing
        assert "last" not in stream.getvalue()
        threading.Timer(0.05, release.set).start()
        logs.flush()
    finally:
        logs.configure("info", None)
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["held", "last"]
