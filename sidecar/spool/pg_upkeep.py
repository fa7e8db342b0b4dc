"""The shared spool's upkeep and reads: what the housekeeping of every replica and the CLI ask of the
database, apart from the hot path (accepting, claiming, leases: postgres.py).

Upkeep: the whole spool's depth and body bytes, replicas gone for good, jobs no live replica can run
(stranded), pruning. Reads: jobs and bodies for `spool list|show`, and `spool retry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from . import JobRow, pg_lanes
from .pg_schema import JOB_COLUMNS, NOTIFY_CHANNEL, NOW, job_row

GONE_LEASES = 10  # a replica not seen for this many lease_s is gone
STRANDED_LEASES = 10  # a job no live replica can run for this many lease_s is a dead letter
STRAND_LOCK = 0x5EB400D  # pg_try_advisory_xact_lock key: one replica at a time looks for stranded jobs


class Upkeep:
    """The queries of the housekeeping and the CLI; Store (postgres.py) has them all."""

    pool: ConnectionPool[psycopg.Connection[Any]]
    lease_s: float
    keep_bodies_s = 0.0  # finished deliveries keep their bodies this long: dropped here, not by finish_many
    _kept_to = 0.0

    def stats(self) -> tuple[int, int, int]:
        """(pending jobs in the whole spool, live replicas, bytes of the bodies it holds).

        The bytes are what spool_max_bytes bounds: the bodies of deliveries with a job pending or
        failed (done ones drop theirs), found from those jobs (an index), not by reading every delivery."""
        with self.pool.connection() as conn:
            if self.keep_bodies_s:
                self._drop_kept(conn)
            row = conn.execute("SELECT (SELECT count(*) FROM sidecar_jobs WHERE state = 'pending'),"
                               f" (SELECT count(*) FROM sidecar_replicas WHERE seen_at >= {NOW} - %s),"
                               " (SELECT coalesce(sum(octet_length(body)), 0) FROM sidecar_deliveries WHERE id IN"
                               " (SELECT delivery_id FROM sidecar_jobs WHERE state IN ('pending', 'failed')))",
                               (self.lease_s,)).fetchone()
            conn.commit()
        return (row[0], row[1], int(row[2])) if row else (0, 0, 0)

    def _drop_kept(self, conn: psycopg.Connection[Any]) -> None:
        """Empty the bodies of deliveries whose jobs are all done, the last more than keep_bodies_s ago
        (looking back to the last call's mark, less a margin). The rows are locked first, as a replay
        locks its delivery's: the emptying statement then sees a replay's new jobs, or the replay finds
        the body gone."""
        row = conn.execute(f"SELECT {NOW} - %s", (self.keep_bodies_s,)).fetchone()
        until = float(row[0]) if row else 0.0
        locked = [r[0] for r in conn.execute(
            "SELECT id FROM sidecar_deliveries WHERE id IN (SELECT delivery_id FROM sidecar_jobs WHERE state IN"
            " ('done', 'superseded') AND updated_at >= %s AND updated_at <= %s) AND octet_length(body) > 0"
            " ORDER BY id FOR UPDATE",
            (self._kept_to, until))]
        if locked:
            conn.execute("UPDATE sidecar_deliveries d SET body = '' WHERE d.id = ANY(%s) AND NOT EXISTS"
                         " (SELECT 1 FROM sidecar_jobs j WHERE j.delivery_id = d.id"
                         " AND (j.state NOT IN ('done', 'superseded') OR j.updated_at > %s))",
                         (locked, until))
        self._kept_to = until - 5.0

    def drop_gone(self) -> list[tuple[int, str, str, str]]:
        """Pending broadcast jobs of replicas not seen for GONE_LEASES x lease_s: deleted, with the replicas.

        In Kubernetes a restarted pod has a new name: without this they would pile up forever."""
        with self.pool.connection() as conn:
            gone = [r[0] for r in conn.execute(
                f"DELETE FROM sidecar_replicas WHERE seen_at < {NOW} - %s RETURNING name",
                (GONE_LEASES * self.lease_s,))]
            dropped: list[tuple[int, str, str, str]] = []
            if gone:
                dropped = [tuple(r) for r in conn.execute(
                    "DELETE FROM sidecar_jobs j USING sidecar_deliveries d WHERE d.id = j.delivery_id"
                    " AND j.replica = ANY(%s) AND j.state = 'pending' RETURNING j.id, j.route, j.replica, d.delivery",
                    (gone,))]
            conn.commit()
        return dropped

    def strand(self) -> list[tuple[int, str, str, str, str, int, bool]]:
        """Find pending jobs no live replica can run (none has their route: a rollout between two
        tables, or a route removed everywhere) and clear that mark on those one can again; a job
        marked for STRANDED_LEASES x lease_s becomes a dead letter (`route_unknown`).

        Returns (id, route, state, delivery, endpoint, attempts, stranded) of every job it changed:
        state 'failed' a dead letter now, else stranded (just marked) or not (runnable again). One
        replica at a time does this; the others skip the round."""
        wait = STRANDED_LEASES * self.lease_s
        with self.pool.connection() as conn:
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (STRAND_LOCK,)).fetchone()
            if not locked or not locked[0]:
                conn.rollback()
                return []
            dead = f"(NOT a.ok AND a.since < {NOW} - %(wait)s)"
            rows = conn.execute(
                "WITH a AS (SELECT j.id, j.stranded_since AS since, EXISTS (SELECT 1 FROM sidecar_replicas r"
                f" WHERE r.seen_at >= {NOW} - %(lease)s AND (j.replica IS NULL OR r.name = j.replica)"
                " AND (r.routes IS NULL OR j.skey = ANY(r.routes)"
                " OR left(j.rkey, length(j.rkey) - length(coalesce(j.replica, ''))) = ANY(r.routes))) AS ok"
                " FROM sidecar_jobs j WHERE j.state = 'pending'"
                f" AND (j.lease_until IS NULL OR j.lease_until < {NOW}) FOR UPDATE OF j SKIP LOCKED)"
                f" UPDATE sidecar_jobs j SET stranded_since = CASE WHEN a.ok OR {dead} THEN NULL"
                f" ELSE coalesce(a.since, {NOW}) END,"
                f" state = CASE WHEN {dead} THEN 'failed' ELSE j.state END,"
                f" outcome = CASE WHEN {dead} THEN 'route_unknown' ELSE j.outcome END,"
                f" updated_at = CASE WHEN {dead} THEN {NOW} ELSE j.updated_at END"
                " FROM a, sidecar_deliveries d WHERE j.id = a.id AND d.id = j.delivery_id"
                f" AND ((a.ok AND a.since IS NOT NULL) OR (NOT a.ok AND a.since IS NULL) OR {dead})"
                " RETURNING j.id, j.route, j.state, d.delivery, d.endpoint, j.attempts, j.stranded_since",
                {"lease": self.lease_s, "wait": wait}).fetchall()
            conn.commit()
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6] is not None) for r in rows]

    def lanes_waiting(self) -> int:
        """Lanes with a job queued that no replica holds (the whole spool's)."""
        with self.pool.connection() as conn:
            n = pg_lanes.waiting(conn)
            conn.commit()
        return n

    def analyze(self) -> None:
        """Fresh planner statistics: a queue grows from empty to thousands within seconds, long before
        autovacuum looks, and with an empty table's statistics the claim sorts the whole queue."""
        with self.pool.connection() as conn:
            conn.execute("ANALYZE sidecar_jobs")
            conn.commit()

    # --- reads and the CLI ---------------------------------------------------------------
    def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
            conn.commit()
        return rows

    def job(self, job_id: int) -> JobRow | None:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM sidecar_jobs j JOIN sidecar_deliveries d"
                          " ON d.id = j.delivery_id WHERE j.id = %s", (job_id,))
        return job_row(rows[0]) if rows else None

    def body(self, job_id: int) -> bytes:
        rows = self._read("SELECT d.body FROM sidecar_jobs j JOIN sidecar_deliveries d ON d.id = j.delivery_id"
                          " WHERE j.id = %s", (job_id,))
        return bytes(rows[0][0]) if rows else b""

    def jobs(self, states: Sequence[str] = ("pending", "done", "failed"), limit: int = 1000) -> list[JobRow]:
        return [job_row(r) for r in self._read(
            f"SELECT {JOB_COLUMNS} FROM sidecar_jobs j JOIN sidecar_deliveries d ON d.id = j.delivery_id"
            " WHERE j.state = ANY(%s) ORDER BY j.id LIMIT %s", (list(states), limit))]

    def retry(self, job_ids: Sequence[int] | None = None) -> list[int]:
        """Put failed jobs (the given ones, or all) back in the queue; the ids that were requeued."""
        with self.pool.connection() as conn:
            ids = [r[0] for r in conn.execute(
                f"UPDATE sidecar_jobs SET state = 'pending', attempts = 0, next_at = 0, updated_at = {NOW}"
                " WHERE state = 'failed' AND (%s OR id = ANY(%s)) RETURNING id",
                (job_ids is None, list(job_ids or [])))]
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            conn.commit()
        return sorted(ids)

    def purge(self, older_than_s: float, states: Sequence[str] = ("done", "failed", "superseded")) -> int:
        """Delete finished jobs last updated more than `older_than_s` ago, and deliveries left without jobs."""
        with self.pool.connection() as conn:
            n = conn.execute(f"DELETE FROM sidecar_jobs WHERE state = ANY(%s) AND updated_at < {NOW} - %s",
                             (list(states), older_than_s)).rowcount
            if n:
                conn.execute("DELETE FROM sidecar_deliveries d WHERE NOT EXISTS"
                             " (SELECT 1 FROM sidecar_jobs j WHERE j.delivery_id = d.id)")
            conn.commit()
        return n
