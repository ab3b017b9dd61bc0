"""``GET /account/transactions``: the caller's transactions, newest first, by cursor, filtered."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import authenticated_caller, page_json, request_deadline, transaction_json
from app.extensions import store
from app.params import page_request
from app.tagging import request_filter

bp = Blueprint("history", __name__)


@bp.get("/account/transactions")
def history() -> Response:
    params, username = authenticated_caller()
    request_deadline()  # validated like every /account operation; history waits on no lock that needs it
    limit, cursor = page_request(params)
    page = store().history(username, limit=limit, cursor=cursor, where=request_filter(params))
    reversed_amounts = page.reversed
    shown = [
        transaction_json(record, username, reversed_amounts.get(record.id, 0)) for record in page.transactions
    ]
    return page_json("transactions", shown, page.next_cursor)
