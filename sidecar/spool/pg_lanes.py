"""Lanes on the shared spool (see lanes.py): decided in the database, so replicas agree.

- Accepting: the delivery's lanes are locked for the transaction (an advisory lock per lane, taken
  in one order), so two replicas accepting for one lane commit one after the other and job ids follow
  acceptance. A new job of a `latest` or `debounce` lane then supersedes, in the same transaction, the
  lane's queued jobs that no replica holds a lease on; a claim that locked one first keeps it (row
  locks), and it runs.
- Claiming (postgres.py): only a lane's oldest pending job may be claimed. A running job is pending
  until its record, and a job waiting for its retry too, so one lane never runs on two replicas at
  once, and a retry holds its lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ..lanes import Lane, Superseded
from .pg_schema import NOW

LANE_LOCK = 0x5EB4  # pg_advisory_xact_lock(LANE_LOCK, hashtext(lane)): one accept per lane at a time

# The claim's condition: a lane job only when no older one of its lane is pending.
HEAD = (" AND (lane IS NULL OR NOT EXISTS (SELECT 1 FROM sidecar_jobs o WHERE o.rkey = sidecar_jobs.rkey"
        " AND o.lane = sidecar_jobs.lane AND o.state = 'pending' AND o.id < sidecar_jobs.id))")

# Supersede the queued (unleased) jobs of the new job's lane; a debounce's due time is bounded by the
# oldest of them (lane_since: when the first of the burst was accepted).
SUPERSEDE = (
    "WITH s AS (UPDATE sidecar_jobs j SET state = 'superseded', outcome = 'superseded',"
    f" updated_at = {NOW} FROM sidecar_deliveries d WHERE d.id = j.delivery_id AND j.rkey = %(rkey)s"
    " AND j.lane = %(lane)s AND j.state = 'pending' AND j.lease_until IS NULL AND j.id < %(id)s"
    " RETURNING j.id, d.delivery, j.lane_since),"
    " n AS (UPDATE sidecar_jobs SET lane_since = LEAST(lane_since, (SELECT min(lane_since) FROM s)),"
    " next_at = CASE WHEN %(debounce)s THEN LEAST(next_at, LEAST(lane_since, (SELECT min(lane_since) FROM s))"
    " + %(max_wait)s) ELSE next_at END WHERE id = %(id)s)"
    " SELECT id, delivery FROM s ORDER BY id")


def key(rkey: str, lane: str) -> str:
    return f"{rkey}\n{lane}"


def lock(conn: psycopg.Connection[Any], keys: Sequence[str]) -> None:
    """Take the lanes `keys` (key()) for this transaction, in one order (no deadlock between accepts)."""
    for k in sorted(set(keys)):
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LANE_LOCK, k))


def supersede(conn: psycopg.Connection[Any], job_id: int, rkey: str, lane: str, config: Lane, endpoint: str,
              route: str) -> list[Superseded]:
    """In the accepting transaction, after the new job `job_id` was inserted: its lane's queued jobs."""
    rows = conn.execute(SUPERSEDE, {"rkey": rkey, "lane": lane, "id": job_id, "debounce": config.mode == "debounce",
                                    "max_wait": config.max_wait_s}).fetchall()
    return [Superseded(r[0], r[1], endpoint, route, lane) for r in rows]


def waiting(conn: psycopg.Connection[Any]) -> int:
    """Lanes with a job queued that no replica holds (the whole spool's)."""
    row = conn.execute("SELECT count(*) FROM (SELECT DISTINCT rkey, lane FROM sidecar_jobs WHERE state = 'pending'"
                       " AND lane IS NOT NULL AND lease_until IS NULL) w").fetchone()
    return int(row[0]) if row else 0
