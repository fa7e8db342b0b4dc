"""The claim's choice among due jobs (postgres.py's claim): route limits counted cluster-wide under a
per-route advisory lock; lanes are in the candidates' condition (pg_lanes.HEAD)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


def choose(conn: psycopg.Connection[Any], candidates: Sequence[tuple[Any, ...]], limit: int, limited: int,
           now: float) -> dict[int, str | None]:
    """Of the due candidates, those to claim ({id: the owner of an expired lease, or None}): at most
    `limit`, at most `limited` of routes with a concurrency limit, each within its route's free slots."""
    room: dict[str, int] = {}
    chosen: dict[int, str | None] = {}
    for job_id, rkey, concurrency, owner, lease_until in candidates:
        if len(chosen) >= limit:
            break
        if concurrency is not None:
            if limited <= 0:
                continue
            if rkey not in room:
                locked = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (rkey,)).fetchone()
                running = conn.execute("SELECT count(*) FROM sidecar_jobs WHERE rkey = %s AND lease_until IS NOT"
                                       " NULL AND lease_until >= %s", (rkey, now)).fetchone()
                room[rkey] = concurrency - running[0] if locked and locked[0] and running else 0
            if room[rkey] <= 0:
                continue
            room[rkey] -= 1
            limited -= 1
        chosen[job_id] = owner if lease_until is not None else None
    return chosen
