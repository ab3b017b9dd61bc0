"""Idempotency keys in the database, shared by every worker process and host.

A key's row is inserted in the same transaction as the operation it guards, so a
crash cannot separate them: the operation runs inside the key's transaction
(``Runner.inside``) and its outcome is kept in the row before the one ``COMMIT``.
A retry on another worker waits on the row's unique index until the first
transaction ends, then replays its committed outcome (``_replayed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from app.ledger.errors import IdempotencyKeyReused, LedgerError, OperationTimeout
from app.ledger.model import Deadline, Transaction
from app.ledger.outcomes import Outcome, Result, outcome_from_row, outcome_row
from app.ledger.postgres import sql
from app.ledger.postgres.runner import MAX_ATTEMPTS, Abort, Runner, retryable
from app.ledger.postgres.unit import Connection, begin_within, run_script

#: Old keys deleted by one statement of a purge, and statements one purge may run.
PURGE_BATCH = 5_000
PURGE_MAX_BATCHES = 200
_PURGE_BATCH = (
    "DELETE FROM idempotency_keys WHERE (username, key) IN ("
    "SELECT username, key FROM idempotency_keys WHERE created_at < now() - interval '24 hours' "
    "ORDER BY created_at LIMIT %s)"
)


class Keys:
    """The ``idempotency_keys`` table: claim a key, run its operation once, replay it afterwards."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def run(
        self, username: str, key: str, fingerprint: str, deadline: Deadline, operation: Callable[[], Result]
    ) -> Outcome:
        """Run ``operation`` once per ``(username, key)`` across every process; replay afterwards."""
        runner = self._runner
        runner.begin_keyed()
        started, budget_s = time.perf_counter(), deadline.remaining_s()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            connection: Connection | None = None
            try:
                with runner.pool.connection(timeout=max(deadline.remaining_s(), 0.001)) as connection:
                    replay = self._claim(connection, username, key, fingerprint, deadline)
                    if replay is not None:
                        return replay
                    return self._run_claimed(connection, username, key, operation)
            except Abort as abort:
                if not (abort.retry and runner.again(connection, deadline, attempt)):
                    raise runner.timed_out(abort.label, abort.specs, started, budget_s) from None
            except PoolTimeout:
                raise OperationTimeout("The operation could not finish within its deadline.") from None
            except psycopg.Error as error:
                if not (retryable(error, connection) and runner.again(connection, deadline, attempt)):
                    raise OperationTimeout(
                        "A request with this Idempotency-Key is still in flight; retry to get its outcome."
                    ) from None
        raise OperationTimeout("The operation could not finish within its deadline.")

    def purge(self, *, batch: int = PURGE_BATCH, max_batches: int = PURGE_MAX_BATCHES) -> int:
        """Drop idempotency keys past their 24 hours, oldest first, ``batch`` at a time; how many were.

        Each batch is one short statement (through the age index) under the reads'
        statement timeout, however large the backlog: a backlog left after
        ``max_batches`` is the next pass's.
        """
        purged = 0
        for _ in range(max_batches):
            deleted: int = self._runner.read(
                lambda connection: connection.execute(_PURGE_BATCH, (batch,)).rowcount
            )
            purged += deleted
            if deleted < batch:
                break
        return purged

    def _claim(
        self, connection: Connection, username: str, key: str, fingerprint: str, deadline: Deadline
    ) -> Outcome | None:
        """Begin the key's transaction and claim the key (``None``), or replay its kept outcome."""
        # The INSERT waits on the unique index while another transaction holds the same key.
        claim = (
            "INSERT INTO idempotency_keys (username, key, fingerprint) VALUES (%s, %s, %s) "
            "ON CONFLICT (username, key) DO NOTHING RETURNING 1",
            (username, key, fingerprint),
        )
        *_, claimed = run_script(connection, [*begin_within(deadline), claim])
        if claimed:
            return None
        row = connection.execute(
            "SELECT fingerprint, outcome FROM idempotency_keys WHERE username = %s AND key = %s",
            (username, key),
        ).fetchone()
        connection.execute("ROLLBACK")
        if row is None:  # purged in between: claim it afresh
            raise Abort(True, "idempotency", ())
        if row[0] != fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used with different parameters.")
        return Outcome(_replayed(connection, row[1]), replayed=True)

    def _run_claimed(
        self, connection: Connection, username: str, key: str, operation: Callable[[], Result]
    ) -> Outcome:
        """Run ``operation`` in the claimed key's transaction, keep its outcome, commit."""
        try:
            with self._runner.inside(connection):
                result: Result | LedgerError = operation()
        except OperationTimeout:
            raise
        except LedgerError as error:
            result = error
        # The journal's format (app.ledger.persistence): records are referred to by sequence.
        stored = Jsonb(outcome_row(result))
        started = time.perf_counter()
        try:
            keep = (
                "UPDATE idempotency_keys SET outcome = %s WHERE username = %s AND key = %s",
                (stored, username, key),
            )
            run_script(connection, [keep, ("COMMIT", ())])
        except psycopg.OperationalError:
            if not (connection.broken and self._landed(username, key)):
                raise
        self._runner.count_inside(commit_s=time.perf_counter() - started)
        return Outcome(result, replayed=False)

    def _landed(self, username: str, key: str) -> bool:
        """Whether a key whose ``COMMIT`` went unanswered was kept after all."""
        try:
            with psycopg.connect(self._runner.url, autocommit=True, connect_timeout=2) as probe:
                row = probe.execute(
                    "SELECT 1 FROM idempotency_keys WHERE username = %s AND key = %s AND outcome IS NOT NULL",
                    (username, key),
                ).fetchone()
        except psycopg.Error:
            return False
        return row is not None


def _replayed(connection: Connection, stored: list[Any]) -> Result | LedgerError:
    """A kept outcome with its audit records read back (they are contiguous: one append)."""
    kind = stored[0]
    if kind == "error":
        sequences = [] if stored[5] is None else [stored[5]]
    elif kind == "batch":
        sequences = [item[1] for item in stored[4]]
    else:
        sequences = [stored[1]]
    records: dict[int, Transaction] = {}
    if sequences:
        rows = connection.execute(sql.RECORDS_BETWEEN, (min(sequences), max(sequences))).fetchall()
        records = {record.sequence: record for record in map(sql.record, rows)}
    return outcome_from_row(stored, records.__getitem__)
