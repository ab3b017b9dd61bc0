"""``Idempotency-Key`` and ``If-Match`` over HTTP (concurrency: test_idempotency_races.py)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

AARON = {"Authorization": "1"}


def balance(client: FlaskClient) -> int:
    value: int = client.get("/account/coins?username=aaron", headers=AARON).json["balance"]
    return value


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/account/coins/add", "amount=5"),
        ("/account/coins/withdraw", "amount=5"),
        ("/account/coins/transfer", "to=bryan&amount=5"),
    ],
)
def test_a_retry_replays_the_first_answer_and_runs_nothing(
    client: FlaskClient, path: str, query: str
) -> None:
    headers = {**AARON, "Idempotency-Key": "order-42"}
    first = client.post(f"{path}?username=aaron&{query}", headers=headers)
    after_first = balance(client)
    retry = client.post(f"{path}?username=aaron&{query}", headers=headers)
    assert first.status_code == retry.status_code == 200
    assert retry.json == first.json
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert balance(client) == after_first


def test_the_same_parameters_from_json_count_as_the_same_request(client: FlaskClient) -> None:
    headers = {**AARON, "Idempotency-Key": "k"}
    first = client.post("/account/coins/transfer?username=aaron&to=bryan&amount=5", headers=headers)
    retry = client.post(
        "/account/coins/transfer", json={"username": "aaron", "to": "bryan", "amount": "5"}, headers=headers
    )
    assert retry.json == first.json
    assert retry.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/account/coins/add", "amount=6"),
        ("/account/coins/withdraw", "amount=5"),
        ("/account/coins/transfer", "to=bryan&amount=5"),
    ],
)
def test_the_same_key_with_other_parameters_is_409(client: FlaskClient, path: str, query: str) -> None:
    headers = {**AARON, "Idempotency-Key": "k"}
    assert client.post("/account/coins/add?username=aaron&amount=5", headers=headers).status_code == 200
    response = client.post(f"{path}?username=aaron&{query}", headers=headers)
    assert response.status_code == 409
    assert response.json["error"] == "idempotency_key_reused"
    assert balance(client) == 10_005


def test_a_business_failure_is_replayed_too(client: FlaskClient) -> None:
    headers = {**AARON, "Idempotency-Key": "too-much"}
    first = client.post("/account/coins/withdraw?username=aaron&amount=20000", headers=headers)
    client.post("/account/coins/add?username=aaron&amount=20000", headers=AARON)
    retry = client.post("/account/coins/withdraw?username=aaron&amount=20000", headers=headers)
    assert first.status_code == retry.status_code == 422
    assert retry.json == first.json
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert balance(client) == 30_000


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ünï"])
def test_a_malformed_key_is_rejected_and_nothing_runs(client: FlaskClient, key: str) -> None:
    response = client.post(
        "/account/coins/add?username=aaron&amount=5",
        headers={**AARON, "Idempotency-Key": key.encode("utf-8").decode("latin-1")},
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_idempotency_key"
    assert balance(client) == 10_000


def test_keys_of_255_printable_characters_are_fine(client: FlaskClient) -> None:
    key = "".join(chr(32 + index % 95) for index in range(255))
    response = client.post(
        "/account/coins/add?username=aaron&amount=5", headers={**AARON, "Idempotency-Key": key}
    )
    assert response.status_code == 200


def test_if_match_is_part_of_the_request(client: FlaskClient) -> None:
    headers = {**AARON, "Idempotency-Key": "versioned", "If-Match": '"0"'}
    assert client.post("/account/coins/add?username=aaron&amount=5", headers=headers).status_code == 200
    other = client.post("/account/coins/add?username=aaron&amount=5", headers={**headers, "If-Match": '"1"'})
    assert other.status_code == 409
    replay = client.post("/account/coins/add?username=aaron&amount=5", headers=headers)
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"


@pytest.mark.memory_only  # the share of the embedded store's key table
def test_one_users_keys_are_capped_at_their_share(store_url: str) -> None:
    from app import create_app
    from tests.stores import app_config

    app = create_app(app_config(store_url, idempotency_max_keys_per_user=1))
    try:
        client = app.test_client()

        def deposit(user: str, token: str, key: str) -> int:
            headers = {"Authorization": token, "Idempotency-Key": key}
            return client.post(f"/account/coins/add?username={user}&amount=1", headers=headers).status_code

        assert deposit("aaron", "1", "first") == 200
        refused = client.post(
            "/account/coins/add?username=aaron&amount=1",
            headers={"Authorization": "1", "Idempotency-Key": "second"},
        )
        assert (refused.status_code, refused.json["error"]) == (503, "idempotency_store_full")
        assert deposit("bryan", "2", "first") == 200
        assert deposit("aaron", "1", "first") == 200  # a held key still replays
    finally:
        app.extensions["ledger"].close()
