"""``POST /account/coins/add``: a deposit into the caller's account."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import MoneyRequest, run_money_operation, tagged
from app.extensions import config
from app.ledger.errors import Forbidden
from app.ledger.model import Deadline, OperationResult
from app.ledger.store import LedgerStore
from app.params import Params, parse_amount
from app.tagging import request_tag

bp = Blueprint("deposit", __name__)


def _deposit(params: Params, username: str) -> MoneyRequest:
    if not config().self_deposit:
        raise Forbidden("Deposits are made by the operator (LEDGER_SELF_DEPOSIT=0).")
    return deposit_request(params, username)


def deposit_request(params: Params, username: str) -> MoneyRequest:
    """A deposit of ``amount`` into ``username``'s account (the user's own, or the operator's)."""
    amount = params.require("amount", parse_amount)
    tag = request_tag(params)

    def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> OperationResult:
        return ledger.deposit(username, amount, deadline=deadline, expected_version=expected_version, tag=tag)

    return MoneyRequest("deposit", tagged((amount,), tag), run)


@bp.post("/account/coins/add")
def deposit() -> Response:
    return run_money_operation(_deposit)
