"""Authentication: bare or Bearer tokens, one 401 for every failure, 403 for others' money."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.stores import ADMIN_TOKEN

UNAUTHORIZED = {"code": 401, "error": "unauthorized", "message": "Invalid username or token."}


@pytest.mark.parametrize("header", ["1", "Bearer 1", "bearer 1", "  Bearer   1  "])
def test_bare_and_bearer_tokens_are_accepted(client: FlaskClient, header: str) -> None:
    response = client.get("/account/coins?username=aaron", headers={"Authorization": header})
    assert response.status_code == 200
    assert response.json["username"] == "aaron"


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/account/coins?username=aaron", {}),
        ("/account/coins?username=aaron", {"Authorization": ""}),
        ("/account/coins?username=aaron", {"Authorization": "Bearer "}),
        ("/account/coins?username=aaron", {"Authorization": "2"}),
        ("/account/coins?username=aaron", {"Authorization": "Bearer 11"}),
        ("/account/coins?username=nobody", {"Authorization": "1"}),
        ("/account/coins", {"Authorization": "1"}),
    ],
)
def test_every_authentication_failure_gets_the_same_answer(
    client: FlaskClient, url: str, headers: dict[str, str]
) -> None:
    response = client.get(url, headers=headers)
    assert response.status_code == 401
    assert response.json == UNAUTHORIZED


@pytest.mark.parametrize("path", ["/account/coins/add", "/account/coins/withdraw", "/account/coins/transfer"])
def test_money_routes_need_a_token(client: FlaskClient, path: str) -> None:
    response = client.post(f"{path}?username=aaron&to=bryan&amount=1")
    assert response.status_code == 401
    assert response.json == UNAUTHORIZED
    assert (
        client.get("/account/coins?username=aaron", headers={"Authorization": "1"}).json["balance"] == 10_000
    )


def test_another_users_token_cannot_act_for_them(client: FlaskClient) -> None:
    # bryan's token with aaron's name: 401, aaron's money untouched.
    response = client.post(
        "/account/coins/transfer?username=aaron&to=bryan&amount=100", headers={"Authorization": "2"}
    )
    assert response.status_code == 401
    assert (
        client.get("/account/coins?username=aaron", headers={"Authorization": "1"}).json["balance"] == 10_000
    )


def test_moving_someone_elses_money_is_forbidden(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/transfer?username=bryan&from=aaron&to=bryan&amount=100",
        headers={"Authorization": "2"},
    )
    assert response.status_code == 403
    assert response.json["error"] == "forbidden"
    balances = [
        client.get(f"/account/coins?username={name}", headers={"Authorization": token}).json["balance"]
        for name, token in (("aaron", "1"), ("bryan", "2"))
    ]
    assert balances == [10_000, 10_000]


@pytest.mark.parametrize("header", [None, "", "wrong", f"Bearer {ADMIN_TOKEN}x"])
def test_admin_routes_need_the_admin_token(client: FlaskClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.post("/admin/accounts", json={"username": "carol"}, headers=headers)
    assert response.status_code == 401
    assert response.json == UNAUTHORIZED


def test_a_users_token_is_not_an_admin_token(client: FlaskClient) -> None:
    response = client.post("/admin/accounts", json={"username": "carol"}, headers={"Authorization": "1"})
    assert response.status_code == 401


def test_admin_routes_answer_401_when_no_admin_token_is_configured() -> None:
    from app import create_app

    unconfigured = create_app({"admin_token": None}).test_client()
    for header in ("", "None", "Bearer "):
        response = unconfigured.post(
            "/admin/accounts", json={"username": "carol"}, headers={"Authorization": header}
        )
        assert response.status_code == 401


def test_tokens_are_kept_only_as_digests(client: FlaskClient) -> None:
    from app.api.common import store

    created = client.post(
        "/admin/accounts", json={"username": "carol"}, headers={"Authorization": ADMIN_TOKEN}
    ).json
    with client.application.app_context():
        stored = store().token_digest("carol")
    assert stored is not None
    assert created["token"].encode() not in stored
    assert len(stored) == 32
