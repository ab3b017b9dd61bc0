"""``balance_after``: every record carries its parties' balances right after it, hashed and verified."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.drivers import StoreDriver
from tests.stores import ADMIN_TOKEN
from tests.trails import audit, replayed

AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
ADMIN = {"Authorization": ADMIN_TOKEN}


def traffic(client: FlaskClient) -> list[dict[str, Any]]:
    """Answers of a little of everything: money, a refusal, a batch, a hold and its capture."""
    answers = [
        client.post("/account/coins/add?username=aaron&amount=70", headers=AARON),
        client.post("/account/coins/withdraw?username=aaron&amount=20", headers=AARON),
        client.post("/account/coins/transfer?username=aaron&to=bryan&amount=30", headers=AARON),
        client.post("/account/coins/withdraw?username=aaron&amount=999999999", headers=AARON),
        client.post("/account/coins/transfer?username=aaron&to=nobody&amount=5", headers=AARON),
        client.post(
            "/account/coins/batch?username=bryan",
            headers=BRYAN,
            json={
                "operations": [{"type": "transfer", "to": "aaron", "amount": 4}, {"type": "add", "amount": 6}]
            },
        ),
    ]
    hold = client.post("/account/holds?username=aaron&to=bryan&amount=11", headers=AARON)
    answers.append(hold)
    answers.append(
        client.post(f"/account/holds/{hold.json['hold']['id']}/capture?username=bryan", headers=BRYAN)
    )
    return [answer.json for answer in answers]


def test_every_answer_carries_the_callers_balance_after_its_record(client: FlaskClient) -> None:
    answers = traffic(client)
    for answer in answers:
        if "transaction" in answer:
            assert answer["transaction"]["balance_after"] == answer["balance"], answer
        elif "results" in answer:  # a batch: each item's record, the caller's balance as it went
            afters = [result["transaction"]["balance_after"] for result in answer["results"]]
            assert afters[-1] == answer["balance"]
            assert afters == [answer["balance"] - 6, answer["balance"]]
    refused = client.get("/account/transactions?username=aaron&status=FAILED", headers=AARON).json
    # A refusal changes nothing: the balance after it is the one before it.
    assert [record["balance_after"] for record in refused["transactions"]] == [
        answers[2]["balance"], answers[2]["balance"],
    ]  # fmt: skip


def test_histories_and_the_audit_trail_carry_the_replayed_balances(client: FlaskClient) -> None:
    traffic(client)
    records = audit(client)
    after = replayed(records)
    for record in records:
        for side, name in (("from_balance_after", record["from"]), ("to_balance_after", record["to"])):
            assert record[side] == (after.get((record["sequence"], name)) if name else None), record
    for user, headers in (("aaron", AARON), ("bryan", BRYAN)):
        history = client.get(f"/account/transactions?username={user}&limit=500", headers=headers).json
        for record in history["transactions"]:
            assert record["balance_after"] == after[(record["sequence"], user)]
            assert "from_balance_after" not in record
        assert (
            history["transactions"][0]["balance_after"]
            == client.get(f"/account/coins?username={user}", headers=headers).json["balance"]
        )
    assert client.get("/admin/verify", headers=ADMIN).json["ok"] is True


def test_a_balance_after_that_disagrees_with_the_replay_is_reported(
    driver: StoreDriver, client: FlaskClient
) -> None:
    traffic(client)
    transfer = next(record for record in audit(client) if record["type"] == "transfer")
    driver.rehash(transfer["sequence"], from_balance_after=transfer["from_balance_after"] + 1)
    problems = client.get("/admin/verify", headers=ADMIN).json["problems"]
    assert any(f"record {transfer['sequence']} says aaron had" in problem for problem in problems), problems
