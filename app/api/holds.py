"""``/account/holds``: two-phase transfers. Reserve money, then capture or void it, once.

Creating a hold needs the payer's token; either party of a hold may read, capture
or void it. A hold the caller is not a party of is ``404 hold_not_found``, exactly
like an unknown id.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify

from app.api.common import (
    MoneyRequest,
    authenticated_caller,
    hold_json,
    request_deadline,
    run_money_operation,
    tagged,
)
from app.extensions import store
from app.ledger.errors import HoldNotFound, InvalidInput
from app.ledger.model import DEFAULT_HOLD_TIMEOUT_S, Deadline
from app.ledger.outcomes import Result
from app.ledger.store import LedgerStore
from app.params import Params, parse_amount, parse_hold_timeout, parse_username
from app.tagging import request_tag

bp = Blueprint("holds", __name__)

_HOLD_ID = re.compile(r"hold_[0-9a-f]{32}")


def _hold_id(hold_id: str) -> str:
    if _HOLD_ID.fullmatch(hold_id) is None:
        raise HoldNotFound(f"No hold {hold_id[:64]} of yours.")
    return hold_id


@bp.post("/account/holds")
def create_hold() -> Response:
    def prepare(params: Params, username: str) -> MoneyRequest:
        target = params.require("to", parse_username)
        amount = params.require("amount", parse_amount)
        timeout_s = params.get("timeout_s", parse_hold_timeout) or DEFAULT_HOLD_TIMEOUT_S
        if target == username:
            raise InvalidInput("same_account", "The payer and the payee are the same account.")
        tag = request_tag(params)

        def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> Result:
            return ledger.create_hold(
                username,
                target,
                amount,
                timeout_s=timeout_s,
                deadline=deadline,
                expected_version=expected_version,
                tag=tag,
            )

        return MoneyRequest("hold", tagged((target, amount, timeout_s), tag), run, success_status=201)

    return run_money_operation(prepare)


@bp.post("/account/holds/<hold_id>/capture")
def capture_hold(hold_id: str) -> Response:
    def prepare(params: Params, username: str) -> MoneyRequest:
        checked_id = _hold_id(hold_id)
        amount = params.get("amount", parse_amount)

        def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> Result:
            return ledger.capture_hold(
                username, checked_id, amount, deadline=deadline, expected_version=expected_version
            )

        return MoneyRequest("capture", (checked_id, amount), run)

    return run_money_operation(prepare)


@bp.post("/account/holds/<hold_id>/void")
def void_hold(hold_id: str) -> Response:
    def prepare(params: Params, username: str) -> MoneyRequest:
        checked_id = _hold_id(hold_id)

        def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> Result:
            return ledger.void_hold(
                username, checked_id, deadline=deadline, expected_version=expected_version
            )

        return MoneyRequest("void", (checked_id,), run)

    return run_money_operation(prepare)


@bp.get("/account/holds/<hold_id>")
def get_hold(hold_id: str) -> Response:
    _, username = authenticated_caller()
    hold = store().get_hold(username, _hold_id(hold_id), deadline=request_deadline())
    return jsonify({"hold": hold_json(hold)})
