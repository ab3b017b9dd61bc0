"""``POST /account/coins/transfer``: an atomic transfer from the caller to another account."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import MoneyRequest, run_money_operation, tagged
from app.ledger.errors import Forbidden, InvalidInput
from app.ledger.model import Deadline, OperationResult
from app.ledger.store import LedgerStore
from app.params import Params, parse_amount, parse_username
from app.tagging import request_tag

bp = Blueprint("transfer", __name__)


def _transfer(params: Params, username: str) -> MoneyRequest:
    source = params.get("from", parse_username)
    if source is not None and source != username:
        raise Forbidden("You can only move money out of your own account.")
    target = params.require("to", parse_username)
    amount = params.require("amount", parse_amount)
    if target == username:
        raise InvalidInput("same_account", "The sender and the recipient are the same account.")
    tag = request_tag(params)

    def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> OperationResult:
        return ledger.transfer(
            username, target, amount, deadline=deadline, expected_version=expected_version, tag=tag
        )

    return MoneyRequest("transfer", tagged((target, amount), tag), run)


@bp.post("/account/coins/transfer")
def transfer() -> Response:
    return run_money_operation(_transfer)
