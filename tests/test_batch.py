"""``POST /account/coins/batch``: many operations of the caller in one request.

Every test asserts exact end states: each account's balance and version, the audit
records the batch wrote (type, parties, amount, status, reason, in item order, with
gap-free sequences) and a passing ``/admin/verify``. Over the Flask test client,
and on each store's ``batch`` directly where that says it more plainly.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.config import MAX_BODY_BYTES
from app.ledger.errors import InvalidInput
from app.ledger.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_BATCH_ITEMS,
    AccountView,
    BatchItem,
    Deadline,
    OperationType,
)
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver
from tests.stores import ADMIN_TOKEN, open_account
from tests.threads import run_together
from tests.trails import as_seen_by, audit

BATCH = "/account/coins/batch"
AARON = {"Authorization": "1"}
ADMIN = {"Authorization": ADMIN_TOKEN}
#: ``whale`` opens this many coins short of the largest balance: a credit past it overflows.
WHALE_HEADROOM = 1_000
#: Every account the HTTP tests look at (``nobody`` never exists).
NAMES = ("aaron", "bryan", "carol", "whale")

Operation = dict[str, Any]
State = dict[str, tuple[int, int]]
Shape = tuple[str, str | None, str | None, int, str, str | None]


# -- helpers ------------------------------------------------------------------------


@pytest.fixture
def ledger(app: Flask) -> LedgerStore:
    """The app's own store, with ``carol`` (empty) and ``whale`` (nearly full) beside the demo accounts."""
    store: LedgerStore = app.extensions["ledger"]
    open_account(store, "carol", 0)
    open_account(store, "whale", MAX_BALANCE - WHALE_HEADROOM)
    return store


def send(
    client: FlaskClient,
    operations: object,
    *,
    atomic: object = None,
    username: str = "aaron",
    headers: Mapping[str, str] = AARON,
) -> TestResponse:
    body: dict[str, object] = {"username": username, "operations": operations}
    if atomic is not None:
        body["atomic"] = atomic
    return client.post(BATCH, json=body, headers=dict(headers))


def state(ledger: LedgerStore, names: Sequence[str] = NAMES) -> State:
    """Each account's (balance, version), read straight from the store."""
    views = {name: ledger.account(name, deadline=Deadline.after_ms(2000)) for name in names}
    return {name: (view.balance, view.version) for name, view in views.items()}


def assert_verified(client: FlaskClient) -> None:
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 200, response.json
    assert response.json["ok"] is True


def shape(record: Mapping[str, Any]) -> Shape:
    return (
        record["type"],
        record["from"],
        record["to"],
        record["amount"],
        record["status"],
        record["reason"],
    )


def expected(operation: Operation, reason: str | None = None, caller: str = "aaron") -> Shape:
    """The audit record an item of ``caller``'s batch writes: SUCCESS, or FAILED for ``reason``."""
    status = "SUCCESS" if reason is None else "FAILED"
    amount = int(operation["amount"])
    if operation["type"] == "add":
        return ("deposit", None, caller, amount, status, reason)
    if operation["type"] == "withdraw":
        return ("withdrawal", caller, None, amount, status, reason)
    return ("transfer", caller, operation["to"], amount, status, reason)


def assert_refused_without_trace(
    client: FlaskClient,
    ledger: LedgerStore,
    response: TestResponse,
    status: int,
    code: str,
    before: State,
    records: int,
) -> None:
    """Refused at the edge: the contract's error shape, no balance changed, nothing audited."""
    assert response.status_code == status, response.json
    assert set(response.json) == {"code", "error", "message"}
    assert response.json["code"] == status
    assert response.json["error"] == code
    assert isinstance(response.json["message"], str)
    assert response.json["message"]
    assert state(ledger) == before
    assert len(audit(client)) == records


def add(amount: int) -> Operation:
    return {"type": "add", "amount": amount}


def withdraw(amount: int) -> Operation:
    return {"type": "withdraw", "amount": amount}


def transfer(to: str, amount: int) -> Operation:
    return {"type": "transfer", "to": to, "amount": amount}


# -- not atomic: each item stands alone ----------------------------------------------


def test_non_atomic_items_run_in_order_and_each_stands_alone(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [
        transfer("bryan", 3_000),  # aaron 7000 (v1), bryan 13000 (v1)
        withdraw(8_000),  # more than the 7000 left: refused
        add(500),  # 7500 (v2)
        transfer("nobody", 10),  # no such recipient
        transfer("whale", WHALE_HEADROOM + 1),  # one coin past whale's largest balance
        transfer("whale", WHALE_HEADROOM),  # fills whale exactly: aaron 6500 (v3), whale v1
        withdraw(6_500),  # 0 (v4)
        withdraw(1),  # nothing left
        add(1),  # 1 (v5)
        transfer("whale", 1),  # whale is full now
    ]
    failures: dict[int, tuple[int, str, str | None]] = {
        1: (422, "insufficient_funds", "aaron has 7000 coins, 8000 requested"),
        3: (404, "account_not_found", None),
        4: (422, "balance_overflow", None),
        7: (422, "insufficient_funds", "aaron has 0 coins, 1 requested"),
        9: (422, "balance_overflow", None),
    }

    response = send(client, operations)

    assert response.status_code == 200, response.json
    body = response.json
    assert set(body) == {"results", "succeeded", "failed", "username", "balance", "version"}
    assert (body["succeeded"], body["failed"]) == (5, 5)
    assert (body["username"], body["balance"], body["version"]) == ("aaron", 1, 5)
    assert response.headers["ETag"] == '"5"'
    assert state(ledger) == before | {
        "aaron": (1, 5),
        "bryan": (13_000, 1),
        "whale": (MAX_BALANCE, 1),
    }

    records = audit(client)[opening_records:]
    reasons = {index: failure[1] for index, failure in failures.items()}
    assert [shape(record) for record in records] == [
        expected(operation, reasons.get(index)) for index, operation in enumerate(operations)
    ]
    assert len({record["created_at"] for record in records}) == 1  # README: one timestamp per batch
    assert len(body["results"]) == len(operations)
    for index, (result, record) in enumerate(zip(body["results"], records, strict=True)):
        assert result["index"] == index
        if index in failures:
            status, code, message = failures[index]
            assert set(result) == {"index", "status", "error"}
            assert result["status"] == "FAILED"
            assert set(result["error"]) == {"code", "error", "message"}
            assert (result["error"]["code"], result["error"]["error"]) == (status, code)
            assert result["error"]["message"] == message or (message is None and result["error"]["message"])
        else:
            assert set(result) == {"index", "status", "transaction"}
            assert result["status"] == "SUCCESS"
            assert result["transaction"] == as_seen_by(record, "aaron")

    # Failures show only in the caller's history; a recipient sees what reached it.
    history = client.get("/account/transactions?username=bryan", headers={"Authorization": "2"}).json
    assert [record["sequence"] for record in history["transactions"]] == [records[0]["sequence"], 2]
    assert_verified(client)


def test_non_atomic_deposits_that_would_overflow_fail_alone(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [add(WHALE_HEADROOM + 1), add(WHALE_HEADROOM - 5), add(6), withdraw(5), add(11), add(10)]
    reasons = {0: "balance_overflow", 2: "balance_overflow", 4: "balance_overflow"}

    response = send(client, operations, username="whale", headers={"Authorization": "whale"})

    assert response.status_code == 200, response.json
    assert (response.json["succeeded"], response.json["failed"]) == (3, 3)
    assert (response.json["balance"], response.json["version"]) == (MAX_BALANCE, 3)
    assert [result["status"] for result in response.json["results"]] == [
        "FAILED" if index in reasons else "SUCCESS" for index in range(len(operations))
    ]
    assert state(ledger) == before | {"whale": (MAX_BALANCE, 3)}
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        expected(operation, reasons.get(index), "whale") for index, operation in enumerate(operations)
    ]
    assert_verified(client)


def test_non_atomic_batch_where_every_item_fails_changes_nothing(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [withdraw(10_001), transfer("nobody", 1), transfer("whale", WHALE_HEADROOM + 1)]

    response = send(client, operations, atomic=False)

    assert response.status_code == 200, response.json
    assert (response.json["succeeded"], response.json["failed"]) == (0, 3)
    assert (response.json["balance"], response.json["version"]) == (10_000, 0)
    assert response.headers["ETag"] == '"0"'
    assert state(ledger) == before
    reasons = ["insufficient_funds", "account_not_found", "balance_overflow"]
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        expected(operation, reason) for operation, reason in zip(operations, reasons, strict=True)
    ]
    assert_verified(client)


# -- atomic: all or nothing ----------------------------------------------------------

#: Six items that succeed together from the opening state (aaron 10,000, whale 1,000 short of full).
FILLERS: tuple[Operation, ...] = (
    transfer("bryan", 1_500),
    add(700),
    transfer("whale", 300),
    withdraw(900),
    transfer("carol", 1_200),
    transfer("whale", 200),
)


def _before_position(position: int) -> tuple[int, int]:
    """aaron's balance and the coins credited to whale once the fillers before ``position`` ran."""
    balance, credited = 10_000, 0
    for operation in FILLERS[:position]:
        sign = 1 if operation["type"] == "add" else -1
        balance += sign * operation["amount"]
        if operation.get("to") == "whale":
            credited += operation["amount"]
    return balance, credited


def failing_item(kind: str, position: int) -> tuple[Operation, int, str | None]:
    """An item that fails at ``position`` (with its status and message, when the message is known).

    At any position after the first, the insufficient withdrawal asks for no more than
    aaron's opening balance, and the overflowing transfer (once whale has been credited)
    for no more than whale's opening headroom: they fail only because of what the items
    before them did to the accounts, which is what an atomic batch must account for.
    """
    balance, credited = _before_position(position)
    if kind == "insufficient_funds":
        amount = balance + 1
        if position > 0:
            assert amount <= 10_000
        return withdraw(amount), 422, f"aaron has {balance} coins, {amount} requested"
    if kind == "account_not_found":
        return transfer("nobody", 1), 404, None
    amount = WHALE_HEADROOM - credited + 1
    if credited:
        assert amount <= WHALE_HEADROOM
    assert amount <= balance  # aaron can pay it: the overflow is the only problem
    return transfer("whale", amount), 422, None


@pytest.mark.parametrize("kind", ["insufficient_funds", "account_not_found", "balance_overflow"])
@pytest.mark.parametrize("position", range(len(FILLERS)))
def test_atomic_batch_failing_at_any_position_applies_nothing(
    client: FlaskClient, ledger: LedgerStore, kind: str, position: int
) -> None:
    operations = list(FILLERS)
    operations[position], status, message = failing_item(kind, position)
    before = state(ledger)
    opening_records = len(audit(client))

    response = send(client, operations, atomic=True)

    assert response.status_code == status, response.json
    body = response.json
    assert set(body) == {"code", "error", "message", "index", "results"}
    assert (body["code"], body["error"], body["index"]) == (status, kind, position)
    if message is not None:
        assert body["message"] == message
    assert len(body["results"]) == len(operations)
    for index, result in enumerate(body["results"]):
        assert set(result) == {"index", "status", "error"}
        assert (result["index"], result["status"]) == (index, "FAILED")
        if index == position:
            assert result["error"] == {"code": status, "error": kind, "message": body["message"]}
        else:
            assert set(result["error"]) == {"code", "error", "message"}
            assert (result["error"]["code"], result["error"]["error"]) == (424, "batch_failed")
            assert result["error"]["message"]

    assert state(ledger) == before
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        expected(operation, kind if index == position else "batch_failed")
        for index, operation in enumerate(operations)
    ]
    assert_verified(client)


def test_atomic_batch_of_fillers_applies_every_item(client: FlaskClient, ledger: LedgerStore) -> None:
    """The control for the test above: without the failing item, the same batch applies in full."""
    before = state(ledger)
    opening_records = len(audit(client))

    response = send(client, list(FILLERS), atomic=True)

    assert response.status_code == 200, response.json
    assert (response.json["succeeded"], response.json["failed"]) == (6, 0)
    assert (response.json["balance"], response.json["version"]) == (6_600, 6)
    assert response.headers["ETag"] == '"6"'
    assert state(ledger) == before | {
        "aaron": (6_600, 6),
        "bryan": (11_500, 1),
        "carol": (1_200, 1),
        "whale": (MAX_BALANCE - 500, 2),
    }
    records = audit(client)[opening_records:]
    assert [shape(record) for record in records] == [expected(operation) for operation in FILLERS]
    assert [result["transaction"] for result in response.json["results"]] == [
        as_seen_by(record, response.json["username"]) for record in records
    ]
    assert_verified(client)


def test_atomic_later_items_see_earlier_ones(client: FlaskClient, ledger: LedgerStore) -> None:
    """A withdrawal larger than the opening balance succeeds after the deposit that covers it."""
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [add(5_000), withdraw(12_000), transfer("bryan", 3_000)]

    response = send(client, operations, atomic=True)

    assert response.status_code == 200, response.json
    body = response.json
    assert (body["succeeded"], body["failed"]) == (3, 0)
    assert (body["username"], body["balance"], body["version"]) == ("aaron", 0, 3)
    assert [(result["index"], result["status"]) for result in body["results"]] == [
        (0, "SUCCESS"),
        (1, "SUCCESS"),
        (2, "SUCCESS"),
    ]
    assert state(ledger) == before | {"aaron": (0, 3), "bryan": (13_000, 1)}
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        expected(operation) for operation in operations
    ]
    assert_verified(client)


def test_atomic_batch_refused_then_the_rest_applies(store: LedgerStore) -> None:
    """On the store: a refused atomic batch leaves no trace of its copies in the next batch."""
    open_account(store, "a", 100)
    open_account(store, "b", 0)
    open_account(store, "c", MAX_BALANCE - 10)
    deadline = Deadline.after_ms(2000)
    good = [
        BatchItem(OperationType.TRANSFER, 30, "b"),
        BatchItem(OperationType.DEPOSIT, 50),
        BatchItem(OperationType.TRANSFER, 10, "c"),  # fills c exactly
        BatchItem(OperationType.TRANSFER, 5, "b"),
    ]
    # a has 110 by then: the withdrawal fails only because of the transfers before it.
    refused = [*good[:3], BatchItem(OperationType.WITHDRAWAL, 100 + 11), good[3]]

    result = store.batch("a", refused, atomic=True, deadline=deadline)

    assert result.failed_index == 3
    assert result.atomic is True
    assert result.account == AccountView("a", 100, 0, 0)
    assert [(item.index, item.status, item.code) for item in result.items] == [
        (0, 424, "batch_failed"),
        (1, 424, "batch_failed"),
        (2, 424, "batch_failed"),
        (3, 422, "insufficient_funds"),
        (4, 424, "batch_failed"),
    ]
    assert result.items[3].message == "a has 110 coins, 111 requested"
    assert [item.transaction.status for item in result.items] == ["FAILED"] * 5
    assert state(store, ["a", "b", "c"]) == {"a": (100, 0), "b": (0, 0), "c": (MAX_BALANCE - 10, 0)}

    # Had the refused batch's credit to c landed, this batch would overflow c: it applies in full.
    applied = store.batch("a", good, atomic=True, deadline=deadline)

    assert applied.failed_index is None
    assert all(item.succeeded for item in applied.items)
    assert applied.account == AccountView("a", 105, 4, 0)
    assert state(store, ["a", "b", "c"]) == {"a": (105, 4), "b": (35, 2), "c": (MAX_BALANCE, 1)}
    sequences = [item.transaction.sequence for item in (*result.items, *applied.items)]
    assert sequences == list(range(4, 4 + 9))
    assert store.verify().ok


@pytest.mark.parametrize(
    ("items", "code"),
    [
        ([], "invalid_batch"),
        ([BatchItem(OperationType.DEPOSIT, 1)] * (MAX_BATCH_ITEMS + 1), "invalid_batch"),
        ([BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.TRANSFER, 5)], "invalid_batch"),
        ([BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.DEPOSIT, 5, "b")], "invalid_batch"),
        ([BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.OPEN, 5)], "invalid_batch"),
        ([BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.WITHDRAWAL, 0)], "invalid_amount"),
        (
            [BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.DEPOSIT, MAX_AMOUNT + 1)],
            "invalid_amount",
        ),
    ],
    ids=["empty", "too many", "transfer without target", "deposit with target", "open", "zero", "too large"],
)
@pytest.mark.parametrize("atomic", [False, True])
def test_batch_rechecks_its_items_on_the_store(
    store: LedgerStore, items: list[BatchItem], code: str, atomic: bool
) -> None:
    open_account(store, "a", 100)
    open_account(store, "b", 0)

    with pytest.raises(InvalidInput) as raised:
        store.batch("a", items, atomic=atomic, deadline=Deadline.after_ms(2000))

    assert raised.value.code == code
    assert state(store, ["a", "b"]) == {"a": (100, 0), "b": (0, 0)}
    assert len(store.audit_page(limit=500, cursor=None).transactions) == 2


# -- limits and validation -----------------------------------------------------------


def test_the_largest_batch_applies_in_full(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    opening_records = len(audit(client))

    response = send(client, [add(1)] * MAX_BATCH_ITEMS)

    assert MAX_BATCH_ITEMS == 8189
    assert response.status_code == 200, response.json
    body = response.json
    assert (body["succeeded"], body["failed"]) == (8189, 0)
    assert (body["balance"], body["version"]) == (10_000 + 8189, 8189)
    assert [result["index"] for result in body["results"]] == list(range(8189))
    assert state(ledger) == before | {"aaron": (18_189, 8189)}
    records = audit(client)[opening_records:]
    assert len(records) == 8189
    assert {shape(record) for record in records} == {("deposit", None, "aaron", 1, "SUCCESS", None)}
    assert_verified(client)


def test_the_largest_atomic_batch_applies_in_full(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    opening_records = len(audit(client))

    response = send(client, [transfer("bryan", 1)] * MAX_BATCH_ITEMS, atomic=True)

    assert response.status_code == 200, response.json
    assert (response.json["succeeded"], response.json["failed"]) == (8189, 0)
    assert state(ledger) == before | {"aaron": (10_000 - 8189, 8189), "bryan": (10_000 + 8189, 8189)}
    assert len(audit(client)) == opening_records + 8189
    assert_verified(client)


@pytest.mark.parametrize("atomic", [False, True])
def test_one_item_too_many_is_refused_whole(client: FlaskClient, ledger: LedgerStore, atomic: bool) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = send(client, [add(1)] * (MAX_BATCH_ITEMS + 1), atomic=atomic)

    assert_refused_without_trace(client, ledger, response, 400, "invalid_batch", before, records)


def _body_of_length(length: int) -> bytes:
    """A valid one-item batch padded with an ignored field to exactly ``length`` bytes."""
    prefix = b'{"username":"aaron","operations":[{"type":"add","amount":1}],"pad":"'
    suffix = b'"}'
    return prefix + b"x" * (length - len(prefix) - len(suffix)) + suffix


def test_a_body_of_exactly_one_mebibyte_is_accepted(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    body = _body_of_length(MAX_BODY_BYTES)
    assert len(body) == 1024 * 1024

    response = client.post(BATCH, data=body, content_type="application/json", headers=AARON)

    assert response.status_code == 200, response.json
    assert state(ledger) == before | {"aaron": (10_001, 1)}


def test_a_body_over_one_mebibyte_is_413(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = client.post(
        BATCH, data=_body_of_length(MAX_BODY_BYTES + 1), content_type="application/json", headers=AARON
    )

    assert_refused_without_trace(client, ledger, response, 413, "payload_too_large", before, records)


ADD_ONE = add(1)

INVALID_BATCHES: dict[str, dict[str, object]] = {
    "operations missing": {},
    "operations null": {"operations": None},
    "operations an object": {"operations": ADD_ONE},
    "operations a string": {"operations": "add"},
    "operations a number": {"operations": 1},
    "operations empty": {"operations": []},
    "item a number": {"operations": [ADD_ONE, 5]},
    "item a list": {"operations": [ADD_ONE, ["add", 1]]},
    "item null": {"operations": [ADD_ONE, None]},
    "item a string": {"operations": [ADD_ONE, "add"]},
    "type missing": {"operations": [ADD_ONE, {"amount": 1}]},
    "type null": {"operations": [ADD_ONE, {"type": None, "amount": 1}]},
    "type unknown": {"operations": [ADD_ONE, {"type": "steal", "amount": 1}]},
    "type the audit name": {"operations": [ADD_ONE, {"type": "deposit", "amount": 1}]},
    "type another case": {"operations": [ADD_ONE, {"type": "ADD", "amount": 1}]},
    "type not a string": {"operations": [ADD_ONE, {"type": 1, "amount": 1}]},
    "unknown type before a bad amount": {"operations": [ADD_ONE, {"type": "x"}, add(0)]},
    "atomic a string": {"atomic": "true", "operations": [ADD_ONE]},
    "atomic a number": {"atomic": 1, "operations": [ADD_ONE]},
    "atomic zero": {"atomic": 0, "operations": [ADD_ONE]},
    "atomic a list": {"atomic": [], "operations": [ADD_ONE]},
}


@pytest.mark.parametrize("body", INVALID_BATCHES.values(), ids=INVALID_BATCHES.keys())
def test_a_malformed_batch_is_invalid_batch_and_nothing_runs(
    client: FlaskClient, ledger: LedgerStore, body: dict[str, object]
) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = client.post(BATCH, json={"username": "aaron", **body}, headers=AARON)

    assert_refused_without_trace(client, ledger, response, 400, "invalid_batch", before, records)


BAD_ITEMS: dict[str, tuple[Operation, int, str]] = {
    "amount zero": (add(0), 400, "invalid_amount"),
    "amount negative": (withdraw(-5), 400, "invalid_amount"),
    "amount a float": ({"type": "add", "amount": 1.5}, 400, "invalid_amount"),
    "amount a whole float": ({"type": "add", "amount": 1000.0}, 400, "invalid_amount"),
    "amount in exponent form": ({"type": "add", "amount": "1e3"}, 400, "invalid_amount"),
    "amount a boolean": ({"type": "add", "amount": True}, 400, "invalid_amount"),
    "amount past the bound": (transfer("bryan", MAX_AMOUNT + 1), 400, "invalid_amount"),
    "amount with a sign": ({"type": "add", "amount": "+5"}, 400, "invalid_amount"),
    "amount with a space": ({"type": "add", "amount": " 5"}, 400, "invalid_amount"),
    "amount a list": ({"type": "withdraw", "amount": [5]}, 400, "invalid_amount"),
    "amount missing": ({"type": "add"}, 400, "missing_parameter"),
    "amount null": ({"type": "withdraw", "amount": None}, 400, "missing_parameter"),
    "transfer without to": ({"type": "transfer", "amount": 5}, 400, "missing_parameter"),
    "transfer to null": ({"type": "transfer", "to": None, "amount": 5}, 400, "missing_parameter"),
    "transfer to a bad name": (transfer("bad name!", 5), 400, "invalid_username"),
    "transfer to a number": ({"type": "transfer", "to": 7, "amount": 5}, 400, "invalid_username"),
    "transfer to the caller": (transfer("aaron", 5), 400, "same_account"),
    "transfer from a bad name": ({**transfer("bryan", 5), "from": "a b"}, 400, "invalid_username"),
    "transfer from another user": ({**transfer("carol", 5), "from": "bryan"}, 403, "forbidden"),
}


@pytest.mark.parametrize("atomic", [False, True])
@pytest.mark.parametrize(("item", "status", "code"), BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
def test_a_bad_item_refuses_the_whole_batch(
    client: FlaskClient, ledger: LedgerStore, item: Operation, status: int, code: str, atomic: bool
) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = send(client, [add(1), transfer("bryan", 1), item, withdraw(1)], atomic=atomic)

    assert_refused_without_trace(client, ledger, response, status, code, before, records)
    assert "Operation 2" in response.json["message"]


def test_from_the_caller_and_plain_digit_strings_are_accepted(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)

    response = send(client, [{**transfer("bryan", 7), "from": "aaron"}, {"type": "add", "amount": "007"}])

    assert response.status_code == 200, response.json
    assert (response.json["succeeded"], response.json["balance"]) == (2, 10_000)
    assert state(ledger) == before | {"aaron": (10_000, 2), "bryan": (10_007, 1)}


@pytest.mark.parametrize(
    "raw_item",
    [
        '{"type": "withdraw", "amount": 1, "amount": 1000}',
        '{"type": "transfer", "type": "add", "to": "bryan", "amount": 1}',
        '{"type": "transfer", "to": "bryan", "to": "carol", "amount": 1}',
    ],
    ids=["amount twice", "type twice", "to twice"],
)
def test_an_item_giving_a_key_twice_with_different_values_is_conflicting(
    client: FlaskClient, ledger: LedgerStore, raw_item: str
) -> None:
    """README: a repeated JSON key with different values is 400 conflicting_parameters; an
    item's fields are its parameters (not an ignored field), so guessing one would move money
    the client may not have meant to move."""
    before = state(ledger)
    records = len(audit(client))
    body = '{"username": "aaron", "operations": [' + raw_item + "]}"

    response = client.post(BATCH, data=body, content_type="application/json", headers=AARON)

    assert_refused_without_trace(client, ledger, response, 400, "conflicting_parameters", before, records)


def test_an_item_naming_another_sender_is_403_before_its_other_parameters(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = send(client, [{"type": "transfer", "from": "bryan", "to": "carol", "amount": 0}])

    assert_refused_without_trace(client, ledger, response, 403, "forbidden", before, records)


# -- authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "body", "headers"),
    [
        ("", {"username": "aaron"}, {}),
        ("", {"username": "aaron"}, {"Authorization": "2"}),
        ("", {"username": "aaron"}, {"Authorization": "Bearer "}),
        ("", {}, AARON),
        ("", {"username": "bryan"}, AARON),
        ("?username=bryan", {}, AARON),
        ("", {"username": "ghost"}, AARON),
    ],
    ids=[
        "no token",
        "wrong token",
        "empty bearer",
        "no username",
        "someone else",
        "someone else in query",
        "unknown",
    ],
)
def test_batch_needs_the_callers_token(
    client: FlaskClient, ledger: LedgerStore, query: str, body: dict[str, str], headers: dict[str, str]
) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = client.post(
        BATCH + query, json={**body, "operations": [withdraw(100), transfer("carol", 100)]}, headers=headers
    )

    assert_refused_without_trace(client, ledger, response, 401, "unauthorized", before, records)
    assert response.json["message"] == "Invalid username or token."


def test_batch_accepts_bearer_tokens_and_the_query_string_username(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)

    response = client.post(
        f"{BATCH}?username=bryan",
        json={"operations": [transfer("aaron", 40)]},
        headers={"Authorization": "Bearer 2"},
    )

    assert response.status_code == 200, response.json
    assert state(ledger) == before | {"aaron": (10_040, 1), "bryan": (9_960, 1)}


def test_items_act_on_the_callers_account_only(client: FlaskClient, ledger: LedgerStore) -> None:
    """A username (or from) inside an item does not change whose money moves."""
    before = state(ledger)

    response = send(
        client,
        [
            {**withdraw(100), "username": "bryan"},
            {**transfer("carol", 50), "username": "bryan"},
        ],
    )

    assert response.status_code == 200, response.json
    assert state(ledger) == before | {"aaron": (9_850, 2), "carol": (50, 1)}

    # Naming another sender is refused outright, and a conflicting caller too.
    refused = send(client, [transfer("carol", 50), {**transfer("carol", 50), "from": "bryan"}])
    assert refused.status_code == 403
    conflicting = client.post(
        f"{BATCH}?username=bryan", json={"username": "aaron", "operations": [withdraw(1)]}, headers=AARON
    )
    assert (conflicting.status_code, conflicting.json["error"]) == (400, "conflicting_parameters")
    assert state(ledger) == before | {"aaron": (9_850, 2), "carol": (50, 1)}


# -- If-Match ------------------------------------------------------------------------


@pytest.mark.parametrize("atomic", [False, True])
def test_if_match_mismatch_applies_nothing_and_audits_every_item(
    client: FlaskClient, ledger: LedgerStore, atomic: bool
) -> None:
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [add(10), transfer("bryan", 20), withdraw(30)]

    response = send(client, operations, atomic=atomic, headers={**AARON, "If-Match": '"3"'})

    assert response.status_code == 412, response.json
    assert set(response.json) == {"code", "error", "message"}
    assert (response.json["code"], response.json["error"]) == (412, "version_conflict")
    assert state(ledger) == before
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        expected(operation, "version_conflict") for operation in operations
    ]
    assert_verified(client)


@pytest.mark.parametrize("atomic", [False, True])
def test_if_match_is_checked_once_before_the_first_item(
    client: FlaskClient, ledger: LedgerStore, atomic: bool
) -> None:
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [add(10), transfer("bryan", 20), withdraw(30)]

    response = send(client, operations, atomic=atomic, headers={**AARON, "If-Match": '"0"'})

    assert response.status_code == 200, response.json
    assert (response.json["succeeded"], response.json["version"]) == (3, 3)
    assert response.headers["ETag"] == '"3"'
    assert state(ledger) == before | {"aaron": (9_960, 3), "bryan": (10_020, 1)}

    # The version the batch started from is gone now.
    stale = send(client, [add(1)], atomic=atomic, headers={**AARON, "If-Match": '"0"'})
    assert stale.status_code == 412
    current = send(client, [add(1)], atomic=atomic, headers={**AARON, "If-Match": response.headers["ETag"]})
    assert current.status_code == 200
    assert state(ledger) == before | {"aaron": (9_961, 4), "bryan": (10_020, 1)}
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        *(expected(operation) for operation in operations),
        expected(add(1), "version_conflict"),
        expected(add(1)),
    ]
    assert_verified(client)


def test_an_if_match_that_names_no_version_is_refused_unaudited(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = send(client, [add(1)], headers={**AARON, "If-Match": "seven"})

    assert_refused_without_trace(client, ledger, response, 412, "version_conflict", before, records)


# -- deadlines -----------------------------------------------------------------------


@pytest.mark.parametrize("atomic", [False, True])
def test_a_batch_past_its_deadline_applies_nothing(
    driver: StoreDriver, client: FlaskClient, ledger: LedgerStore, atomic: bool
) -> None:
    before = state(ledger)
    opening_records = len(audit(client))
    operations = [add(10), transfer("bryan", 20), withdraw(30)]

    with driver.holding_write_lock():
        response = send(client, operations, atomic=atomic, headers={**AARON, "X-Timeout-Ms": "20"})

    assert response.status_code == 503, response.json
    assert (response.json["code"], response.json["error"]) == (503, "timeout")
    assert response.headers["Retry-After"] == "1"
    assert state(ledger) == before
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        expected(operation, "timeout") for operation in operations
    ]
    assert_verified(client)


def test_a_bad_deadline_header_is_refused_unaudited(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    records = len(audit(client))

    response = send(client, [add(1)], headers={**AARON, "X-Timeout-Ms": "0"})

    assert_refused_without_trace(client, ledger, response, 400, "invalid_timeout", before, records)


# -- idempotency ---------------------------------------------------------------------


def test_a_keyed_batch_is_replayed_not_rerun(client: FlaskClient, ledger: LedgerStore) -> None:
    key = {**AARON, "Idempotency-Key": "payout-1"}
    operations = [transfer("bryan", 100), withdraw(99_999), add(7)]

    first = send(client, operations, headers=key)
    assert first.status_code == 200, first.json
    assert "Idempotent-Replayed" not in first.headers
    after_first = state(ledger)
    records = len(audit(client))
    assert after_first["aaron"] == (9_907, 2)

    again = send(client, operations, headers=key)
    # The same validated values, spelled differently: the same request.
    respelled = client.post(
        f"{BATCH}?username=aaron",
        json={
            "atomic": False,
            "operations": [
                {"type": "transfer", "to": "bryan", "amount": "100"},
                {"type": "withdraw", "amount": "099999"},
                add(7),
            ],
        },
        headers=key,
    )

    for replay in (again, respelled):
        assert replay.status_code == 200
        assert replay.json == first.json
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.headers["ETag"] == first.headers["ETag"]
    assert state(ledger) == after_first
    assert len(audit(client)) == records
    assert_verified(client)


def test_a_keyed_atomic_failure_is_replayed_not_rerun(client: FlaskClient, ledger: LedgerStore) -> None:
    before = state(ledger)
    key = {**AARON, "Idempotency-Key": "payout-2"}
    operations = [add(5), withdraw(99_999), transfer("bryan", 1)]

    first = send(client, operations, atomic=True, headers=key)
    assert (first.status_code, first.json["error"], first.json["index"]) == (422, "insufficient_funds", 1)
    records = len(audit(client))

    again = send(client, operations, atomic=True, headers=key)

    assert again.status_code == 422
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert state(ledger) == before
    assert len(audit(client)) == records
    assert_verified(client)


def test_a_key_reused_with_another_batch_is_409(client: FlaskClient, ledger: LedgerStore) -> None:
    key = {**AARON, "Idempotency-Key": "payout-3"}
    operations = [transfer("bryan", 100), add(7)]
    assert send(client, operations, headers=key).status_code == 200
    after_first = state(ledger)
    records = len(audit(client))

    others = [
        send(client, [transfer("bryan", 101), add(7)], headers=key),
        send(client, [add(7), transfer("bryan", 100)], headers=key),
        send(client, [transfer("carol", 100), add(7)], headers=key),
        send(client, [*operations, add(1)], headers=key),
        send(client, operations, atomic=True, headers=key),
        send(client, operations, headers={**key, "If-Match": '"2"'}),
        client.post("/account/coins/add?username=aaron&amount=7", headers=key),
    ]

    for response in others:
        assert_refused_without_trace(
            client, ledger, response, 409, "idempotency_key_reused", after_first, records
        )


def test_a_keyed_batch_that_timed_out_runs_on_retry(
    driver: StoreDriver, client: FlaskClient, ledger: LedgerStore
) -> None:
    before = state(ledger)
    key = {**AARON, "Idempotency-Key": "payout-4"}
    operations = [transfer("bryan", 100), add(7)]

    with driver.holding_write_lock():
        timed_out = send(client, operations, headers={**key, "X-Timeout-Ms": "20"})
    assert timed_out.status_code == 503
    assert state(ledger) == before

    retried = send(client, operations, headers=key)
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers
    replayed = send(client, operations, headers=key)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json == retried.json
    assert state(ledger) == before | {"aaron": (9_907, 2), "bryan": (10_100, 1)}
    assert_verified(client)


# -- concurrency ---------------------------------------------------------------------

POOL = [f"pool{index}" for index in range(8)]
POOL_OPENING = 5_000
THREADS = 10
BATCHES_PER_THREAD = 8


def test_concurrent_batches_conserve_money(app: Flask, client: FlaskClient) -> None:
    for name in POOL:
        created = client.post(
            "/admin/accounts",
            json={"username": name, "token": f"token-{name}", "balance": POOL_OPENING},
            headers=ADMIN,
        )
        assert created.status_code == 201, created.json
    opening_records = len(audit(client))

    def worker(seed: int) -> list[tuple[str, list[Operation], bool, int, dict[str, Any]]]:
        rng = random.Random(seed)
        own_client = app.test_client()
        outcomes = []
        for batch in range(BATCHES_PER_THREAD):
            caller = rng.choice(POOL)
            operations = [
                transfer(rng.choice([name for name in POOL if name != caller]), rng.randint(1, 600))
                for _ in range(rng.randint(1, 25))
            ]
            atomic = rng.random() < 0.5
            if batch == BATCHES_PER_THREAD - 1:
                # More than the whole pool holds: this atomic batch is refused whatever the timing.
                atomic = True
                operations.append(transfer(operations[0]["to"], POOL_OPENING * len(POOL) + 1))
            response = own_client.post(
                BATCH,
                json={"username": caller, "atomic": atomic, "operations": operations},
                headers={"Authorization": f"Bearer token-{caller}"},
            )
            outcomes.append((caller, operations, atomic, response.status_code, response.json))
        return outcomes

    results = run_together([lambda seed=seed: worker(seed) for seed in range(THREADS)])
    outcomes = [outcome for thread in results for outcome in thread]

    succeeded = failed = 0
    #: (first sequence, caller, items, per-item failure) of every batch that applied something.
    placed: list[tuple[int, str, list[Operation], list[str | None]]] = []
    for caller, operations, atomic, status, body in outcomes:
        if status == 200:
            assert [result["index"] for result in body["results"]] == list(range(len(operations)))
            assert body["succeeded"] + body["failed"] == len(operations)
            assert not atomic or body["failed"] == 0
            succeeded += body["succeeded"]
            failed += body["failed"]
            offsets = {
                result["transaction"]["sequence"] - result["index"]
                for result in body["results"]
                if result["status"] == "SUCCESS"
            }
            assert len(offsets) <= 1
            if offsets:
                reasons = [
                    result["error"]["error"] if "error" in result else None for result in body["results"]
                ]
                placed.append((offsets.pop(), caller, operations, reasons))
        else:
            assert atomic, body
            assert (status, body["error"]) == (422, "insufficient_funds")
            failed += len(body["results"])
    assert succeeded > 0
    assert any(status != 200 for *_, status, _ in outcomes)

    balances = {}
    for name in POOL:
        response = client.get(f"/account/coins?username={name}", headers={"Authorization": f"token-{name}"})
        assert response.status_code == 200
        balances[name] = response.json["balance"]
    assert all(balance >= 0 for balance in balances.values())
    assert sum(balances.values()) == POOL_OPENING * len(POOL)

    records = audit(client)[opening_records:]
    assert len({record["id"] for record in records}) == len(records)
    assert {record["type"] for record in records} == {"transfer"}
    assert sum(record["status"] == "SUCCESS" for record in records) == succeeded
    assert sum(record["status"] == "FAILED" for record in records) == failed
    assert {record["reason"] for record in records} <= {None, "insufficient_funds", "batch_failed"}
    replayed = {name: POOL_OPENING for name in POOL}
    for record in records:
        if record["status"] == "SUCCESS":
            replayed[record["from"]] -= record["amount"]
            replayed[record["to"]] += record["amount"]
    assert replayed == balances
    # Each batch's records, failed items included, are contiguous and in item order.
    everything = audit(client)
    for first, caller, operations, reasons in placed:
        assert [shape(record) for record in everything[first - 1 : first - 1 + len(operations)]] == [
            expected(operation, reason, caller) for operation, reason in zip(operations, reasons, strict=True)
        ]
    assert_verified(client)


def test_a_null_atomic_means_the_default(client: FlaskClient, ledger: LedgerStore) -> None:
    response = client.post(
        BATCH,
        json={"username": "aaron", "atomic": None, "operations": [{"type": "add", "amount": 1}]},
        headers=AARON,
    )
    assert response.status_code == 200
    assert response.json["succeeded"] == 1


def test_metrics_count_every_item_of_a_batch_by_its_outcome(ledger: LedgerStore) -> None:
    """``goledger_operations`` counts a batch item by item: kind and outcome each."""
    before = ledger.counts().operations
    items = [
        BatchItem(OperationType.TRANSFER, 5, "bryan"),
        BatchItem(OperationType.DEPOSIT, 7),
        BatchItem(OperationType.WITHDRAWAL, MAX_AMOUNT),  # more than aaron has
        BatchItem(OperationType.TRANSFER, 1, "carol"),
    ]
    ledger.batch("aaron", items, atomic=False, deadline=Deadline.after_ms(5000))
    refused = ledger.batch("aaron", items, atomic=True, deadline=Deadline.after_ms(5000))
    assert refused.failed_index == 2  # atomic: refused whole, the other items "batch_failed"
    after = ledger.counts().operations
    added = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert {key: number for key, number in added.items() if number} == {
        ("transfer", "success"): 2,
        ("deposit", "success"): 1,
        ("withdrawal", "insufficient_funds"): 2,
        ("transfer", "batch_failed"): 2,
        ("deposit", "batch_failed"): 1,
    }
