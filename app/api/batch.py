"""``POST /account/coins/batch``: up to 8189 operations of the caller in one request.

The whole batch is validated before anything runs (any bad item is a 400 for the
request), then applied under one write-lock acquisition: each item on its own, or
all or nothing with ``"atomic": true``.
"""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.common import MoneyRequest, run_money_operation, tagged
from app.ledger.errors import Forbidden, InvalidInput, LedgerError
from app.ledger.model import MAX_BATCH_ITEMS, BatchItem, Deadline, OperationType
from app.ledger.outcomes import Result
from app.ledger.store import LedgerStore
from app.params import Params, parse_amount, parse_username
from app.tagging import request_tag

bp = Blueprint("batch", __name__)

_TYPES = {
    "add": OperationType.DEPOSIT,
    "withdraw": OperationType.WITHDRAWAL,
    "transfer": OperationType.TRANSFER,
}


def _invalid_batch(message: str) -> InvalidInput:
    return InvalidInput("invalid_batch", message)


def _item(params: Params, index: int, raw: object, username: str) -> BatchItem:
    if not isinstance(raw, dict):
        raise _invalid_batch(f"Operation {index} is not a JSON object.")
    try:
        params.require_unique_keys(raw)
    except LedgerError as error:
        error.message = f"Operation {index}: {error.message}"
        raise
    type_name = raw.get("type")
    kind = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if kind is None:
        raise _invalid_batch(f"Operation {index} has no type among add, withdraw and transfer.")
    try:
        # The single endpoints' order: the sender (403) before the other parameters (400).
        source = raw.get("from")
        if kind is OperationType.TRANSFER and source is not None and parse_username(source) != username:
            raise Forbidden("You can only move money out of your own account.")
        if raw.get("amount") is None:
            raise InvalidInput("missing_parameter", "The amount parameter is required.")
        amount = parse_amount(raw["amount"])
        target = None
        if kind is OperationType.TRANSFER:
            if raw.get("to") is None:
                raise InvalidInput("missing_parameter", "The to parameter is required.")
            target = parse_username(raw["to"])
            if target == username:
                raise InvalidInput("same_account", "The sender and the recipient are the same account.")
        tag = request_tag(params, raw) if "reference" in raw or "metadata" in raw else None
    except LedgerError as error:
        error.message = f"Operation {index}: {error.message}"
        raise
    return BatchItem(kind, amount, target, tag)


def _batch(params: Params, username: str) -> MoneyRequest:
    atomic = params.body.get("atomic")
    if atomic is None:  # absent or null: the default, as for every other parameter
        atomic = False
    if not isinstance(atomic, bool):
        raise _invalid_batch("atomic must be true or false.")
    operations = params.body.get("operations")
    if not isinstance(operations, list) or not 1 <= len(operations) <= MAX_BATCH_ITEMS:
        raise _invalid_batch(f"operations must be a list of 1 to {MAX_BATCH_ITEMS} operations.")
    items = tuple(_item(params, index, raw, username) for index, raw in enumerate(operations))

    def run(ledger: LedgerStore, deadline: Deadline, expected_version: int | None) -> Result:
        return ledger.batch(
            username, items, atomic=atomic, deadline=deadline, expected_version=expected_version
        )

    # (type, to, amount[, reference, metadata]) an item: its kind serialises as its value.
    parameters = (atomic, *[tagged((kind, target, amount), tag) for kind, amount, target, tag in items])
    return MoneyRequest("batch", parameters, run)


@bp.post("/account/coins/batch")
def batch() -> Response:
    return run_money_operation(_batch)
