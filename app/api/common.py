"""What the blueprints share: the store accessor, deadlines, and serialisation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, jsonify, request

from app.auth import authenticate
from app.config import Config
from app.errors import error_response
from app.ledger.errors import LedgerError
from app.ledger.model import AccountView, Deadline, OperationResult, Transaction
from app.ledger.store import LedgerStore
from app.params import Params, parse_idempotency_key, parse_if_match, parse_timeout_ms


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


def audit_record_json(record: Transaction) -> dict[str, Any]:
    """An audit record as ``/admin/audit`` shows it: the transaction and its chain links."""
    return {**transaction_json(record), "previous_hash": record.previous_hash, "hash": record.hash}


def etag(account: AccountView) -> dict[str, str]:
    return {"ETag": f'"{account.version}"'}


@dataclass(frozen=True, slots=True)
class MoneyRequest:
    """A validated money operation, ready to run.

    ``parameters`` are the validated values that define it: a retry with the same
    ``Idempotency-Key`` must carry the same ones.
    """

    operation: str
    parameters: tuple[object, ...]
    run: Callable[[LedgerStore, Deadline, int | None], OperationResult]


def run_money_operation(prepare: Callable[[Params, str], MoneyRequest]) -> Response:
    """Authenticate, validate, run one money operation (at most once per key) and answer it."""
    params, username = authenticated_caller()
    money_request = prepare(params, username)
    deadline = request_deadline()
    expected_version = parse_if_match(request.headers.get("If-Match"))
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    ledger = store()
    if key is None:
        return _operation_response(money_request.run(ledger, deadline, expected_version))
    fingerprint = _fingerprint(money_request, expected_version)
    outcome = ledger.idempotent(
        username, key, fingerprint, deadline, lambda: money_request.run(ledger, deadline, expected_version)
    )
    replay_headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    if isinstance(outcome.result, LedgerError):
        error = outcome.result
        return error_response(error.status, error.code, error.message, {**error.headers, **replay_headers})
    response = _operation_response(outcome.result)
    response.headers.update(replay_headers)
    return response


def _fingerprint(money_request: MoneyRequest, expected_version: int | None) -> str:
    canonical = json.dumps(
        [money_request.operation, list(money_request.parameters), expected_version], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _operation_response(result: OperationResult) -> Response:
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
