"""Which history (history.History) a backend has: the admin's and the CLI's way to one."""

from __future__ import annotations

from . import SpoolAdmin
from .history import History


def of(spool: SpoolAdmin) -> History:
    """The history reader and replay writer of a backend (the scheduler's spool, or the CLI's)."""
    from .sqlite import Spool

    if isinstance(spool, Spool):
        from .sqlite_history import SqliteHistory

        return SqliteHistory(spool)
    from .pg_history import PgHistory
    from .postgres import Store

    assert isinstance(spool, Store), type(spool)
    return PgHistory(spool)
