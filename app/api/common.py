"""What the blueprints share: the store accessor, deadlines, and serialisation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Request, Response, jsonify, request

from app.auth import authenticate
from app.errors import error_response
from app.extensions import config, store
from app.jsonio import json_response
from app.ledger.errors import LedgerError
from app.ledger.model import (
    AccountView,
    BatchResult,
    Deadline,
    Hold,
    HoldResult,
    ItemOutcome,
    Tag,
    Transaction,
)
from app.ledger.outcomes import Result
from app.ledger.store import LedgerStore
from app.params import Params, parse_idempotency_key, parse_if_match, parse_timeout_ms


def current_request() -> Request:
    """This request's object itself: read once, then used without the context-local proxy."""
    found: Request = request._get_current_object()  # type: ignore[attr-defined]
    return found


def request_deadline(environ: dict[str, Any] | None = None) -> Deadline:
    """The deadline of this request's operation: ``X-Timeout-Ms`` or the configured default.

    ``environ``: this request's WSGI environ, when the caller has it at hand.
    """
    headers = current_request().environ if environ is None else environ
    return Deadline.after_ms(parse_timeout_ms(headers.get("HTTP_X_TIMEOUT_MS"), config().op_timeout_ms))


def authenticated_caller(current: Request | None = None) -> tuple[Params, str]:
    """The request's parameters and its authenticated username (``current``: this request)."""
    current = current_request() if current is None else current
    params = Params.from_request(current)
    return params, authenticate(store(), params, current.environ.get("HTTP_AUTHORIZATION"))


def tagged(parameters: tuple[object, ...], tag: Tag | None) -> tuple[object, ...]:
    """An operation's defining parameters with its reference and metadata, when it has them
    (an untagged request's parameters, and so its idempotency fingerprint, stay as they were)."""
    return parameters if tag is None else (*parameters, *tag)


def transaction_json(
    transaction: Transaction, viewer: str | None = None, reversed_amount: int = 0
) -> dict[str, Any]:
    """A record as the API shows it to ``viewer``: with ``balance_after``, that account's
    balance right after it (``None``: the operator's view, with both parties' balances);
    ``reversed_amount``: how much of it has been reversed so far (every record shows it,
    0 for one never reversed or not reversible)."""
    shown = _record_json(transaction)
    shown["reverses"] = transaction.reverses
    shown["reversed_amount"] = reversed_amount
    if viewer is None:
        shown["from_balance_after"] = transaction.from_balance_after
        shown["to_balance_after"] = transaction.to_balance_after
    else:
        shown["balance_after"] = transaction.balance_after(viewer)
    return shown


def _record_json(transaction: Transaction) -> dict[str, Any]:
    metadata = transaction.metadata
    return {
        "id": transaction.id,
        "sequence": transaction.sequence,
        "type": transaction.type,
        "from": transaction.source,
        "to": transaction.target,
        "amount": transaction.amount,
        "status": transaction.status,
        "reason": transaction.reason,
        "created_at": transaction.created_at,
        "reference": transaction.reference,
        "metadata": {} if metadata is None else orjson.loads(metadata),
    }


def audit_record_json(record: Transaction, reversed_amount: int = 0) -> dict[str, Any]:
    """An audit record as ``/admin/audit`` shows it: the transaction and its chain links."""
    return {
        **transaction_json(record, None, reversed_amount),
        "previous_hash": record.previous_hash,
        "hash": record.hash,
    }


def etag(account: AccountView) -> tuple[tuple[str, str]]:
    """The ``ETag`` header of an answer about ``account``: its version."""
    return (("ETag", f'"{account.version}"'),)


@dataclass(frozen=True, slots=True)
class MoneyRequest:
    """A validated money operation (or batch), ready to run.

    ``parameters`` are the validated values that define it: a retry with the same
    ``Idempotency-Key`` must carry the same ones.
    """

    operation: str
    parameters: tuple[object, ...]
    run: Callable[[LedgerStore, Deadline, int | None], Result]
    #: The status of a success (201 when the operation creates something).
    success_status: int = 200


#: The scope of the operator's idempotency keys (never a username: those cannot hold "@").
ADMIN_KEY_SCOPE = "@admin"


def run_money_operation(
    prepare: Callable[[Params, str], MoneyRequest],
    identify: Callable[[], tuple[Params, str]] = authenticated_caller,
    key_scope: str | None = None,
) -> Response:
    """Identify the account, validate, run one money operation (at most once per key), answer it.

    ``identify``: the request's parameters and the account it acts on (by default the
    authenticated caller's); ``key_scope``: whose ``Idempotency-Key`` namespace the key
    lives in (by default the account's: each user's keys are their own).
    """
    params, username = identify()
    money_request = prepare(params, username)
    environ = current_request().environ
    deadline = request_deadline(environ)
    expected_version = parse_if_match(environ.get("HTTP_IF_MATCH"))
    key = parse_idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
    ledger = store()
    if key is None:
        return _result_response(
            money_request.run(ledger, deadline, expected_version), money_request.success_status
        )
    fingerprint = _fingerprint(money_request, expected_version)
    outcome = ledger.idempotent(
        username if key_scope is None else key_scope,
        key,
        fingerprint,
        deadline,
        lambda: money_request.run(ledger, deadline, expected_version),
    )
    if isinstance(outcome.result, LedgerError):
        error = outcome.result
        response = error_response(error.status, error.code, error.message, error.headers)
    else:
        response = _result_response(outcome.result, money_request.success_status)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _fingerprint(money_request: MoneyRequest, expected_version: int | None) -> str:
    canonical = json.dumps(
        [money_request.operation, list(money_request.parameters), expected_version], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def page_json(key: str, items: list[dict[str, Any]], next_cursor: str | None) -> Response:
    """One page of a paged read: its ``items`` under ``key``, and the cursor of the next page."""
    return jsonify({key: items, "next_cursor": next_cursor})


def hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "from": hold.source,
        "to": hold.target,
        "amount": hold.amount,
        "captured": hold.captured,
        "status": hold.status.value,
        "expires_at": hold.expires_at,
        "created_at": hold.created_at,
        "reference": None if hold.tag is None else hold.tag.reference,
        "metadata": {} if hold.tag is None or hold.tag.metadata is None else orjson.loads(hold.tag.metadata),
    }


def _result_response(result: Result, success_status: int) -> Response:
    if isinstance(result, BatchResult):
        return _batch_response(result)
    if isinstance(result, HoldResult):
        return _hold_response(result, success_status)
    account = result.account
    return json_response(
        {
            "transaction": transaction_json(result.transaction, account.username),
            "username": account.username,
            "balance": account.balance,
            "version": account.version,
        },
        headers=etag(account),
    )


def _item_json(item: ItemOutcome, caller: str) -> dict[str, Any]:
    if item.code is None:  # ``item.succeeded``, without a property call for each of thousands
        shown = transaction_json(item.transaction, caller)
        return {"index": item.index, "status": "SUCCESS", "transaction": shown}
    return {
        "index": item.index,
        "status": "FAILED",
        "error": {"code": item.status, "error": item.code, "message": item.message},
    }


_dumps = orjson.dumps


def _batch_response(result: BatchResult) -> Response:
    # Each item encoded as it is made, its dicts freed at once: thousands of them alive
    # until one final encoding would be promoted and walked by the garbage collector.
    caller = result.account.username
    items = b",".join([_dumps(_item_json(item, caller)) for item in result.items])
    results = orjson.Fragment(b"[" + items + b"]")
    account = result.account
    if result.failed_index is not None:
        failing = result.items[result.failed_index]
        response = jsonify(
            {
                "code": failing.status,
                "error": failing.code,
                "message": failing.message,
                "index": failing.index,
                "results": results,
            }
        )
        response.status_code = failing.status or 500
        return response
    succeeded = sum(1 for item in result.items if item.code is None)
    return json_response(
        {
            "results": results,
            "succeeded": succeeded,
            "failed": len(result.items) - succeeded,
            "username": account.username,
            "balance": account.balance,
            "version": account.version,
        },
        headers=etag(account),
    )


def _hold_response(result: HoldResult, status: int) -> Response:
    account = result.account
    return json_response(
        {
            "hold": hold_json(result.hold),
            "transaction": transaction_json(result.transaction, account.username),
            "username": account.username,
            "balance": account.balance,
            "held": account.held,
            "available": account.available,
            "version": account.version,
        },
        status,
        etag(account),
    )
