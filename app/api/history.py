"""``GET /account/transactions``: the caller's transactions, newest first, by cursor."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.api.common import authenticated_caller, request_deadline, transaction_json
from app.extensions import store
from app.params import DEFAULT_PAGE_LIMIT, parse_cursor, parse_limit

bp = Blueprint("history", __name__)


@bp.get("/account/transactions")
def history() -> Response:
    params, username = authenticated_caller()
    request_deadline()  # validated like every /account operation; history waits on no lock that needs it
    limit = params.get("limit", parse_limit) or DEFAULT_PAGE_LIMIT
    cursor = params.get("cursor", parse_cursor)
    page = store().history(username, limit=limit, cursor=cursor)
    return jsonify(
        {
            "transactions": [transaction_json(record) for record in page.transactions],
            "next_cursor": page.next_cursor,
        }
    )
