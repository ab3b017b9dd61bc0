"""Deposits, withdrawals and transfers over HTTP: results, failures, audit, versions, deadlines."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from app.api.common import store
from app.ledger.model import MAX_BALANCE, MAX_BATCH_ITEMS, BatchItem, OperationType
from tests.drivers import StoreDriver, driver_for
from tests.stores import ADMIN_TOKEN, app_config

AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
TRANSACTION_ID = re.compile(r"tx_[0-9a-f]{32}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def account(client: FlaskClient, username: str = "aaron", token: str = "1") -> dict[str, int]:
    response = client.get(f"/account/coins?username={username}", headers={"Authorization": token})
    assert response.status_code == 200
    body: dict[str, int] = response.json
    return body


def last_record(client: FlaskClient, username: str = "aaron", token: str = "1") -> dict[str, object]:
    response = client.get(
        f"/account/transactions?username={username}&limit=1", headers={"Authorization": token}
    )
    record: dict[str, object] = response.json["transactions"][0]
    return record


def test_the_original_readme_examples_work_verbatim(client: FlaskClient) -> None:
    response = client.get("/account/coins?username=aaron", headers={"Authorization": "1"})
    assert response.status_code == 200
    assert response.json == {
        "username": "aaron",
        "balance": 10_000,
        "version": 0,
        "held": 0,
        "available": 10_000,
    }
    assert response.headers["ETag"] == '"0"'
    assert response.content_type == "application/json"

    response = client.post(
        "/account/coins/transfer?username=aaron&from=aaron&to=bryan&amount=100",
        headers={"Authorization": "1"},
    )
    assert response.status_code == 200
    assert response.json["balance"] == 9_900
    assert account(client, "bryan", "2")["balance"] == 10_100


def test_deposit(client: FlaskClient) -> None:
    response = client.post("/account/coins/add?username=aaron&amount=250", headers=AARON)
    assert response.status_code == 200
    body = response.json
    assert body["username"] == "aaron"
    assert body["balance"] == 10_250
    assert body["version"] == 1
    assert response.headers["ETag"] == '"1"'
    transaction = body["transaction"]
    assert TRANSACTION_ID.fullmatch(transaction["id"])
    assert TIMESTAMP.fullmatch(transaction["created_at"])
    assert {key: transaction[key] for key in ("type", "from", "to", "amount", "status", "reason")} == {
        "type": "deposit",
        "from": None,
        "to": "aaron",
        "amount": 250,
        "status": "SUCCESS",
        "reason": None,
    }
    assert last_record(client) == transaction


def test_withdrawal(client: FlaskClient) -> None:
    response = client.post("/account/coins/withdraw?username=aaron&amount=10000", headers=AARON)
    assert response.status_code == 200
    assert response.json["balance"] == 0
    transaction = response.json["transaction"]
    assert (transaction["type"], transaction["from"], transaction["to"]) == ("withdrawal", "aaron", None)


def test_transfer_moves_money_atomically_and_bumps_both_versions(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/transfer", json={"username": "aaron", "to": "bryan", "amount": 4_000}, headers=AARON
    )
    assert response.status_code == 200
    transaction = response.json["transaction"]
    assert (transaction["type"], transaction["from"], transaction["to"], transaction["amount"]) == (
        "transfer",
        "aaron",
        "bryan",
        4_000,
    )
    assert account(client)["balance"] == 6_000
    assert account(client)["version"] == 1
    assert account(client, "bryan", "2") == {
        "username": "bryan",
        "balance": 14_000,
        "version": 1,
        "held": 0,
        "available": 14_000,
    }
    # The recipient sees the transfer in their history too, with their own balance after it.
    assert transaction["balance_after"] == 6_000
    assert last_record(client, "bryan", "2") == {**transaction, "balance_after": 14_000}


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/account/coins/withdraw", "amount=10001"),
        ("/account/coins/transfer", "to=bryan&amount=10001"),
    ],
)
def test_insufficient_funds_changes_nothing_and_is_audited(
    client: FlaskClient, path: str, query: str
) -> None:
    response = client.post(f"{path}?username=aaron&{query}", headers=AARON)
    assert response.status_code == 422
    assert response.json == {
        "code": 422,
        "error": "insufficient_funds",
        "message": "aaron has 10000 coins, 10001 requested",
    }
    assert account(client)["balance"] == 10_000
    assert account(client)["version"] == 0
    assert account(client, "bryan", "2")["balance"] == 10_000
    record = last_record(client)
    assert (record["status"], record["reason"], record["amount"]) == ("FAILED", "insufficient_funds", 10_001)


def test_transfer_to_an_unknown_account_is_404_and_audited(client: FlaskClient) -> None:
    response = client.post("/account/coins/transfer?username=aaron&to=nobody&amount=5", headers=AARON)
    assert response.status_code == 404
    assert response.json["error"] == "account_not_found"
    assert account(client)["balance"] == 10_000
    record = last_record(client)
    assert (record["to"], record["status"], record["reason"]) == ("nobody", "FAILED", "account_not_found")


def test_transfer_to_yourself_is_rejected(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/transfer?username=aaron&from=aaron&to=aaron&amount=5", headers=AARON
    )
    assert response.status_code == 400
    assert response.json["error"] == "same_account"
    assert account(client)["version"] == 0


def test_a_credit_past_the_64_bit_limit_is_rejected(client: FlaskClient) -> None:
    whale = client.post(
        "/admin/accounts",
        json={"username": "whale", "token": "whale-token"},
        headers={"Authorization": ADMIN_TOKEN},
    )
    assert whale.status_code == 201
    with client.application.app_context():
        # Opening balances are capped at 10^15, so reach the edge through the store.
        from app.ledger.model import Deadline

        ledger = store()
        deposits = (MAX_BALANCE - 10**15) // 10**15 + 1  # the first that passes MAX_BALANCE - 10^15
        while deposits:
            items = [BatchItem(OperationType.DEPOSIT, 10**15)] * min(deposits, MAX_BATCH_ITEMS)
            ledger.batch("whale", items, atomic=True, deadline=Deadline.after_ms(10_000))
            deposits -= len(items)
        assert ledger.account("whale", deadline=Deadline.after_ms(1000)).balance > MAX_BALANCE - 10**15
    before = account(client, "whale", "whale-token")
    response = client.post(
        "/account/coins/add?username=whale&amount=1000000000000000", headers={"Authorization": "whale-token"}
    )
    assert response.status_code == 422
    assert response.json["error"] == "balance_overflow"
    assert account(client, "whale", "whale-token") == before
    transfer = client.post("/account/coins/transfer?username=aaron&to=whale&amount=10000", headers=AARON)
    if before["balance"] + 10_000 > MAX_BALANCE:
        assert transfer.status_code == 422
        assert transfer.json["error"] == "balance_overflow"
        assert account(client)["balance"] == 10_000


def test_if_match_applies_only_at_the_named_version(client: FlaskClient) -> None:
    ok = client.post("/account/coins/add?username=aaron&amount=5", headers={**AARON, "If-Match": '"0"'})
    assert ok.status_code == 200
    assert ok.json["version"] == 1
    stale = client.post(
        "/account/coins/withdraw?username=aaron&amount=5", headers={**AARON, "If-Match": '"0"'}
    )
    assert stale.status_code == 412
    assert stale.json["error"] == "version_conflict"
    assert account(client)["balance"] == 10_005
    record = last_record(client)
    assert (record["status"], record["reason"]) == ("FAILED", "version_conflict")
    assert (
        client.post(
            "/account/coins/transfer?username=aaron&to=bryan&amount=5", headers={**AARON, "If-Match": "*"}
        ).status_code
        == 200
    )


def test_a_malformed_if_match_applies_nothing(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/add?username=aaron&amount=5", headers={**AARON, "If-Match": "seven"}
    )
    assert response.status_code == 412
    assert response.json["error"] == "version_conflict"
    assert account(client)["balance"] == 10_000


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/account/coins/add", "amount=5"),
        ("/account/coins/withdraw", "amount=5"),
        ("/account/coins/transfer", "to=bryan&amount=5"),
    ],
)
def test_an_operation_past_its_deadline_is_503_applies_nothing_and_is_audited(
    client: FlaskClient, driver: StoreDriver, path: str, query: str
) -> None:
    with driver.holding_write_lock():
        response = client.post(f"{path}?username=aaron&{query}", headers={**AARON, "X-Timeout-Ms": "20"})
    assert response.status_code == 503
    assert response.json["error"] == "timeout"
    assert response.headers["Retry-After"] == "1"
    assert account(client)["balance"] == 10_000
    assert account(client, "bryan", "2")["balance"] == 10_000
    record = last_record(client)
    assert (record["status"], record["reason"]) == ("FAILED", "timeout")
    # The caller chose a deadline far below the default: their 503 is theirs alone,
    # and the instance stays healthy.
    assert client.get("/system/health").status_code == 200


def test_a_lock_wait_past_the_default_deadline_degrades_health(store_url: str) -> None:
    from app import create_app

    app = create_app(app_config(store_url, op_timeout_ms=20))
    client = app.test_client()
    with app.app_context():
        ledger = store()
    try:
        with driver_for(ledger).holding_write_lock():
            response = client.post("/account/coins/add?username=aaron&amount=5", headers=AARON)
        assert response.status_code == 503
        health = client.get("/system/health")
    finally:
        ledger.close()
    assert health.status_code == 503
    assert health.json["status"] == "degraded"
    assert health.json["components"] == {"database": True, "audit_log": True, "performance": False}


@pytest.mark.memory_only  # PostgreSQL reads do not wait for writers (MVCC)
def test_a_balance_read_past_its_deadline_is_503(client: FlaskClient, driver: StoreDriver) -> None:
    with driver.holding_write_lock():
        response = client.get("/account/coins?username=aaron", headers={**AARON, "X-Timeout-Ms": "10"})
    assert response.status_code == 503
    assert response.json["error"] == "timeout"


def test_sequences_are_ledger_wide_and_gap_free(client: FlaskClient) -> None:
    sequences = []
    for path, query in [
        ("/account/coins/add", "username=aaron&amount=1"),
        ("/account/coins/withdraw", "username=bryan&amount=99999"),
        ("/account/coins/transfer", "username=bryan&to=aaron&amount=2"),
    ]:
        headers = AARON if "aaron" in query.split("&")[0] else BRYAN
        client.post(f"{path}?{query}", headers=headers)
        user, token = ("aaron", "1") if headers is AARON else ("bryan", "2")
        sequences.append(last_record(client, user, token)["sequence"])
    first = sequences[0]
    assert sequences == [first, first + 1, first + 2]
