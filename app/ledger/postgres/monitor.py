"""What the PostgreSQL store reports on itself: ``verify``, ``health`` and ``stats``.

``verify`` reads one MVCC snapshot (``Runner.read_snapshot``) and streams the audit
trail through a server-side cursor into ``app.ledger.audit.Replay``, from the first
record or from a checkpoint; its statements run under its own ``VERIFY_TIMEOUT_S``,
not the pool's short ``statement_timeout``.

``health`` checks the audit chain a stretch at a time (``HEALTH_CHAIN_BATCH``
records a call, resuming where it stopped) and remembers the first problem it or
``verify`` found; ``stats`` reports the last figures it read when the database
does not answer in time. That memory is this process's, under ``_health_lock``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import psycopg
from psycopg_pool import PoolTimeout

from app.ledger.audit import GENESIS_HASH, AccountSnapshot, Replay, Verification, check_chain
from app.ledger.errors import InvalidInput, OperationTimeout, StoreInvariantBroken
from app.ledger.model import Deadline
from app.ledger.postgres import sql
from app.ledger.postgres.checkpoints import every_checkpoint
from app.ledger.postgres.runner import Runner
from app.ledger.postgres.unit import Connection
from app.ledger.store import Health, Stats

_log = logging.getLogger("goledger.postgres")

#: Audit records health checks per call (it resumes where it stopped).
HEALTH_CHAIN_BATCH = 10_000
HEALTH_TIMEOUT_S = 1.0
STATS_TIMEOUT_MS = 500
#: The bound of one verification (its statements too, not the pool's ``READ_TIMEOUT_S``): a
#: full one of millions of records legitimately takes minutes.
VERIFY_TIMEOUT_S = 600.0
#: The longest wait for a pooled connection: an empty pool or a lost database is a 503 soon.
VERIFY_POOL_WAIT_S = 2.0
#: Audit records fetched per round trip of the verification's server-side cursor.
VERIFY_ITERSIZE = 5_000


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

    def verify(self, from_sequence: int | None = None) -> Verification:
        """Check every invariant on one snapshot, streaming the audit trail (``_verify``).

        ``from_sequence``: a checkpoint's sequence; only the records after it are read, and
        checked against it (``InvalidInput("invalid_parameter")`` when no checkpoint has it).
        """
        deadline = Deadline.after_ms(int(VERIFY_TIMEOUT_S * 1000))
        report = self._runner.read_snapshot(
            functools.partial(_verify, from_sequence, deadline), deadline, pool_wait_s=VERIFY_POOL_WAIT_S
        )
        with self._health_lock:
            if not report.ok:
                self._chain_problem = report.problems[0]
            elif from_sequence is None:
                # Only a full verification vouches for the records before a checkpoint too.
                self._chain_problem = None
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


def _verify(from_sequence: int | None, deadline: Deadline, connection: Connection) -> Verification:
    """In a snapshot (``Runner.read_snapshot``): the accounts and pending holds into memory, the
    checkpoints, then the audit records after the start through a server-side cursor, one page
    of ``VERIFY_ITERSIZE`` at a time into ``Replay``. Memory: one entry per account, per pending
    hold and per checkpoint, and one page of records, however long the trail."""
    head = connection.execute("SELECT sequence, hash FROM chain_head").fetchone()
    if head is None:
        raise StoreInvariantBroken("the chain_head row is missing")
    points = every_checkpoint(connection)
    start = None
    if from_sequence is not None:
        start = next((point for point in points if point.sequence == from_sequence), None)
        if start is None:
            raise InvalidInput(
                "invalid_parameter",
                f"from: no checkpoint has sequence {from_sequence} (see GET /admin/audit/checkpoints).",
            )
    accounts = {
        username: AccountSnapshot(balance, held)
        for username, balance, held in connection.execute("SELECT username, balance, held FROM accounts")
    }
    holds = [sql.hold(row).view() for row in connection.execute(sql.PENDING_HOLDS)]
    # Checkpoints are confirmed by a full verification only (``Verification.checkpoints``).
    replay = Replay(start=start, checkpoints=points if start is None else ())
    with connection.cursor(name="goledger_verify_records") as records:
        records.itersize = VERIFY_ITERSIZE
        records.execute(sql.RECORDS_STREAM, (replay.sequence,))
        for row in records:
            replay.add(sql.record(row))
            # statement_timeout bounds each page's FETCH; this bounds the whole stream.
            if replay.report.records % VERIFY_ITERSIZE == 0 and deadline.remaining_s() == 0:
                raise OperationTimeout(f"The verification did not finish within {VERIFY_TIMEOUT_S:g} s.")
    return replay.finish(accounts, holds, last_hash=str(head[1]))
