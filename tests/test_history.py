"""``GET /account/transactions``: newest first, cursor pages that never repeat or skip."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from app.ledger.errors import InvalidInput
from app.ledger.memory import MockDB
from tests.stores import ADMIN_TOKEN, open_account

AARON = {"Authorization": "1"}


def page(client: FlaskClient, **query: object) -> dict[str, object]:
    response = client.get("/account/transactions", query_string={"username": "aaron", **query}, headers=AARON)
    assert response.status_code == 200
    body: dict[str, object] = response.json
    return body


def test_history_is_newest_first_and_includes_failures(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=aaron&amount=1", headers=AARON)
    client.post("/account/coins/withdraw?username=aaron&amount=999999", headers=AARON)
    client.post("/account/coins/transfer?username=bryan&to=aaron&amount=3", headers={"Authorization": "2"})
    records = page(client)["transactions"]
    assert isinstance(records, list)
    assert [(r["type"], r["status"]) for r in records] == [
        ("transfer", "SUCCESS"),
        ("withdrawal", "FAILED"),
        ("deposit", "SUCCESS"),
        ("open", "SUCCESS"),
    ]
    sequences = [r["sequence"] for r in records]
    assert sequences == sorted(sequences, reverse=True)


def test_default_limit_is_fifty(client: FlaskClient) -> None:
    for _ in range(60):
        client.post("/account/coins/add?username=aaron&amount=1", headers=AARON)
    body = page(client)
    assert len(body["transactions"]) == 50  # type: ignore[arg-type]
    assert body["next_cursor"] is not None


def test_pages_never_repeat_or_skip_while_new_records_arrive(client: FlaskClient) -> None:
    for _ in range(20):
        client.post("/account/coins/add?username=aaron&amount=1", headers=AARON)
    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": 3} if cursor is None else {"limit": 3, "cursor": cursor}
        body = page(client, **query)
        seen.extend(r["sequence"] for r in body["transactions"])  # type: ignore[union-attr]
        # Someone keeps writing between pages.
        client.post("/account/coins/add?username=aaron&amount=1", headers=AARON)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(set(seen), reverse=True)
    everything = page(client, limit=500)["transactions"]
    older = [r["sequence"] for r in everything if r["sequence"] <= seen[0]]  # type: ignore[union-attr]
    assert seen == older
    assert len(seen) == 21  # 20 deposits and the opening record


def test_a_user_sees_only_their_own_records(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=bryan&amount=1", headers={"Authorization": "2"})
    names = {(r["from"], r["to"]) for r in page(client, limit=500)["transactions"]}  # type: ignore[union-attr]
    assert all("aaron" in pair for pair in names)


def test_a_failed_transfer_to_an_unknown_name_does_not_reach_that_names_future_history(
    client: FlaskClient,
) -> None:
    client.post("/account/coins/transfer?username=aaron&to=zed&amount=5", headers=AARON)
    created = client.post(
        "/admin/accounts",
        json={"username": "zed", "token": "zed-token"},
        headers={"Authorization": ADMIN_TOKEN},
    )
    assert created.status_code == 201
    records = client.get("/account/transactions?username=zed", headers={"Authorization": "zed-token"}).json
    assert [r["type"] for r in records["transactions"]] == ["open"]


def test_the_memory_store_refuses_an_empty_page() -> None:
    ledger = MockDB()
    open_account(ledger, "alice", 10)
    with pytest.raises(InvalidInput, match="limit"):
        ledger.history("alice", limit=0, cursor=None)


@pytest.mark.parametrize(
    ("bound", "shown"),
    [
        ("created_after=0999-01-01T00:00:00Z", True),  # a year before 1000 still sorts before today
        ("created_before=0999-01-01T00:00:00Z", False),
        ("created_before=9999-12-31T23:59:59Z", True),
    ],
)
def test_time_filters_compare_instants_whatever_the_year(
    client: FlaskClient, bound: str, shown: bool
) -> None:
    records = client.get(f"/account/transactions?username=aaron&{bound}", headers=AARON).json["transactions"]
    assert bool(records) is shown


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_a_time_outside_the_calendar_in_utc_is_refused(client: FlaskClient, moment: str) -> None:
    response = client.get(
        "/account/transactions", query_string={"username": "aaron", "created_after": moment}, headers=AARON
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_parameter"
