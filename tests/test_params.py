"""Input validation exactly as the contract: every bad input is a 4xx and changes nothing."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

AARON = {"Authorization": "1"}


def balance(client: FlaskClient, username: str = "aaron", token: str = "1") -> int:
    response = client.get(f"/account/coins?username={username}", headers={"Authorization": token})
    value: int = response.json["balance"]
    return value


def audit_length(client: FlaskClient) -> int:
    return int(client.get("/system/health").json["operation_count"])


@pytest.mark.parametrize(
    "amount",
    [
        "0",
        "-1",
        "+5",
        " 5",
        "5 ",
        "1.5",
        "1e3",
        "abc",
        "",
        "0x10",
        "1000000000000001",
        "99999999999999999999999",
    ],
)
@pytest.mark.parametrize("path", ["/account/coins/add", "/account/coins/withdraw", "/account/coins/transfer"])
def test_bad_query_amounts_are_rejected(client: FlaskClient, path: str, amount: str) -> None:
    response = client.post(
        path, query_string={"username": "aaron", "to": "bryan", "amount": amount}, headers=AARON
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_amount"
    assert response.json["code"] == 400
    assert balance(client) == 10_000
    assert balance(client, "bryan", "2") == 10_000


@pytest.mark.parametrize(
    "amount",
    [0, -1, 1.5, 1e3, 100.0, True, False, " 5", "+5", "-5", "1.0", [], {}, 10**15 + 1, 10**30],
)
def test_bad_json_amounts_are_rejected(client: FlaskClient, amount: object) -> None:
    response = client.post("/account/coins/add", json={"username": "aaron", "amount": amount}, headers=AARON)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_amount"
    assert balance(client) == 10_000


@pytest.mark.parametrize("amount", [1, "1", 10**15, str(10**15), "007"])
def test_amount_edges_that_are_valid(client: FlaskClient, amount: object) -> None:
    response = client.post("/account/coins/add", json={"username": "aaron", "amount": amount}, headers=AARON)
    assert response.status_code == 200
    assert response.json["transaction"]["amount"] == int(str(amount))


def test_json_body_and_query_string_combine(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/transfer?username=aaron", json={"to": "bryan", "amount": 25}, headers=AARON
    )
    assert response.status_code == 200
    assert response.json["balance"] == 9_975


def test_same_value_from_both_sources_is_fine(client: FlaskClient) -> None:
    response = client.post("/account/coins/add?username=aaron&amount=5", json={"amount": "5"}, headers=AARON)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/account/coins/add?username=aaron&amount=5", {"amount": 6}),
        ("/account/coins/add?username=aaron&amount=5&amount=6", None),
        ("/account/coins/add?username=aaron", '{"amount": 5, "amount": 6}'),
        ("/account/coins/transfer?username=aaron&to=bryan&amount=5", {"to": "carol"}),
        ("/account/coins/add?username=aaron&amount=5", {"username": "bryan"}),
    ],
)
def test_conflicting_parameters_are_rejected(client: FlaskClient, url: str, body: object) -> None:
    data = body if isinstance(body, str) else (None if body is None else json.dumps(body))
    response = client.post(url, data=data, headers=AARON)
    assert response.status_code == 400
    assert response.json["error"] == "conflicting_parameters"
    assert balance(client) == 10_000


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"text"', "42", "{", '{"amount": }', "[" * 10_000])
def test_a_body_that_is_not_a_json_object_is_rejected(client: FlaskClient, body: str) -> None:
    response = client.post(
        "/account/coins/add?username=aaron&amount=5",
        data=body,
        headers=AARON,
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_json"
    assert balance(client) == 10_000


def test_unknown_json_fields_are_ignored(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/add",
        json={"username": "aaron", "amount": 5, "memo": "hi", "nested": {"x": [1]}},
        headers=AARON,
    )
    assert response.status_code == 200


@pytest.mark.parametrize("username", ["a" * 65, "bad name", "semi;colon", "ümlaut", "slash/", "tab\t"])
def test_bad_usernames_are_rejected(client: FlaskClient, username: str) -> None:
    response = client.get("/account/coins", query_string={"username": username}, headers=AARON)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_username"


@pytest.mark.parametrize("target", ["a" * 65, "no way", ""])
def test_bad_recipient_names_are_rejected(client: FlaskClient, target: str) -> None:
    response = client.post(
        "/account/coins/transfer",
        query_string={"username": "aaron", "to": target, "amount": "5"},
        headers=AARON,
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_username"


def test_json_username_must_be_a_string(client: FlaskClient) -> None:
    response = client.post("/account/coins/add", json={"username": 7, "amount": 5}, headers=AARON)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_username"


@pytest.mark.parametrize(
    ("path", "query", "missing"),
    [
        ("/account/coins/add", {"username": "aaron"}, "amount"),
        ("/account/coins/withdraw", {"username": "aaron"}, "amount"),
        ("/account/coins/transfer", {"username": "aaron", "amount": "5"}, "to"),
        ("/account/coins/transfer", {"username": "aaron", "to": "bryan"}, "amount"),
    ],
)
def test_missing_parameters_are_named(
    client: FlaskClient, path: str, query: dict[str, str], missing: str
) -> None:
    response = client.post(path, query_string=query, headers=AARON)
    assert response.status_code == 400
    assert response.json["error"] == "missing_parameter"
    assert missing in response.json["message"]


def test_a_body_over_one_mebibyte_is_rejected(client: FlaskClient) -> None:
    body = json.dumps({"username": "aaron", "amount": 5, "pad": "x" * (1024 * 1024)})
    response = client.post("/account/coins/add", data=body, headers=AARON, content_type="application/json")
    assert response.status_code == 413
    assert response.json == {
        "code": 413,
        "error": "payload_too_large",
        "message": "The request body is larger than the limit.",
    }
    assert response.headers["Connection"] == "close"
    assert balance(client) == 10_000


def test_a_body_just_under_the_limit_is_accepted(client: FlaskClient) -> None:
    skeleton = json.dumps({"username": "aaron", "amount": 5, "pad": ""})
    body = json.dumps({"username": "aaron", "amount": 5, "pad": "x" * (1024 * 1024 - len(skeleton))})
    assert len(body) == 1024 * 1024
    response = client.post("/account/coins/add", data=body, headers=AARON, content_type="application/json")
    assert response.status_code == 200


@pytest.mark.parametrize("timeout", ["0", "-5", "abc", "1.5", "60001", ""])
def test_bad_timeouts_are_rejected(client: FlaskClient, timeout: str) -> None:
    headers = {**AARON, "X-Timeout-Ms": timeout}
    response = client.post("/account/coins/add?username=aaron&amount=5", headers=headers)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_timeout"
    assert balance(client) == 10_000


@pytest.mark.parametrize("limit", ["0", "501", "-1", "x", "1.5"])
def test_bad_history_limits_are_rejected(client: FlaskClient, limit: str) -> None:
    response = client.get(f"/account/transactions?username=aaron&limit={limit}", headers=AARON)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_limit"


@pytest.mark.parametrize("cursor", ["garbage", "aDo", "x" * 200, "aDowMA", "YTox"])
def test_bad_cursors_are_rejected(client: FlaskClient, cursor: str) -> None:
    response = client.get(
        "/account/transactions", query_string={"username": "aaron", "cursor": cursor}, headers=AARON
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_cursor"


def test_validation_failures_are_not_audited(client: FlaskClient) -> None:
    before = client.get("/account/transactions?username=aaron", headers=AARON).json["transactions"]
    client.post("/account/coins/add?username=aaron&amount=0", headers=AARON)
    client.post("/account/coins/transfer?username=aaron&to=aaron&amount=5", headers=AARON)
    after = client.get("/account/transactions?username=aaron", headers=AARON).json["transactions"]
    assert after == before


def test_repeated_keys_inside_an_ignored_field_do_not_matter(client: FlaskClient) -> None:
    body = '{"username": "aaron", "amount": 1, "memo": {"a": 1, "a": 2}}'
    response = client.post("/account/coins/add", data=body, headers=AARON, content_type="application/json")
    assert response.status_code == 200


def test_history_validates_the_deadline_header_too(client: FlaskClient) -> None:
    response = client.get("/account/transactions?username=aaron", headers={**AARON, "X-Timeout-Ms": "abc"})
    assert response.status_code == 400
    assert response.json["error"] == "invalid_timeout"
