"""What a request run under an idempotency key produced, and how both stores keep it.

A key's outcome is kept in the journal's format (a JSON row whose audit records are
referred to by sequence number): the embedded store writes it in the journal entry
of the operation, the PostgreSQL store in the key's row, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.ledger.errors import LedgerError
from app.ledger.model import (
    AccountView,
    BatchResult,
    Hold,
    HoldResult,
    HoldStatus,
    ItemOutcome,
    OperationResult,
    Tag,
    Transaction,
)

#: What an operation run under a key produces (batches and hold operations included).
Result = OperationResult | BatchResult | HoldResult

Row = list[Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a keyed request answers: a result or a business failure, first time or replayed."""

    result: Result | LedgerError
    replayed: bool


class ReplayedError(LedgerError):
    """A business failure read back from the journal, answered exactly as the first time."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str],
        transaction: Transaction | None,
    ) -> None:
        super().__init__(message, transaction=transaction)
        self.status = status
        self.code = code
        self.headers = dict(headers)


def _account_row(account: AccountView) -> Row:
    return [account.username, account.balance, account.version, account.held]


def _account_from_row(row: Row) -> AccountView:
    return AccountView(row[0], row[1], row[2], row[3])


def _hold_view_row(hold: Hold) -> Row:
    tag = [] if hold.tag is None else list(hold.tag)
    return [
        hold.id,
        hold.source,
        hold.target,
        hold.amount,
        hold.captured,
        hold.status.value,
        hold.expires_at,
        hold.created_at,
        *tag,
    ]


def _hold_view_from_row(row: Row) -> Hold:
    tag = Tag(row[8], row[9]) if len(row) > 8 else None
    return Hold(row[0], row[1], row[2], row[3], row[4], HoldStatus(row[5]), row[6], row[7], tag)


def outcome_row(outcome: Result | LedgerError) -> Row:
    """An idempotent request's outcome, as the journal keeps it."""
    if isinstance(outcome, LedgerError):
        sequence = None if outcome.transaction is None else outcome.transaction.sequence
        return ["error", outcome.status, outcome.code, outcome.message, outcome.headers, sequence]
    if isinstance(outcome, OperationResult):
        return ["operation", outcome.transaction.sequence, _account_row(outcome.account)]
    if isinstance(outcome, HoldResult):
        return [
            "hold",
            outcome.transaction.sequence,
            _account_row(outcome.account),
            _hold_view_row(outcome.hold),
        ]
    items = [
        [item.index, item.transaction.sequence, item.status, item.code, item.message]
        for item in outcome.items
    ]
    return ["batch", _account_row(outcome.account), outcome.atomic, outcome.failed_index, items]


def outcome_from_row(row: Row, record: Callable[[int], Transaction]) -> Result | LedgerError:
    """The outcome back; ``record`` finds an audit record by its sequence number."""
    kind = row[0]
    if kind == "error":
        _, status, code, message, headers, sequence = row
        return ReplayedError(status, code, message, headers, None if sequence is None else record(sequence))
    if kind == "operation":
        return OperationResult(record(row[1]), _account_from_row(row[2]))
    if kind == "hold":
        return HoldResult(_hold_view_from_row(row[3]), _account_from_row(row[2]), record(row[1]))
    if kind == "batch":
        _, account, atomic, failed_index, items = row
        outcomes = tuple(
            ItemOutcome(index, record(sequence), status, code, message)
            for index, sequence, status, code, message in items
        )
        return BatchResult(outcomes, _account_from_row(account), atomic, failed_index)
    raise ValueError(f"unknown outcome kind {kind!r}")
