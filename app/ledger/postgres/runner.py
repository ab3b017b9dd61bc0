"""The transaction runner of the PostgreSQL store: one unit of work, one transaction.

``Runner`` owns the pool of connections and runs each operation's work in a
transaction of its own (``write``) or a read on a pooled connection (``read``).
Serialisation failures, deadlocks and lost connections are retried, at most
``MAX_ATTEMPTS`` times and only within the operation's deadline; a write that
runs out of time is counted and audited apart as a FAILED record (``timed_out``).

Inside an idempotency key's request (``inside``) the work runs in that key's open
transaction instead, on this thread's connection, and the key's loop (``keys.py``)
retries and commits.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from app.ledger.counters import DurationHistogram, OperationCounters
from app.ledger.errors import OperationTimeout, StoreInvariantBroken
from app.ledger.model import Deadline, Transaction
from app.ledger.postgres.unit import Connection, Restart, Unit
from app.ledger.records import RecordDraft

T = TypeVar("T")

_log = logging.getLogger("goledger.postgres")

#: Attempts of one operation after serialisation failures, deadlocks, lost connections.
MAX_ATTEMPTS = 5
#: Lock budget of the FAILED record written after a timeout (outside the deadline).
TIMEOUT_RECORD_BUDGET_MS = 300
RECONNECT_TIMEOUT_S = 10.0
#: The bound of reads that have no deadline of their own (authentication, pages, verify).
READ_TIMEOUT_S = 2.0
#: The latency histograms of ``OperationCounters.durations``: the wait for a pooled
#: connection, and the round trip that carries a transaction's ``COMMIT``.
POOL_WAIT = "pg_pool_wait"
COMMIT = "pg_commit"

#: Every pooled connection: a server that stops answering (a partition, a failover
#: to another address) is given up on after seconds, not the OS's TCP minutes; and
#: no statement runs longer than a read may (writes set tighter bounds per
#: transaction from their deadline, with SET LOCAL).
CONNECTION_SAFEGUARDS: dict[str, object] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "options": f"-c statement_timeout={int(READ_TIMEOUT_S * 1000)}",
}


class Abort(Exception):
    """A database failure inside an idempotency key's transaction; the key's loop decides."""

    def __init__(self, retry: bool, label: str, specs: Sequence[RecordDraft]) -> None:
        super().__init__(f"{label}: {'retry' if retry else 'timeout'}")
        self.retry = retry
        self.label = label
        self.specs = specs


def retryable(error: psycopg.Error, connection: Connection | None) -> bool:
    """Whether a failed attempt may run again (``False``: it ran out of time).

    Anything else is a bug and raised as it is (a 500).
    """
    if isinstance(error, pg_errors.CheckViolation):
        raise StoreInvariantBroken(
            f"the database refused a write that broke an invariant: {error}"
        ) from error
    if isinstance(error, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
        return False
    if isinstance(error, pg_errors.TransactionRollback):  # serialization failure, deadlock
        return True
    lost = connection is None or connection.broken or error.sqlstate is None
    if isinstance(error, psycopg.OperationalError) and (lost or str(error.sqlstate).startswith(("08", "57"))):
        return True
    raise error


class Runner:
    """Runs units of work on a pool of psycopg connections, each in a transaction.

    ``clock``: the application's wall clock, a unit's ``now_s`` (tests swap it).
    ``counters``: the operations counted (committed outcomes and timeouts here; the
    store counts its reads and reports them all).
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        min_connections: int,
        lock_trouble_after_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.url = url
        self.counters = OperationCounters(
            lock_trouble_after_s=lock_trouble_after_s, durations=(POOL_WAIT, COMMIT)
        )
        self.pool: ConnectionPool[Connection] = _TimedPool(
            url,
            waits=self.counters.durations[POOL_WAIT],
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True, "application_name": "goledger", **CONNECTION_SAFEGUARDS},
            open=False,
            name="goledger",
            # Give up a failing reconnection after this long: the next request starts a fresh
            # one, so the pool comes back within seconds of an outage, however long it was.
            reconnect_timeout=RECONNECT_TIMEOUT_S,
        )
        self.pool.open(wait=True, timeout=10.0)
        self.clock = clock
        #: Told the last sequence of each committed append (the store's checkpointer listens).
        self.appended: Callable[[int], None] = _nobody_listens
        #: This thread's keyed request: ``connection``, its open transaction (``None``
        #: outside ``inside``); ``extra``, the accounts its restarts found it must lock;
        #: ``counts``, the outcomes to count once it commits; ``last_sequence``, the last
        #: record it appended (told to ``appended`` once it commits).
        self._local = threading.local()

    def write(
        self, label: str, deadline: Deadline, work: Callable[[Unit], T], timeout_specs: Sequence[RecordDraft]
    ) -> T:
        """Run ``work`` in one transaction, retried within the deadline; inside an idempotency
        key's transaction when there is one (then that transaction commits)."""
        ambient: Connection | None = getattr(self._local, "connection", None)
        if ambient is not None:
            return self._write_inside(ambient, label, work, timeout_specs)
        extra: set[str] = set()
        started, budget_s = time.perf_counter(), deadline.remaining_s()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            connection: Connection | None = None
            try:
                with self.pool.connection(timeout=max(deadline.remaining_s(), 0.001)) as connection:
                    unit = Unit(connection, now_s=self.clock(), commit=True, url=self.url, extra=extra)
                    try:
                        result = work(unit)
                        unit.finish()
                    finally:
                        if unit.committed:
                            self.counters.count(unit.outcomes, unit.lock_wait_s)
                            self.counters.durations[COMMIT].observe(unit.commit_s)
                if unit.last_sequence:
                    self.appended(unit.last_sequence)
                return result
            except Restart as restart:
                extra |= restart.names
            except PoolTimeout:
                raise self.timed_out(label, timeout_specs, started, budget_s) from None
            except psycopg.Error as error:
                if isinstance(error, pg_errors.DeadlockDetected):
                    # Never, while every transaction keeps the lock order (``unit``): tests assert it.
                    self.counters.aborted("deadlock")
                if not (retryable(error, connection) and self.again(connection, deadline, attempt)):
                    raise self.timed_out(label, timeout_specs, started, budget_s) from None
        raise self.timed_out(label, timeout_specs, started, budget_s)

    def read(
        self,
        query: Callable[[Connection], T],
        deadline: Deadline | None = None,
        *,
        pool_wait_s: float | None = None,
    ) -> T:
        """Run a read on a pooled connection; lost connections are retried within the deadline
        (default ``READ_TIMEOUT_S``), then it is an ``OperationTimeout`` (503), never a 500.

        ``pool_wait_s``: the longest wait for a pooled connection, for reads whose deadline is
        long (a verification): an empty pool or a database that is down is then a 503 soon.
        """
        deadline = deadline or Deadline.after_ms(int(READ_TIMEOUT_S * 1000))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            connection: Connection | None = None
            wait_s = max(deadline.remaining_s(), 0.001)
            try:
                with self.pool.connection(timeout=min(wait_s, pool_wait_s or wait_s)) as connection:
                    return query(connection)
            except PoolTimeout:
                break
            except psycopg.Error as error:
                if not (retryable(error, connection) and self.again(connection, deadline, attempt)):
                    break
        raise OperationTimeout("The database did not answer within the deadline.")

    def read_snapshot(self, query: Callable[[Connection], T], deadline: Deadline, *, pool_wait_s: float) -> T:
        """``read`` in one ``REPEATABLE READ, READ ONLY`` transaction: every statement of ``query``
        sees one MVCC snapshot, takes no row lock (no writer waits for it, nor it for them), and may
        run until ``deadline`` instead of the pool's ``READ_TIMEOUT_S`` (a long, legitimate read:
        a verification, a checkpoint). ``pool_wait_s``: as in ``read``."""

        def in_snapshot(connection: Connection) -> T:
            timeout_ms = max(1, int(deadline.remaining_s() * 1000))  # 0 would mean "no limit"
            with connection.transaction():
                connection.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
                    f"SET LOCAL statement_timeout = {timeout_ms}"
                )
                return query(connection)

        return self.read(in_snapshot, deadline, pool_wait_s=pool_wait_s)

    def again(self, connection: Connection | None, deadline: Deadline, attempt: int) -> bool:
        """Whether another attempt may start (after a short pause). A lost connection first has
        the pool test its idle ones, so that the next attempt does not pick up another dead one."""
        if attempt == MAX_ATTEMPTS:
            return False
        if connection is None or connection.broken:
            self.pool.check()
        return _pause(deadline, attempt)

    # -- inside an idempotency key's transaction -----------------------------------------

    def begin_keyed(self) -> None:
        """Start a keyed request on this thread: its attempts share what restarts learn."""
        if getattr(self._local, "connection", None) is not None:
            raise StoreInvariantBroken("idempotent() does not nest")
        self._local.extra = set()

    @contextlib.contextmanager
    def inside(self, connection: Connection) -> Iterator[None]:
        """Have every ``write`` of the block run in ``connection``'s open transaction."""
        self._local.connection = connection
        self._local.counts = []
        self._local.last_sequence = 0
        try:
            yield
        finally:
            self._local.connection = None

    def count_inside(self, *, commit_s: float) -> None:
        """Count the outcomes of the last ``inside`` block once its transaction committed, in a
        round trip of ``commit_s``."""
        for outcomes, waited_s in self._local.counts:
            self.counters.count(outcomes, waited_s)
        self.counters.durations[COMMIT].observe(commit_s)
        if self._local.last_sequence:
            self.appended(self._local.last_sequence)

    def _write_inside(
        self,
        connection: Connection,
        label: str,
        work: Callable[[Unit], T],
        timeout_specs: Sequence[RecordDraft],
    ) -> T:
        extra: set[str] = self._local.extra
        unit = Unit(connection, now_s=self.clock(), commit=False, url=self.url, extra=extra)
        try:
            result = work(unit)
        except Restart as restart:
            extra |= restart.names
            raise Abort(True, label, timeout_specs) from None
        except psycopg.Error as error:
            raise Abort(retryable(error, connection), label, timeout_specs) from None
        finally:
            self._local.counts.append((unit.outcomes, unit.lock_wait_s))
            self._local.last_sequence = max(self._local.last_sequence, unit.last_sequence)
        return result

    # -- running out of time --------------------------------------------------------------

    def timed_out(
        self, label: str, specs: Sequence[RecordDraft], started: float, budget_s: float
    ) -> OperationTimeout:
        """Count a timeout and audit it apart (it applied nothing); the error to raise.

        ``started``: when the operation reached the store; ``budget_s``: what was left
        of its deadline then (health counts only timeouts with a generous budget).
        """
        waited_s = time.perf_counter() - started
        self.counters.lock_timed_out(budget_s)
        self.counters.count([(label, OperationTimeout.code)], waited_s)
        error = OperationTimeout("The operation could not finish within its deadline.")
        if specs:
            try:
                error.transaction = self._append_alone(specs, Deadline.after_ms(TIMEOUT_RECORD_BUDGET_MS))[0]
            except (psycopg.Error, PoolTimeout, Restart):
                _log.warning("could not audit a timed-out %s", label, exc_info=True)
        return error

    def _append_alone(self, specs: Sequence[RecordDraft], deadline: Deadline) -> list[Transaction]:
        def append(connection: Connection) -> list[Transaction]:
            unit = Unit(connection, now_s=self.clock(), commit=True, url=self.url, extra=set())
            unit.begin(deadline, ())
            return unit.append(specs)

        return self.read(append, deadline)


class _TimedPool(ConnectionPool[Connection]):
    """psycopg_pool's pool, timing how long each checkout waited for a connection."""

    def __init__(self, url: str, *, waits: DurationHistogram, **options: Any) -> None:
        self._waits = waits
        super().__init__(url, **options)

    def getconn(self, timeout: float | None = None) -> Connection:
        started = time.perf_counter()
        try:
            return super().getconn(timeout)
        finally:  # a checkout that timed out waited too
            self._waits.observe(time.perf_counter() - started)


def _nobody_listens(sequence: int) -> None:
    """The default of ``Runner.appended``."""


def _pause(deadline: Deadline, attempt: int) -> bool:
    """Back off a little (with jitter) before another attempt; ``False`` if no time is left."""
    pause_s = random.uniform(0, 0.002 * 2**attempt)  # noqa: S311 (jitter, not a secret)
    if deadline.remaining_s() <= pause_s:
        return False
    time.sleep(pause_s)
    return True
