"""The shared spool's schema, its versions and migrations, and how its URL is shown (never the password).

Versioned in sidecar_schema_version. Each replica runs the migrations it is missing at start, under a
session advisory lock, so replicas starting together never race; a database migrated by a newer
release is refused (its code may rely on what this one does not know).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import SpoolUnreachable

SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x5EB400C  # pg_advisory_lock key: one replica migrates at a time

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


def migrate(conn: psycopg.Connection[Any], variable: str, location: str) -> None:
    """Create or migrate the schema to SCHEMA_VERSION; one replica at a time (a session advisory lock).

    SpoolUnreachable when the database holds a newer schema than this code knows."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS sidecar_schema_version (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM sidecar_schema_version").fetchone()
        current = row[0] if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise SpoolUnreachable(
                f"{variable}: the spool database {location} has schema version {current}, newer than"
                f" this sidecar knows ({SCHEMA_VERSION}): a newer release migrated it; run that release")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with conn.transaction():
                conn.execute(MIGRATIONS[version])
                conn.execute("INSERT INTO sidecar_schema_version (version) VALUES (%s)", (version,))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def redact(url: str) -> str:
    """The URL for logs: user, host, port and database, never the password."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    host = d.get("host") or d.get("hostaddr") or "(PGHOST)"
    return f"postgresql://{d['user'] + '@' if d.get('user') else ''}{host}{':' + d['port'] if d.get('port') else ''}" \
           f"/{d.get('dbname', '')}"


def scrub(text: str, url: str) -> str:
    """An error message with the URL and its password taken out (libpq may quote the conninfo)."""
    secrets = [url]
    m = re.search(r"://[^:/@]*:([^@/]*)@", url) or re.search(r"password\s*=\s*'?([^'\s]+)", url)
    if m and m.group(1):
        secrets.append(m.group(1))
    for s in secrets:
        text = text.replace(s, "***")
    return text
