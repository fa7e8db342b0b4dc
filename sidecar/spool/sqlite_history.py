"""The embedded spool's history (see history.py): reads on the spool's reader connection, the replay
write through its one writer (so it is ordered with the finishes and the body drops)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..config import Route
from . import Context, route_spec
from .history import DELIVERY_COLUMNS, JOB_COLUMNS, DeliveryRecord, Filter, listing_where, records
from .sqlite import Spool


class SqliteHistory:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def _jobs(self, ids: Sequence[int]) -> list[Any]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return self.spool.reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.delivery_id IN ({marks}) ORDER BY j.id", tuple(ids)).fetchall()

    def deliveries(self, f: Filter) -> list[DeliveryRecord]:
        where, args = listing_where(f, "?", "jobs")
        rows = self.spool.reader.execute(
            f"SELECT {DELIVERY_COLUMNS}, length(d.body) FROM deliveries d{where} ORDER BY d.id DESC LIMIT ?",
            (*args, f.limit)).fetchall()
        return records(rows, self._jobs([r[0] for r in rows]))

    def delivery(self, delivery_id: int, body: bool = False) -> DeliveryRecord | None:
        rows = self.spool.reader.execute(
            f"SELECT {DELIVERY_COLUMNS}, length(d.body), d.body FROM deliveries d WHERE d.id = ?",
            (delivery_id,)).fetchall()
        if not rows:
            return None
        found = records(rows, self._jobs([delivery_id]))[0]
        if body:
            found = replace(found, body=bytes(rows[0][-1]))
        return found

    def delivery_of_job(self, job_id: int) -> int | None:
        row = self.spool.reader.execute("SELECT delivery_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else None

    def replay(self, delivery_id: int, routes: Sequence[Route], context: Context) -> list[int] | None:
        def op(db: sqlite3.Connection) -> list[int] | None:
            row = db.execute("SELECT length(body) > 0 OR EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?"
                             " AND state IN ('pending', 'failed')) FROM deliveries WHERE id = ?",
                             (delivery_id, delivery_id)).fetchone()
            if not row or not row[0]:
                return None
            now = time.time()
            # A lane route's replay joins its lane (behind the jobs queued there), as a new delivery would.
            ids = [int(db.execute("INSERT INTO jobs (delivery_id, route, spec, updated_at, replay_of, lane, lane_since)"
                                  " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (delivery_id, r.name, route_spec(r), now, delivery_id,
                                   context.lane(r.name) if r.lane else None, now if r.lane else None)).lastrowid or 0)
                   for r in routes]
            db.execute("UPDATE deliveries SET context = ? WHERE id = ?", (context.dumps(), delivery_id))
            return ids

        return self.spool.write(op)
