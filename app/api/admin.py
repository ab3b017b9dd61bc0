"""``/admin/...``: account creation (and later, audit and verification), admin token only."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from app.api.common import request_deadline, store
from app.auth import authenticate_admin, new_token, token_digest
from app.params import Params, parse_opening_balance, parse_token, parse_username

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _require_admin() -> None:
    authenticate_admin(current_app.extensions["ledger_admin_digest"], request.headers.get("Authorization"))


@bp.post("/accounts")
def create_account() -> tuple[Response, int]:
    params = Params.from_request(request)
    username = params.require("username", parse_username)
    token = params.get("token", parse_token) or new_token()
    balance = params.get("balance", parse_opening_balance) or 0
    account = store().create_account(username, token_digest(token), balance, deadline=request_deadline())
    # The only time the token is ever shown: only its digest is kept.
    body = {
        "username": account.username,
        "token": token,
        "balance": account.balance,
        "version": account.version,
    }
    return jsonify(body), 201
