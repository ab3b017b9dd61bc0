"""What the blueprints share: the store accessor, deadlines, and serialisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, current_app, jsonify, request

from app.auth import authenticate
from app.config import Config
from app.ledger.model import AccountView, Deadline, OperationResult, Transaction
from app.ledger.store import LedgerStore
from app.params import Params, parse_if_match, parse_timeout_ms


def store() -> LedgerStore:
    """The application's ledger store (created once, in ``create_app``)."""
    ledger: LedgerStore = current_app.extensions["ledger"]
    return ledger


def config() -> Config:
    settings: Config = current_app.extensions["ledger_config"]
    return settings


def request_deadline() -> Deadline:
    """The deadline of this request's operation: ``X-Timeout-Ms`` or the configured default."""
    return Deadline.after_ms(parse_timeout_ms(request.headers.get("X-Timeout-Ms"), config().op_timeout_ms))


def authenticated_caller() -> tuple[Params, str]:
    """The request's parameters and its authenticated username."""
    params = Params.from_request(request)
    return params, authenticate(store(), params, request.headers.get("Authorization"))


def transaction_json(transaction: Transaction) -> dict[str, Any]:
    return {
        "id": transaction.id,
        "sequence": transaction.sequence,
        "type": transaction.type.value,
        "from": transaction.source,
        "to": transaction.target,
        "amount": transaction.amount,
        "status": transaction.status.value,
        "reason": transaction.reason,
        "created_at": transaction.created_at,
    }


def etag(account: AccountView) -> dict[str, str]:
    return {"ETag": f'"{account.version}"'}


#: A money operation: (store, caller, params, deadline, expected version) -> result.
MoneyOperation = Callable[[LedgerStore, str, Params, Deadline, "int | None"], OperationResult]


def run_money_operation(operation: MoneyOperation) -> Response:
    """Authenticate, read the shared headers, run one money operation and answer it."""
    params, username = authenticated_caller()
    deadline = request_deadline()
    expected_version = parse_if_match(request.headers.get("If-Match"))
    result = operation(store(), username, params, deadline, expected_version)
    account = result.account
    response = jsonify(
        {
            "transaction": transaction_json(result.transaction),
            "username": account.username,
            "balance": account.balance,
            "version": account.version,
        }
    )
    response.headers.update(etag(account))
    return response
