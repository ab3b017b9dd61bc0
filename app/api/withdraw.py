"""``POST /account/coins/withdraw``: a withdrawal from the caller's account."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import MoneyRequest, run_money_operation, tagged
from app.ledger.model import Deadline, OperationResult
from app.ledger.store import LedgerStore
from app.params import Params, parse_amount
from app.tagging import request_tag

bp = Blueprint("withdraw", __name__)


def withdraw_request(params: Params, username: str) -> MoneyRequest:
    """A withdrawal of ``amount`` from ``username``'s account (by the user, or by the operator)."""
    amount = params.require("amount", parse_amount)
    tag = request_tag(params)

    def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> OperationResult:
        return ledger.withdraw(
            username, amount, deadline=deadline, expected_version=expected_version, tag=tag
        )

    return MoneyRequest("withdraw", tagged((amount,), tag), run)


@bp.post("/account/coins/withdraw")
def withdraw() -> Response:
    return run_money_operation(withdraw_request)
