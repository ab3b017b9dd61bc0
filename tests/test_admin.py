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
