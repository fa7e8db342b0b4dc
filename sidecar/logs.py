"""One JSON object per line on stdout: ts, level, msg, then the event's fields.

json.dumps escapes every control character, so a newline in an event name or a
header value can never split or forge a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

LOGGER = logging.getLogger("sidecar")
LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(level: str = "info", stream: IO[str] | None = None) -> None:
    """Send the sidecar's log events to `stream` (stdout) at `level` and above."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False


def _emit(level: int, msg: str, fields: dict[str, Any], exc_info: bool = False) -> None:
    if LOGGER.isEnabledFor(level):
        clean = {k: v for k, v in fields.items() if v is not None}
        LOGGER.log(level, msg, extra={"fields": clean}, exc_info=exc_info)


def debug(msg: str, **fields: Any) -> None:
    _emit(logging.DEBUG, msg, fields)


def info(msg: str, **fields: Any) -> None:
    _emit(logging.INFO, msg, fields)


def warning(msg: str, **fields: Any) -> None:
    _emit(logging.WARNING, msg, fields)


def error(msg: str, exc_info: bool = False, **fields: Any) -> None:
    _emit(logging.ERROR, msg, fields, exc_info=exc_info)
