"""``POST /admin/accounts``: creating accounts with the admin token."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.stores import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_create_account_with_a_generated_token(client: FlaskClient) -> None:
    response = client.post("/admin/accounts", json={"username": "carol", "balance": 500}, headers=ADMIN)
    assert response.status_code == 201
    body = response.json
    assert body["username"] == "carol"
    assert body["balance"] == 500
    assert body["version"] == 0
    assert len(body["token"]) >= 40
    me = client.get("/account/coins?username=carol", headers={"Authorization": body["token"]})
    assert me.status_code == 200
    assert me.json["balance"] == 500


def test_create_account_with_a_chosen_token_and_no_balance(client: FlaskClient) -> None:
    response = client.post("/admin/accounts?username=dave", json={"token": "dave-secret"}, headers=ADMIN)
    assert response.status_code == 201
    assert response.json == {"username": "dave", "token": "dave-secret", "balance": 0, "version": 0}
    assert response.headers["Cache-Control"] == "no-store"
    me = client.get("/account/coins?username=dave", headers={"Authorization": "Bearer dave-secret"})
    assert me.json["balance"] == 0


def test_a_token_in_the_url_is_refused(client: FlaskClient) -> None:
    response = client.post("/admin/accounts?username=dave&token=dave-secret", headers=ADMIN)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_token"
    assert (
        client.get("/account/coins?username=dave", headers={"Authorization": "dave-secret"}).status_code
        == 401
    )


def test_creating_an_existing_account_is_409_and_keeps_the_old_one(client: FlaskClient) -> None:
    response = client.post(
        "/admin/accounts", json={"username": "aaron", "token": "evil", "balance": 7}, headers=ADMIN
    )
    assert response.status_code == 409
    assert response.json["error"] == "account_exists"
    assert (
        client.get("/account/coins?username=aaron", headers={"Authorization": "1"}).json["balance"] == 10_000
    )
    assert client.get("/account/coins?username=aaron", headers={"Authorization": "evil"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "missing_parameter"),
        ({"username": "bad name"}, "invalid_username"),
        ({"username": "erin", "balance": -1}, "invalid_amount"),
        ({"username": "erin", "balance": 1.5}, "invalid_amount"),
        ({"username": "erin", "balance": 10**15 + 1}, "invalid_amount"),
        ({"username": "erin", "token": ""}, "invalid_token"),
        ({"username": "erin", "token": "has space"}, "invalid_token"),
        ({"username": "erin", "token": 12345}, "invalid_token"),
        ({"username": "erin", "token": "Bearer"}, "invalid_token"),
    ],
)
def test_bad_account_requests_are_rejected(client: FlaskClient, body: dict[str, object], error: str) -> None:
    response = client.post("/admin/accounts", json=body, headers=ADMIN)
    assert response.status_code == 400
    assert response.json["error"] == error
    assert client.post("/admin/accounts", json={"username": "erin"}, headers=ADMIN).status_code == 201


def test_opening_balance_is_audited(client: FlaskClient) -> None:
    token = client.post("/admin/accounts", json={"username": "frank", "balance": 42}, headers=ADMIN).json[
        "token"
    ]
    records = client.get("/account/transactions?username=frank", headers={"Authorization": token}).json
    [opening] = records["transactions"]
    assert (opening["type"], opening["to"], opening["amount"], opening["status"]) == (
        "open",
        "frank",
        42,
        "SUCCESS",
    )


def test_a_refused_duplicate_opening_is_not_in_the_holders_history(client: FlaskClient) -> None:
    before = client.get("/account/transactions?username=aaron", headers={"Authorization": "1"}).json
    assert (
        client.post("/admin/accounts", json={"username": "aaron", "balance": 999}, headers=ADMIN).status_code
        == 409
    )
    after = client.get("/account/transactions?username=aaron", headers={"Authorization": "1"}).json
    assert after == before


# -- the operator's deposits and withdrawals ------------------------------------------


def test_the_operator_deposits_into_an_account_and_it_is_audited(client: FlaskClient) -> None:
    response = client.post("/admin/accounts/aaron/deposit?amount=250", headers=ADMIN)
    assert response.status_code == 200
    body = response.json
    assert (body["username"], body["balance"]) == ("aaron", 10_250)
    assert response.headers["ETag"] == f'"{body["version"]}"'
    transaction = body["transaction"]
    assert (transaction["type"], transaction["from"], transaction["to"]) == ("deposit", None, "aaron")
    assert (transaction["amount"], transaction["status"]) == (250, "SUCCESS")
    history = client.get("/account/transactions?username=aaron", headers={"Authorization": "1"}).json
    assert history["transactions"][0]["id"] == transaction["id"]
    assert client.get("/admin/verify", headers=ADMIN).json["ok"] is True


def test_the_operator_withdraws_from_an_account_within_its_funds(client: FlaskClient) -> None:
    response = client.post("/admin/accounts/bryan/withdraw", json={"amount": 400}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json["balance"] == 9_600
    assert response.json["transaction"]["type"] == "withdrawal"
    refused = client.post("/admin/accounts/bryan/withdraw?amount=9601", headers=ADMIN)
    assert refused.status_code == 422
    assert refused.json["error"] == "insufficient_funds"
    balance = client.get("/account/coins?username=bryan", headers={"Authorization": "2"}).json["balance"]
    assert balance == 9_600


@pytest.mark.parametrize(
    ("path", "headers", "status", "error"),
    [
        ("/admin/accounts/aaron/deposit?amount=5", {"Authorization": "1"}, 401, "unauthorized"),
        ("/admin/accounts/aaron/deposit?amount=5", {}, 401, "unauthorized"),
        ("/admin/accounts/ghost/deposit?amount=5", ADMIN, 404, "account_not_found"),
        ("/admin/accounts/no%20such/deposit?amount=5", ADMIN, 400, "invalid_username"),
        ("/admin/accounts/aaron/deposit?amount=0", ADMIN, 400, "invalid_amount"),
        ("/admin/accounts/aaron/withdraw", ADMIN, 400, "missing_parameter"),
        ("/admin/accounts/aaron/deposit?amount=5", {**ADMIN, "If-Match": '"99"'}, 412, "version_conflict"),
    ],
)
def test_the_operators_money_operations_refuse_what_they_should(
    client: FlaskClient, path: str, headers: dict[str, str], status: int, error: str
) -> None:
    response = client.post(path, headers=headers)
    assert (response.status_code, response.json["error"]) == (status, error)
    balance = client.get("/account/coins?username=aaron", headers={"Authorization": "1"}).json["balance"]
    assert balance == 10_000


def test_the_operators_idempotency_keys_replay_and_name_the_account(client: FlaskClient) -> None:
    keyed = {**ADMIN, "Idempotency-Key": "mint-1"}
    first = client.post("/admin/accounts/aaron/deposit?amount=7", headers=keyed)
    again = client.post("/admin/accounts/aaron/deposit?amount=7", headers=keyed)
    assert first.status_code == again.status_code == 200
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    other_account = client.post("/admin/accounts/bryan/deposit?amount=7", headers=keyed)
    assert (other_account.status_code, other_account.json["error"]) == (409, "idempotency_key_reused")
    # A user's key of the same name is the user's own, not the operator's.
    users = client.post(
        "/account/coins/add?username=aaron&amount=7",
        headers={"Authorization": "1", "Idempotency-Key": "mint-1"},
    )
    assert users.status_code == 200
    assert "Idempotent-Replayed" not in users.headers
    balance = client.get("/account/coins?username=aaron", headers={"Authorization": "1"}).json["balance"]
    assert balance == 10_014


def test_without_self_deposits_only_the_operator_mints_coins(store_url: str) -> None:
    from app import create_app
    from tests.stores import app_config

    app = create_app(app_config(store_url, self_deposit=False))
    try:
        client = app.test_client()
        refused = client.post("/account/coins/add?username=aaron&amount=5", headers={"Authorization": "1"})
        assert (refused.status_code, refused.json["error"]) == (403, "forbidden")
        # Authentication still comes first: a wrong token is 401, not 403.
        stranger = client.post("/account/coins/add?username=aaron&amount=5", headers={"Authorization": "9"})
        assert stranger.status_code == 401
        minted = client.post("/admin/accounts/aaron/deposit?amount=5", headers=ADMIN)
        assert minted.status_code == 200
        assert minted.json["balance"] == 10_005
        # Withdrawals and transfers are the user's own as before.
        paid = client.post(
            "/account/coins/transfer?username=aaron&to=bryan&amount=5", headers={"Authorization": "1"}
        )
        assert paid.status_code == 200
    finally:
        app.extensions["ledger"].close()
