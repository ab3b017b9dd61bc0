"""``GET /account/coins``: the caller's balance."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import authenticated_caller, current_request, etag, request_deadline
from app.extensions import store
from app.jsonio import json_response

bp = Blueprint("balance", __name__)


@bp.get("/account/coins")
def get_balance() -> Response:
    current = current_request()
    _, username = authenticated_caller(current)
    account = store().account(username, deadline=request_deadline(current.environ))
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
