"""References, metadata and history filters over HTTP: what is kept, hashed, returned and refused."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.stores import ADMIN_TOKEN

AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
ADMIN = {"Authorization": ADMIN_TOKEN}


def transfer(
    client: FlaskClient, query: str = "", body: object = None, headers: dict[str, str] | None = None
) -> TestResponse:
    return client.post(
        f"/account/coins/transfer?username=aaron&to=bryan&amount=5{query}",
        headers={**AARON, **(headers or {})},
        data=None if body is None else json.dumps(body),
        content_type="application/json",
    )


def history(
    client: FlaskClient, query: str = "", headers: dict[str, str] = AARON, user: str = "aaron"
) -> TestResponse:
    return client.get(f"/account/transactions?username={user}{query}", headers=headers)


# -- what a tag is --------------------------------------------------------------------


def test_a_transaction_without_a_tag_answers_a_null_reference_and_empty_metadata(client: FlaskClient) -> None:
    transaction = transfer(client).json["transaction"]
    assert transaction["reference"] is None
    assert transaction["metadata"] == {}


def test_a_tag_from_the_query_string_is_kept_returned_and_shown_in_history_and_audit(
    client: FlaskClient,
) -> None:
    response = transfer(client, "&reference=order-42&metadata.campaign=spring&metadata.round=7")
    assert response.status_code == 200, response.json
    transaction = response.json["transaction"]
    assert transaction["reference"] == "order-42"
    assert transaction["metadata"] == {"campaign": "spring", "round": "7"}  # query values are strings
    shown = history(client).json["transactions"][0]
    assert (shown["id"], shown["reference"], shown["metadata"]) == (
        transaction["id"], "order-42", {"campaign": "spring", "round": "7"},
    )  # fmt: skip
    for user, headers in (("bryan", BRYAN),):
        assert history(client, user=user, headers=headers).json["transactions"][0]["reference"] == "order-42"
    audit = client.get("/admin/audit?limit=500", headers=ADMIN).json["transactions"]
    assert audit[-1]["metadata"] == {"campaign": "spring", "round": "7"}
    assert client.get("/admin/verify", headers=ADMIN).status_code == 200


def test_a_tag_from_the_body_keeps_integers(client: FlaskClient) -> None:
    body = {"reference": "inv 2026/11", "metadata": {"round": 7, "player": "zoë", "big": -(2**63)}}
    transaction = transfer(client, body=body).json["transaction"]
    assert transaction["reference"] == "inv 2026/11"
    assert transaction["metadata"] == {"big": -(2**63), "player": "zoë", "round": 7}
    assert client.get("/admin/verify", headers=ADMIN).json["ok"] is True


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/account/coins/add", "username=aaron&amount=5"),
        ("/account/coins/withdraw", "username=aaron&amount=5"),
        ("/account/holds", "username=aaron&to=bryan&amount=5"),
    ],
)
def test_every_money_operation_takes_a_tag(client: FlaskClient, path: str, query: str) -> None:
    response = client.post(f"{path}?{query}&reference=r-1&metadata.k=v", headers=AARON)
    assert response.status_code in (200, 201), response.json
    assert (response.json["transaction"]["reference"], response.json["transaction"]["metadata"]) == (
        "r-1", {"k": "v"},
    )  # fmt: skip


def test_the_operator_tags_deposits_and_withdrawals(client: FlaskClient) -> None:
    for action in ("deposit", "withdraw"):
        response = client.post(
            f"/admin/accounts/aaron/{action}?amount=5", headers=ADMIN, json={"reference": f"ops-{action}"}
        )
        assert response.status_code == 200, response.json
        assert response.json["transaction"]["reference"] == f"ops-{action}"


def test_a_failed_operation_keeps_its_tag(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/withdraw?username=aaron&amount=999999999&reference=too-much", headers=AARON
    )
    assert response.status_code == 422
    failed = history(client).json["transactions"][0]
    assert (failed["status"], failed["reference"]) == ("FAILED", "too-much")


def test_a_holds_tag_is_carried_by_its_capture(client: FlaskClient) -> None:
    created = client.post(
        "/account/holds?username=aaron&to=bryan&amount=50", headers=AARON,
        json={"reference": "match-9", "metadata": {"stake": 50}},
    )  # fmt: skip
    assert created.status_code == 201, created.json
    hold = created.json["hold"]
    assert (hold["reference"], hold["metadata"]) == ("match-9", {"stake": 50})
    captured = client.post(f"/account/holds/{hold['id']}/capture?username=bryan&amount=20", headers=BRYAN)
    assert captured.status_code == 200, captured.json
    assert (captured.json["transaction"]["type"], captured.json["transaction"]["reference"]) == (
        "capture", "match-9",
    )  # fmt: skip
    assert captured.json["transaction"]["metadata"] == {"stake": 50}
    assert client.get(f"/account/holds/{hold['id']}?username=aaron", headers=AARON).json["hold"][
        "reference"
    ] == ("match-9")


def test_batch_items_carry_their_own_tags(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/batch?username=aaron",
        headers=AARON,
        json={
            "operations": [
                {"type": "transfer", "to": "bryan", "amount": 1, "reference": "payout-1"},
                {"type": "add", "amount": 1, "metadata": {"batch": "b7"}},
                {"type": "withdraw", "amount": 1},
            ]
        },
    )
    assert response.status_code == 200, response.json
    tags = [(r["transaction"]["reference"], r["transaction"]["metadata"]) for r in response.json["results"]]
    assert tags == [("payout-1", {}), (None, {"batch": "b7"}), (None, {})]


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({f"k{index}": "v" for index in range(33)}, "33 keys"),
        ({"nested": {"a": 1}}, "metadata.nested"),
        ({"price": 1.5}, "metadata.price"),
        ({"flag": True}, "metadata.flag"),
        ({"list": [1]}, "metadata.list"),
        ({"none": None}, "metadata.none"),
        ({"big": 2**63}, "metadata.big"),
        ({"long": "x" * 257}, "metadata.long"),
        ({"nul": "a\x00b"}, "metadata.nul"),
        ({f"k{index}": "x" * 200 for index in range(25)}, "4096 bytes"),
        ({"clé": "v"}, "keys"),
        ({"": "v"}, "keys"),
        ({"a b": "v"}, "keys"),
        ([1, 2], "object"),
        ("k=v", "object"),
    ],
)
def test_bad_metadata_is_a_400_naming_the_field(client: FlaskClient, metadata: object, named: str) -> None:
    response = transfer(client, body={"metadata": metadata})
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_metadata"
    assert named in response.json["message"]


def test_a_lone_surrogate_in_metadata_is_a_400_not_a_500(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/transfer?username=aaron&to=bryan&amount=5",
        headers=AARON,
        data='{"metadata": {"bad": "\\ud800"}}',
        content_type="application/json",
    )
    assert (response.status_code, response.json["error"]) == (400, "invalid_metadata")


@pytest.mark.parametrize("reference", ["", "x" * 129, "café", "tab\there", 42])
def test_a_bad_reference_is_a_400(client: FlaskClient, reference: object) -> None:
    response = transfer(client, body={"reference": reference})
    assert (response.status_code, response.json["error"]) == (400, "invalid_reference")


def test_a_bad_metadata_key_in_the_query_string_is_a_400(client: FlaskClient) -> None:
    response = transfer(client, "&metadata.a%20b=1")
    assert (response.status_code, response.json["error"]) == (400, "invalid_metadata")


def test_metadata_given_differently_in_query_and_body_is_a_conflict(client: FlaskClient) -> None:
    response = transfer(client, "&metadata.k=a", body={"metadata": {"k": "b"}})
    assert (response.status_code, response.json["error"]) == (400, "conflicting_parameters")
    assert transfer(client, "&metadata.k=a", body={"metadata": {"k": "a"}}).status_code == 200


def test_a_batch_items_bad_metadata_names_the_item(client: FlaskClient) -> None:
    response = client.post(
        "/account/coins/batch?username=aaron",
        headers=AARON,
        json={
            "operations": [{"type": "add", "amount": 1}, {"type": "add", "amount": 1, "metadata": {"f": 0.5}}]
        },
    )
    assert (response.status_code, response.json["error"]) == (400, "invalid_metadata")
    assert response.json["message"].startswith("Operation 1: metadata.f")
    assert len(history(client).json["transactions"]) == 1  # nothing ran: only the opening record


# -- idempotency ------------------------------------------------------------------------


def test_the_tag_is_part_of_an_idempotent_requests_parameters(client: FlaskClient) -> None:
    key = {"Idempotency-Key": "tagged-1"}
    first = transfer(client, "&reference=a&metadata.k=v", headers=key)
    again = transfer(client, "&reference=a&metadata.k=v", headers=key)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json == first.json
    for other in ("&reference=b&metadata.k=v", "&reference=a&metadata.k=w", "&reference=a", ""):
        response = transfer(client, other, headers=key)
        assert (response.status_code, response.json["error"]) == (409, "idempotency_key_reused"), other


# -- filters ----------------------------------------------------------------------------


def _seed(client: FlaskClient) -> None:
    transfer(client, "&reference=order-1&metadata.campaign=spring&metadata.round=3")
    client.post("/account/coins/add?username=aaron&amount=70", headers=AARON, json={"metadata": {"round": 3}})
    client.post("/account/coins/withdraw?username=aaron&amount=999999999&reference=big", headers=AARON)
    client.post("/account/coins/transfer?username=bryan&to=aaron&amount=9&reference=refund-1", headers=BRYAN)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["transfer", "withdrawal", "deposit", "transfer", "open"]),
        ("&type=deposit,open", ["deposit", "open"]),
        ("&status=FAILED", ["withdrawal"]),
        ("&counterparty=bryan", ["transfer", "transfer"]),
        ("&reference=order-1", ["transfer"]),
        ("&metadata.round=3", ["deposit", "transfer"]),  # an integer matches its text, a string its own
        ("&metadata.round=3&metadata.campaign=spring", ["transfer"]),
        ("&min_amount=9&max_amount=70", ["transfer", "deposit"]),
        ("&min_amount=10&max_amount=9", []),
        ("&created_after=2000-01-01T00:00:00Z", ["transfer", "withdrawal", "deposit", "transfer", "open"]),
        ("&created_before=2000-01-01T00:00:00%2B02:00", []),
        ("&type=transfer&counterparty=bryan&reference=refund-1", ["transfer"]),
    ],
)
def test_history_filters_are_and_combined(client: FlaskClient, query: str, expected: list[str]) -> None:
    _seed(client)
    response = history(client, query)
    assert response.status_code == 200, response.json
    assert [record["type"] for record in response.json["transactions"]] == expected


def test_filtered_pages_follow_the_cursor_to_the_end(client: FlaskClient) -> None:
    for index in range(12):
        client.post(
            f"/account/coins/add?username=aaron&amount={index + 1}&metadata.parity={index % 2}", headers=AARON
        )
    seen: list[int] = []
    cursor = ""
    while True:
        body = history(client, f"&metadata.parity=1&limit=4{cursor}").json
        seen += [record["amount"] for record in body["transactions"]]
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert seen == [12, 10, 8, 6, 4, 2]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("&colour=red", "colour"),
        ("&type=refund", "type"),
        ("&type=", "type"),
        ("&status=success", "status"),
        ("&counterparty=a%20b", "counterparty"),
        ("&created_after=yesterday", "created_after"),
        ("&created_before=2026-13-01T00:00:00Z", "created_before"),
        ("&created_after=2026-01-01T00:00:00", "created_after"),  # no offset: not RFC 3339
        ("&min_amount=-1", "min_amount"),
        ("&max_amount=1.5", "max_amount"),
        ("&max_amount=10000000000000000", "max_amount"),
        ("&reference=", "reference"),
        ("&metadata.a%20b=1", "metadata.a b"),
        ("&metadata.a=1&metadata.b=1&metadata.c=1&metadata.d=1&metadata.e=1", "metadata"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(client: FlaskClient, query: str, named: str) -> None:
    response = history(client, query)
    assert (response.status_code, response.json["error"]) == (400, "invalid_parameter"), response.json
    assert named in response.json["message"]


def test_admin_transactions_filter_across_accounts_oldest_first(client: FlaskClient) -> None:
    _seed(client)
    response = client.get("/admin/transactions?counterparty=bryan&type=transfer", headers=ADMIN)
    assert response.status_code == 200, response.json
    references = [record["reference"] for record in response.json["transactions"]]
    assert references == ["order-1", "refund-1"]
    assert response.json["next_cursor"] is None
    first = client.get("/admin/transactions?limit=1&type=transfer", headers=ADMIN).json
    rest = client.get(
        f"/admin/transactions?limit=5&type=transfer&cursor={first['next_cursor']}", headers=ADMIN
    )
    assert [r["reference"] for r in first["transactions"] + rest.json["transactions"]] == references


def test_admin_transactions_needs_the_admin_token_and_refuses_a_username(client: FlaskClient) -> None:
    assert client.get("/admin/transactions", headers=AARON).status_code == 401
    response = client.get("/admin/transactions?username=aaron", headers=ADMIN)
    assert (response.status_code, response.json["error"]) == (400, "invalid_parameter")
