"""``Idempotency-Key`` under concurrency, timeouts and memory pressure.

Threads start together on a barrier (``Crew``) and are joined within ``JOIN_TIMEOUT_S``;
every wait in these tests is on an event or a lock the test controls, never a sleep.
Over HTTP each thread uses its own test client of the one app. The single-threaded
behaviour of keys is in ``test_idempotency.py``.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.ledger.audit import GENESIS_HASH
from app.ledger.errors import IdempotencyKeyReused, IdempotencyStoreFull, OperationTimeout
from app.ledger.memory import MockDB
from app.ledger.memory.keys import IdempotencyTable
from app.ledger.model import (
    AccountView,
    Deadline,
    OperationResult,
    OperationType,
    Status,
    Transaction,
    new_id,
    utc_now_iso,
)
from app.ledger.outcomes import Outcome
from app.ledger.records import RecordDraft
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver
from tests.stores import ADMIN_TOKEN
from tests.threads import JOIN_TIMEOUT_S, run_together

T = TypeVar("T")

#: Concurrent requests per test.
N = 32
AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
ADMIN = {"Authorization": ADMIN_TOKEN}
WITHDRAW = "/account/coins/withdraw"
TRANSFER = "/account/coins/transfer"
DEPOSIT = "/account/coins/add"


# -- helpers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What a thread saw of its response (read in that thread, compared in the test's)."""

    status: int
    body: bytes
    replayed: str | None
    etag: str | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def send(app: Flask, path: str, query: dict[str, Any], headers: dict[str, str]) -> Reply:
    """One POST through a fresh test client (one per thread)."""
    response = app.test_client().post(path, query_string=query, headers=headers)
    return Reply(
        response.status_code,
        response.get_data(),
        response.headers.get("Idempotent-Replayed"),
        response.headers.get("ETag"),
    )


def ledger_of(app: Flask) -> LedgerStore:
    ledger: LedgerStore = app.extensions["ledger"]
    return ledger


def balance(client: FlaskClient, username: str, headers: dict[str, str]) -> int:
    response = client.get("/account/coins", query_string={"username": username}, headers=headers)
    assert response.status_code == 200
    value: int = response.json["balance"]
    return value


def audit(app: Flask) -> list[Transaction]:
    """The whole audit trail, oldest first, asserted gap-free."""
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = ledger_of(app).audit_page(limit=500, cursor=cursor)
        records.extend(page.transactions)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [record.sequence for record in records] == list(range(1, len(records) + 1))
    return records


def money_records(app: Flask) -> list[Transaction]:
    """The audit trail past the two demo openings."""
    records = audit(app)
    assert [(record.type, record.target) for record in records[:2]] == [
        (OperationType.OPEN, "aaron"),
        (OperationType.OPEN, "bryan"),
    ]
    return records[2:]


def assert_verifies(client: FlaskClient) -> None:
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 200, response.json
    assert response.json["ok"] is True


def assert_one_applied(replies: Sequence[Reply]) -> Reply:
    """All replies are the same status and body; exactly one was not a replay. Returns that one."""
    assert Counter(reply.status for reply in replies).most_common() == [(replies[0].status, len(replies))]
    assert {reply.body for reply in replies} == {replies[0].body}
    assert {reply.etag for reply in replies} == {replies[0].etag}
    originals = [reply for reply in replies if reply.replayed is None]
    assert len(originals) == 1, f"{len(originals)} requests ran"
    assert [reply.replayed for reply in replies].count("true") == len(replies) - 1
    return originals[0]


class Background(Generic[T]):
    """One call on its own thread; ``result`` joins it within ``JOIN_TIMEOUT_S``."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._value: list[T] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="background", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value.append(self._call())
        except BaseException as error:
            self._error.append(error)

    def result(self) -> T:
        self._thread.join(timeout=JOIN_TIMEOUT_S)
        assert not self._thread.is_alive(), f"still running after {JOIN_TIMEOUT_S} s"
        if self._error:
            raise self._error[0]
        return self._value[0]


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def a_result(amount: int = 1) -> OperationResult:
    """A stand-in result for ``IdempotencyTable`` tests (the table never looks inside)."""
    draft = RecordDraft(OperationType.DEPOSIT, None, "aaron", amount)
    record = draft.seal(GENESIS_HASH, 1, new_id("tx_"), utc_now_iso())
    return OperationResult(record, AccountView("aaron", amount, 1))


class Counted:
    """An operation that counts its runs and returns a fixed result."""

    def __init__(self, result: OperationResult | None = None) -> None:
        self.result = result or a_result()
        self.runs = 0
        self._lock = threading.Lock()

    def __call__(self) -> OperationResult:
        with self._lock:
            self.runs += 1
        return self.result


def patient() -> Deadline:
    return Deadline.after_ms(5_000)


# -- many requests, one key -----------------------------------------------------------

MOVES = [
    pytest.param(
        WITHDRAW, {"username": "aaron", "amount": 250}, {"aaron": 9_750, "bryan": 10_000}, id="withdraw"
    ),
    pytest.param(
        TRANSFER,
        {"username": "aaron", "to": "bryan", "amount": 250},
        {"aaron": 9_750, "bryan": 10_250},
        id="transfer",
    ),
]


@pytest.mark.parametrize(("path", "query", "balances"), MOVES)
def test_concurrent_retries_of_one_key_apply_once_and_answer_alike(
    app: Flask, client: FlaskClient, path: str, query: dict[str, Any], balances: dict[str, int]
) -> None:
    headers = {**AARON, "Idempotency-Key": "order-7"}
    replies = run_together([lambda: send(app, path, query, headers)] * N)

    original = assert_one_applied(replies)
    assert original.status == 200
    body = original.json
    assert body["balance"] == balances["aaron"]
    assert {name: balance(client, name, AARON if name == "aaron" else BRYAN) for name in balances} == balances
    (record,) = money_records(app)
    assert record.id == body["transaction"]["id"]
    assert (record.status, record.amount) == (Status.SUCCESS, 250)
    assert_verifies(client)


def test_one_key_with_different_parameters_at_once_runs_only_the_first(
    app: Flask, client: FlaskClient
) -> None:
    """Each thread sends other parameters (amount, even the operation): one runs, the rest are 409."""

    def worker(index: int) -> Callable[[], Reply]:
        amount = index + 1
        if index % 2:
            query: dict[str, Any] = {"username": "aaron", "to": "bryan", "amount": amount}
            return lambda: send(app, TRANSFER, query, {**AARON, "Idempotency-Key": "k"})
        return lambda: send(
            app, WITHDRAW, {"username": "aaron", "amount": amount}, {**AARON, "Idempotency-Key": "k"}
        )

    replies = run_together([worker(index) for index in range(N)])

    applied = [reply for reply in replies if reply.status == 200]
    refused = [reply for reply in replies if reply.status != 200]
    assert len(applied) == 1
    assert len(refused) == N - 1
    for reply in refused:
        assert reply.status == 409
        assert reply.json["error"] == "idempotency_key_reused"
        assert reply.replayed is None
    body = applied[0].json
    amount = body["transaction"]["amount"]
    (record,) = money_records(app)
    assert record.id == body["transaction"]["id"]
    assert record.status == Status.SUCCESS
    assert balance(client, "aaron", AARON) == 10_000 - amount
    expected_bryan = 10_000 + amount if record.type == OperationType.TRANSFER else 10_000
    assert balance(client, "bryan", BRYAN) == expected_bryan
    assert_verifies(client)


def test_a_key_whose_first_request_failed_replays_the_failure_even_once_funded(
    app: Flask, client: FlaskClient
) -> None:
    query = {"username": "aaron", "amount": 20_000}
    headers = {**AARON, "Idempotency-Key": "too-much"}
    first = assert_one_applied(run_together([lambda: send(app, WITHDRAW, query, headers)] * N))
    assert first.status == 422
    assert first.json["error"] == "insufficient_funds"
    (failed,) = money_records(app)
    assert (failed.type, failed.status, failed.reason) == (
        OperationType.WITHDRAWAL,
        Status.FAILED,
        "insufficient_funds",
    )

    funded = client.post(DEPOSIT, query_string={"username": "aaron", "amount": 20_000}, headers=AARON)
    assert funded.status_code == 200
    retries = run_together([lambda: send(app, WITHDRAW, query, headers)] * N)

    for reply in retries:
        assert (reply.status, reply.body, reply.replayed) == (422, first.body, "true")
    assert balance(client, "aaron", AARON) == 30_000
    assert [record.type for record in money_records(app)] == [OperationType.WITHDRAWAL, OperationType.DEPOSIT]
    assert_verifies(client)


def test_a_key_whose_first_request_timed_out_is_released(
    app: Flask, client: FlaskClient, driver: StoreDriver
) -> None:
    query = {"username": "aaron", "amount": 300}
    headers = {**AARON, "Idempotency-Key": "slow-1"}
    with driver.holding_write_lock():
        first = send(app, WITHDRAW, query, {**headers, "X-Timeout-Ms": "20"})
    assert first.status == 503
    assert first.json["error"] == "timeout"
    assert first.replayed is None
    assert balance(client, "aaron", AARON) == 10_000

    # The deadline is not part of the request: a retry with the default deadline is the same request.
    retry = send(app, WITHDRAW, query, headers)
    assert retry.status == 200
    assert retry.replayed is None, "a timed-out first attempt must not be replayed"
    assert retry.json["balance"] == 9_700
    again = send(app, WITHDRAW, query, headers)
    assert (again.status, again.body, again.replayed) == (200, retry.body, "true")

    timeout, success = money_records(app)
    assert (timeout.status, timeout.reason) == (Status.FAILED, "timeout")
    assert (success.status, success.id) == (Status.SUCCESS, retry.json["transaction"]["id"])
    assert balance(client, "aaron", AARON) == 9_700
    assert_verifies(client)


def test_concurrent_requests_that_all_time_out_release_the_key_for_concurrent_retries(
    app: Flask, client: FlaskClient, driver: StoreDriver
) -> None:
    query = {"username": "aaron", "amount": 300}
    headers = {**AARON, "Idempotency-Key": "slow-2"}
    with driver.holding_write_lock():
        stalled = run_together([lambda: send(app, WITHDRAW, query, {**headers, "X-Timeout-Ms": "20"})] * N)
    for reply in stalled:
        assert reply.status == 503
        assert reply.json["error"] == "timeout"
    # Each waiter that became the key's owner (after an owner's timeout) reached the ledger
    # and timed out on its lock: those are audited, nothing applied.
    timeouts = money_records(app)
    assert 1 <= len(timeouts) <= N
    assert {(record.status, record.reason) for record in timeouts} == {(Status.FAILED, "timeout")}
    assert balance(client, "aaron", AARON) == 10_000

    original = assert_one_applied(run_together([lambda: send(app, WITHDRAW, query, headers)] * N))
    assert original.status == 200
    assert balance(client, "aaron", AARON) == 9_700
    assert [record.status for record in money_records(app)[len(timeouts) :]] == [Status.SUCCESS]
    assert_verifies(client)


# -- a waiter whose deadline passes --------------------------------------------------


def test_a_waiter_whose_deadline_passes_gets_a_timeout_and_nothing_runs_twice() -> None:
    table = IdempotencyTable()
    started, release = threading.Event(), threading.Event()
    result = a_result()
    runs: list[str] = []

    def operation() -> OperationResult:
        runs.append(threading.current_thread().name)
        started.set()
        assert release.wait(JOIN_TIMEOUT_S)
        return result

    first = Background(lambda: table.run("aaron", "k", "fp", patient(), operation))
    assert started.wait(JOIN_TIMEOUT_S)

    waiters = run_together([lambda: _timed_out(table, "fp", operation)] * 8)
    assert all(error.status == 503 and error.code == "timeout" for error in waiters)
    assert all(error.transaction is None for error in waiters)
    assert "Retry-After" in waiters[0].headers
    # Other parameters while in flight: refused at once, not after a wait.
    with pytest.raises(IdempotencyKeyReused):
        table.run("aaron", "k", "other", Deadline.after_ms(JOIN_TIMEOUT_S * 1000), operation)
    assert len(runs) == 1

    release.set()
    outcome = first.result()
    assert outcome == Outcome(result, replayed=False)
    replay = table.run("aaron", "k", "fp", patient(), operation)
    assert replay.replayed
    assert replay.result is result
    assert len(runs) == 1


def _timed_out(
    table: IdempotencyTable, fingerprint: str, operation: Callable[[], OperationResult]
) -> OperationTimeout:
    with pytest.raises(OperationTimeout) as raised:
        table.run("aaron", "k", fingerprint, Deadline.after_ms(20), operation)
    return raised.value


def test_an_http_waiter_whose_deadline_passes_gets_503_and_the_first_request_applies_once(
    app: Flask, client: FlaskClient, driver: StoreDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_of(app)
    entered = threading.Event()
    withdraw = ledger.withdraw

    def announced_withdraw(*args: Any, **kwargs: Any) -> OperationResult:
        entered.set()
        return withdraw(*args, **kwargs)

    monkeypatch.setattr(ledger, "withdraw", announced_withdraw)
    query = {"username": "aaron", "amount": 400}
    headers = {**AARON, "Idempotency-Key": "in-flight"}
    with driver.holding_write_lock():
        first = Background(lambda: send(app, WITHDRAW, query, {**headers, "X-Timeout-Ms": "10000"}))
        assert entered.wait(JOIN_TIMEOUT_S)  # the first request holds the key, stuck on the lock
        waiter = send(app, WITHDRAW, query, {**headers, "X-Timeout-Ms": "20"})
        assert waiter.status == 503
        assert waiter.json["error"] == "timeout"
        assert money_records(app) == [], "the waiter reached the ledger"
    original = first.result()
    assert (original.status, original.replayed) == (200, None)
    assert original.json["balance"] == 9_600

    replay = send(app, WITHDRAW, query, headers)
    assert (replay.status, replay.body, replay.replayed) == (200, original.body, "true")
    (record,) = money_records(app)
    assert record.id == original.json["transaction"]["id"]
    assert balance(client, "aaron", AARON) == 9_600
    assert_verifies(client)


# -- keys are per user -----------------------------------------------------------------


def test_the_same_key_from_two_users_runs_once_for_each(app: Flask, client: FlaskClient) -> None:
    headers = {
        "aaron": {**AARON, "Idempotency-Key": "shared"},
        "bryan": {**BRYAN, "Idempotency-Key": "shared"},
    }
    workers = [
        (lambda name=name: send(app, WITHDRAW, {"username": name, "amount": 100}, headers[name]))
        for name in ("aaron", "bryan") * (N // 2)
    ]
    replies = run_together(workers)

    by_user = {name: replies[index::2] for index, name in enumerate(("aaron", "bryan"))}
    originals = {name: assert_one_applied(group) for name, group in by_user.items()}
    assert {name: reply.json["username"] for name, reply in originals.items()} == {
        "aaron": "aaron",
        "bryan": "bryan",
    }
    assert originals["aaron"].json["transaction"]["id"] != originals["bryan"].json["transaction"]["id"]
    assert balance(client, "aaron", AARON) == balance(client, "bryan", BRYAN) == 9_900
    records = money_records(app)
    assert sorted(record.source for record in records if record.source) == ["aaron", "bryan"]
    assert len(records) == 2
    assert_verifies(client)


# -- bounded memory --------------------------------------------------------------------

TTL_S = 100.0
MAX_KEYS = 5


def test_a_full_table_refuses_new_keys_until_old_ones_expire() -> None:
    clock = FakeClock()
    table = IdempotencyTable(ttl_s=TTL_S, max_keys=MAX_KEYS, clock=clock)
    operation = Counted()
    for index in range(MAX_KEYS):
        assert not table.run("aaron", f"k{index}", "fp", patient(), operation).replayed
        clock.advance(10)
    assert len(table) == MAX_KEYS

    clock.advance(TTL_S - 10 * MAX_KEYS - 1)  # the oldest key is TTL_S - 1 old: still kept
    with pytest.raises(IdempotencyStoreFull) as refused:
        table.run("aaron", "k5", "fp", patient(), operation)
    assert (refused.value.status, refused.value.code) == (503, "idempotency_store_full")
    assert refused.value.headers["Retry-After"] == "60"
    assert operation.runs == MAX_KEYS
    assert len(table) == MAX_KEYS
    # Keys already held still replay while the table is full.
    assert table.run("aaron", "k0", "fp", patient(), operation).replayed
    assert operation.runs == MAX_KEYS

    clock.advance(2)  # k0 is past its retention now, k1 is not
    assert not table.run("aaron", "k5", "fp", patient(), operation).replayed
    assert len(table) == MAX_KEYS
    assert table.run("aaron", "k1", "fp", patient(), operation).replayed
    with pytest.raises(IdempotencyStoreFull):
        table.run("aaron", "k6", "fp", patient(), operation)

    clock.advance(TTL_S * 2)  # everything expires
    assert not table.run("aaron", "k6", "fp", patient(), operation).replayed
    assert len(table) == 1
    # k0 was forgotten: the same key now runs afresh.
    assert not table.run("aaron", "k0", "fp", patient(), operation).replayed
    assert operation.runs == MAX_KEYS + 3


def test_one_user_cannot_fill_the_table_for_everyone() -> None:
    """Past their share, a user's new keys are refused; everyone else's are not."""
    clock = FakeClock()
    table = IdempotencyTable(ttl_s=TTL_S, max_keys=MAX_KEYS, max_keys_per_user=2, clock=clock)
    operation = Counted()
    for index in range(2):
        assert not table.run("mallory", f"k{index}", "fp", patient(), operation).replayed
    with pytest.raises(IdempotencyStoreFull) as refused:
        table.run("mallory", "k2", "fp", patient(), operation)
    assert "your share" in refused.value.message
    assert table.run("mallory", "k0", "fp", patient(), operation).replayed  # held keys still replay
    for name in ("aaron", "bryan"):
        assert not table.run(name, "k0", "fp", patient(), operation).replayed
    assert operation.runs == 4
    # A key whose operation applied nothing (a timeout) is released and counts no more.
    with pytest.raises(OperationTimeout):
        table.run("aaron", "late", "fp", patient(), _times_out)
    assert not table.run("aaron", "k1", "fp", patient(), operation).replayed
    with pytest.raises(IdempotencyStoreFull):
        table.run("aaron", "k2", "fp", patient(), operation)
    clock.advance(TTL_S + 1)  # every key past its retention: the shares are free again
    assert not table.run("mallory", "k2", "fp", patient(), operation).replayed
    assert not table.run("aaron", "k2", "fp", patient(), operation).replayed
    assert len(table) == 2


def _times_out() -> OperationResult:
    raise OperationTimeout("The operation could not finish within its deadline.")


def test_a_key_in_flight_is_never_dropped_however_old() -> None:
    clock = FakeClock()
    table = IdempotencyTable(ttl_s=TTL_S, max_keys=2, clock=clock)
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def slow() -> OperationResult:
        runs.append(1)
        started.set()
        assert release.wait(JOIN_TIMEOUT_S)
        return a_result()

    first = Background(lambda: table.run("aaron", "slow", "fp", patient(), slow))
    assert started.wait(JOIN_TIMEOUT_S)
    clock.advance(TTL_S * 10)
    assert not table.run("aaron", "fresh", "fp", patient(), Counted()).replayed
    with pytest.raises(IdempotencyStoreFull):
        table.run("aaron", "one-more", "fp", patient(), Counted())
    # Still held: a retry waits for it (and times out here) instead of running it again.
    with pytest.raises(OperationTimeout):
        table.run("aaron", "slow", "fp", Deadline.after_ms(20), slow)
    assert len(runs) == 1
    release.set()
    assert not first.result().replayed
    clock.advance(TTL_S)
    assert not table.run("aaron", "one-more", "fp", patient(), Counted()).replayed
    assert len(table) == 1


def test_a_stream_of_unique_keys_never_holds_more_than_max_keys() -> None:
    """10,000 keys with the clock moving at uneven speed; refused exactly when all slots are young."""
    clock = FakeClock()
    table = IdempotencyTable(ttl_s=TTL_S, max_keys=MAX_KEYS, clock=clock)
    operation = Counted()
    steps = random.Random(20240611)  # a fixed seed: the same stream on every run
    admitted: list[float] = []  # when each admitted key was created
    refusals = 0
    for index in range(10_000):
        clock.advance(steps.choice([0.0, 0.0, 1.0, 7.5, 20.0, 33.0, TTL_S + 1]))
        live = [created for created in admitted if clock.now - created < TTL_S]
        try:
            outcome = table.run("aaron", f"key-{index}", "fp", patient(), operation)
        except IdempotencyStoreFull:
            refusals += 1
            assert len(live) >= MAX_KEYS, f"key {index} refused with only {len(live)} young keys"
            assert len(table) == MAX_KEYS
        else:
            assert not outcome.replayed
            assert len(live) < MAX_KEYS, f"key {index} admitted over {len(live)} young keys"
            admitted = [*live, clock.now]
            assert len(table) == len(admitted)
        assert len(table) <= MAX_KEYS
    assert operation.runs == 10_000 - refusals
    assert 0 < refusals < 10_000  # the stream did fill the table, and it did recover


def test_the_memory_store_keeps_the_table_it_is_given() -> None:
    """``MockDB(idempotency=table)`` must use ``table`` (and its bounds), even while it is empty."""
    store = MockDB(idempotency=IdempotencyTable(ttl_s=TTL_S, max_keys=1, clock=FakeClock()))
    assert not store.idempotent("aaron", "first", "fp", patient(), Counted()).replayed
    with pytest.raises(IdempotencyStoreFull):
        store.idempotent("aaron", "second", "fp", patient(), Counted())


def test_a_full_table_answers_503_over_http_and_requests_without_a_key_still_run() -> None:
    app = create_app({"admin_token": ADMIN_TOKEN, "demo": True, "idempotency_max_keys": 3})
    app.config["TESTING"] = True
    client = app.test_client()
    for index in range(3):
        response = client.post(
            DEPOSIT,
            query_string={"username": "aaron", "amount": 1},
            headers={**AARON, "Idempotency-Key": f"k{index}"},
        )
        assert response.status_code == 200
    full = client.post(
        DEPOSIT, query_string={"username": "aaron", "amount": 1}, headers={**AARON, "Idempotency-Key": "k3"}
    )
    assert full.status_code == 503
    assert full.json["error"] == "idempotency_store_full"
    assert full.headers["Retry-After"] == "60"
    assert balance(client, "aaron", AARON) == 10_003
    unkeyed = client.post(DEPOSIT, query_string={"username": "aaron", "amount": 1}, headers=AARON)
    assert unkeyed.status_code == 200
    replay = client.post(
        DEPOSIT, query_string={"username": "aaron", "amount": 1}, headers={**AARON, "Idempotency-Key": "k0"}
    )
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (200, "true")
    assert balance(client, "aaron", AARON) == 10_004
    assert len(money_records(app)) == 4
