"""``GET /account/coins``: the caller's balance."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.api.common import authenticated_caller, etag, request_deadline
from app.extensions import store

bp = Blueprint("balance", __name__)


@bp.get("/account/coins")
def get_balance() -> Response:
    _, username = authenticated_caller()
    account = store().account(username, deadline=request_deadline())
    response = jsonify(
        {
            "username": account.username,
            "balance": account.balance,
            "version": account.version,
            "held": account.held,
            "available": account.available,
        }
    )
    response.headers.update(etag(account))
    return response
