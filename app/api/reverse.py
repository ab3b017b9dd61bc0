"""``POST /account/transactions/{id}/reverse``: the recipient sends a transaction back.

The recipient of a transfer (or of a captured hold) sends all or part of it back to
the sender; partial reversals add up to at most the original. Anyone else, like an
unknown id, is answered ``404 transaction_not_found``. The operator's route, for any
transfer, capture, deposit or withdrawal, is in ``app.api.admin`` and shares
``reversal_request``.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response

from app.api.common import MoneyRequest, run_money_operation, tagged
from app.ledger.errors import TransactionNotFound
from app.ledger.model import Deadline, OperationResult
from app.ledger.store import LedgerStore
from app.params import Params, parse_amount
from app.tagging import request_tag

bp = Blueprint("reverse", __name__)

#: A record id as the ledger makes them (``model.new_id``/``id_stamp``: ``tx_`` and 32 hex digits).
_TRANSACTION_ID = re.compile(r"tx_[0-9a-f]{32}")


def checked_id(raw: str) -> str:
    """A path's transaction id; one that no record can have is answered as an unknown one."""
    if _TRANSACTION_ID.fullmatch(raw) is None:
        raise TransactionNotFound(f"No transaction {raw[:64]} that you may reverse.")
    return raw


def reversal_request(raw_id: str, params: Params, username: str | None, operation: str) -> MoneyRequest:
    """A reversal of transaction ``raw_id`` by ``username`` (``None``: the operator)."""
    original = checked_id(raw_id)
    amount = params.get("amount", parse_amount)
    tag = request_tag(params)

    def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> OperationResult:
        return ledger.reverse(
            username, original, amount, deadline=deadline, expected_version=expected_version, tag=tag
        )

    return MoneyRequest(operation, tagged((original, amount), tag), run)


@bp.post("/account/transactions/<transaction_id>/reverse")
def reverse(transaction_id: str) -> Response:
    return run_money_operation(
        lambda params, username: reversal_request(transaction_id, params, username, "reverse")
    )
