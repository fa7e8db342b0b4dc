"""The shared spool: accepted deliveries and their jobs in PostgreSQL, for any number of replicas.

Same policy as the embedded spool (see the package docstring), plus what sharing needs:
- Dedupe holds across replicas: a unique (endpoint, delivery) and INSERT ... ON CONFLICT.
- A job is claimed as a lease (owner, lease_until) with FOR UPDATE SKIP LOCKED; the owner
  renews it while the hook runs. An expired lease may be taken over by another replica.
- Time is the database's (`now()`): replicas' clocks may differ, the database has one.
- A broadcast route becomes one job per live replica (`replica` set: only it may claim it).

Only this module and its schema (pg_schema.py) import psycopg, and only a config with
`spool_url_env` imports them, so sqlite users never load the driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import metrics
from ..config import Route
from ..errors import QueueFull, Unavailable
from . import Accepted, Delivery, JobRow, SpoolUnreachable, route_from_spec, route_spec
from .pg_schema import migrate, redact, scrub

NOW = "EXTRACT(EPOCH FROM now())::float8"
NOTIFY_CHANNEL = "sidecar_jobs"
GONE_LEASES = 10  # a replica not seen for this many lease_s is gone

JOB_COLUMNS = """j.id, j.state, j.attempts, j.next_at, j.updated_at, j.spec, d.endpoint, d.delivery, d.provider,
    d.event, d.request_id, d.cwd, d.received_at, j.exit_code, j.outcome, j.output_tail,
    COALESCE(j.owner, j.ran_on, j.replica)"""
DB_ERRORS = (psycopg.Error, TimeoutError)  # PoolTimeout is a psycopg.OperationalError


def _job_row(r: Sequence[Any]) -> JobRow:
    return JobRow(id=r[0], state=r[1], attempts=r[2], next_at=r[3], updated_at=r[4], route=route_from_spec(r[5]),
                  endpoint=r[6], delivery=r[7], provider=r[8], event=r[9], request_id=r[10], cwd=r[11],
                  received_at=r[12], exit_code=r[13], outcome=r[14], output_tail=r[15], replica=r[16])


@dataclass(frozen=True)
class Claimed:
    """A job this replica holds a lease on, with what it needs to run it."""

    row: JobRow
    body: bytes
    claim: int
    taken_from: str | None  # the replica whose expired lease this claim replaced


class Store:
    """The PostgreSQL spool: every query the server, the scheduler and the CLI make."""

    def __init__(self, url: str, variable: str, replica: str, lease_s: float, pool_size: int = 4,
                 *, serving: bool = True) -> None:
        """Connect, create or migrate the schema (under an advisory lock) and, when serving,
        register this replica, so it is part of every broadcast from its first answer on.

        SpoolUnreachable names `variable` (never the URL) when the database cannot be used."""
        self.url, self.variable, self.replica, self.lease_s = url, variable, replica, lease_s
        self.location = redact(url)
        self._kwargs = {"connect_timeout": 5, "application_name": f"webhook-sidecar {replica}"[:63]}
        try:
            with psycopg.connect(url, autocommit=True, **self._kwargs) as conn:
                migrate(conn, variable, self.location)
                self.reclaimed: list[tuple[int, str, str, str, str, int]] = []
                if serving:
                    conn.execute(f"INSERT INTO sidecar_replicas (name, seen_at, started_at) VALUES (%s, {NOW}, {NOW})"
                                 f" ON CONFLICT (name) DO UPDATE SET seen_at = {NOW}", (replica,))
                    # Leases under our own name are a previous life's (names are unique among live replicas):
                    # take them over now rather than after lease_s. It counts an attempt, as any takeover.
                    # As any takeover, its last attempt makes it a dead letter (see claim()).
                    self.reclaimed = [tuple(r) for r in conn.execute(  # type: ignore[misc]
                        "UPDATE sidecar_jobs j SET owner = NULL, lease_until = NULL, attempts = attempts + 1,"
                        " state = CASE WHEN attempts >= (spec::json->>'retries')::int THEN 'failed' ELSE state END,"
                        " outcome = CASE WHEN attempts >= (spec::json->>'retries')::int THEN 'taken_over'"
                        f" ELSE outcome END, ran_on = owner, updated_at = {NOW}"
                        " FROM sidecar_deliveries d WHERE d.id = j.delivery_id AND j.owner = %s"
                        " AND j.state = 'pending' RETURNING j.id, j.route, d.delivery, j.state, d.endpoint, j.attempts",
                        (replica,))]
        except psycopg.Error as e:
            raise SpoolUnreachable(f"{variable}: cannot use the spool database {self.location}: "
                                   f"{scrub(' '.join(str(e).split()), url)}") from None
        # psycopg_pool logs each failed reconnect through `logging`; the spool logs its own events.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs=self._kwargs, open=False, timeout=3,
            reconnect_timeout=5, name="spool")
        self.pool.open()

    def close(self) -> None:
        self.pool.close()

    def connect_listener(self) -> psycopg.Connection[Any]:
        """A connection of its own (autocommit) that LISTENs for new jobs."""
        conn = psycopg.connect(self.url, autocommit=True, **self._kwargs)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    # --- accepting --------------------------------------------------------------------
    def accept(self, delivery: Delivery, routes: Sequence[Route], max_queue: int, depth_hint: int = 0) -> Accepted:
        """Commit a delivery and its jobs (a broadcast route: one per live replica), or raise.

        QueueFull above `max_queue` pending jobs in the whole spool: counted in the transaction
        once `depth_hint` (the last known depth) is past half the bound; below that the count,
        which grows with the queue, is skipped. Concurrent accepts may pass the bound by the
        few jobs they add together.
        Unavailable for any database failure; also when COMMIT's outcome is unknown,
        and the sender's retry is then absorbed by the dedupe.
        """
        for attempt in (1, 2):
            committing = False
            try:
                with self.pool.connection() as conn:
                    accepted = self._accept(conn, delivery, routes, max_queue, depth_hint)
                    committing = True
                    conn.commit()
                    return accepted
            except QueueFull:
                raise
            except DB_ERRORS as e:
                metrics.DATABASE_ERRORS.labels("accept").inc()
                # A pooled connection the database dropped (a restart) fails its first statement,
                # before anything was sent to commit: one more try on a fresh connection is safe.
                retry = isinstance(e, psycopg.OperationalError) and not isinstance(e, PoolTimeout)
                if committing or attempt == 2 or not retry:
                    why = "commit outcome unknown" if committing else "database unavailable"
                    raise Unavailable(f"spool {why}", retry_after=5) from e
        raise AssertionError("unreachable")

    def _accept(self, conn: psycopg.Connection[Any], delivery: Delivery, routes: Sequence[Route],
                max_queue: int, depth_hint: int) -> Accepted:
        live = [self.replica]
        if any(r.broadcast for r in routes):
            live = [r[0] for r in conn.execute(
                f"SELECT name FROM sidecar_replicas WHERE seen_at >= {NOW} - %s OR name = %s ORDER BY name",
                (self.lease_s, self.replica))]
        jobs = [(r, name if r.broadcast else None) for r in routes for name in (live if r.broadcast else [None])]
        if depth_hint + len(jobs) > max_queue // 2:
            # Near the bound: a redelivery of a queued delivery is a duplicate even when the queue is full.
            row = conn.execute("SELECT id FROM sidecar_deliveries WHERE endpoint = %s AND delivery = %s",
                               (delivery.endpoint, delivery.delivery)).fetchone()
            if row is not None:
                return self._redelivery(conn, row[0])
            pending = conn.execute("SELECT count(*) FROM sidecar_jobs WHERE state = 'pending'").fetchone()
            if pending and pending[0] + len(jobs) > max_queue:
                raise QueueFull()
        # The delivery and its jobs in one statement (one round trip); no row back: it is known already.
        ids = [r[0] for r in conn.execute(
            "WITH d AS (INSERT INTO sidecar_deliveries (endpoint, delivery, provider, event, request_id, cwd, body,"
            f" received_at, accepted_by) VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}, %s)"
            " ON CONFLICT (endpoint, delivery) DO NOTHING RETURNING id)"
            " INSERT INTO sidecar_jobs (delivery_id, route, spec, rkey, concurrency, replica, updated_at)"
            f" SELECT d.id, r.route, r.spec, r.rkey, r.concurrency, r.replica, {NOW} FROM d,"
            " unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[]) WITH ORDINALITY"
            " AS r(route, spec, rkey, concurrency, replica, n) ORDER BY r.n RETURNING id",
            (delivery.endpoint, delivery.delivery, delivery.provider, delivery.event, delivery.request_id,
             delivery.cwd, delivery.body, self.replica, [r.name for r, _ in jobs], [route_spec(r) for r, _ in jobs],
             ["\n".join((delivery.endpoint, r.name, replica or "")) for r, replica in jobs],
             [r.concurrency for r, _ in jobs], [replica for _, replica in jobs]))]
        if not ids:
            row = conn.execute("SELECT id FROM sidecar_deliveries WHERE endpoint = %s AND delivery = %s",
                               (delivery.endpoint, delivery.delivery)).fetchone()
            return self._redelivery(conn, row[0]) if row else Accepted("duplicate", (), ())
        return Accepted("accepted", tuple(ids), tuple(dict.fromkeys(r.name for r in routes)))

    def _redelivery(self, conn: psycopg.Connection[Any], delivery_id: int) -> Accepted:
        failed = conn.execute(
            f"UPDATE sidecar_jobs SET state = 'pending', attempts = 0, next_at = 0, updated_at = {NOW}"
            " WHERE delivery_id = %s AND state = 'failed' RETURNING id, route", (delivery_id,)).fetchall()
        if not failed:
            return Accepted("duplicate", (), ())
        return Accepted("accepted", tuple(j[0] for j in failed), tuple(dict.fromkeys(j[1] for j in failed)))

    # --- claiming and leases ------------------------------------------------------------
    def claim(self, limit: int, limited: int) -> tuple[list[Claimed], float | None]:
        """Lease up to `limit` due jobs this replica may run, at most `limited` of them of routes with
        a `concurrency` limit; and when the next one falls due.

        `concurrency` is counted over unexpired leases of the route in the whole cluster
        (per replica for broadcast routes), under a per-route advisory lock taken for the
        transaction, so two replicas never both see a free slot. A route whose lock another
        replica holds right now is skipped this round (no waiting, no deadlock).
        """
        with self.pool.connection() as conn:
            # The clock, and the routes at their limit (skipped below, so they cannot starve the others).
            now, full = conn.execute(
                f"SELECT {NOW}, array(SELECT rkey FROM sidecar_jobs WHERE lease_until IS NOT NULL"
                f" AND lease_until >= {NOW} AND concurrency IS NOT NULL GROUP BY rkey"
                " HAVING count(*) >= min(concurrency))").fetchone() or (0, [])
            candidates = conn.execute(
                "SELECT id, rkey, concurrency, owner, lease_until FROM sidecar_jobs WHERE state = 'pending'"
                " AND next_at <= %s AND (lease_until IS NULL OR lease_until < %s)"
                " AND (replica IS NULL OR replica = %s) AND rkey <> ALL(%s)"
                " ORDER BY next_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, now, self.replica, full, limit * 2)).fetchall()
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
                        running = conn.execute(
                            "SELECT count(*) FROM sidecar_jobs WHERE rkey = %s AND lease_until IS NOT NULL"
                            " AND lease_until >= %s",
                            (rkey, now)).fetchone()
                        room[rkey] = concurrency - running[0] if locked and locked[0] and running else 0
                    if room[rkey] <= 0:
                        continue
                    room[rkey] -= 1
                    limited -= 1
                chosen[job_id] = owner if lease_until is not None else None
            claimed: list[Claimed] = []
            if chosen:
                # A takeover counts the dead run as an attempt; if that was its last, the job is a dead
                # letter here and now (state 'failed', outcome 'taken_over'), so a hook that kills its
                # replica every time cannot go round the cluster forever.
                rows = conn.execute(
                    "WITH x AS (SELECT id, lease_until IS NOT NULL AS taken, lease_until IS NOT NULL AND"
                    " attempts >= (spec::json->>'retries')::int AS dead FROM sidecar_jobs WHERE id = ANY(%s)),"
                    " j AS (UPDATE sidecar_jobs s SET claim = claim + 1, attempts = attempts + x.taken::int,"
                    " state = CASE WHEN x.dead THEN 'failed' ELSE state END,"
                    " outcome = CASE WHEN x.dead THEN 'taken_over' ELSE outcome END,"
                    " ran_on = CASE WHEN x.dead THEN owner ELSE ran_on END,"
                    f" updated_at = CASE WHEN x.dead THEN {NOW} ELSE updated_at END,"
                    " owner = CASE WHEN x.dead THEN NULL ELSE %s END,"
                    " lease_until = CASE WHEN x.dead THEN NULL ELSE %s::float8 END"
                    f" FROM x WHERE s.id = x.id RETURNING s.*) SELECT {JOB_COLUMNS}, j.claim, d.body FROM j"
                    " JOIN sidecar_deliveries d ON d.id = j.delivery_id ORDER BY j.next_at, j.id",
                    (list(chosen), self.replica, now + self.lease_s)).fetchall()
                claimed = [Claimed(_job_row(r), bytes(r[-1]), r[-2], chosen[r[0]]) for r in rows]
            due = None
            if len(chosen) < limit:
                due = conn.execute(
                    "SELECT min(next_at) FROM sidecar_jobs WHERE state = 'pending' AND next_at > %s"
                    " AND (replica IS NULL OR replica = %s)", (now, self.replica)).fetchone()
            conn.commit()
        return claimed, (due[0] - now + time.time()) if due and due[0] is not None else None

    def renew(self, held: dict[int, int], heartbeat: bool = True) -> set[int]:
        """Extend the leases of the jobs this replica holds ({id: claim}); the ids still ours.

        Also, with `heartbeat`, what keeps this replica live (and in every broadcast)."""
        with self.pool.connection() as conn:
            if heartbeat:
                conn.execute(f"INSERT INTO sidecar_replicas (name, seen_at, started_at) VALUES (%s, {NOW}, {NOW})"
                             f" ON CONFLICT (name) DO UPDATE SET seen_at = {NOW}", (self.replica,))
            else:
                conn.execute("SELECT 1")  # still a round trip: health is this call's outcome
            kept: set[int] = set()
            if held:
                kept = {r[0] for r in conn.execute(
                    f"UPDATE sidecar_jobs SET lease_until = {NOW} + %s FROM unnest(%s::bigint[], %s::int[]) AS h(id, c)"
                    " WHERE sidecar_jobs.id = h.id AND sidecar_jobs.claim = h.c AND owner = %s AND state = 'pending'"
                    " RETURNING sidecar_jobs.id", (self.lease_s, list(held), list(held.values()), self.replica))}
            conn.commit()
        return kept

    def release(self, job_id: int, claim: int, next_at: float | None = None) -> None:
        """Hand a job back (shutdown, fencing, our own crash): not an attempt; runnable by anyone."""
        with self.pool.connection() as conn:
            conn.execute("UPDATE sidecar_jobs SET owner = NULL, lease_until = NULL, next_at = COALESCE(%s, next_at)"
                         " WHERE id = %s AND claim = %s AND state = 'pending'", (next_at, job_id, claim))
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            conn.commit()

    def hand_back(self) -> int:
        """At shutdown: every lease this replica still holds is cleared; this replica stops being live."""
        with self.pool.connection() as conn:
            n = conn.execute("UPDATE sidecar_jobs SET owner = NULL, lease_until = NULL"
                             " WHERE owner = %s AND state = 'pending'", (self.replica,)).rowcount
            self.leave(conn)
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            conn.commit()
        return n

    def leave(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """No longer live (no new broadcast jobs for it); gone after 10 x lease_s unless it returns."""
        def op(c: psycopg.Connection[Any]) -> None:
            c.execute(f"UPDATE sidecar_replicas SET seen_at = LEAST(seen_at, {NOW} - %s) WHERE name = %s",
                      (self.lease_s, self.replica))
        if conn is not None:
            op(conn)
            return
        with self.pool.connection() as c:
            op(c)
            c.commit()

    def finish(self, job_id: int, claim: int, state: str, attempts: int, next_at: float, exit_code: int | None,
               outcome: str, output_tail: str, concurrency: int | None) -> bool:
        """Record an attempt and clear the lease; False when the lease was no longer ours (taken over).

        A delivery whose jobs are all done drops its body (the id stays for dedupe). Not durable
        in the fsync sense (as with sqlite): a record lost in a database crash leaves the job
        pending, and it runs again, which at-least-once allows."""
        with self.pool.connection() as conn:
            conn.execute("SET LOCAL synchronous_commit = off")
            row = conn.execute(
                "UPDATE sidecar_jobs SET state = %s, attempts = %s, next_at = %s, exit_code = %s, outcome = %s,"
                f" output_tail = %s, updated_at = {NOW}, owner = NULL, lease_until = NULL, ran_on = %s"
                " WHERE id = %s AND claim = %s AND owner = %s RETURNING delivery_id",
                (state, attempts, next_at, exit_code, outcome, output_tail, self.replica, job_id, claim,
                 self.replica)).fetchone()
            if row is None:
                conn.rollback()
                return False
            if state == "done":
                # The delivery's row lock orders two jobs of one delivery finishing at once: the later sees both.
                conn.execute("SELECT 1 FROM sidecar_deliveries WHERE id = %s FOR UPDATE", (row[0],))
                conn.execute("UPDATE sidecar_deliveries SET body = '' WHERE id = %s AND NOT EXISTS (SELECT 1 FROM"
                             " sidecar_jobs WHERE delivery_id = %s AND state <> 'done')", (row[0], row[0]))
            conn.commit()
        return True

    # --- housekeeping -------------------------------------------------------------------
    def stats(self) -> tuple[int, int]:
        """(pending jobs in the whole spool, live replicas)."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT (SELECT count(*) FROM sidecar_jobs WHERE state = 'pending'),"
                               f" (SELECT count(*) FROM sidecar_replicas WHERE seen_at >= {NOW} - %s)",
                               (self.lease_s,)).fetchone()
            conn.commit()
        return (row[0], row[1]) if row else (0, 0)

    def drop_gone(self) -> list[tuple[int, str, str, str]]:
        """Pending broadcast jobs of replicas not seen for GONE_LEASES x lease_s: deleted, with the replicas.

        In Kubernetes a restarted pod has a new name: without this they would pile up forever."""
        with self.pool.connection() as conn:
            gone = [r[0] for r in conn.execute(
                f"DELETE FROM sidecar_replicas WHERE seen_at < {NOW} - %s RETURNING name",
                (GONE_LEASES * self.lease_s,))]
            dropped: list[tuple[int, str, str, str]] = []
            if gone:
                dropped = [tuple(r) for r in conn.execute(  # type: ignore[misc]
                    "DELETE FROM sidecar_jobs j USING sidecar_deliveries d WHERE d.id = j.delivery_id"
                    " AND j.replica = ANY(%s) AND j.state = 'pending' RETURNING j.id, j.route, j.replica, d.delivery",
                    (gone,))]
            conn.commit()
        return dropped

    def notify(self) -> None:
        """Wake every replica's dispatcher. Not inside an accept: NOTIFY takes a database-wide
        lock from its commit's start to its end, which would serialize the accepts' commits
        (no more group commit); the workers send one for many accepts, from their own thread."""
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            conn.commit()

    def analyze(self) -> None:
        """Fresh planner statistics: a queue grows from empty to thousands within seconds, long before
        autovacuum looks, and with an empty table's statistics the claim sorts the whole queue."""
        with self.pool.connection() as conn:
            conn.execute("ANALYZE sidecar_jobs")
            conn.commit()

    # --- reads and the CLI ---------------------------------------------------------------
    def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()  # type: ignore[arg-type]
            conn.commit()
        return rows

    def job(self, job_id: int) -> JobRow | None:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM sidecar_jobs j JOIN sidecar_deliveries d"
                          " ON d.id = j.delivery_id WHERE j.id = %s", (job_id,))
        return _job_row(rows[0]) if rows else None

    def body(self, job_id: int) -> bytes:
        rows = self._read("SELECT d.body FROM sidecar_jobs j JOIN sidecar_deliveries d ON d.id = j.delivery_id"
                          " WHERE j.id = %s", (job_id,))
        return bytes(rows[0][0]) if rows else b""

    def jobs(self, states: Sequence[str] = ("pending", "done", "failed"), limit: int = 1000) -> list[JobRow]:
        return [_job_row(r) for r in self._read(
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

    def purge(self, older_than_s: float, states: Sequence[str] = ("done", "failed")) -> int:
        """Delete finished jobs last updated more than `older_than_s` ago, and deliveries left without jobs."""
        with self.pool.connection() as conn:
            n = conn.execute(f"DELETE FROM sidecar_jobs WHERE state = ANY(%s) AND updated_at < {NOW} - %s",
                             (list(states), older_than_s)).rowcount
            if n:
                conn.execute("DELETE FROM sidecar_deliveries d WHERE NOT EXISTS"
                             " (SELECT 1 FROM sidecar_jobs j WHERE j.delivery_id = d.id)")
            conn.commit()
        return n
