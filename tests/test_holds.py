"""Holds: two-phase transfers (``/account/holds``), their expiry, and the sweeper.

Over the Flask test client for the contract, on a bare store directly where that
says it more plainly (expiry by ``sweep_expired``; MockDB's sweeper thread, memory
only). Time is a ``FakeClock`` the test moves by hand: nothing here waits for a hold
to expire. The stores' differences (stalling writers, tampering, the sweeper's
internals) go through the store's driver (``tests/drivers.py``).
Every test ends with exact balances, held money and versions, and with the audit
records the operations wrote. Races between capture, void and expiry are in
``test_holds_races.py``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.ledger.errors import HoldNotPending
from app.ledger.memory.holds import ExpirySweeper
from app.ledger.model import (
    DEFAULT_HOLD_TIMEOUT_S,
    MAX_BALANCE,
    MAX_HOLD_TIMEOUT_S,
    AccountView,
    Deadline,
    HoldStatus,
    OperationType,
    Status,
)
from app.ledger.store import LedgerStore
from tests.clocks import START_S, FakeClock
from tests.drivers import StoreDriver, driver_for, memory_driver
from tests.stores import ADMIN_TOKEN, empty_postgres, new_store, open_account
from tests.threads import JOIN_TIMEOUT_S
from tests.trails import as_seen_by, audit  # the whole trail, gap-free (no touch: expires nothing)

HOLDS = "/account/holds"
COINS = "/account/coins"
AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
CAROL = {"Authorization": "carol-token"}
ADMIN = {"Authorization": ADMIN_TOKEN}
HEADERS = {"aaron": AARON, "bryan": BRYAN, "carol": CAROL}
OPENING = 10_000
HOLD_ID = re.compile(r"hold_[0-9a-f]{32}")
#: What every hold-operation answer carries.
RESULT_KEYS = {"hold", "transaction", "username", "balance", "held", "available", "version"}
HOLD_KEYS = {
    "id", "from", "to", "amount", "captured", "status", "expires_at", "created_at", "reference", "metadata",
}  # fmt: skip

Shape = tuple[str, str | None, str | None, int, str, str | None]


def iso(epoch_s: float) -> str:
    """An instant as the API spells it."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def patient() -> Deadline:
    return Deadline.after_ms(5_000)


# -- fixtures and HTTP helpers ------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def ledger(app: Flask, clock: FakeClock) -> LedgerStore:
    """The app's store on the fake clock, without its background sweeper.

    With the sweeper stopped, a due hold over HTTP is expired only by the next
    operation that touches one of its accounts: exactly what these tests look at.
    """
    store: LedgerStore = app.extensions["ledger"]
    with driver_for(store) as driver:
        driver.stop_sweeper()
        driver.set_clock(clock)  # create_app builds the store, and its config takes no clock
    return store


@pytest.fixture
def carol(client: FlaskClient) -> str:
    """A third account, opened through the admin API like any other."""
    response = client.post(
        "/admin/accounts", json={"username": "carol", "token": "carol-token", "balance": 500}, headers=ADMIN
    )
    assert response.status_code == 201, response.json
    return "carol"


def create(
    client: FlaskClient,
    amount: object,
    *,
    username: str = "aaron",
    to: str = "bryan",
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> TestResponse:
    query = {"username": username, "to": to, "amount": amount, **extra}
    return client.post(HOLDS, query_string=query, headers=dict(headers or HEADERS[username]))


def created(client: FlaskClient, amount: int, **extra: object) -> str:
    """Create a hold that must succeed; its id."""
    response = create(client, amount, **extra)
    assert response.status_code == 201, response.json
    hold_id: str = response.json["hold"]["id"]
    return hold_id


def capture(
    client: FlaskClient,
    hold_id: str,
    username: str,
    amount: object = None,
    headers: Mapping[str, str] | None = None,
) -> TestResponse:
    query: dict[str, object] = {"username": username}
    if amount is not None:
        query["amount"] = amount
    return client.post(
        f"{HOLDS}/{hold_id}/capture", query_string=query, headers=dict(headers or HEADERS[username])
    )


def void(
    client: FlaskClient, hold_id: str, username: str, headers: Mapping[str, str] | None = None
) -> TestResponse:
    return client.post(
        f"{HOLDS}/{hold_id}/void",
        query_string={"username": username},
        headers=dict(headers or HEADERS[username]),
    )


def read_hold(client: FlaskClient, hold_id: str, username: str) -> TestResponse:
    return client.get(f"{HOLDS}/{hold_id}", query_string={"username": username}, headers=HEADERS[username])


def money(client: FlaskClient, username: str) -> dict[str, Any]:
    """``GET /account/coins`` (a touch: it expires what is due first); checks its shape."""
    response = client.get(COINS, query_string={"username": username}, headers=HEADERS[username])
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    assert set(body) == {"username", "balance", "version", "held", "available"}
    assert body["available"] == body["balance"] - body["held"]
    assert response.headers["ETag"] == f'"{body["version"]}"'
    return body


def figures(client: FlaskClient, username: str) -> tuple[int, int, int]:
    """(balance, held, version) of an account."""
    body = money(client, username)
    return body["balance"], body["held"], body["version"]


def shape(record: Mapping[str, Any]) -> Shape:
    return (
        record["type"],
        record["from"],
        record["to"],
        record["amount"],
        record["status"],
        record["reason"],
    )


def assert_verified(client: FlaskClient) -> None:
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 200, response.json
    assert response.json["ok"] is True


def assert_error(response: TestResponse, status: int, code: str) -> str:
    """The contract's error shape with this status and code; its message."""
    assert response.status_code == status, response.json
    assert set(response.json) == {"code", "error", "message"}
    assert (response.json["code"], response.json["error"]) == (status, code)
    message: str = response.json["message"]
    assert message
    return message


def success(kind: str, source: str | None, target: str | None, amount: int) -> Shape:
    return (kind, source, target, amount, "SUCCESS", None)


def failed(kind: str, source: str | None, target: str | None, amount: int, reason: str) -> Shape:
    return (kind, source, target, amount, "FAILED", reason)


# -- creating a hold --------------------------------------------------------------------


def test_a_hold_reserves_money_of_the_payer_and_answers_201(client: FlaskClient, clock: FakeClock) -> None:
    response = create(client, 300)

    assert response.status_code == 201, response.json
    body = response.json
    assert set(body) == RESULT_KEYS
    hold = body["hold"]
    assert set(hold) == HOLD_KEYS
    assert HOLD_ID.fullmatch(hold["id"])
    assert (hold["from"], hold["to"], hold["amount"], hold["captured"], hold["status"]) == (
        "aaron",
        "bryan",
        300,
        0,
        "PENDING",
    )
    assert hold["expires_at"] == iso(START_S + DEFAULT_HOLD_TIMEOUT_S)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", hold["created_at"])
    # The payer's money: still in the balance, no longer available.
    assert (body["username"], body["balance"], body["held"], body["available"], body["version"]) == (
        "aaron",
        OPENING,
        300,
        OPENING - 300,
        1,
    )
    assert response.headers["ETag"] == '"1"'
    assert money(client, "aaron") == {
        "username": "aaron",
        "balance": OPENING,
        "version": 1,
        "held": 300,
        "available": OPENING - 300,
    }
    # The payee has nothing yet, and nothing changed for it.
    assert money(client, "bryan") == {
        "username": "bryan",
        "balance": OPENING,
        "version": 0,
        "held": 0,
        "available": OPENING,
    }
    records = audit(client)
    assert shape(records[-1]) == success("hold", "aaron", "bryan", 300)
    assert body["transaction"] == as_seen_by(records[-1], body["username"])
    assert read_hold(client, hold["id"], "aaron").json == {"hold": hold}
    assert_verified(client)


def test_a_hold_may_come_as_a_json_body(client: FlaskClient) -> None:
    response = client.post(
        HOLDS, json={"username": "aaron", "to": "bryan", "amount": 25, "timeout_s": 60}, headers=AARON
    )
    assert response.status_code == 201, response.json
    assert (response.json["hold"]["amount"], response.json["hold"]["expires_at"]) == (25, iso(START_S + 60))
    assert response.json["held"] == 25


@pytest.mark.parametrize("timeout_s", [1, 2, 3599, 3600, 86_400, MAX_HOLD_TIMEOUT_S])
def test_timeout_s_sets_expires_at(client: FlaskClient, timeout_s: int) -> None:
    response = create(client, 10, timeout_s=timeout_s)
    assert response.status_code == 201, response.json
    assert response.json["hold"]["expires_at"] == iso(START_S + timeout_s)


@pytest.mark.parametrize("timeout_s", ["0", "604801", "1.5", "1e3", "-1", "+5", " 5", "", "abc", "10" * 20])
def test_a_bad_timeout_in_the_query_is_400_and_nothing_is_held(client: FlaskClient, timeout_s: str) -> None:
    before = len(audit(client))
    assert_error(create(client, 10, timeout_s=timeout_s), 400, "invalid_timeout")
    assert figures(client, "aaron") == (OPENING, 0, 0)
    assert len(audit(client)) == before  # refused at the edge, before the ledger


@pytest.mark.parametrize("timeout_s", [0, 604_801, 1.5, -3, True, None, "x", [60], {"s": 60}])
def test_a_bad_timeout_in_json_is_400(client: FlaskClient, timeout_s: object) -> None:
    body = {"username": "aaron", "to": "bryan", "amount": 10, "timeout_s": timeout_s}
    response = client.post(HOLDS, json=body, headers=AARON)
    if timeout_s is None:  # JSON null: the default, like the other optional fields
        assert response.status_code == 201, response.json
        assert response.json["hold"]["expires_at"] == iso(START_S + DEFAULT_HOLD_TIMEOUT_S)
    else:
        assert_error(response, 400, "invalid_timeout")
        assert figures(client, "aaron") == (OPENING, 0, 0)


def test_more_than_available_is_422_insufficient_funds_and_audited(client: FlaskClient) -> None:
    created(client, 9_000)
    opening_records = len(audit(client))

    # 2000 is within the balance (10000) but not within what is available (1000).
    message = assert_error(create(client, 2_000), 422, "insufficient_funds")
    assert message == "aaron has 1000 coins, 2000 requested"
    assert_error(create(client, OPENING + 1), 422, "insufficient_funds")
    assert create(client, 1_000).status_code == 201  # exactly what is left
    assert_error(create(client, 1), 422, "insufficient_funds")

    assert figures(client, "aaron") == (OPENING, OPENING, 2)
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        failed("hold", "aaron", "bryan", 2_000, "insufficient_funds"),
        failed("hold", "aaron", "bryan", OPENING + 1, "insufficient_funds"),
        success("hold", "aaron", "bryan", 1_000),
        failed("hold", "aaron", "bryan", 1, "insufficient_funds"),
    ]
    assert_verified(client)


def test_an_unknown_payee_is_404_and_the_same_account_400(client: FlaskClient) -> None:
    opening_records = len(audit(client))

    assert_error(create(client, 5, to="nobody"), 404, "account_not_found")
    assert_error(create(client, 5, to="aaron"), 400, "same_account")
    assert_error(create(client, 5, to="no body"), 400, "invalid_username")
    assert_error(create(client, 0), 400, "invalid_amount")
    assert_error(create(client, "1.5"), 400, "invalid_amount")
    assert_error(
        client.post(HOLDS, query_string={"username": "aaron", "amount": 5}, headers=AARON),
        400,
        "missing_parameter",
    )
    assert_error(
        client.post(HOLDS, query_string={"username": "aaron", "to": "bryan"}, headers=AARON),
        400,
        "missing_parameter",
    )
    assert_error(create(client, 5, headers=BRYAN), 401, "unauthorized")
    assert_error(client.get(HOLDS, headers=AARON), 405, "method_not_allowed")

    assert figures(client, "aaron") == (OPENING, 0, 0)
    # Only the one that reached the ledger is audited; the rest were refused at the edge.
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        failed("hold", "aaron", "nobody", 5, "account_not_found")
    ]


def test_if_match_applies_to_creating_a_hold(client: FlaskClient) -> None:
    assert_error(create(client, 5, headers={**AARON, "If-Match": '"3"'}), 412, "version_conflict")
    response = create(client, 5, headers={**AARON, "If-Match": '"0"'})
    assert response.status_code == 201, response.json
    assert response.headers["ETag"] == '"1"'
    assert figures(client, "aaron") == (OPENING, 5, 1)


def test_a_hold_that_cannot_get_the_lock_in_time_is_503_and_holds_nothing(
    client: FlaskClient, driver: StoreDriver
) -> None:
    opening_records = len(audit(client))
    with driver.holding_write_lock():
        response = create(client, 50, headers={**AARON, "X-Timeout-Ms": "20"})
    assert_error(response, 503, "timeout")
    assert response.headers["Retry-After"] == "1"
    assert figures(client, "aaron") == (OPENING, 0, 0)
    [record] = audit(client)[opening_records:]
    assert (record["type"], record["from"], record["amount"], record["status"], record["reason"]) == (
        "hold",
        "aaron",
        50,
        "FAILED",
        "timeout",
    )
    assert_verified(client)


# -- available, not balance, is what can be spent --------------------------------------


def test_withdraw_transfer_batch_and_holds_are_limited_by_available(client: FlaskClient) -> None:
    created(client, 9_000)  # aaron: balance 10000, held 9000, available 1000 (v1)
    withdraw = "/account/coins/withdraw"
    transfer = "/account/coins/transfer"
    batch = "/account/coins/batch"

    message = assert_error(
        client.post(withdraw, query_string={"username": "aaron", "amount": 1_001}, headers=AARON),
        422,
        "insufficient_funds",
    )
    assert message == "aaron has 1000 coins, 1001 requested"
    assert_error(
        client.post(
            transfer, query_string={"username": "aaron", "to": "bryan", "amount": 1_001}, headers=AARON
        ),
        422,
        "insufficient_funds",
    )
    atomic = client.post(
        batch,
        json={"username": "aaron", "atomic": True, "operations": [{"type": "withdraw", "amount": 600}] * 2},
        headers=AARON,
    )
    assert atomic.status_code == 422, atomic.json
    assert (atomic.json["error"], atomic.json["index"]) == ("insufficient_funds", 1)
    assert figures(client, "aaron") == (OPENING, 9_000, 1)

    loose = client.post(
        batch,
        json={
            "username": "aaron",
            "operations": [
                {"type": "withdraw", "amount": 600},
                {"type": "transfer", "to": "bryan", "amount": 401},  # 400 left
                {"type": "transfer", "to": "bryan", "amount": 400},
                {"type": "withdraw", "amount": 1},
            ],
        },
        headers=AARON,
    )
    assert loose.status_code == 200, loose.json
    assert [result["status"] for result in loose.json["results"]] == [
        "SUCCESS",
        "FAILED",
        "SUCCESS",
        "FAILED",
    ]
    assert (loose.json["balance"], loose.json["version"]) == (9_000, 3)
    # Everything left is on hold: not one coin more can go out, by any route.
    assert figures(client, "aaron") == (9_000, 9_000, 3)
    assert_error(create(client, 1), 422, "insufficient_funds")
    assert_error(
        client.post(withdraw, query_string={"username": "aaron", "amount": 1}, headers=AARON),
        422,
        "insufficient_funds",
    )
    # A deposit makes money available again.
    assert (
        client.post(
            "/account/coins/add", query_string={"username": "aaron", "amount": 5}, headers=AARON
        ).status_code
        == 200
    )
    assert money(client, "aaron")["available"] == 5
    assert create(client, 5).status_code == 201
    assert figures(client, "aaron") == (9_005, 9_005, 5)
    assert figures(client, "bryan") == (OPENING + 400, 0, 1)
    assert_verified(client)


def test_the_payee_can_spend_nothing_of_a_pending_hold(client: FlaskClient) -> None:
    created(client, 5_000)
    response = client.post(
        "/account/coins/withdraw", query_string={"username": "bryan", "amount": OPENING + 1}, headers=BRYAN
    )
    assert_error(response, 422, "insufficient_funds")
    assert figures(client, "bryan") == (OPENING, 0, 0)


# -- capture ----------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["aaron", "bryan"])
def test_a_full_capture_moves_the_whole_hold(client: FlaskClient, by: str) -> None:
    hold_id = created(client, 300)

    response = capture(client, hold_id, by)

    assert response.status_code == 200, response.json
    body = response.json
    assert set(body) == RESULT_KEYS
    assert (body["hold"]["id"], body["hold"]["status"], body["hold"]["captured"]) == (
        hold_id,
        "CAPTURED",
        300,
    )
    own = {"aaron": (OPENING - 300, 0, 2), "bryan": (OPENING + 300, 0, 1)}[by]
    assert (body["username"], body["balance"], body["held"], body["version"]) == (by, *own)
    assert body["available"] == body["balance"] - body["held"]
    assert response.headers["ETag"] == f'"{own[2]}"'
    assert figures(client, "aaron") == (OPENING - 300, 0, 2)  # the hold, then the capture
    assert figures(client, "bryan") == (OPENING + 300, 0, 1)
    records = audit(client)
    assert shape(records[-1]) == success("capture", "aaron", "bryan", 300)
    assert body["transaction"] == as_seen_by(records[-1], body["username"])
    assert read_hold(client, hold_id, "bryan").json == {"hold": body["hold"]}
    assert_verified(client)


@pytest.mark.parametrize("by", ["aaron", "bryan"])
def test_a_partial_capture_moves_that_much_and_releases_the_rest(client: FlaskClient, by: str) -> None:
    other = created(client, 1_000)  # stays pending throughout
    hold_id = created(client, 300)

    response = capture(client, hold_id, by, 120)

    assert response.status_code == 200, response.json
    hold = response.json["hold"]
    assert (hold["amount"], hold["captured"], hold["status"]) == (300, 120, "CAPTURED")
    assert figures(client, "aaron") == (OPENING - 120, 1_000, 3)
    assert money(client, "aaron")["available"] == OPENING - 120 - 1_000
    assert figures(client, "bryan") == (OPENING + 120, 0, 1)
    assert shape(audit(client)[-1]) == success("capture", "aaron", "bryan", 120)
    assert read_hold(client, other, "aaron").json["hold"]["status"] == "PENDING"
    # Capturing exactly the whole amount by number is a full capture.
    whole = capture(client, other, by, 1_000)
    assert whole.status_code == 200, whole.json
    assert whole.json["hold"]["captured"] == 1_000
    assert figures(client, "aaron") == (OPENING - 1_120, 0, 4)
    assert_verified(client)


def test_a_capture_amount_may_come_in_a_json_body(client: FlaskClient) -> None:
    hold_id = created(client, 300)
    response = client.post(
        f"{HOLDS}/{hold_id}/capture", json={"username": "bryan", "amount": 7}, headers=BRYAN
    )
    assert response.status_code == 200, response.json
    assert response.json["hold"]["captured"] == 7
    assert figures(client, "bryan") == (OPENING + 7, 0, 1)


def test_capturing_more_than_the_hold_is_400_and_leaves_it_pending(client: FlaskClient) -> None:
    hold_id = created(client, 300)
    opening_records = len(audit(client))

    message = assert_error(capture(client, hold_id, "bryan", 301), 400, "invalid_amount")
    assert "300" in message
    assert_error(capture(client, hold_id, "bryan", 0), 400, "invalid_amount")
    assert_error(capture(client, hold_id, "bryan", "12abc"), 400, "invalid_amount")

    assert figures(client, "aaron") == (OPENING, 300, 1)
    assert figures(client, "bryan") == (OPENING, 0, 0)
    assert read_hold(client, hold_id, "aaron").json["hold"]["status"] == "PENDING"
    # The one past the hold reached the ledger and is audited; the malformed ones did not.
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        failed("capture", "aaron", "bryan", 301, "invalid_amount")
    ]
    assert capture(client, hold_id, "bryan", 300).status_code == 200
    assert_verified(client)


def test_a_capture_the_payee_cannot_take_is_422_and_leaves_the_hold_pending(
    client: FlaskClient, ledger: LedgerStore
) -> None:
    open_account(ledger, "whale", MAX_BALANCE - 100)  # room for 100 more coins
    hold_id = created(client, 300, to="whale")

    assert_error(capture(client, hold_id, "aaron"), 422, "balance_overflow")

    assert shape(audit(client)[-1]) == failed("capture", "aaron", "whale", 300, "balance_overflow")
    assert figures(client, "aaron") == (OPENING, 300, 1)
    assert read_hold(client, hold_id, "aaron").json["hold"]["status"] == "PENDING"
    # What does fit can still be captured; the rest goes back to the payer.
    response = capture(client, hold_id, "aaron", 100)
    assert response.status_code == 200, response.json
    assert figures(client, "aaron") == (OPENING - 100, 0, 2)
    assert ledger.account("whale", deadline=patient()) == AccountView("whale", MAX_BALANCE, 1)
    assert_verified(client)


# -- void -------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["aaron", "bryan"])
def test_a_void_releases_the_whole_hold(client: FlaskClient, by: str) -> None:
    hold_id = created(client, 300)

    response = void(client, hold_id, by)

    assert response.status_code == 200, response.json
    body = response.json
    assert set(body) == RESULT_KEYS
    assert (body["hold"]["status"], body["hold"]["captured"], body["hold"]["amount"]) == ("VOIDED", 0, 300)
    own = {"aaron": (OPENING, 0, 2), "bryan": (OPENING, 0, 0)}[by]
    assert (body["username"], body["balance"], body["held"], body["version"]) == (by, *own)
    assert response.headers["ETag"] == f'"{own[2]}"'
    assert figures(client, "aaron") == (OPENING, 0, 2)
    assert figures(client, "bryan") == (OPENING, 0, 0)
    records = audit(client)
    assert shape(records[-1]) == success("void", "aaron", "bryan", 300)
    assert body["transaction"] == as_seen_by(records[-1], body["username"])
    assert_verified(client)


# -- who may see a hold -----------------------------------------------------------------


def test_a_third_party_gets_404_exactly_like_an_unknown_or_malformed_id(
    client: FlaskClient, carol: str
) -> None:
    hold_id = created(client, 300)
    unknown = "hold_" + "0" * 32
    opening_records = len(audit(client))

    def answer(response: TestResponse, asked: str) -> str:
        message = assert_error(response, 404, "hold_not_found")
        return message.replace(asked, "<id>")

    messages = {
        answer(read_hold(client, hold_id, carol), hold_id),
        answer(capture(client, hold_id, carol), hold_id),
        answer(void(client, hold_id, carol), hold_id),
        answer(read_hold(client, unknown, "aaron"), unknown),
        answer(capture(client, unknown, "bryan"), unknown),
        answer(void(client, unknown, "aaron"), unknown),
    }
    for malformed in ("nonsense", "hold_" + "G" * 32, "hold_" + "0" * 31, hold_id.upper()):
        messages.add(answer(read_hold(client, malformed, "aaron"), malformed))
        messages.add(answer(capture(client, malformed, "aaron"), malformed))
        messages.add(answer(void(client, malformed, "bryan"), malformed))
    assert messages == {"No hold <id> of yours."}  # nothing tells a stranger the hold exists

    assert figures(client, "aaron") == (OPENING, 300, 1)
    assert figures(client, carol) == (500, 0, 0)
    assert read_hold(client, hold_id, "aaron").json["hold"]["status"] == "PENDING"
    # The attempts on well-formed ids reached the ledger: audited as the caller's, naming no hold party.
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        failed("capture", carol, None, 0, "hold_not_found"),
        failed("void", carol, None, 0, "hold_not_found"),
        failed("capture", "bryan", None, 0, "hold_not_found"),
        failed("void", "aaron", None, 0, "hold_not_found"),
    ]
    # ... and shown only in the caller's own history.
    history = client.get("/account/transactions", query_string={"username": carol}, headers=CAROL).json
    assert [record["reason"] for record in history["transactions"][:2]] == ["hold_not_found"] * 2
    assert_verified(client)


def test_both_parties_see_the_hold_in_their_history(client: FlaskClient) -> None:
    hold_id = created(client, 300)
    assert capture(client, hold_id, "bryan", 100).status_code == 200
    for username in ("aaron", "bryan"):
        history = client.get(
            "/account/transactions", query_string={"username": username}, headers=HEADERS[username]
        ).json["transactions"]
        assert [(record["type"], record["amount"]) for record in history[:2]] == [
            ("capture", 100),
            ("hold", 300),
        ]


# -- a hold is resolved once --------------------------------------------------------------


@pytest.mark.parametrize(("first", "status"), [("capture", "CAPTURED"), ("void", "VOIDED")])
@pytest.mark.parametrize("second", ["capture", "void"])
@pytest.mark.parametrize("second_by", ["aaron", "bryan"])
def test_a_second_resolution_is_409_naming_the_status(
    client: FlaskClient, first: str, status: str, second: str, second_by: str
) -> None:
    hold_id = created(client, 300)
    resolve = {"capture": capture, "void": void}
    assert resolve[first](client, hold_id, "bryan").status_code == 200
    after = (figures(client, "aaron"), figures(client, "bryan"))

    message = assert_error(resolve[second](client, hold_id, second_by), 409, "hold_not_pending")

    assert message == f"The hold is {status}, no longer PENDING."
    assert (figures(client, "aaron"), figures(client, "bryan")) == after
    assert shape(audit(client)[-1]) == failed(second, "aaron", "bryan", 300, "hold_not_pending")
    assert read_hold(client, hold_id, second_by).json["hold"]["status"] == status
    assert_verified(client)


# -- the audit trail and verification ----------------------------------------------------------


def test_every_hold_operation_is_audited_and_verify_passes(
    client: FlaskClient, clock: FakeClock, carol: str
) -> None:
    opening_records = len(audit(client))

    first = created(client, 300)
    assert_error(create(client, OPENING), 422, "insufficient_funds")
    assert_error(create(client, 5, to="nobody"), 404, "account_not_found")
    assert capture(client, first, "bryan", 100).status_code == 200
    assert_error(capture(client, first, "aaron"), 409, "hold_not_pending")
    assert_error(void(client, first, "bryan"), 409, "hold_not_pending")
    assert_error(void(client, first, carol), 404, "hold_not_found")
    second = created(client, 50, username=carol, to="aaron", timeout_s=10)
    assert_error(capture(client, second, carol, 51), 400, "invalid_amount")
    assert void(client, second, "aaron").status_code == 200
    third = created(client, 70, timeout_s=10)
    clock.advance(10)
    assert_error(capture(client, third, "bryan"), 409, "hold_not_pending")

    assert [shape(record) for record in audit(client)[opening_records:]] == [
        success("hold", "aaron", "bryan", 300),
        failed("hold", "aaron", "bryan", OPENING, "insufficient_funds"),
        failed("hold", "aaron", "nobody", 5, "account_not_found"),
        success("capture", "aaron", "bryan", 100),
        failed("capture", "aaron", "bryan", 300, "hold_not_pending"),
        failed("void", "aaron", "bryan", 300, "hold_not_pending"),
        failed("void", carol, None, 0, "hold_not_found"),
        success("hold", carol, "aaron", 50),
        failed("capture", carol, "aaron", 51, "invalid_amount"),
        success("void", carol, "aaron", 50),
        success("hold", "aaron", "bryan", 70),
        success("expire", "aaron", "bryan", 70),  # due: expired first, by the capture's touch
        failed("capture", "aaron", "bryan", 70, "hold_not_pending"),
    ]
    assert figures(client, "aaron") == (OPENING - 100, 0, 4)
    assert figures(client, "bryan") == (OPENING + 100, 0, 1)
    assert figures(client, carol) == (500, 0, 2)
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 200, response.json
    assert response.json["ok"] is True
    assert response.json["total_balance"] == 2 * OPENING + 500


def test_verify_catches_held_money_that_no_hold_explains(client: FlaskClient, driver: StoreDriver) -> None:
    hold_id = created(client, 300)
    created(client, 200, username="bryan", to="aaron")
    assert capture(client, hold_id, "bryan", 100).status_code == 200
    assert_verified(client)

    driver.adjust("aaron", held=1)  # a coin held by no hold

    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 500
    assert response.json["ok"] is False
    assert response.json["problems"] == ["aaron holds 1 but its pending holds add up to 0"]

    driver.adjust("aaron", held=-1)
    driver.adjust("bryan", held=-200)  # a pending hold whose money is no longer held
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 500
    assert response.json["problems"] == ["bryan holds 0 but its pending holds add up to 200"]


# -- expiry by touch ------------------------------------------------------------------------

#: Operations that touch the payer or the payee of a due hold: each must expire it first.
#: Each returns the response and the status it must have.
Touch = Callable[[FlaskClient, str], tuple[TestResponse, int]]

TOUCHES: dict[str, Touch] = {
    "payer reads its balance": lambda c, _: (
        c.get(COINS, query_string={"username": "aaron"}, headers=AARON),
        200,
    ),
    "payee reads its balance": lambda c, _: (
        c.get(COINS, query_string={"username": "bryan"}, headers=BRYAN),
        200,
    ),
    # The payer had everything on hold: it can spend it only if the hold expired first.
    "payer withdraws": lambda c, _: (
        c.post(
            "/account/coins/withdraw", query_string={"username": "aaron", "amount": OPENING}, headers=AARON
        ),
        200,
    ),
    "payer transfers": lambda c, _: (
        c.post(
            "/account/coins/transfer",
            query_string={"username": "aaron", "to": "carol", "amount": OPENING},
            headers=AARON,
        ),
        200,
    ),
    "payer holds again": lambda c, _: (create(c, OPENING, to="carol"), 201),
    "payer batch": lambda c, _: (
        c.post(
            "/account/coins/batch",
            json={"username": "aaron", "operations": [{"type": "withdraw", "amount": OPENING}]},
            headers=AARON,
        ),
        200,
    ),
    "payee deposits": lambda c, _: (
        c.post("/account/coins/add", query_string={"username": "bryan", "amount": 1}, headers=BRYAN),
        200,
    ),
    "someone pays the payee": lambda c, _: (
        c.post(
            "/account/coins/transfer",
            query_string={"username": "carol", "to": "bryan", "amount": 1},
            headers=CAROL,
        ),
        200,
    ),
    "payee captures": lambda c, hold_id: (capture(c, hold_id, "bryan"), 409),
    "payer voids": lambda c, hold_id: (void(c, hold_id, "aaron"), 409),
    "payee reads the hold": lambda c, hold_id: (read_hold(c, hold_id, "bryan"), 200),
}


@pytest.mark.parametrize("touch", list(TOUCHES))
def test_a_due_hold_expires_before_the_next_operation_on_either_account(
    client: FlaskClient, clock: FakeClock, carol: str, touch: str
) -> None:
    hold_id = created(client, OPENING, timeout_s=60)  # everything aaron has
    hold_records = len(audit(client))
    clock.advance(60)  # exactly expires_at: due

    response, status = TOUCHES[touch](client, hold_id)

    assert response.status_code == status, response.json
    if status == 409:
        assert response.json["message"] == "The hold is EXPIRED, no longer PENDING."
    if touch == "payee reads the hold":
        assert response.json["hold"]["status"] == "EXPIRED"
    records = audit(client)[hold_records:]
    # The expiry comes first, then the operation that touched the account (if it writes).
    assert shape(records[0]) == success("expire", "aaron", "bryan", OPENING)
    assert len(records) == (1 if touch.endswith(("balance", "hold")) else 2)
    hold = read_hold(client, hold_id, "aaron").json["hold"]
    assert (hold["status"], hold["captured"], hold["amount"]) == ("EXPIRED", 0, OPENING)
    aaron = money(client, "aaron")
    assert aaron["held"] == (OPENING if touch == "payer holds again" else 0)  # only the new hold
    assert aaron["version"] >= 2  # the hold, then the release
    assert money(client, "bryan")["held"] == 0
    assert_verified(client)


def test_a_hold_is_not_expired_a_moment_before_expires_at(client: FlaskClient, clock: FakeClock) -> None:
    hold_id = created(client, 300, timeout_s=60)
    clock.advance(59.999)
    assert figures(client, "aaron") == (OPENING, 300, 1)
    assert read_hold(client, hold_id, "bryan").json["hold"]["status"] == "PENDING"
    response = capture(client, hold_id, "bryan")
    assert response.status_code == 200, response.json
    assert figures(client, "bryan") == (OPENING + 300, 0, 1)


def test_a_touch_of_an_unrelated_account_expires_nothing(
    client: FlaskClient, clock: FakeClock, carol: str
) -> None:
    created(client, 300, timeout_s=5)
    records = len(audit(client))
    clock.advance(3600)
    money(client, carol)
    assert (
        client.post(
            "/account/coins/add", query_string={"username": carol, "amount": 1}, headers=CAROL
        ).status_code
        == 200
    )
    assert [record["type"] for record in audit(client)[records:]] == ["deposit"]
    # Its own parties' next touch does.
    assert figures(client, "aaron") == (OPENING, 0, 2)
    assert [record["type"] for record in audit(client)[records:]] == ["deposit", "expire"]


def test_an_expiry_releases_the_hold_exactly_like_a_void(client: FlaskClient, clock: FakeClock) -> None:
    expiring = created(client, 400, timeout_s=30)
    voided = created(client, 400, timeout_s=3600)
    clock.advance(30)
    assert void(client, voided, "aaron").status_code == 200  # the touch expires the other first
    assert figures(client, "aaron") == (OPENING, 0, 4)
    assert figures(client, "bryan") == (OPENING, 0, 0)
    assert read_hold(client, expiring, "aaron").json["hold"]["status"] == "EXPIRED"
    assert read_hold(client, voided, "aaron").json["hold"]["status"] == "VOIDED"
    assert_verified(client)


# -- expiry without a touch: sweep_expired and the sweeper thread ------------------------------------------


@pytest.fixture
def store_on_clock(store_url: str, clock: FakeClock) -> Iterator[LedgerStore]:
    """A bare store of its own on the fake clock (on PostgreSQL: the app's demo data cleared)."""
    if store_url != "memory":
        empty_postgres(store_url)
    store = new_store(store_url, clock=clock)
    try:
        for username in ("aaron", "bryan", "carol"):
            open_account(store, username, 1_000)
        yield store
    finally:
        store.close()
    assert not driver_for(store).sweeper_running()


def test_sweep_expired_expires_every_due_hold_and_nothing_else(
    store_on_clock: LedgerStore, clock: FakeClock
) -> None:
    store = store_on_clock
    driver_for(store).stop_sweeper()  # only this test's sweeps expire anything
    plans = [
        ("aaron", "bryan", 100, 30),
        ("bryan", "carol", 200, 10),
        ("carol", "aaron", 300, 20),
        ("aaron", "carol", 50, 40),
    ]
    holds = {
        amount: store.create_hold(source, target, amount, timeout_s=timeout_s, deadline=patient()).hold.id
        for source, target, amount, timeout_s in plans
    }
    opening_records = len(store.audit_page(limit=500, cursor=None).transactions)

    assert store.sweep_expired(deadline=patient()) == 0
    clock.advance(9.5)
    assert store.sweep_expired(deadline=patient()) == 0
    clock.advance(20.5)  # 30 s: the holds of 10, 20 and 30 s are due
    assert store.sweep_expired(deadline=patient()) == 3
    assert store.sweep_expired(deadline=patient()) == 0

    records = store.audit_page(limit=500, cursor=None).transactions[opening_records:]
    assert [(r.type, r.source, r.target, r.amount, r.status) for r in records] == [
        (OperationType.EXPIRE, "bryan", "carol", 200, Status.SUCCESS),  # oldest deadline first
        (OperationType.EXPIRE, "carol", "aaron", 300, Status.SUCCESS),
        (OperationType.EXPIRE, "aaron", "bryan", 100, Status.SUCCESS),
    ]
    statuses = {
        amount: store.get_hold(
            "aaron" if amount in (100, 50) else "carol", hold_id, deadline=patient()
        ).status
        for amount, hold_id in holds.items()
    }
    assert statuses == {
        100: HoldStatus.EXPIRED,
        200: HoldStatus.EXPIRED,
        300: HoldStatus.EXPIRED,
        50: HoldStatus.PENDING,
    }
    assert store.account("aaron", deadline=patient()) == AccountView("aaron", 1_000, 3, 50)
    assert store.account("bryan", deadline=patient()) == AccountView("bryan", 1_000, 2, 0)
    assert store.verify().ok
    with pytest.raises(HoldNotPending, match="EXPIRED"):
        store.capture_hold("bryan", holds[100], None, deadline=patient())


@pytest.mark.memory_only  # its sweeper's internals; PostgreSQL: test_postgres.py
def test_the_stores_sweeper_expires_an_idle_hold_without_any_touch(
    store_on_clock: LedgerStore, clock: FakeClock
) -> None:
    store = store_on_clock
    driver = memory_driver(store)
    swept = threading.Event()
    sweeper_threads: list[str] = []

    def tell(hold_ids: list[str]) -> None:
        sweeper_threads.append(threading.current_thread().name)
        swept.set()

    driver.after_each_sweep(tell)
    due = store.create_hold("aaron", "bryan", 100, timeout_s=5, deadline=patient()).hold
    later = store.create_hold("aaron", "carol", 200, timeout_s=50, deadline=patient()).hold
    assert driver.sweeper_running()
    records = len(store.audit_page(limit=500, cursor=None).transactions)

    clock.advance(5)
    driver.wake_sweeper()
    assert swept.wait(JOIN_TIMEOUT_S), "the sweeper did not run after the clock passed expires_at"

    # audit_page and verify touch nothing: the sweeper alone expired the hold.
    trail = store.audit_page(limit=500, cursor=None).transactions[records:]
    assert [(r.type, r.source, r.target, r.amount) for r in trail] == [
        (OperationType.EXPIRE, "aaron", "bryan", 100)
    ]
    assert sweeper_threads[0] == "goledger-hold-sweeper"
    assert store.verify().ok
    assert store.get_hold("bryan", due.id, deadline=patient()).status is HoldStatus.EXPIRED
    assert store.get_hold("carol", later.id, deadline=patient()).status is HoldStatus.PENDING
    assert store.account("aaron", deadline=patient()) == AccountView("aaron", 1_000, 3, 200)

    store.close()
    assert not driver.sweeper_running()
    # A stopped sweeper takes no more work (and starts no thread).
    store.create_hold("bryan", "carol", 1, timeout_s=1, deadline=patient())
    assert not driver.sweeper_running()


class _Calls:
    """The callback of a bare sweeper: records the clock at each call; lets a test wait for the next."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.at: list[float] = []
        self.ids: list[list[str]] = []
        self._made = threading.Semaphore(0)

    def __call__(self, hold_ids: list[str]) -> None:
        self.at.append(self.clock())
        self.ids.append(list(hold_ids))
        self._made.release()

    def wait(self) -> bool:
        return self._made.acquire(timeout=JOIN_TIMEOUT_S)


class TappedClock(FakeClock):
    """A fake clock that sets ``tapped`` at the n-th read by the sweeper thread after ``tap_after(n)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tapped = threading.Event()
        self._reads_left = 0

    def tap_after(self, reads: int) -> None:
        self._reads_left = reads

    def __call__(self) -> float:
        value = super().__call__()
        if self._reads_left and threading.current_thread().name == "goledger-hold-sweeper":
            self._reads_left -= 1
            if not self._reads_left:
                self.tapped.set()
        return value


@pytest.fixture
def sweeper_parts(clock: FakeClock) -> Iterator[tuple[ExpirySweeper, _Calls]]:
    calls = _Calls(clock)
    # A long max wait: only wake() (or a minute of real time) makes it look at the clock again.
    sweeper = ExpirySweeper(calls, clock=clock, max_wait_s=60.0)
    yield sweeper, calls
    sweeper.stop(timeout_s=JOIN_TIMEOUT_S)
    assert not sweeper.running


@pytest.mark.memory_only
def test_the_sweeper_runs_when_woken_after_the_clock_passes_a_deadline(
    sweeper_parts: tuple[ExpirySweeper, _Calls], clock: FakeClock
) -> None:
    sweeper, calls = sweeper_parts
    assert not sweeper.running  # the thread starts with the first deadline
    sweeper.schedule(START_S + 30, "hold_a")
    sweeper.schedule(START_S + 90, "hold_b")
    assert sweeper.running
    sweeper.wake()  # nothing is due yet

    clock.advance(30)
    sweeper.wake()
    assert calls.wait(), "not run after the first deadline"
    assert calls.at == [START_S + 30]

    clock.advance(60)
    sweeper.wake()
    assert calls.wait(), "not run after the second deadline"
    assert calls.at == [START_S + 30, START_S + 90]
    assert calls.ids == [["hold_a"], ["hold_b"]]

    sweeper.stop(timeout_s=JOIN_TIMEOUT_S)
    assert not sweeper.running
    sweeper.schedule(START_S, "hold_c")  # ignored once stopped
    assert not sweeper.running
    assert calls.at == [START_S + 30, START_S + 90]


@pytest.mark.memory_only
def test_the_sweeper_survives_a_failing_pass_and_tries_again() -> None:
    clock = TappedClock()
    attempts: list[float] = []
    attempted = threading.Semaphore(0)

    def expire(hold_ids: list[str]) -> None:
        assert hold_ids == ["hold_a"]  # the failed pass's ids come back on the retry
        attempts.append(clock())
        attempted.release()
        if len(attempts) == 1:
            # The sweeper's next two clock reads: scheduling the retry, then checking whether
            # anything is due. After the second, the retry is certainly on its heap.
            clock.tap_after(2)
            raise RuntimeError("the ledger was busy")

    sweeper = ExpirySweeper(expire, clock=clock, max_wait_s=60.0)
    try:
        sweeper.schedule(START_S + 10, "hold_a")
        clock.advance(10)
        sweeper.wake()
        assert attempted.acquire(timeout=JOIN_TIMEOUT_S), "the first pass did not run"
        assert clock.tapped.wait(JOIN_TIMEOUT_S), "the failed pass was not rescheduled"
        # The retry is due one max wait after the failure, on the sweeper's clock.
        clock.advance(60)
        sweeper.wake()
        assert attempted.acquire(timeout=JOIN_TIMEOUT_S), "the failed pass was not retried"
        assert attempts == [START_S + 10, START_S + 70]
        assert sweeper.running
    finally:
        sweeper.stop(timeout_s=JOIN_TIMEOUT_S)
    assert not sweeper.running


@pytest.mark.memory_only
def test_stopping_a_sweeper_that_never_started_is_fine(clock: FakeClock) -> None:
    sweeper = ExpirySweeper(_Calls(clock), clock=clock)
    sweeper.stop(timeout_s=JOIN_TIMEOUT_S)
    sweeper.schedule(START_S, "hold_a")
    assert not sweeper.running


# -- Idempotency-Key ------------------------------------------------------------------------------------


def test_a_retried_hold_is_replayed_and_holds_nothing_twice(client: FlaskClient) -> None:
    headers = {**AARON, "Idempotency-Key": "auth-1"}
    opening_records = len(audit(client))

    first = create(client, 300, headers=headers)
    retry = create(client, 300, headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json == first.json
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert figures(client, "aaron") == (OPENING, 300, 1)
    assert [shape(record) for record in audit(client)[opening_records:]] == [
        success("hold", "aaron", "bryan", 300)
    ]
    # Another timeout is another request.
    assert_error(create(client, 300, headers=headers, timeout_s=60), 409, "idempotency_key_reused")
    assert_error(create(client, 301, headers=headers), 409, "idempotency_key_reused")


def test_a_refused_hold_is_replayed_as_refused(client: FlaskClient) -> None:
    headers = {**AARON, "Idempotency-Key": "auth-2"}
    first = create(client, OPENING + 1, headers=headers)
    retry = create(client, OPENING + 1, headers=headers)
    assert first.status_code == retry.status_code == 422
    assert retry.json == first.json
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len([record for record in audit(client) if record["type"] == "hold"]) == 1


@pytest.mark.parametrize("amount", [None, 120])
def test_a_retried_capture_is_replayed_and_moves_nothing_twice(
    client: FlaskClient, amount: int | None
) -> None:
    hold_id = created(client, 300)
    headers = {**BRYAN, "Idempotency-Key": "capture-1"}
    moved = amount or 300

    first = capture(client, hold_id, "bryan", amount, headers=headers)
    retry = capture(client, hold_id, "bryan", amount, headers=headers)

    assert first.status_code == retry.status_code == 200
    assert retry.json == first.json
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert figures(client, "bryan") == (OPENING + moved, 0, 1)
    assert figures(client, "aaron") == (OPENING - moved, 0, 2)
    assert [record["type"] for record in audit(client)].count("capture") == 1
    # The same key for another amount, or for a void, is not this request.
    assert_error(capture(client, hold_id, "bryan", 7, headers=headers), 409, "idempotency_key_reused")
    assert_error(void(client, hold_id, "bryan", headers=headers), 409, "idempotency_key_reused")
    # Without the key a second capture is a new request, and the hold is resolved already.
    assert_error(capture(client, hold_id, "bryan", amount), 409, "hold_not_pending")
    assert_verified(client)


def test_a_retried_void_is_replayed_and_a_fresh_one_is_409(client: FlaskClient) -> None:
    hold_id = created(client, 300)
    headers = {**AARON, "Idempotency-Key": "void-1"}

    first = void(client, hold_id, "aaron", headers=headers)
    retry = void(client, hold_id, "aaron", headers=headers)

    assert first.status_code == retry.status_code == 200
    assert retry.json == first.json
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert figures(client, "aaron") == (OPENING, 0, 2)
    assert [record["type"] for record in audit(client)].count("void") == 1
    assert_error(void(client, hold_id, "aaron"), 409, "hold_not_pending")
    # Keys are per user: bryan's key of the same name is his own request.
    assert_error(
        void(client, hold_id, "bryan", headers={**BRYAN, "Idempotency-Key": "void-1"}),
        409,
        "hold_not_pending",
    )


def test_if_match_applies_to_capture_and_void_as_the_callers_version(client: FlaskClient) -> None:
    created = client.post("/account/holds?username=aaron&to=bryan&amount=10", headers={"Authorization": "1"})
    hold_id = created.json["hold"]["id"]
    stale = client.post(
        f"/account/holds/{hold_id}/capture?username=bryan", headers={"Authorization": "2", "If-Match": '"99"'}
    )
    assert stale.status_code == 412
    assert stale.json["error"] == "version_conflict"
    void = client.post(
        f"/account/holds/{hold_id}/void?username=aaron", headers={"Authorization": "1", "If-Match": '"1"'}
    )
    assert void.status_code == 200
    assert void.json["hold"]["status"] == "VOIDED"


def test_a_timed_out_hold_is_audited_with_its_payee(store: LedgerStore, driver: StoreDriver) -> None:
    from app.ledger.errors import OperationTimeout
    from app.ledger.model import Deadline

    ledger = store
    open_account(ledger, "payer", 100)
    open_account(ledger, "payee", 0)
    with driver.holding_write_lock(), pytest.raises(OperationTimeout) as raised:
        ledger.create_hold("payer", "payee", 5, timeout_s=60, deadline=Deadline.after_ms(5))
    record = raised.value.transaction
    assert record is not None
    assert (record.source, record.target, record.reason) == ("payer", "payee", "timeout")


def test_a_failed_hold_read_is_counted_as_failed(client: FlaskClient) -> None:
    client.get(f"/account/holds/hold_{'0' * 32}?username=aaron", headers={"Authorization": "1"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'goledger_operations_total{operation="hold_read",outcome="hold_not_found"} 1.0' in text
    assert 'operation="hold_read",outcome="success"' not in text


@pytest.mark.memory_only
def test_a_sweep_pass_looks_only_at_the_holds_it_is_given(
    store_on_clock: LedgerStore, clock: FakeClock
) -> None:
    store = store_on_clock
    driver = memory_driver(store)
    driver.stop_sweeper()
    first = store.create_hold("aaron", "bryan", 10, timeout_s=5, deadline=patient()).hold
    second = store.create_hold("aaron", "carol", 20, timeout_s=5, deadline=patient()).hold
    clock.advance(5)
    driver.sweep_due([first.id, "hold_" + "0" * 32])  # an unknown id is skipped
    assert driver.peek_hold(first.id).status is HoldStatus.EXPIRED  # type: ignore[union-attr]
    assert driver.peek_hold(second.id).status is HoldStatus.PENDING  # type: ignore[union-attr]
    assert store.verify().ok


@pytest.mark.memory_only
def test_a_hold_the_sweeper_pops_too_early_is_scheduled_again(
    store_on_clock: LedgerStore, clock: FakeClock
) -> None:
    """The wall clock stepped back between the sweeper's pop and the store's check."""
    store = store_on_clock
    driver = memory_driver(store)
    driver.stop_sweeper()
    hold = store.create_hold("aaron", "bryan", 10, timeout_s=5, deadline=patient()).hold
    rescheduled = driver.catch_reschedules()
    driver.sweep_due([hold.id])  # not due yet on the store's clock
    assert driver.peek_hold(hold.id).status is HoldStatus.PENDING  # type: ignore[union-attr]
    assert rescheduled == [(START_S + 5, hold.id)]
