"""Reversals: a transaction sent back, in whole or in parts, exactly once in all.

Over the Flask test client for the contract (``/account/transactions/{id}/reverse``
and the operator's ``/admin/transactions/{id}/reverse``), on a bare store for the
races: threads released together on a barrier reverse one transaction, or reverse
it while its recipient spends the money; every round ends with exact balances, the
sum reversed never past the original, and a verification that passes. A restart of
the embedded store keeps the reversed amounts (from the journal, and from a snapshot).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.ledger.errors import AlreadyReversed, InsufficientFunds, InvalidInput, LedgerError
from app.ledger.memory import MockDB
from app.ledger.model import Deadline, OperationResult, OperationType, Status
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver
from tests.outcomes import full_history, patient
from tests.stores import ADMIN_TOKEN, new_store, open_account
from tests.threads import run_together

AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
CAROL = {"Authorization": "carol-token"}
ADMIN = {"Authorization": ADMIN_TOKEN}
OPENING = 10_000


@pytest.fixture
def http(client: FlaskClient) -> FlaskClient:
    """The app's client, with carol (no coins) beside the demo accounts aaron and bryan."""
    answer = client.post("/admin/accounts", json={"username": "carol", "token": "carol-token"}, headers=ADMIN)
    assert answer.status_code == 201
    return client


def transfer(client: FlaskClient, amount: int, source: str = "aaron", target: str = "bryan") -> str:
    headers = {"aaron": AARON, "bryan": BRYAN, "carol": CAROL}[source]
    answer = client.post(
        f"/account/coins/transfer?username={source}&to={target}&amount={amount}", headers=headers
    )
    assert answer.status_code == 200, answer.json
    transaction_id: str = answer.json["transaction"]["id"]
    return transaction_id


def reverse(
    client: FlaskClient,
    transaction_id: str,
    amount: int | None = None,
    *,
    username: str = "bryan",
    headers: dict[str, str] | None = None,
    **body: Any,
) -> TestResponse:
    query = f"?username={username}" + ("" if amount is None else f"&amount={amount}")
    return client.post(
        f"/account/transactions/{transaction_id}/reverse{query}",
        headers=BRYAN if headers is None else headers,
        json=body or None,
    )


def admin_reverse(
    client: FlaskClient, transaction_id: str, amount: int | None = None, **headers: str
) -> TestResponse:
    query = "" if amount is None else f"?amount={amount}"
    return client.post(f"/admin/transactions/{transaction_id}/reverse{query}", headers={**ADMIN, **headers})


def balance(client: FlaskClient, username: str, headers: dict[str, str]) -> int:
    answer = client.get(f"/account/coins?username={username}", headers=headers)
    assert answer.status_code == 200
    value: int = answer.json["balance"]
    return value


def shown(
    client: FlaskClient, transaction_id: str, username: str = "aaron", headers: dict[str, str] = AARON
) -> dict[str, Any]:
    """The transaction as ``username``'s history shows it."""
    answer = client.get(f"/account/transactions?username={username}&limit=500", headers=headers)
    [record] = [record for record in answer.json["transactions"] if record["id"] == transaction_id]
    return dict(record)


def assert_verified(client: FlaskClient) -> None:
    answer = client.get("/admin/verify", headers=ADMIN)
    assert answer.status_code == 200, answer.json
    assert answer.json["ok"] is True


def assert_error(answer: TestResponse, status: int, code: str) -> None:
    assert answer.status_code == status, answer.json
    assert answer.json["error"] == code


# -- the recipient's reversal ------------------------------------------------------------


def test_a_full_reversal_sends_it_all_back_once(http: FlaskClient) -> None:
    original = transfer(http, 100)

    answer = reverse(http, original)

    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body["username"] == "bryan"
    assert body["balance"] == OPENING
    assert answer.headers["ETag"] == f'"{body["version"]}"'
    record = body["transaction"]
    assert (record["type"], record["from"], record["to"], record["amount"], record["status"]) == (
        "reversal", "bryan", "aaron", 100, "SUCCESS",
    )  # fmt: skip
    assert record["reverses"] == original
    assert record["balance_after"] == OPENING
    assert balance(http, "aaron", AARON) == OPENING
    assert shown(http, original)["reversed_amount"] == 100
    assert shown(http, original, "bryan", BRYAN)["reversed_amount"] == 100
    assert shown(http, record["id"])["reversed_amount"] == 0
    audit = http.get("/admin/audit?limit=500", headers=ADMIN).json["transactions"]
    assert [row["reversed_amount"] for row in audit if row["id"] == original] == [100]
    listed = http.get("/admin/transactions?type=transfer", headers=ADMIN).json["transactions"]
    assert [row["reversed_amount"] for row in listed if row["id"] == original] == [100]

    assert_error(reverse(http, original), 409, "already_reversed")
    assert balance(http, "bryan", BRYAN) == OPENING
    assert_verified(http)


def test_partial_reversals_add_up_to_at_most_the_original(http: FlaskClient) -> None:
    original = transfer(http, 100)

    assert reverse(http, original, 30).json["transaction"]["amount"] == 30
    assert reverse(http, original, 50).json["transaction"]["amount"] == 50
    assert_error(reverse(http, original, 21), 400, "invalid_amount")  # 20 are left
    assert shown(http, original)["reversed_amount"] == 80
    left = reverse(http, original)  # the default: all that is left
    assert left.json["transaction"]["amount"] == 20
    assert_error(reverse(http, original, 1), 409, "already_reversed")

    assert balance(http, "aaron", AARON) == OPENING
    assert balance(http, "bryan", BRYAN) == OPENING
    assert shown(http, original)["reversed_amount"] == 100
    assert_verified(http)


@pytest.mark.parametrize("amount", ["0", "-1", "1.5", "abc", str(10**15 + 1)])
def test_an_invalid_amount_is_refused(http: FlaskClient, amount: str) -> None:
    original = transfer(http, 100)
    answer = http.post(
        f"/account/transactions/{original}/reverse?username=bryan&amount={amount}", headers=BRYAN
    )
    assert_error(answer, 400, "invalid_amount")
    assert shown(http, original)["reversed_amount"] == 0


def test_only_the_recipient_may_reverse(http: FlaskClient) -> None:
    original = transfer(http, 100)

    assert_error(reverse(http, original, username="aaron", headers=AARON), 404, "transaction_not_found")
    assert_error(reverse(http, original, username="carol", headers=CAROL), 404, "transaction_not_found")
    assert_error(reverse(http, "tx_" + "0" * 32), 404, "transaction_not_found")
    assert_error(reverse(http, "not-an-id"), 404, "transaction_not_found")
    assert_error(reverse(http, original, username="bryan", headers=AARON), 401, "unauthorized")
    assert balance(http, "aaron", AARON) == OPENING - 100
    assert shown(http, original)["reversed_amount"] == 0
    assert_verified(http)


def test_reversals_and_other_records_are_not_reversible(http: FlaskClient) -> None:
    reversal = reverse(http, transfer(http, 100), 10).json["transaction"]["id"]
    # The reversal's coins went back to aaron; neither party may reverse it.
    assert_error(reverse(http, reversal, username="aaron", headers=AARON), 404, "transaction_not_found")
    assert_error(admin_reverse(http, reversal), 404, "transaction_not_found")
    deposit = http.post("/account/coins/add?username=bryan&amount=5", headers=BRYAN).json["transaction"]["id"]
    assert_error(reverse(http, deposit), 404, "transaction_not_found")  # the operator's to reverse
    assert_error(
        http.post("/account/coins/withdraw?username=carol&amount=5", headers=CAROL), 422, "insufficient_funds"
    )
    refused = http.get("/account/transactions?username=carol", headers=CAROL).json["transactions"][0]
    assert refused["status"] == "FAILED"
    assert_error(admin_reverse(http, refused["id"]), 404, "transaction_not_found")


def test_a_captured_hold_is_reversed_by_its_payee(http: FlaskClient) -> None:
    hold = http.post("/account/holds?username=aaron&to=bryan&amount=70", headers=AARON).json["hold"]["id"]
    capture = http.post(f"/account/holds/{hold}/capture?username=aaron&amount=60", headers=AARON)
    captured = capture.json["transaction"]["id"]

    assert_error(reverse(http, captured, username="aaron", headers=AARON), 404, "transaction_not_found")
    answer = reverse(http, captured, 60)

    assert answer.status_code == 200, answer.json
    assert balance(http, "aaron", AARON) == OPENING
    assert balance(http, "bryan", BRYAN) == OPENING
    assert_verified(http)


def test_a_reversal_carries_a_reference_and_metadata(http: FlaskClient) -> None:
    original = transfer(http, 100)
    answer = reverse(http, original, 10, reference="refund-7", metadata={"reason": "damaged"})
    record = answer.json["transaction"]
    assert (record["reference"], record["metadata"]) == ("refund-7", {"reason": "damaged"})
    assert_error(reverse(http, original, 10, reference="\x01"), 400, "invalid_reference")
    assert_verified(http)


def test_a_reversal_the_recipient_cannot_fund_fails_audited(http: FlaskClient) -> None:
    original = transfer(http, 100, "aaron", "carol")  # carol had nothing else
    assert transfer(http, 95, "carol", "bryan")

    answer = reverse(http, original, username="carol", headers=CAROL)

    assert_error(answer, 422, "insufficient_funds")
    history = http.get("/account/transactions?username=carol", headers=CAROL).json["transactions"]
    assert (history[0]["type"], history[0]["status"], history[0]["reason"], history[0]["reverses"]) == (
        "reversal", "FAILED", "insufficient_funds", original,
    )  # fmt: skip
    assert shown(http, original)["reversed_amount"] == 0
    assert reverse(http, original, 5, username="carol", headers=CAROL).status_code == 200
    assert_verified(http)


def test_if_match_names_the_callers_version(http: FlaskClient) -> None:
    original = transfer(http, 100)
    version = http.get("/account/coins?username=bryan", headers=BRYAN).json["version"]

    stale = reverse(http, original, 10, headers={**BRYAN, "If-Match": f'"{version - 1}"'})
    assert_error(stale, 412, "version_conflict")
    history = http.get("/account/transactions?username=bryan", headers=BRYAN).json["transactions"]
    assert (history[0]["type"], history[0]["reason"]) == ("reversal", "version_conflict")
    current = reverse(http, original, 10, headers={**BRYAN, "If-Match": f'"{version}"'})
    assert current.status_code == 200
    assert current.json["version"] == version + 1
    assert shown(http, original)["reversed_amount"] == 10


def test_a_retry_with_the_same_key_reverses_once(http: FlaskClient) -> None:
    original = transfer(http, 100)
    keyed = {**BRYAN, "Idempotency-Key": "refund-1"}

    first = reverse(http, original, 40, headers=keyed)
    again = reverse(http, original, 40, headers=keyed)
    other = reverse(http, original, 41, headers=keyed)

    assert first.status_code == again.status_code == 200
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_error(other, 409, "idempotency_key_reused")
    assert shown(http, original)["reversed_amount"] == 40
    assert balance(http, "bryan", BRYAN) == OPENING + 60


def test_a_timed_out_reversal_applies_nothing(http: FlaskClient, driver: StoreDriver) -> None:
    original = transfer(http, 100)
    with driver.holding_write_lock():
        answer = reverse(http, original, headers={**BRYAN, "X-Timeout-Ms": "50"})
    assert_error(answer, 503, "timeout")
    assert shown(http, original)["reversed_amount"] == 0
    history = http.get("/account/transactions?username=bryan", headers=BRYAN).json["transactions"]
    assert (history[0]["type"], history[0]["status"], history[0]["reason"]) == (
        "reversal",
        "FAILED",
        "timeout",
    )
    assert_verified(http)


# -- the operator's reversal --------------------------------------------------------------


def test_the_operator_reverses_deposits_withdrawals_and_transfers(http: FlaskClient) -> None:
    deposit = http.post("/admin/accounts/carol/deposit?amount=500", headers=ADMIN).json["transaction"]["id"]
    withdrawal = http.post("/admin/accounts/carol/withdraw?amount=200", headers=ADMIN).json["transaction"][
        "id"
    ]
    original = transfer(http, 100)

    taken = admin_reverse(http, deposit, 300)  # a deposit's reversal takes coins out
    assert taken.status_code == 200, taken.json
    record = taken.json["transaction"]
    assert (record["type"], record["from"], record["to"], record["amount"]) == (
        "reversal",
        "carol",
        None,
        300,
    )
    assert (taken.json["username"], taken.json["balance"]) == ("carol", 0)

    back = admin_reverse(http, withdrawal)  # a withdrawal's puts them back
    assert back.status_code == 200, back.json
    record = back.json["transaction"]
    assert (record["type"], record["from"], record["to"], record["amount"]) == (
        "reversal",
        None,
        "carol",
        200,
    )
    assert (back.json["username"], back.json["balance"]) == ("carol", 200)

    moved = admin_reverse(http, original, 100)
    assert (moved.json["username"], moved.json["balance"]) == ("bryan", OPENING)
    assert balance(http, "aaron", AARON) == OPENING
    assert_error(admin_reverse(http, deposit, 201), 400, "invalid_amount")
    assert_error(admin_reverse(http, withdrawal), 409, "already_reversed")
    assert_error(admin_reverse(http, deposit, 1, Authorization="1"), 401, "unauthorized")

    figures = http.get("/admin/verify", headers=ADMIN).json
    assert figures["ok"] is True
    assert figures["total_balance"] == figures["total_deposited"] - figures["total_withdrawn"]


def test_the_operator_may_fail_for_funds(http: FlaskClient) -> None:
    deposit = http.post("/admin/accounts/carol/deposit?amount=500", headers=ADMIN).json["transaction"]["id"]
    assert transfer(http, 450, "carol", "bryan")

    answer = admin_reverse(http, deposit)

    assert_error(answer, 422, "insufficient_funds")
    history = http.get("/account/transactions?username=carol", headers=CAROL).json["transactions"]
    assert (history[0]["type"], history[0]["status"], history[0]["reverses"]) == (
        "reversal",
        "FAILED",
        deposit,
    )
    assert admin_reverse(http, deposit, 50).status_code == 200
    assert balance(http, "carol", CAROL) == 0
    assert_verified(http)


def test_the_operators_keys_are_its_own(http: FlaskClient) -> None:
    original = transfer(http, 100)
    first = admin_reverse(http, original, 10, **{"Idempotency-Key": "k"})
    again = admin_reverse(http, original, 10, **{"Idempotency-Key": "k"})
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert shown(http, original)["reversed_amount"] == 10
    # The recipient's own key of the same name is another key.
    assert reverse(http, original, 10, headers={**BRYAN, "Idempotency-Key": "k"}).status_code == 200
    assert shown(http, original)["reversed_amount"] == 20


# -- races ------------------------------------------------------------------------------------


def _attempt(run: Any) -> OperationResult | LedgerError:
    try:
        result: OperationResult = run()
    except (AlreadyReversed, InsufficientFunds, InvalidInput) as error:
        return error
    return result


def test_racing_reversals_never_reverse_more_than_the_original(
    store: LedgerStore, driver: StoreDriver
) -> None:
    threads, amount, rounds = 6, 10, driver.race_rounds(800)
    open_account(store, "payer", rounds * amount)
    open_account(store, "payee", 0)
    for _ in range(rounds):
        original = store.transfer("payer", "payee", amount, deadline=patient())

        def reverser(original_id: str = original.transaction.id) -> OperationResult | LedgerError:
            return _attempt(lambda: store.reverse("payee", original_id, 4, deadline=patient()))

        outcomes = run_together([reverser] * threads)

        succeeded = [outcome for outcome in outcomes if isinstance(outcome, OperationResult)]
        # 10 coins, 4 at a time: two reversals fit; the third would pass what is left.
        assert len(succeeded) == 2, outcomes
        assert all(isinstance(outcome, InvalidInput) for outcome in outcomes if outcome not in succeeded)
    assert store.account("payer", deadline=patient()).balance == rounds * 8
    assert store.account("payee", deadline=patient()).balance == rounds * 2
    assert store.verify().ok


def test_full_reversals_race_to_exactly_one(store: LedgerStore, driver: StoreDriver) -> None:
    threads, rounds = 6, driver.race_rounds(800)
    open_account(store, "payer", rounds)
    open_account(store, "payee", 0)
    for _ in range(rounds):
        original = store.transfer("payer", "payee", 1, deadline=patient()).transaction.id
        outcomes = run_together(
            [lambda: _attempt(lambda: store.reverse("payee", original, None, deadline=patient()))] * threads
        )
        assert sum(isinstance(outcome, OperationResult) for outcome in outcomes) == 1
        assert sum(isinstance(outcome, AlreadyReversed) for outcome in outcomes) == threads - 1
    assert store.account("payer", deadline=patient()).balance == rounds
    assert store.verify().ok


def test_a_reversal_racing_the_recipients_spending_never_overdraws(
    store: LedgerStore, driver: StoreDriver
) -> None:
    rounds = driver.race_rounds(800)
    open_account(store, "payer", rounds * 10)
    open_account(store, "payee", 0)
    open_account(store, "shop", 0)
    for _ in range(rounds):
        original = store.transfer("payer", "payee", 10, deadline=patient()).transaction.id

        def refund() -> OperationResult | LedgerError:
            return _attempt(lambda: store.reverse("payee", original, None, deadline=patient()))

        def spend() -> OperationResult | LedgerError:
            return _attempt(lambda: store.transfer("payee", "shop", 7, deadline=patient()))

        refunded, spent = run_together([refund, spend])
        # Only one of them fits in the 10 coins the payee has.
        assert isinstance(refunded, OperationResult) != isinstance(spent, OperationResult)
        payee = store.account("payee", deadline=patient()).balance
        assert payee >= 0
        if payee:  # what is left goes back, so that every round starts from nothing
            store.reverse("payee", original, payee, deadline=patient())
    assert store.account("payee", deadline=patient()).balance == 0
    assert (
        store.account("payer", deadline=patient()).balance + store.account("shop", deadline=patient()).balance
        == rounds * 10
    )
    assert store.verify().ok


# -- restarts -----------------------------------------------------------------------------------


@pytest.mark.memory_only
def test_a_restart_keeps_reversed_amounts(store_kind: str, tmp_path: Path) -> None:
    """Reversed amounts come back from a snapshot (those before it) and from the journal
    (those after it): the copy taken while the ledger runs is what a crash leaves."""
    ledger = MockDB.open(tmp_path / "ledger")
    try:
        open_account(ledger, "payer", 100)
        open_account(ledger, "payee", 0)
        partly = ledger.transfer("payer", "payee", 50, deadline=patient()).transaction.id
        wholly = ledger.transfer("payer", "payee", 30, deadline=patient()).transaction.id
        ledger.reverse("payee", partly, 5, deadline=patient())
        ledger.snapshot()
        ledger.reverse("payee", partly, 15, deadline=patient())
        ledger.reverse(None, wholly, None, deadline=patient())
        shutil.copytree(tmp_path / "ledger", tmp_path / "crashed")  # every acknowledged entry is synced
    finally:
        ledger.close()

    for directory in ("crashed", "ledger"):  # after a crash, and after a clean shutdown's snapshot
        reopened = MockDB.open(tmp_path / directory)
        try:
            assert dict(reopened.audit_page(limit=100, cursor=None).reversed) == {partly: 20, wholly: 30}
            with pytest.raises(InvalidInput):
                reopened.reverse("payee", partly, 31, deadline=patient())
            with pytest.raises(AlreadyReversed):
                reopened.reverse("payee", wholly, None, deadline=patient())
            reopened.reverse("payee", partly, 30, deadline=patient())
            assert reopened.account("payee", deadline=patient()).balance == 0
            assert reopened.verify().ok
        finally:
            reopened.close()


@pytest.mark.stores("postgres")
def test_reversed_amounts_live_in_the_database(store_url: str) -> None:
    """A second store on the same database (another worker, or a restart) sees what the first
    reversed, and refuses to reverse more."""
    first, second = new_store(store_url), new_store(store_url)
    try:
        open_account(first, "payer", 100)
        open_account(first, "payee", 0)
        original = first.transfer("payer", "payee", 50, deadline=patient()).transaction.id
        first.reverse("payee", original, 20, deadline=patient())
        assert dict(second.audit_page(limit=100, cursor=None).reversed) == {original: 20}
        with pytest.raises(InvalidInput):
            second.reverse("payee", original, 31, deadline=patient())
        second.reverse(None, original, None, deadline=patient())
        with pytest.raises(AlreadyReversed):
            first.reverse("payee", original, 1, deadline=patient())
        assert first.verify().ok
    finally:
        first.close()
        second.close()


# -- the records ---------------------------------------------------------------------------------


def test_a_reversal_is_audited_with_what_it_reverses(store: LedgerStore) -> None:
    open_account(store, "payer", 100)
    open_account(store, "payee", 0)
    original = store.transfer("payer", "payee", 60, deadline=patient()).transaction
    reversal = store.reverse("payee", original.id, 25, deadline=Deadline.after_ms(5000)).transaction

    assert (reversal.type, reversal.source, reversal.target, reversal.amount, reversal.status) == (
        OperationType.REVERSAL.value, "payee", "payer", 25, Status.SUCCESS.value,
    )  # fmt: skip
    assert reversal.reverses == original.id
    assert (reversal.from_balance_after, reversal.to_balance_after) == (35, 65)
    assert [record.id for record in full_history(store, "payer")][:2] == [reversal.id, original.id]
    assert store.verify().ok
