"""The admin listener's bearer token: compared in constant time, never logged.

`token_env`'s value comes with each loaded table (a reload re-reads it); `token_file` is read here and
again whenever the file changes (its inode, size or mtime: a Secret volume's `..data` swap is a new
inode), so a rotation needs no restart. A token that cannot be read lets no one in.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Callable

from . import logs
from .config import Config
from .config_admin import read_token_file


class Token:
    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._seen: tuple[str, int, int, int, int] | None = None  # path, dev, inode, size, mtime_ns
        self._value = b""

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries the token (`Bearer <token>`)."""
        admin = self.config().admin
        expected = b"" if admin is None else admin.token if admin.token_env else self._file(admin.token_file or "")
        scheme, _, given = (authorization or "").partition(" ")
        if not expected or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip(" \t").encode("utf-8", "surrogateescape"), expected)

    def _file(self, path: str) -> bytes:
        try:
            st = os.stat(path)
        except OSError as e:
            self._unreadable(path, e)
            return b""
        seen = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if seen != self._seen:
                try:
                    self._value = read_token_file(path)
                except OSError as e:
                    self._unreadable(path, e)
                    return b""
                if self._seen is not None:
                    logs.info("admin.token_reloaded", file=path)
                self._seen = seen
            return self._value

    def _unreadable(self, path: str, error: OSError) -> None:
        if self._seen is not None or self._value:
            logs.warning("admin.token_unreadable", file=path, error=error.strerror or str(error),
                         detail="no /admin request is allowed until it can be read")
        self._seen, self._value = None, b""
