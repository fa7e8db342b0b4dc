"""The shared spool's schema, its versions and migrations, and how its URL is shown (never the password).

Versioned in sidecar_schema_version. Each replica runs the migrations it is missing at start, under a
session advisory lock, so replicas starting together never race; a database migrated by a newer
release is refused (its code may rely on what this one does not know).

Additions that older releases tolerate (a nullable column, an index) are made by every release that
needs them, when missing, without a version bump: a rollout runs old and new replicas side by side on
one database, and a version bump would make the old ones refuse it. SCHEMA_VERSION moves only for a
change older code cannot work with.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import Context, JobRow, SpoolUnreachable, route_from_spec

SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x5EB400C  # pg_advisory_lock key: one replica migrates at a time
NOW = "EXTRACT(EPOCH FROM now())::float8"  # the database's clock: replicas' clocks may differ
NOTIFY_CHANNEL = "sidecar_jobs"

JOB_COLUMNS = """j.id, j.state, j.attempts, j.next_at, j.updated_at, j.spec, d.endpoint, d.delivery, d.provider,
    d.event, d.request_id, d.cwd, d.received_at, j.exit_code, j.outcome, j.output_tail,
    COALESCE(j.owner, j.ran_on, j.replica), d.context"""


def job_row(r: Sequence[Any]) -> JobRow:
    """A JobRow from the JOB_COLUMNS of a row."""
    return JobRow(id=r[0], state=r[1], attempts=r[2], next_at=r[3], updated_at=r[4], route=route_from_spec(r[5]),
                  endpoint=r[6], delivery=r[7], provider=r[8], event=r[9], request_id=r[10], cwd=r[11],
                  received_at=r[12], exit_code=r[13], outcome=r[14], output_tail=r[15], replica=r[16],
                  context=Context.loads(r[17]), spec=r[5])

MIGRATIONS = {1: """
CREATE TABLE sidecar_deliveries (
    id          bigserial PRIMARY KEY,
    endpoint    text NOT NULL,
    delivery    text NOT NULL,
    provider    text NOT NULL,
    event       text NOT NULL,
    request_id  text NOT NULL,
    cwd         text NOT NULL,
    body        bytea NOT NULL,
    received_at float8 NOT NULL,
    accepted_by text NOT NULL,
    UNIQUE (endpoint, delivery)
);
CREATE TABLE sidecar_jobs (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES sidecar_deliveries(id) ON DELETE CASCADE,
    route       text NOT NULL,
    spec        text NOT NULL,
    rkey        text NOT NULL,       -- what `concurrency` counts: endpoint, route (and replica when broadcast)
    concurrency int,
    replica     text,                -- broadcast: the only replica that may run it
    state       text NOT NULL DEFAULT 'pending',
    attempts    int NOT NULL DEFAULT 0,
    next_at     float8 NOT NULL DEFAULT 0,
    updated_at  float8 NOT NULL,
    exit_code   int,
    outcome     text,
    output_tail text,
    owner       text,                -- the replica holding the lease
    lease_until float8,              -- NULL: not claimed
    claim       int NOT NULL DEFAULT 0,  -- bumped by every claim: fences a stale owner's writes
    ran_on      text                 -- the replica that ran the last recorded attempt
);
CREATE INDEX sidecar_jobs_due ON sidecar_jobs (next_at, id) WHERE state = 'pending';
CREATE INDEX sidecar_jobs_leased ON sidecar_jobs (rkey) WHERE lease_until IS NOT NULL;
CREATE INDEX sidecar_jobs_state ON sidecar_jobs (state, updated_at);
CREATE INDEX sidecar_jobs_delivery ON sidecar_jobs (delivery_id);
CREATE TABLE sidecar_replicas (
    name       text PRIMARY KEY,
    seen_at    float8 NOT NULL,
    started_at float8 NOT NULL
);
"""}

# (what must exist, the statement that adds it when it does not). Each is additive and older releases
# ignore it: a job's route by content (what a replica must have loaded to run it as stored), when it was
# first found runnable by no live replica, and each replica's route set (NULL: an older release, which
# runs anything).
ADDITIONS = (
    ("sidecar_jobs.skey", "ALTER TABLE sidecar_jobs ADD COLUMN skey text"),
    ("sidecar_jobs.stranded_since", "ALTER TABLE sidecar_jobs ADD COLUMN stranded_since float8"),
    ("sidecar_replicas.routes", "ALTER TABLE sidecar_replicas ADD COLUMN routes text[]"),
    ("sidecar_deliveries.context", "ALTER TABLE sidecar_deliveries ADD COLUMN context text NOT NULL DEFAULT ''"),
    ("sidecar_jobs.replay_of", "ALTER TABLE sidecar_jobs ADD COLUMN replay_of bigint"),
    # A lane job's lane (its key's value; NULL: no lane) and when the oldest job it superseded was accepted.
    ("sidecar_jobs.lane", "ALTER TABLE sidecar_jobs ADD COLUMN lane text; CREATE INDEX IF NOT EXISTS sidecar_jobs_lane"
                          " ON sidecar_jobs (rkey, lane, id) WHERE state = 'pending' AND lane IS NOT NULL"),
    ("sidecar_jobs.lane_since", "ALTER TABLE sidecar_jobs ADD COLUMN lane_since float8"),
)


class Unusable(SpoolUnreachable):
    """The database cannot be used now. `reason` is short and safe to show anyone (/readyz): no host,
    user or password; the message (for logs) names the variable and the redacted URL."""

    def __init__(self, message: str, reason: str = "spool database unreachable") -> None:
        super().__init__(message)
        self.reason = reason


class SchemaTooNew(Unusable):
    """The database was migrated by a newer release: no retry helps, run that release."""


def reason_of(error: psycopg.Error) -> str:
    """What /readyz may say about a failed connection (libpq's text names the host and the user): by
    SQLSTATE once connected, by libpq's words while connecting (it has no SQLSTATE then)."""
    state, text = error.sqlstate or "", str(error)
    if state.startswith("28") or any(w in text for w in ("authentication failed", "no pg_hba.conf entry",
                                                         "no password supplied")):
        return "spool database refused the credentials"
    if state == "3D000" or ("database" in text and "does not exist" in text):
        return "spool database does not exist"
    if state.startswith("42"):
        return "spool database refused this role the schema"
    return "spool database unreachable"


def migrate(conn: psycopg.Connection[Any], variable: str, location: str) -> None:
    """Create or migrate the schema to SCHEMA_VERSION; one replica at a time (a session advisory lock).

    SchemaTooNew when the database holds a newer schema than this code knows."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS sidecar_schema_version (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM sidecar_schema_version").fetchone()
        current = row[0] if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{variable}: the spool database {location} has schema version {current}, newer than"
                f" this sidecar knows ({SCHEMA_VERSION}): a newer release migrated it; run that release",
                "spool database schema is newer than this release")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with conn.transaction():
                conn.execute(MIGRATIONS[version])
                conn.execute("INSERT INTO sidecar_schema_version (version) VALUES (%s)", (version,))
        _add_missing(conn)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _add_missing(conn: psycopg.Connection[Any]) -> None:
    """Make the ADDITIONS that are missing. Looked up first: an ALTER of a present column would still
    take the table's exclusive lock, at every replica's start, behind the claims in flight."""
    missing = [(name, statement) for name, statement in ADDITIONS if not _present(conn, name)]
    for name, statement in missing:
        conn.execute(statement)
        if name == "sidecar_jobs.skey":  # queued jobs of an older release get theirs
            conn.execute(f"UPDATE sidecar_jobs SET skey = {SPEC_KEY} WHERE state = 'pending'")


def _present(conn: psycopg.Connection[Any], name: str) -> bool:
    table, _, column = name.partition(".")
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema ="
                       " current_schema() AND table_name = %s AND column_name = %s)", (table, column)).fetchone()
    return bool(row and row[0])


# A job's route by content: its spec's MD5 (of the UTF-8 bytes, whatever the database's encoding), the
# same as spec_key() computes in Python for the routes a replica has loaded.
SPEC_KEY = "md5(convert_to(spec, 'UTF8'))"


def spec_key(spec: str) -> str:
    return hashlib.md5(spec.encode(), usedforsecurity=False).hexdigest()


def connect_options(url: str, application_name: str, *, connect_timeout: int = 5,
                    user_timeout_ms: int = 5000) -> dict[str, Any]:
    """libpq options for every connection, unless the URL sets them: a bound on connecting, and on data
    the network no longer acknowledges (a partition that drops packets is otherwise noticed only after
    TCP's retransmissions give up, some 15 minutes). Keepalives find an idle connection's peer gone."""
    options: dict[str, Any] = {"connect_timeout": connect_timeout, "application_name": application_name[:63],
                               "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                               "keepalives_count": 2, "tcp_user_timeout": user_timeout_ms}
    given = conninfo_to_dict(url)
    return {k: v for k, v in options.items() if k not in given}


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a libpq URL or key=value string, or None. Never quotes it (a password)."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.Error:
        return "not a libpq URL (postgresql://user:password@host:port/dbname) nor a key=value string"
    if any(not p.strip().isdigit() for p in str(d.get("port") or "5432").split(",")):
        return "its port is not a number"
    return None


def redact(url: str) -> str:
    """The URL for logs: user, host, port and database, never the password."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    host = d.get("host") or d.get("hostaddr") or "(PGHOST)"
    user, port = d.get("user"), d.get("port")
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{d.get('dbname', '')}"


def scrub(text: str, url: str) -> str:
    """An error message with the URL and its password taken out (libpq may quote the conninfo)."""
    secrets = [url]
    m = re.search(r"://[^:/@]*:([^@/]*)@", url) or re.search(r"password\s*=\s*'?([^'\s]+)", url)
    if m and m.group(1):
        secrets.append(m.group(1))
    for s in secrets:
        text = text.replace(s, "***")
    return text


# Claim the chosen jobs (ids, owner, lease until): a takeover counts the dead run as an attempt; if that
# was its last, the job is a dead letter here and now (state 'failed', outcome 'taken_over'), so a hook
# that kills its replica every time cannot go round the cluster forever. Leaves the rows in `j`.
TAKE_SQL = (
    "WITH x AS (SELECT id, lease_until IS NOT NULL AS taken, lease_until IS NOT NULL AND"
    " attempts >= (spec::json->>'retries')::int AS dead FROM sidecar_jobs WHERE id = ANY(%s)),"
    " j AS (UPDATE sidecar_jobs s SET claim = claim + 1, attempts = attempts + x.taken::int,"
    " stranded_since = NULL,"
    " state = CASE WHEN x.dead THEN 'failed' ELSE state END,"
    " outcome = CASE WHEN x.dead THEN 'taken_over' ELSE outcome END,"
    " ran_on = CASE WHEN x.dead THEN owner ELSE ran_on END,"
    f" updated_at = CASE WHEN x.dead THEN {NOW} ELSE updated_at END,"
    " owner = CASE WHEN x.dead THEN NULL ELSE %s END,"
    " lease_until = CASE WHEN x.dead THEN NULL ELSE %s::float8 END"
    " FROM x WHERE s.id = x.id RETURNING s.*)")
