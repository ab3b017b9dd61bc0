"""Checkpoints and verification from a checkpoint, over HTTP: ``GET /admin/audit/checkpoints``
and ``GET /admin/verify?from=<sequence>``.

Conformance tests, written against the ``client`` and ``driver`` fixtures, run on both
stores. The app takes a checkpoint every ``EVERY`` records; the demo
accounts' openings are records 1 and 2, and ``traffic`` writes one record at a time,
letting any checkpoint a write started finish before the next write.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator

from app.api.docs import ASSET_NAMES
from app.ledger.audit import balances_digest
from app.openapi import build_document
from tests.drivers import StoreDriver
from tests.stores import ADMIN_TOKEN

EVERY = 4
ADMIN = {"Authorization": ADMIN_TOKEN}
AARON = {"Authorization": "1"}
#: Records 3 to 12: deposits, transfers and withdrawals by turns, and one FAILED withdrawal.
OPERATIONS = [
    "/account/coins/add?username=aaron&amount=300",
    "/account/coins/transfer?username=aaron&to=bryan&amount=70",
    "/account/coins/withdraw?username=aaron&amount=50",
    "/account/coins/withdraw?username=aaron&amount=999999",
] * 3
LAST = 2 + 10


@pytest.fixture
def app_overrides() -> dict[str, object]:
    return {"checkpoint_records": EVERY}


def traffic(client: FlaskClient, driver: StoreDriver, count: int = LAST - 2) -> None:
    for path in OPERATIONS[:count]:
        assert client.post(path, headers=AARON).status_code in (200, 422)
        driver.settle_checkpoints()


def every_checkpoint(client: FlaskClient) -> list[dict[str, Any]]:
    """All checkpoints, newest first, walked one page of one at a time."""
    points: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 1} if cursor is None else {"limit": 1, "cursor": cursor}
        response = client.get("/admin/audit/checkpoints", query_string=query, headers=ADMIN)
        assert response.status_code == 200, response.json
        points.extend(response.json["checkpoints"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return points


def audit_records(client: FlaskClient) -> list[dict[str, Any]]:
    response = client.get("/admin/audit?limit=500", headers=ADMIN)
    assert response.json["next_cursor"] is None
    records: list[dict[str, Any]] = response.json["transactions"]
    return records


def balances_at(records: list[dict[str, Any]], sequence: int) -> dict[str, int]:
    """The balances right after record ``sequence``, replayed here from the audit answer."""
    balances: dict[str, int] = {}
    for record in records[:sequence]:
        if record["status"] != "SUCCESS":
            continue
        if record["from"] is not None:
            balances[record["from"]] -= record["amount"]
        if record["to"] is not None:
            balances[record["to"]] = balances.get(record["to"], 0) + record["amount"]
    return balances


def verify(client: FlaskClient, start: int | None = None) -> tuple[int, dict[str, Any]]:
    query = {} if start is None else {"from": start}
    response = client.get("/admin/verify", query_string=query, headers=ADMIN)
    return response.status_code, response.json


# -- taking and listing ----------------------------------------------------------------------


def test_a_checkpoint_is_taken_every_n_records_and_listed_newest_first(
    client: FlaskClient, driver: StoreDriver
) -> None:
    assert every_checkpoint(client) == []
    traffic(client, driver, 1)  # record 3: no multiple of 4 reached yet
    assert every_checkpoint(client) == []
    traffic(client, driver)
    assert [point["sequence"] for point in every_checkpoint(client)] == [12, 8, 4]


def test_a_checkpoint_holds_the_hash_of_its_record_and_the_digest_of_the_balances_then(
    client: FlaskClient, driver: StoreDriver
) -> None:
    traffic(client, driver)
    records = audit_records(client)
    points = every_checkpoint(client)
    assert points
    for point in points:
        sequence = point["sequence"]
        assert point["chain_head"] == records[sequence - 1]["hash"]
        assert point["balances_digest"] == balances_digest(balances_at(records, sequence).items())
    # Checkpoints 4 and 8 saw different balances: the digest is not of the end state.
    assert len({point["balances_digest"] for point in points}) == len(points)


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "cursor=nonsense", "cursor=YTox"])
def test_checkpoint_pages_refuse_bad_limits_and_cursors(client: FlaskClient, query: str) -> None:
    # "YTox" is "a:1", an /admin/audit cursor: not one of this list's.
    response = client.get(f"/admin/audit/checkpoints?{query}", headers=ADMIN)
    assert response.status_code == 400
    assert response.json["error"] == ("invalid_limit" if "limit" in query else "invalid_cursor")


@pytest.mark.parametrize("path", ["/admin/audit/checkpoints", "/admin/verify?from=4"])
@pytest.mark.parametrize("headers", [{}, AARON], ids=["no-token", "a-users-token"])
def test_checkpoints_and_verification_need_the_admin_token(
    client: FlaskClient, path: str, headers: dict[str, str]
) -> None:
    response = client.get(path, headers=headers)
    assert (response.status_code, response.json["error"]) == (401, "unauthorized")


# -- verifying ------------------------------------------------------------------------------------


def test_a_full_verification_confirms_every_checkpoint_it_passes(
    client: FlaskClient, driver: StoreDriver
) -> None:
    traffic(client, driver)
    status, body = verify(client)
    assert status == 200, body
    assert body["ok"] is True
    assert (body["records"], body["from_sequence"], body["checkpoints_checked"]) == (LAST, None, 3)


@pytest.mark.parametrize("start", [4, 8, 12])
def test_a_verification_from_a_checkpoint_checks_only_the_records_after_it(
    client: FlaskClient, driver: StoreDriver, start: int
) -> None:
    traffic(client, driver)
    _, full = verify(client)
    status, body = verify(client, start)
    assert status == 200, body
    assert body["ok"] is True
    assert (body["from_sequence"], body["records"]) == (start, LAST - start)
    assert body["checkpoints_checked"] == 0  # a full verification's figure
    assert (body["accounts"], body["total_balance"], body["last_hash"]) == (
        full["accounts"],
        full["total_balance"],
        full["last_hash"],
    )


def test_a_changed_record_after_a_checkpoint_is_found_from_it_and_by_a_full_verification(
    client: FlaskClient, driver: StoreDriver
) -> None:
    traffic(client, driver)
    driver.tamper(10, amount=71)
    for start in (None, 8):
        status, body = verify(client, start)
        assert (status, body["ok"]) == (500, False)
        assert any("record 10" in problem for problem in body["problems"]), body["problems"]


def test_a_verification_from_a_checkpoint_does_not_look_before_it(
    client: FlaskClient, driver: StoreDriver
) -> None:
    traffic(client, driver)
    driver.tamper(6, amount=71)
    assert verify(client, 8)[0] == 200
    status, body = verify(client)
    assert status == 500
    assert any("record 6" in problem for problem in body["problems"]), body["problems"]


def test_a_changed_balance_is_found_from_a_checkpoint_and_by_a_full_verification(
    client: FlaskClient, driver: StoreDriver
) -> None:
    traffic(client, driver)
    driver.adjust("bryan", balance=1)
    status, body = verify(client)
    assert status == 500
    assert any(problem.startswith("bryan has") for problem in body["problems"]), body["problems"]
    status, body = verify(client, 8)
    assert status == 500
    assert any("do not follow from checkpoint 8" in problem for problem in body["problems"]), body["problems"]


@pytest.mark.parametrize("value", ["5", "13", "0", "-4", "4.0", "four", "", "9" * 20])
def test_verify_from_anything_but_a_checkpoint_is_400_naming_from(
    client: FlaskClient, driver: StoreDriver, value: str
) -> None:
    traffic(client, driver)
    response = client.get("/admin/verify", query_string={"from": value}, headers=ADMIN)
    assert (response.status_code, response.json["error"]) == (400, "invalid_parameter")
    assert "from" in response.json["message"]


def test_the_answers_match_the_openapi_document(client: FlaskClient, driver: StoreDriver) -> None:
    traffic(client, driver)
    document = build_document(ASSET_NAMES)
    calls = [
        ("/admin/audit/checkpoints?limit=2", "/admin/audit/checkpoints", 200),
        ("/admin/verify?from=8", "/admin/verify", 200),
        ("/admin/verify?from=9", "/admin/verify", 400),
    ]
    for url, path, status in calls:
        response = client.get(url, headers=ADMIN)
        assert response.status_code == status, response.json
        documented = document["paths"][path]["get"]["responses"][str(status)]
        schema = documented["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": document["components"]}).validate(response.json)
