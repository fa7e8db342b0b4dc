"""The shared spool's history (see history.py), on the Store's pool. A replay locks its delivery's row
(as finish_many and the body drops do), so it either sees the body or adds its jobs before any drop;
a broadcast route becomes one job per live replica that has it, as at acceptance; every replica is
woken (NOTIFY) to claim the new jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..config import Route
from . import Context, route_spec
from .history import DELIVERY_COLUMNS, JOB_COLUMNS, DeliveryRecord, Filter, listing_where, records
from .pg_schema import NOTIFY_CHANNEL, NOW, spec_key
from .postgres import Store


class PgHistory:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _jobs(self, conn: Any, ids: Sequence[int]) -> list[Any]:
        return conn.execute(f"SELECT {JOB_COLUMNS}, COALESCE(j.owner, j.ran_on, j.replica) FROM sidecar_jobs j"
                            " WHERE j.delivery_id = ANY(%s) ORDER BY j.id", (list(ids),)).fetchall()

    def deliveries(self, f: Filter) -> list[DeliveryRecord]:
        where, args = listing_where(f, "%s", "sidecar_jobs")
        with self.store.pool.connection() as conn:
            rows = conn.execute(f"SELECT {DELIVERY_COLUMNS}, octet_length(d.body) FROM sidecar_deliveries d{where}"
                                " ORDER BY d.id DESC LIMIT %s", (*args, f.limit)).fetchall()
            jobs = self._jobs(conn, [r[0] for r in rows]) if rows else []
            conn.commit()
        return records(rows, jobs)

    def delivery(self, delivery_id: int, body: bool = False) -> DeliveryRecord | None:
        with self.store.pool.connection() as conn:
            rows = conn.execute(f"SELECT {DELIVERY_COLUMNS}, octet_length(d.body), CASE WHEN %s THEN d.body END"
                                " FROM sidecar_deliveries d WHERE d.id = %s", (body, delivery_id)).fetchall()
            jobs = self._jobs(conn, [delivery_id]) if rows else []
            conn.commit()
        if not rows:
            return None
        found = records(rows, jobs)[0]
        return replace(found, body=bytes(rows[0][-1])) if body else found

    def delivery_of_job(self, job_id: int) -> int | None:
        with self.store.pool.connection() as conn:
            row = conn.execute("SELECT delivery_id FROM sidecar_jobs WHERE id = %s", (job_id,)).fetchone()
            conn.commit()
        return int(row[0]) if row else None

    def replay(self, delivery_id: int, routes: Sequence[Route], context: Context) -> list[int] | None:
        with self.store.pool.connection() as conn:
            row = conn.execute("SELECT endpoint, octet_length(body) > 0 OR EXISTS (SELECT 1 FROM sidecar_jobs WHERE"
                               " delivery_id = %s AND state IN ('pending', 'failed')) FROM sidecar_deliveries"
                               " WHERE id = %s FOR UPDATE", (delivery_id, delivery_id)).fetchone()
            if not row or not row[1]:
                conn.rollback()
                return None
            endpoint = row[0]
            jobs = [(r, name) for r in routes
                    for name in (self._live_with(conn, endpoint, r) if r.broadcast else [None])]
            ids = [r[0] for r in conn.execute(
                "INSERT INTO sidecar_jobs (delivery_id, route, spec, rkey, concurrency, replica, updated_at, skey,"
                f" replay_of, lane, lane_since) SELECT %s, r.route, r.spec, r.rkey, r.concurrency, r.replica, {NOW},"
                f" md5(convert_to(r.spec, 'UTF8')), %s, r.lane, CASE WHEN r.lane IS NULL THEN NULL ELSE {NOW} END"
                " FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::text[]) WITH ORDINALITY"
                " AS r(route, spec, rkey, concurrency, replica, lane, n) ORDER BY r.n RETURNING id",
                (delivery_id, delivery_id, [r.name for r, _ in jobs], [route_spec(r) for r, _ in jobs],
                 ["\n".join((endpoint, r.name, replica or "")) for r, replica in jobs],
                 [r.concurrency for r, _ in jobs], [replica for _, replica in jobs],
                 [context.lane(r.name) if r.lane else None for r, _ in jobs]))]
            conn.execute("UPDATE sidecar_deliveries SET context = %s WHERE id = %s", (context.dumps(), delivery_id))
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            conn.commit()
        return ids

    def _live_with(self, conn: Any, endpoint: str, route: Route) -> list[str]:
        """The live replicas that have a broadcast route (by name in their table, or by content)."""
        keys = [f"{endpoint}\n{route.name}\n", spec_key(route_spec(route))]
        return sorted(r[0] for r in conn.execute(
            f"SELECT name FROM sidecar_replicas WHERE seen_at >= {NOW} - %s AND (routes IS NULL OR routes && %s)",
            (self.store.lease_s, keys)))
