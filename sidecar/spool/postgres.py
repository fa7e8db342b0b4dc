"""The shared spool: accepted deliveries and their jobs in PostgreSQL, for any number of replicas.

Same policy as the embedded spool (see the package docstring), plus what sharing needs:
- Dedupe holds across replicas: a unique (endpoint, delivery) and INSERT ... ON CONFLICT.
- A job is claimed as a lease (owner, lease_until) with FOR UPDATE SKIP LOCKED; the owner
  renews it while the hook runs. An expired lease may be taken over by another replica.
- Time is the database's (`now()`): replicas' clocks may differ, the database has one.
- A broadcast route becomes one job per live replica that has it (`replica` set: only it may claim it).
- Each replica registers the routes it can run (its table's, by name, and every route it loaded, by
  content) with its heartbeat, and claims only those: during a rollout with two tables, a replica never
  takes a job of a route only the other table has. A job no live replica can run waits; after
  STRANDED_LEASES x lease_s of that it is a dead letter (`route_unknown`).
- Nothing here connects before open(): a replica starts while the database is down and opens later.

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
from . import Accepted, Delivery, JobRow, SpoolUnreachable, pg_lanes, route_spec
from .pg_claim import choose
from .pg_deadlines import Deadlines
from .pg_schema import (
    JOB_COLUMNS,
    NOTIFY_CHANNEL,
    NOW,
    TAKE_SQL,
    Unusable,
    connect_options,
    job_row,
    migrate,
    reason_of,
    redact,
    scrub,
    spec_key,
    url_problem,
)
from .pg_upkeep import Upkeep

DB_ERRORS = (psycopg.Error, TimeoutError)  # PoolTimeout is a psycopg.OperationalError


@dataclass(frozen=True)
class Claimed:
    """A job this replica holds a lease on, with what it needs to run it."""

    row: JobRow
    body: bytes
    claim: int
    taken_from: str | None  # the replica whose expired lease this claim replaced


class Store(Upkeep):
    """The PostgreSQL spool: every query the server, the scheduler and the CLI make."""

    pool: ConnectionPool[psycopg.Connection[Any]]  # from open() on

    def __init__(self, url: str, variable: str, replica: str, lease_s: float, pool_size: int = 4,
                 *, serving: bool = True) -> None:
        """No I/O: open() connects. SpoolUnreachable (naming `variable`, never the URL) only when
        the URL is malformed, the one problem no retry can mend."""
        problem = url_problem(url)
        if problem:
            raise SpoolUnreachable(f"{variable}: {problem}")
        self.url, self.variable, self.replica, self.lease_s = url, variable, replica, lease_s
        self.location = redact(url)
        self.serving, self.pool_size = serving, pool_size
        self._kwargs = connect_options(url, f"webhook-sidecar {replica}")
        self.reclaimed: list[tuple[int, str, str, str, str, int]] = []
        # The routes this replica can run: its table's by name ("endpoint\nroute\n", as the jobs' rkey
        # begins) and every route it loaded by content (spec keys). None: any (the CLI claims nothing).
        self.names: list[str] | None = None
        self.skeys: list[str] = []
        self._claim_keys: list[str] = []
        self.deadlines = Deadlines()

    def open(self) -> None:
        """Connect, create or migrate the schema and, when serving, register this replica (part of
        every broadcast from then on) and take back its previous life's leases; then the pool.

        Unusable (SchemaTooNew) when the database cannot be used now."""
        try:
            with psycopg.connect(self.url, autocommit=True, **self._kwargs) as conn:
                migrate(conn, self.variable, self.location)
                if self.serving:
                    self._heartbeat(conn)
                    self.reclaimed = self._reclaim(conn)
        except psycopg.Error as e:
            raise Unusable(f"{self.variable}: cannot use the spool database {self.location}: "
                           f"{scrub(' '.join(str(e).split()), self.url)}", reason_of(e)) from None
        if hasattr(self, "pool"):
            return  # opened before (a later step of the caller's failed and it tries again)
        # psycopg_pool logs each failed reconnect through `logging`; the spool logs its own events.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        self.pool = ConnectionPool(self.url, min_size=1, max_size=self.pool_size, kwargs=self._kwargs, open=False,
                                   timeout=3, reconnect_timeout=5, name="spool")
        self.pool.open()

    def _reclaim(self, conn: psycopg.Connection[Any]) -> list[tuple[int, str, str, str, str, int]]:
        """Leases under our own name are a previous life's (names are unique among live replicas):
        taken over now rather than after lease_s. It counts an attempt, as any takeover, and as any
        takeover its last attempt makes it a dead letter (see claim())."""
        return [tuple(r) for r in conn.execute(
            "UPDATE sidecar_jobs j SET owner = NULL, lease_until = NULL, attempts = attempts + 1,"
            " state = CASE WHEN attempts >= (spec::json->>'retries')::int THEN 'failed' ELSE state END,"
            " outcome = CASE WHEN attempts >= (spec::json->>'retries')::int THEN 'taken_over'"
            f" ELSE outcome END, ran_on = owner, updated_at = {NOW}"
            " FROM sidecar_deliveries d WHERE d.id = j.delivery_id AND j.owner = %s"
            " AND j.state = 'pending' RETURNING j.id, j.route, d.delivery, j.state, d.endpoint, j.attempts",
            (self.replica,))]

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"INSERT INTO sidecar_replicas (name, seen_at, started_at, routes) VALUES (%s, {NOW}, {NOW}, %s)"
                     f" ON CONFLICT (name) DO UPDATE SET seen_at = {NOW}, routes = EXCLUDED.routes",
                     (self.replica, None if self.names is None else self.names + self.skeys))

    def set_routes(self, names: Sequence[str], skeys: Sequence[str]) -> None:
        """What this replica can run from now on: claims follow at once, the registration with the
        next heartbeat. `names`: the table in use's endpoint and route name, each followed by a newline
        (as the jobs' rkey begins); `skeys`: spec_key() of every route of every table this process loaded."""
        self.names, self.skeys = list(names), list(skeys)
        self._claim_keys = [*self.names, *(n + self.replica for n in self.names)]  # and its broadcast jobs

    @property
    def _runnable(self) -> str:
        """The claim's condition on routes: those this replica has (none before set_routes(): any)."""
        return "" if self.names is None else " AND (rkey = ANY(%s) OR skey = ANY(%s))"

    @property
    def _runnable_args(self) -> tuple[list[str], ...]:
        return () if self.names is None else (self._claim_keys, self.skeys)

    def close(self) -> None:
        self.deadlines.close()
        if hasattr(self, "pool"):
            self.pool.close()

    def connect_listener(self) -> psycopg.Connection[Any]:
        """A connection of its own (autocommit) that LISTENs for new jobs."""
        conn = psycopg.connect(self.url, autocommit=True, **self._kwargs)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def connect_probe(self, timeout_ms: int) -> psycopg.Connection[Any]:
        """A connection of its own (autocommit) for health probes, that gives up on unacknowledged data
        after `timeout_ms` (a blackholed network is an error soon, not after TCP's 15 minutes)."""
        kwargs = {**self._kwargs, "connect_timeout": max(2, timeout_ms // 1000)}
        if "tcp_user_timeout" in kwargs:
            kwargs["tcp_user_timeout"] = timeout_ms
        return psycopg.connect(self.url, autocommit=True, **kwargs)

    # --- accepting --------------------------------------------------------------------
    def accept(self, delivery: Delivery, routes: Sequence[Route], max_queue: int, depth_hint: int = 0,
               deadline: float | None = None) -> Accepted:
        """Commit a delivery and its jobs (a broadcast route: one per live replica that has it), or raise.

        QueueFull above `max_queue` pending jobs in the whole spool: counted in the transaction
        once `depth_hint` (the last known depth) is past half the bound; below that the count,
        which grows with the queue, is skipped. Concurrent accepts may pass the bound by the
        few jobs they add together.
        Unavailable for any database failure, and when `deadline` (monotonic) passes first; also
        when COMMIT's outcome is unknown, and the sender's retry is then absorbed by the dedupe.
        """
        for attempt in (1, 2):
            committing = False
            try:
                wait = 3.0 if deadline is None else max(0.01, min(3.0, deadline - time.monotonic()))
                with self.pool.connection(timeout=wait) as conn, self.deadlines.bound(conn, deadline):
                    accepted = self._accept(conn, delivery, routes, max_queue, depth_hint)
                    committing = True
                    conn.commit()
                    return accepted
            except QueueFull:
                raise
            except DB_ERRORS as e:
                metrics.DATABASE_ERRORS.labels("accept").inc()
                late = deadline is not None and time.monotonic() >= deadline
                # A pooled connection the database dropped (a restart) fails its first statement,
                # before anything was sent to commit: one more try on a fresh connection is safe.
                retry = isinstance(e, psycopg.OperationalError) and not isinstance(e, PoolTimeout)
                if committing or attempt == 2 or not retry or late:
                    why = "commit outcome unknown" if committing else (
                        "commit not done within its deadline" if late else "database unavailable")
                    raise Unavailable(f"spool {why}", retry_after=5) from e
        raise AssertionError("unreachable")

    def _broadcast_to(self, conn: psycopg.Connection[Any], endpoint: str,
                      routes: Sequence[Route]) -> dict[str, list[str]]:
        """For each broadcast route, the live replicas that have it (this one always: it matched it)."""
        replicas = conn.execute(f"SELECT name, routes FROM sidecar_replicas WHERE seen_at >= {NOW} - %s",
                                (self.lease_s,)).fetchall()
        out: dict[str, list[str]] = {}
        for r in routes:
            if r.broadcast:
                keys = {f"{endpoint}\n{r.name}\n", spec_key(route_spec(r))}
                names = {name for name, have in replicas if have is None or keys.intersection(have)}
                out[r.name] = sorted(names | {self.replica})
        return out

    def _accept(self, conn: psycopg.Connection[Any], delivery: Delivery, routes: Sequence[Route],
                max_queue: int, depth_hint: int) -> Accepted:
        to = self._broadcast_to(conn, delivery.endpoint, routes) if any(r.broadcast for r in routes) else {}
        jobs = [(r, name) for r in routes for name in (to[r.name] if r.broadcast else [None])]
        if depth_hint + len(jobs) > max_queue // 2:
            # Near the bound: a redelivery of a queued delivery is a duplicate even when the queue is full.
            row = conn.execute("SELECT id FROM sidecar_deliveries WHERE endpoint = %s AND delivery = %s",
                               (delivery.endpoint, delivery.delivery)).fetchone()
            if row is not None:
                return self._redelivery(conn, row[0])
            pending = conn.execute("SELECT count(*) FROM sidecar_jobs WHERE state = 'pending'").fetchone()
            if pending and pending[0] + len(jobs) > max_queue:
                raise QueueFull()
        rkeys = ["\n".join((delivery.endpoint, r.name, replica or "")) for r, replica in jobs]
        lanes = [delivery.context.lane(r.name) if r.lane else None for r, _ in jobs]
        pg_lanes.lock(conn, [pg_lanes.key(k, lane) for k, lane in zip(rkeys, lanes, strict=True) if lane is not None])
        # The delivery and its jobs in one statement (one round trip); no row back: it is known already.
        ids = [r[0] for r in conn.execute(
            "WITH d AS (INSERT INTO sidecar_deliveries (endpoint, delivery, provider, event, request_id, cwd, body,"
            f" received_at, accepted_by, context) VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}, %s, %s)"
            " ON CONFLICT (endpoint, delivery) DO NOTHING RETURNING id)"
            " INSERT INTO sidecar_jobs (delivery_id, route, spec, rkey, concurrency, replica, updated_at, skey, lane,"
            " lane_since, next_at)"
            f" SELECT d.id, r.route, r.spec, r.rkey, r.concurrency, r.replica, {NOW}, md5(convert_to(r.spec, 'UTF8')),"
            f" r.lane, {NOW}, coalesce({NOW} + r.wait, 0) FROM d,"
            " unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::text[], %s::float8[])"
            " WITH ORDINALITY AS r(route, spec, rkey, concurrency, replica, lane, wait, n) ORDER BY r.n RETURNING id",
            (delivery.endpoint, delivery.delivery, delivery.provider, delivery.event, delivery.request_id,
             delivery.cwd, delivery.body, self.replica, delivery.context.dumps(), [r.name for r, _ in jobs],
             [route_spec(r) for r, _ in jobs], rkeys, [r.concurrency for r, _ in jobs],
             [replica for _, replica in jobs], lanes,
             [r.lane.debounce_s if r.lane and r.lane.mode == "debounce" else None for r, _ in jobs]))]
        if not ids:
            row = conn.execute("SELECT id FROM sidecar_deliveries WHERE endpoint = %s AND delivery = %s",
                               (delivery.endpoint, delivery.delivery)).fetchone()
            return self._redelivery(conn, row[0]) if row else Accepted("duplicate", (), ())
        gone = [s for job_id, (r, _), rkey, lane in zip(ids, jobs, rkeys, lanes, strict=True)
                if r.lane is not None and lane is not None and r.lane.supersedes
                for s in pg_lanes.supersede(conn, job_id, rkey, lane, r.lane, delivery.endpoint, r.name)]
        return Accepted("accepted", tuple(ids), tuple(dict.fromkeys(r.name for r in routes)), superseded=tuple(gone))

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
        replica holds right now is skipped this round (no waiting, no deadlock). Only jobs of
        routes this replica can run (set_routes()) are claimed.
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
                f" AND (replica IS NULL OR replica = %s) AND rkey <> ALL(%s){self._runnable}{pg_lanes.HEAD}"
                " ORDER BY next_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, now, self.replica, full, *self._runnable_args, limit * 2)).fetchall()
            chosen = choose(conn, candidates, limit, limited, now)
            claimed: list[Claimed] = []
            if chosen:
                rows = conn.execute(f"{TAKE_SQL} SELECT {JOB_COLUMNS}, j.claim, d.body FROM j JOIN sidecar_deliveries d"
                                    " ON d.id = j.delivery_id ORDER BY j.next_at, j.id",
                                    (list(chosen), self.replica, now + self.lease_s)).fetchall()
                claimed = [Claimed(job_row(r), bytes(r[-1]), r[-2], chosen[r[0]]) for r in rows]
            due = None
            if len(chosen) < limit:
                due = conn.execute(
                    "SELECT min(next_at) FROM sidecar_jobs WHERE state = 'pending' AND next_at > %s"
                    f" AND (replica IS NULL OR replica = %s){self._runnable}",
                    (now, self.replica, *self._runnable_args)).fetchone()
            conn.commit()
        return claimed, (due[0] - now + time.time()) if due and due[0] is not None else None

    def renew(self, held: dict[int, int], heartbeat: bool = True) -> set[int]:
        """Extend the leases of the jobs this replica holds ({id: claim}); the ids still ours.

        Also, with `heartbeat`, what keeps this replica live (and in every broadcast), with the
        routes it has (set_routes())."""
        with self.pool.connection() as conn:
            if heartbeat:
                self._heartbeat(conn)
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

    def finish_many(self, items: Sequence[tuple[int, int, str, int, float, int | None, str, str]]) -> list[bool]:
        """Record attempts (job, claim, state, attempts, next_at, exit code, outcome, output tail) in one
        transaction, clearing their leases; per item False when the lease was no longer ours (taken over).

        A delivery whose jobs are all done drops its body (the id stays for dedupe). Not durable
        in the fsync sense (as with sqlite): a record lost in a database crash leaves the job
        pending, and it runs again, which at-least-once allows."""
        ours: list[bool] = []
        with self.pool.connection() as conn:
            conn.execute("SET LOCAL synchronous_commit = off")
            for job_id, claim, state, attempts, next_at, exit_code, outcome, output_tail in items:
                row = conn.execute(
                    "UPDATE sidecar_jobs SET state = %s, attempts = %s, next_at = %s, exit_code = %s, outcome = %s,"
                    f" output_tail = %s, updated_at = {NOW}, owner = NULL, lease_until = NULL, ran_on = %s"
                    " WHERE id = %s AND claim = %s AND owner = %s RETURNING delivery_id",
                    (state, attempts, next_at, exit_code, outcome, output_tail, self.replica, job_id, claim,
                     self.replica)).fetchone()
                ours.append(row is not None)
                if row is not None and state == "done" and not self.keep_bodies_s:
                    # The delivery's row lock orders two jobs of one delivery finishing at once: the later
                    # sees both.
                    conn.execute("SELECT 1 FROM sidecar_deliveries WHERE id = %s FOR UPDATE", (row[0],))
                    conn.execute("UPDATE sidecar_deliveries SET body = '' WHERE id = %s AND NOT EXISTS (SELECT 1 FROM"
                                 " sidecar_jobs WHERE delivery_id = %s AND state NOT IN ('done', 'superseded'))",
                                 (row[0], row[0]))
            conn.commit()
        return ours

    def notify(self) -> None:
        """Wake every replica's dispatcher. Not inside an accept: NOTIFY takes a database-wide
        lock from its commit's start to its end, which would serialize the accepts' commits
        (no more group commit); the workers send one for many accepts, from their own thread."""
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            conn.commit()
