"""Reversals in the PostgreSQL store: a transaction sent back, at most its amount in all.

One transaction of the runner. The original is read first, with no lock: what a
reversal needs of it (id, type, parties, amount, status) never changes. Then the
transaction locks its parties' account rows (in the store's order), and after them
the original's ``audit`` row (``FOR UPDATE``), whose ``reversed_amount`` (not hashed:
it changes after the record) is checked by ``rules.reverse`` together with the funds
and updated in the same transaction as the reversal's record. Two reversals of one
transaction lock the same account rows first, so they never wait for each other in a
cycle; the chain head comes last, as for every write.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.ledger import rules
from app.ledger.errors import LedgerError, OperationTimeout, TransactionNotFound
from app.ledger.model import Deadline, OperationResult, OperationType, Status, Tag, Transaction
from app.ledger.postgres import sql
from app.ledger.postgres.runner import Runner
from app.ledger.postgres.unit import Connection, Unit, failed
from app.ledger.records import RecordDraft, success

_FIND_RECORD = f"SELECT {sql.RECORD} FROM audit a WHERE a.id = %s"  # noqa: S608
_LOCK_REVERSED = "SELECT reversed_amount FROM audit WHERE sequence = %s FOR UPDATE"
_ADD_REVERSED = "UPDATE audit SET reversed_amount = reversed_amount + %s WHERE sequence = %s"
_REVERSED_OF = "SELECT id, reversed_amount FROM audit WHERE sequence = ANY(%s) AND reversed_amount > 0"
_REVERSIBLE = frozenset(rules.OPERATOR_REVERSIBLE)


class Reversals:
    """``PostgresStore.reverse`` through the runner."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def reverse(
        self,
        username: str | None,
        transaction_id: str,
        amount: int | None,
        deadline: Deadline,
        version: int | None,
        tag: Tag | None,
    ) -> OperationResult:
        if amount is not None:
            rules.check_amount(amount)
        sql.tag_columns(tag)
        kind = OperationType.REVERSAL
        label = kind.value

        def draft_of(source: str | None, target: str | None, moved: int, reason: str | None) -> RecordDraft:
            if reason is None:
                draft = success(kind, source, target, moved, tag)
            else:
                # A failure shows in the caller's history; the operator's, in that of the account
                # it concerns (none while the original is unknown).
                concerned = username if username is not None else source or target
                shown: tuple[str, ...] = () if concerned is None else (concerned,)
                draft = failed(kind, source, target, moved, reason, shown, tag)
            draft.reverses = transaction_id
            return draft

        def work(unit: Unit) -> OperationResult:
            original = _find_record(unit.connection, transaction_id)
            try:
                found = rules.reversible(original, transaction_id, username)
            except TransactionNotFound as error:
                unit.begin(deadline, ())
                raise unit.fail(label, error, draft_of(username, None, amount or 0, error.code)) from None
            source, target = rules.reversal_roles(found)
            unit.begin(deadline, [name for name in (source, target) if name is not None])
            # After the account rows (the lock order): what is left is checked under this lock.
            [(already,)] = unit.connection.execute(_LOCK_REVERSED, (found.sequence,)).fetchall()
            try:
                moved = rules.reverse(unit.accounts.get, found, int(already), amount, version)
            except LedgerError as error:
                shown_amount = amount if amount is not None else max(0, found.amount - int(already))
                raise unit.fail(label, error, draft_of(source, target, shown_amount, error.code)) from None
            unit.statements.append((_ADD_REVERSED, (moved, found.sequence)))
            [record] = unit.append([draft_of(source, target, moved, None)])
            unit.outcomes.append((label, "success"))
            return OperationResult(record, unit.accounts[rules.reversal_account(found)].view())

        timeout = draft_of(username, None, amount or 0, OperationTimeout.code)
        return self._runner.write(label, deadline, work, [timeout])


def _find_record(connection: Connection, transaction_id: str) -> Transaction | None:
    row = connection.execute(_FIND_RECORD, (transaction_id,)).fetchone()
    return None if row is None else sql.record(row)


def reversed_amounts(runner: Runner, records: Sequence[Transaction]) -> dict[str, int]:
    """How much of each of ``records`` has been reversed (only those reversed at all)."""
    sequences = [
        record.sequence
        for record in records
        if record.type in _REVERSIBLE and record.status == Status.SUCCESS.value
    ]
    if not sequences:
        return {}
    rows = runner.read(lambda connection: connection.execute(_REVERSED_OF, (sequences,)).fetchall())
    return {str(record_id): int(amount) for record_id, amount in rows}
