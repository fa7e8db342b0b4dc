"""The embedded spool's file on disk: opened with the pragmas that make a commit durable, checked,
and set aside (never deleted) when damaged or found in the way."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_S = 10.0


def connect(path: Path, create: bool = False) -> sqlite3.Connection:
    # mode=rw: a connection never creates the file. Only the writer at start (and a
    # restore) may; a reader that found it missing would otherwise make an empty one.
    uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the 200 goes out, power loss included.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def locked_out(path: Path) -> bool:
    """Whether the spool file is there but its directory's or its own mode keeps us out."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return not os.access(path, os.R_OK | os.W_OK)


def companions(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def set_aside(path: Path, why: str) -> Path:
    """Rename a spool file and its -wal/-shm to `<name>.<why>-<UTC time>`; the new main file's path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    for src in companions(path):
        if src.exists():
            os.replace(src, aside.with_name(aside.name + src.name[len(path.name):]))
    return aside


def integrity(path: Path, quick: bool = False) -> list[str]:
    """sqlite's own integrity check of a spool file: [] when sound, else what is wrong."""
    if path.is_file() and path.stat().st_size == 0:
        return ["the file is empty (0 bytes): a spool always holds its schema, so it was truncated"]
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check").fetchall()
            db.execute("SELECT count(*) FROM jobs").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        return [str(e)]
    problems = [r[0] for r in rows if r[0] != "ok"]
    return problems
