"""Outcomes of keyed operations as JSON, so that a retry on any worker can replay them.

The PostgreSQL store keeps an idempotency key's outcome (a result, or the business
failure a retry must see again) in a ``jsonb`` column. Plain JSON rather than
pickle: a row of the database must never be able to run code in the service.
"""

from __future__ import annotations

from typing import Any

from app.ledger.errors import LedgerError
from app.ledger.idempotency import Result
from app.ledger.model import (
    AccountView,
    BatchResult,
    Hold,
    HoldResult,
    HoldStatus,
    ItemOutcome,
    OperationResult,
    OperationType,
    Status,
    Transaction,
)


def _transaction(record: Transaction) -> list[Any]:
    return [
        record.id,
        record.sequence,
        record.type.value,
        record.source,
        record.target,
        record.amount,
        record.status.value,
        record.reason,
        record.created_at,
        record.previous_hash,
        record.hash,
    ]


def _transaction_from(data: list[Any]) -> Transaction:
    record_id, sequence, kind, source, target, amount, status, reason, created_at, previous, digest = data
    return Transaction(
        record_id, sequence, OperationType(kind), source, target, amount, Status(status), reason,
        created_at, previous, digest,
    )  # fmt: skip


def _account(account: AccountView) -> list[Any]:
    return [account.username, account.balance, account.version, account.held]


def _account_from(data: list[Any]) -> AccountView:
    return AccountView(data[0], data[1], data[2], data[3])


def _hold(hold: Hold) -> list[Any]:
    return [
        hold.id, hold.source, hold.target, hold.amount, hold.captured, hold.status.value,
        hold.expires_at, hold.created_at,
    ]  # fmt: skip


def _hold_from(data: list[Any]) -> Hold:
    hold_id, source, target, amount, captured, status, expires_at, created_at = data
    return Hold(hold_id, source, target, amount, captured, HoldStatus(status), expires_at, created_at)


def encode_outcome(outcome: Result | LedgerError) -> dict[str, Any]:
    if isinstance(outcome, LedgerError):
        record = None if outcome.transaction is None else _transaction(outcome.transaction)
        return {
            "error": [outcome.status, outcome.code, outcome.message, outcome.headers, record],
        }
    if isinstance(outcome, OperationResult):
        return {"operation": [_transaction(outcome.transaction), _account(outcome.account)]}
    if isinstance(outcome, HoldResult):
        return {"hold": [_hold(outcome.hold), _account(outcome.account), _transaction(outcome.transaction)]}
    items = [
        [item.index, _transaction(item.transaction), item.status, item.code, item.message]
        for item in outcome.items
    ]
    return {"batch": [items, _account(outcome.account), outcome.atomic, outcome.failed_index]}


def decode_outcome(data: dict[str, Any]) -> Result | LedgerError:
    if "error" in data:
        status, code, message, headers, record = data["error"]
        error = LedgerError(message, transaction=None if record is None else _transaction_from(record))
        # The instance carries the status and code the first request answered.
        error.status = status
        error.code = code
        error.headers.update(headers)
        return error
    if "operation" in data:
        record, account = data["operation"]
        return OperationResult(_transaction_from(record), _account_from(account))
    if "hold" in data:
        hold, account, record = data["hold"]
        return HoldResult(_hold_from(hold), _account_from(account), _transaction_from(record))
    items, account, atomic, failed_index = data["batch"]
    return BatchResult(
        tuple(
            ItemOutcome(index, _transaction_from(record), status, code, message)
            for index, record, status, code, message in items
        ),
        _account_from(account),
        atomic,
        failed_index,
    )
