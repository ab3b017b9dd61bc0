"""What the PostgreSQL store reports on itself: ``verify``, ``health`` and ``stats``.

``health`` checks the audit chain a stretch at a time (``HEALTH_CHAIN_BATCH``
records a call, resuming where it stopped) and remembers the first problem it or
``verify`` found; ``stats`` reports the last figures it read when the database
does not answer in time. That memory is this process's, under ``_health_lock``.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg_pool import PoolTimeout

from app.ledger.accounts import HoldState
from app.ledger.audit import GENESIS_HASH, AccountSnapshot, Verification, check_chain, verify_ledger
from app.ledger.model import Deadline, Hold, Transaction
from app.ledger.postgres import sql
from app.ledger.postgres.runner import Runner
from app.ledger.postgres.unit import Connection
from app.ledger.store import Health, Stats

_log = logging.getLogger("goledger.postgres")

#: Audit records health checks per call (it resumes where it stopped).
HEALTH_CHAIN_BATCH = 10_000
HEALTH_TIMEOUT_S = 1.0
STATS_TIMEOUT_MS = 500
VERIFY_TIMEOUT_S = 10.0


class Monitor:
    """Verification, health and metrics of one process's store, over its runner's pool."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._health_lock = threading.Lock()  # guards the four fields below, never held across I/O
        #: How far health has checked the chain (sequence, hash), and the first problem found.
        self._chain_checked = 0
        self._chain_hash = GENESIS_HASH
        self._chain_problem: str | None = None
        #: The last (accounts, audit records, idempotency keys) that ``stats`` read.
        self._figures_seen = (0, 0, 0)

    def verify(self) -> Verification:
        """Check every invariant on one consistent snapshot (a repeatable-read transaction)."""

        def snapshot(
            connection: Connection,
        ) -> tuple[dict[str, AccountSnapshot], list[Hold], list[Transaction]]:
            with connection.transaction():
                connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                accounts = {
                    username: AccountSnapshot(balance, held)
                    for username, balance, held in connection.execute(
                        "SELECT username, balance, held FROM accounts"
                    )
                }
                holds = [HoldState.from_row(row).view() for row in connection.execute(sql.ALL_HOLDS)]
                records = [sql.record(row) for row in connection.execute(sql.ALL_RECORDS)]
            return accounts, holds, records

        accounts, holds, records = self._runner.read(
            snapshot, Deadline.after_ms(int(VERIFY_TIMEOUT_S * 1000))
        )
        report = verify_ledger(accounts, records, holds)
        with self._health_lock:
            self._chain_problem = None if report.ok else report.problems[0]
        return report

    def health(self) -> Health:
        database_ok = True
        try:
            with self._runner.pool.connection(timeout=HEALTH_TIMEOUT_S) as connection:
                connection.execute("SELECT 1 FROM chain_head").fetchone()
            audit_ok = self._check_new_records()
        except (psycopg.Error, PoolTimeout):
            _log.warning("health: the database did not answer", exc_info=True)
            database_ok = False
            with self._health_lock:
                audit_ok = self._chain_problem is None
        return Health(
            uptime_seconds=time.monotonic() - self._runner.counters.started_at,
            operation_count=self._runner.counters.operation_count(),
            database=database_ok,
            audit_log=audit_ok,
            performance=self._runner.counters.performance_ok(),
        )

    def not_ready(self) -> str | None:
        """Why the store cannot take writes now (``None``: it can): the database must answer
        a write-side query within ``HEALTH_TIMEOUT_S``."""
        try:
            with self._runner.pool.connection(timeout=HEALTH_TIMEOUT_S) as connection:
                connection.execute("SELECT 1 FROM chain_head").fetchone()
        except (psycopg.Error, PoolTimeout) as error:
            return f"the database did not answer within {HEALTH_TIMEOUT_S:g} s ({type(error).__name__})"
        return None

    def _check_new_records(self) -> bool:
        """Check the stretch of the chain appended since the last check (health's share)."""
        with self._health_lock:
            start, previous_hash = self._chain_checked, self._chain_hash
        with self._runner.pool.connection(timeout=HEALTH_TIMEOUT_S) as connection:
            rows = connection.execute(
                sql.RECORDS_AFTER,
                (start, HEALTH_CHAIN_BATCH),
            ).fetchall()
        fresh = [sql.record(row) for row in rows]
        problems = check_chain(fresh, previous_hash, start + 1)
        with self._health_lock:
            if problems:
                self._chain_problem = problems[0]
            elif fresh and self._chain_checked == start:
                self._chain_checked, self._chain_hash = fresh[-1].sequence, fresh[-1].hash
            return self._chain_problem is None

    def stats(self) -> Stats:
        """The ledger's sizes from cheap sources, never a scan: the chain head's sequence
        (exact) and the live-row statistics of ``accounts`` and ``idempotency_keys``
        (estimates PostgreSQL keeps as transactions commit, about a second behind)."""
        figures = self._figures_seen
        try:
            with (
                self._runner.pool.connection(timeout=STATS_TIMEOUT_MS / 1000) as connection,
                connection.transaction(),
            ):
                connection.execute(f"SET LOCAL statement_timeout = {STATS_TIMEOUT_MS}")
                row = connection.execute(
                    "SELECT pg_stat_get_live_tuples('accounts'::regclass), "
                    "(SELECT sequence FROM chain_head), pg_stat_get_live_tuples('idempotency_keys'::regclass)"
                ).fetchone()
            if row is not None:
                figures = (int(row[0]), int(row[1]), int(row[2]))
                with self._health_lock:
                    self._figures_seen = figures
        except (psycopg.Error, PoolTimeout):
            _log.warning("metrics: the database did not answer in time; reporting the last figures")
        return Stats(
            accounts=figures[0],
            audit_records=figures[1],
            idempotency_keys=figures[2],
        )
