"""``GET /account/coins``: the caller's balance, now or as of a point in the audit trail."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import authenticated_caller, current_request, etag, request_deadline
from app.extensions import store
from app.jsonio import json_response
from app.ledger.errors import InvalidInput
from app.params import Params, parse_sequence
from app.tagging import parse_time

bp = Blueprint("balance", __name__)

_parse_at = parse_time("at")


@bp.get("/account/coins")
def get_balance() -> Response:
    current = current_request()
    params, username = authenticated_caller(current)
    deadline = request_deadline(current.environ)
    if params.gives("at") or params.gives("sequence"):
        return _balance_at(params, username)
    account = store().account(username, deadline=deadline)
    return json_response(
        {
            "username": account.username,
            "balance": account.balance,
            "version": account.version,
            "held": account.held,
            "available": account.available,
        },
        headers=etag(account),
    )


def _balance_at(params: Params, username: str) -> Response:
    """``?at=`` or ``?sequence=``: the balance right after the account's last record at or
    before that point; no ``ETag`` (it is no version of the account to match)."""
    at = params.get("at", _parse_at)
    sequence = params.get("sequence", parse_sequence)
    if at is not None and sequence is not None:
        raise InvalidInput("invalid_parameter", "Give at or sequence, not both.")
    found = store().balance_at(username, sequence=sequence, at=at)
    return json_response(
        {
            "username": found.username,
            "balance": found.balance,
            "as_of": {"sequence": found.sequence, "created_at": found.created_at},
        }
    )
