"""Versioned migrations of the PostgreSQL store's schema.

Each ``migrations/NNNN_name.sql`` file is applied once, in order, in its own
transaction, and recorded in ``goledger_schema_migrations``. Every worker runs
``migrate`` when it starts (and ``flask --app app ledger migrate`` runs it by hand);
a transaction-scoped advisory lock makes concurrent starts take turns, so exactly
one of them applies a new file and the others find it recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

#: Any constant works; it only has to be the same in every process ("GoLedgr" in hex).
_MIGRATION_LOCK_KEY = 0x476F4C65646772
_FILE_NAME = re.compile(r"([0-9]{4})_[a-z0-9_]+\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, oldest first."""
    found = []
    for entry in resources.files("app.ledger.postgres.migrations").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3... without gaps, found {versions}")
    return found


def migrate(url: str, *, up_to: int | None = None) -> list[str]:
    """Bring the database at ``url`` up to date (or up to version ``up_to``, to test a later
    migration on a ledger populated under an earlier schema); the names of the migrations
    applied now."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as connection:
        for migration in migrations():
            if up_to is not None and migration.version > up_to:
                break
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS goledger_schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = connection.execute(
                    "SELECT 1 FROM goledger_schema_migrations WHERE version = %s", (migration.version,)
                ).fetchone()
                if done is not None:
                    continue
                connection.execute(migration.sql.encode())
                connection.execute(
                    "INSERT INTO goledger_schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(migration.name)
    return applied_now


def schema_version(url: str) -> int:
    """The newest migration applied to the database (0 for a fresh one)."""
    with psycopg.connect(url, autocommit=True) as connection:
        exists = connection.execute("SELECT to_regclass('goledger_schema_migrations') IS NOT NULL").fetchone()
        if exists is None or not exists[0]:
            return 0
        row = connection.execute(
            "SELECT coalesce(max(version), 0) FROM goledger_schema_migrations"
        ).fetchone()
        return int(row[0]) if row is not None else 0
