"""The spawner's wire (spawner.py, the sidecar's side; spawner_main.py, the spawner's): frames of a JSON
header and a blob of bytes (a hook's payload, a reply's stdout) on a stream socket, one connection per
thread that runs hooks. Nothing of it ever reaches a hook: payloads go to its stdin only."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

_HEAD = struct.Struct("!II")  # header length, blob length
MAX_HEADER = 16 << 20


def write(conn: socket.socket, header: dict[str, Any], blob: bytes = b"") -> None:
    """Send one frame (blocking until it is all written)."""
    data = json.dumps(header, separators=(",", ":")).encode()
    conn.sendall(_HEAD.pack(len(data), len(blob)) + data)
    if blob:
        conn.sendall(blob)


def read(conn: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """One frame, or None at the end of the connection (the other side gone)."""
    head = _exactly(conn, _HEAD.size)
    if head is None:
        return None
    size, blob_size = _HEAD.unpack(head)
    if size > MAX_HEADER:
        return None
    data = _exactly(conn, size)
    blob = _exactly(conn, blob_size) if blob_size else b""
    if data is None or blob is None:
        return None
    header = json.loads(data)
    return (header, blob) if isinstance(header, dict) else None


def _exactly(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = conn.recv(min(n - len(buf), 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
