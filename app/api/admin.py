"""``/admin/...``: accounts, the operator's deposits and withdrawals, the audit trail, its
checkpoints and its verification; admin token only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request

from app.api.common import (
    ADMIN_KEY_SCOPE,
    MoneyRequest,
    audit_record_json,
    page_json,
    request_deadline,
    run_money_operation,
    transaction_json,
)
from app.api.deposit import deposit_request
from app.api.reverse import reversal_request
from app.api.withdraw import withdraw_request
from app.auth import authenticate_admin, new_token, token_digest
from app.extensions import admin_digest, store
from app.ledger.errors import InvalidInput
from app.params import (
    Params,
    page_request,
    parse_checkpoint_sequence,
    parse_opening_balance,
    parse_token,
    parse_username,
)
from app.tagging import request_filter

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _require_admin() -> None:
    authenticate_admin(admin_digest(), request.headers.get("Authorization"))


@bp.post("/accounts")
def create_account() -> tuple[Response, int]:
    params = Params.from_request(request)
    username = params.require("username", parse_username)
    if "token" in request.args:
        raise InvalidInput("invalid_token", "Send the token in the JSON body: URLs end up in logs.")
    chosen = params.body.get("token")
    token = new_token() if chosen is None else parse_token(chosen)
    balance = params.get("balance", parse_opening_balance) or 0
    account = store().create_account(username, token_digest(token), balance, deadline=request_deadline())
    # The only time the token is ever shown: only its digest is kept.
    body = {
        "username": account.username,
        "token": token,
        "balance": account.balance,
        "version": account.version,
    }
    response = jsonify(body)
    return response, 201


@bp.post("/accounts/<username>/deposit")
def deposit(username: str) -> Response:
    """The operator mints coins into an account (audited as a deposit)."""
    return _operator_money(username, "admin_deposit", deposit_request)


@bp.post("/accounts/<username>/withdraw")
def withdraw(username: str) -> Response:
    """The operator removes coins from an account (audited as a withdrawal)."""
    return _operator_money(username, "admin_withdraw", withdraw_request)


def _operator_money(
    username: str, operation: str, prepare: Callable[[Params, str], MoneyRequest]
) -> Response:
    """A user's deposit or withdrawal, run by the operator on the account in the path.

    The operator's ``Idempotency-Key``s live in a namespace of their own; a key's
    fingerprint names the account, so that one key cannot move two accounts' coins.
    """

    def identify() -> tuple[Params, str]:
        return Params.from_request(request), parse_username(username)

    def operator_request(params: Params, account: str) -> MoneyRequest:
        money_request = prepare(params, account)
        return dataclasses.replace(
            money_request, operation=operation, parameters=(account, *money_request.parameters)
        )

    return run_money_operation(operator_request, identify, ADMIN_KEY_SCOPE)


@bp.post("/transactions/<transaction_id>/reverse")
def reverse(transaction_id: str) -> Response:
    """The operator sends back any transfer, capture, deposit or withdrawal, in whole or in part.

    The operator's keys live in their own namespace; a key's fingerprint names the
    transaction, so that one key cannot reverse two.
    """

    def identify() -> tuple[Params, str]:
        return Params.from_request(request), ADMIN_KEY_SCOPE

    return run_money_operation(
        lambda params, _: reversal_request(transaction_id, params, None, "admin_reverse"),
        identify,
        ADMIN_KEY_SCOPE,
    )


@bp.get("/audit")
def audit() -> Response:
    """The whole audit trail, oldest first, with each record's place in the hash chain."""
    limit, cursor = page_request(Params.from_request(request))
    page = store().audit_page(limit=limit, cursor=cursor)
    shown = [audit_record_json(record, page.reversed.get(record.id, 0)) for record in page.transactions]
    return page_json("transactions", shown, page.next_cursor)


@bp.get("/transactions")
def transactions() -> Response:
    """Every account's transactions that pass the history filters, oldest first."""
    params = Params.from_request(request)
    where = request_filter(params, admin=True)
    limit, cursor = page_request(params)
    page = store().transactions(limit=limit, cursor=cursor, where=where)
    shown = [transaction_json(record, None, page.reversed.get(record.id, 0)) for record in page.transactions]
    return page_json("transactions", shown, page.next_cursor)


@bp.get("/audit/checkpoints")
def checkpoints() -> Response:
    """The ledger's checkpoints, newest first: where a verification may start."""
    limit, cursor = page_request(Params.from_request(request))
    page = store().checkpoints(limit=limit, cursor=cursor)
    # A checkpoint's fields are the contract's names: sequence, chain_head, balances_digest, created_at.
    return page_json("checkpoints", list(map(dataclasses.asdict, page.checkpoints)), page.next_cursor)


@bp.get("/verify")
def verify() -> tuple[Response, int]:
    """The whole ledger checked, or with ``from``, the records after that checkpoint."""
    from_sequence = Params.from_request(request).get("from", parse_checkpoint_sequence)
    ledger = store()
    report = ledger.verify(from_sequence=from_sequence)
    if report.ok:
        return jsonify({"ok": True, **report.figures()}), 200
    return jsonify({"ok": False, "problems": report.problems, **report.figures()}), 500
