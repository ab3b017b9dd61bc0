"""Holds under concurrency: capture, void and expiry racing; double spends; a busy pool.

Threads start together on a barrier (``run_together``) and are joined within
``JOIN_TIMEOUT_S``. Time is a ``FakeClock``: the racer that plays "expiry" runs its
thread ahead of the shared time (``FakeClock.ahead``), so to it the hold is due while
to the capturer and the voider it is not; whichever takes the ledger's lock first
resolves the hold. Randomness is seeded; the stores' background sweepers are stopped
so that only the racers resolve holds. Every round ends with exact balances. A race
runs as many rounds as the store's driver says (a quarter of them on PostgreSQL).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from flask import Flask

from app import create_app
from app.ledger.errors import HoldNotPending, InsufficientFunds, LedgerError
from app.ledger.model import (
    AccountView,
    Deadline,
    Hold,
    HoldResult,
    HoldStatus,
    OperationResult,
    OperationType,
    Status,
    Transaction,
)
from app.ledger.store import LedgerStore
from tests.clocks import FakeClock
from tests.drivers import driver_for
from tests.stores import ADMIN_TOKEN, app_config, new_store, open_account
from tests.threads import run_together, switching_often

#: Rounds of the three-way race (each with a fresh hold).
ROUNDS = 300
#: Rounds of the same race over HTTP (slower per round).
HTTP_ROUNDS = 90
#: Every hold in the races lives this long; the expiry racer runs this far ahead.
TIMEOUT_S = 60
#: How the expiry racer gets the hold expired: each is a touch or a sweep.
EXPIRY_WAYS = ("sweep", "payer reads its balance", "payee reads its balance", "payee reads the hold")
#: The audit record of each racer's win.
RECORD_OF = {"capture": OperationType.CAPTURE, "void": OperationType.VOID, "expiry": OperationType.EXPIRE}
AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
ADMIN = {"Authorization": ADMIN_TOKEN}


def patient() -> Deadline:
    return Deadline.after_ms(5_000)


def not_pending(status: HoldStatus | str) -> str:
    return f"The hold is {status}, no longer PENDING."


def trail(store: LedgerStore) -> list[Transaction]:
    """The whole audit trail, oldest first (reading it touches no account)."""
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.audit_page(limit=500, cursor=cursor)
        records += page.transactions
        cursor = page.next_cursor
        if cursor is None:
            return records


@pytest.fixture
def interleaved() -> Iterator[None]:
    """Switch threads every few microseconds (not every 5 ms), so that short workers interleave."""
    with switching_often(1e-5):
        yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked_store(store_url: str, clock: FakeClock) -> Iterator[LedgerStore]:
    store = new_store(store_url, clock=clock)
    driver_for(store).stop_sweeper()  # no background sweeps: only the racers resolve holds
    yield store
    store.close()


def attempt(operation: Callable[[], HoldResult]) -> HoldResult | LedgerError:
    try:
        return operation()
    except LedgerError as error:
        return error


# -- capture vs void vs expiry ----------------------------------------------------------


def test_capture_void_and_expiry_race_with_exactly_one_winner(
    clocked_store: LedgerStore, clock: FakeClock
) -> None:
    store = clocked_store
    rounds = driver_for(store).race_rounds(ROUNDS)
    opening = {"aaron": 100 * rounds, "bryan": 0}
    for username, balance in opening.items():
        open_account(store, username, balance)
    rng = random.Random(20631)
    winners: Counter[str] = Counter()
    aaron, bryan = store.account("aaron", deadline=patient()), store.account("bryan", deadline=patient())

    for round_number in range(rounds):
        amount = rng.randint(1, 100)
        asked = rng.choice([None, rng.randint(1, amount)])  # a full or a partial capture
        way = EXPIRY_WAYS[round_number % len(EXPIRY_WAYS)]
        hold = store.create_hold("aaron", "bryan", amount, timeout_s=TIMEOUT_S, deadline=patient()).hold
        records_before = len(trail(store))

        def capturer(hold_id: str = hold.id, asked: int | None = asked) -> HoldResult | LedgerError:
            return attempt(lambda: store.capture_hold("bryan", hold_id, asked, deadline=patient()))

        def voider(hold_id: str = hold.id) -> HoldResult | LedgerError:
            return attempt(lambda: store.void_hold("aaron", hold_id, deadline=patient()))

        def expirer(hold_id: str = hold.id, way: str = way) -> int | AccountView | HoldStatus:
            with clock.ahead(TIMEOUT_S):  # this thread alone sees the hold as due
                if way == "sweep":
                    return store.sweep_expired(deadline=patient())
                if way == "payer reads its balance":
                    return store.account("aaron", deadline=patient())
                if way == "payee reads its balance":
                    return store.account("bryan", deadline=patient())
                return store.get_hold("bryan", hold_id, deadline=patient()).status

        racers: dict[str, Callable[[], object]] = {"capture": capturer, "void": voider, "expiry": expirer}
        order = rng.sample(sorted(racers), len(racers))  # who starts first varies, seeded
        results = dict(zip(order, run_together([racers[name] for name in order]), strict=True))

        final = store.get_hold("aaron", hold.id, deadline=patient())
        winner = {
            HoldStatus.CAPTURED: "capture",
            HoldStatus.VOIDED: "void",
            HoldStatus.EXPIRED: "expiry",
        }[final.status]
        winners[winner] += 1
        captured = (amount if asked is None else asked) if winner == "capture" else 0
        assert final.captured == captured
        # The two resolvers: the winner's answer carries the final hold, the loser's names its status.
        for name in ("capture", "void"):
            result = results[name]
            if name == winner:
                assert isinstance(result, HoldResult), result
                assert result.hold == final
                assert result.transaction.status == Status.SUCCESS
            else:
                assert isinstance(result, HoldNotPending), (name, result)
                assert result.message == not_pending(final.status)
                assert result.transaction is not None
                assert result.transaction.reason == "hold_not_pending"
        expiry = results["expiry"]
        if way == "sweep":
            assert expiry == (1 if winner == "expiry" else 0)
        elif way == "payee reads the hold":
            assert expiry is final.status  # it read after expiring, or after the winner
        else:
            assert isinstance(expiry, AccountView)
            assert expiry.held == 0  # resolved by someone before the read returned

        # Exactly one resolution record, then one failure per losing resolver.
        records = trail(store)[records_before:]
        resolutions = [record for record in records if record.status == Status.SUCCESS]
        assert [(r.type, r.source, r.target) for r in resolutions] == [(RECORD_OF[winner], "aaron", "bryan")]
        assert resolutions[0].amount == (captured if winner == "capture" else amount)
        assert len(records) == (3 if winner == "expiry" else 2)
        assert records[0] == resolutions[0]  # the losers failed after the winner resolved it

        # Exact balances, held money and versions after every round.
        aaron = AccountView("aaron", aaron.balance - captured, aaron.version + 2, 0)
        bryan = AccountView("bryan", bryan.balance + captured, bryan.version + (1 if captured else 0), 0)
        assert store.account("aaron", deadline=patient()) == aaron
        assert store.account("bryan", deadline=patient()) == bryan

    assert sum(winners.values()) == rounds
    assert aaron.balance + bryan.balance == sum(opening.values())
    report = store.verify()
    assert report.ok, report.problems
    assert report.total_balance == sum(opening.values())
    # Under a fair lock each racer should win some rounds; that is likely, not promised.
    print(f"winners over {rounds} rounds: {dict(winners)}")


@pytest.fixture
def http_app(store_url: str) -> Iterator[Flask]:
    app = create_app(app_config(store_url))
    app.config["TESTING"] = True
    yield app
    app.extensions["ledger"].close()


def test_the_same_race_over_http_answers_409_naming_the_winner(http_app: Flask, clock: FakeClock) -> None:
    store: LedgerStore = http_app.extensions["ledger"]
    driver = driver_for(store)
    driver.stop_sweeper()
    driver.set_clock(clock)  # create_app builds the store, and its config takes no clock
    http_rounds = driver.race_rounds(HTTP_ROUNDS)
    rng = random.Random(20632)
    # Each racer has its own client of the one app.
    capturer_client, voider_client, expirer_client = (http_app.test_client() for _ in range(3))
    setup = http_app.test_client()
    winners: Counter[str] = Counter()
    captured_total = 0

    for round_number in range(http_rounds):
        amount = rng.randint(1, 30)
        created = setup.post(
            "/account/holds",
            query_string={"username": "aaron", "to": "bryan", "amount": amount},
            headers=AARON,
        )
        assert created.status_code == 201, created.json
        hold_id = created.json["hold"]["id"]
        payer_reads = round_number % 2 == 0

        def capturer(hold_id: str = hold_id) -> tuple[int, dict[str, object]]:
            response = capturer_client.post(
                f"/account/holds/{hold_id}/capture", query_string={"username": "bryan"}, headers=BRYAN
            )
            return response.status_code, response.json

        def voider(hold_id: str = hold_id) -> tuple[int, dict[str, object]]:
            response = voider_client.post(
                f"/account/holds/{hold_id}/void", query_string={"username": "aaron"}, headers=AARON
            )
            return response.status_code, response.json

        def expirer(payer_reads: bool = payer_reads) -> tuple[int, dict[str, object]]:
            username, headers = ("aaron", AARON) if payer_reads else ("bryan", BRYAN)
            with clock.ahead(TIMEOUT_S * 60):  # past the default hour
                response = expirer_client.get(
                    "/account/coins", query_string={"username": username}, headers=headers
                )
            return response.status_code, response.json

        racers = {"capture": capturer, "void": voider, "expiry": expirer}
        order = rng.sample(sorted(racers), len(racers))
        results = dict(zip(order, run_together([racers[name] for name in order]), strict=True))

        hold = setup.get(f"/account/holds/{hold_id}", query_string={"username": "bryan"}, headers=BRYAN).json[
            "hold"
        ]
        winner = {"CAPTURED": "capture", "VOIDED": "void", "EXPIRED": "expiry"}[hold["status"]]
        winners[winner] += 1
        for name in ("capture", "void"):
            status, body = results[name]
            if name == winner:
                assert status == 200, body
                assert body["hold"] == hold
            else:
                assert (status, body) == (
                    409,
                    {"code": 409, "error": "hold_not_pending", "message": not_pending(hold["status"])},
                )
        status, body = results["expiry"]
        assert status == 200, body
        assert body["held"] == 0
        assert hold["captured"] == (amount if winner == "capture" else 0)
        captured_total += hold["captured"]

    aaron = setup.get("/account/coins", query_string={"username": "aaron"}, headers=AARON).json
    bryan = setup.get("/account/coins", query_string={"username": "bryan"}, headers=BRYAN).json
    assert (aaron["held"], bryan["held"]) == (0, 0)
    assert (aaron["balance"], bryan["balance"]) == (10_000 - captured_total, 10_000 + captured_total)
    assert aaron["version"] == 2 * http_rounds
    assert bryan["version"] == winners["capture"]
    records = [
        record
        for record in setup.get("/admin/audit", query_string={"limit": 500}, headers=ADMIN).json[
            "transactions"
        ]
        if record["status"] == "SUCCESS"
    ]
    kinds = Counter(record["type"] for record in records)
    assert (kinds["hold"], kinds["capture"], kinds["void"], kinds["expire"]) == (
        http_rounds,
        winners["capture"],
        winners["void"],
        winners["expiry"],
    )
    verify = setup.get("/admin/verify", headers=ADMIN)
    assert verify.status_code == 200, verify.json
    print(f"winners over {http_rounds} HTTP rounds: {dict(winners)}")


# -- double spend -------------------------------------------------------------------------


@pytest.mark.parametrize(("claim", "winners"), [(60, 1), (50, 2), (34, 2), (33, 3), (101, 0)])
@pytest.mark.usefixtures("interleaved")
def test_holds_and_a_withdrawal_never_spend_the_same_money_twice(
    clocked_store: LedgerStore, clock: FakeClock, claim: int, winners: int
) -> None:
    """Available 100; two holds and a withdrawal of ``claim`` each race for it."""
    store = clocked_store
    rounds, available = driver_for(store).race_rounds(120), 100
    open_account(store, "bryan", 0)
    open_account(store, "carol", 0)
    rng = random.Random(claim)

    for round_number in range(rounds):
        payer = f"payer{round_number:03}"
        # 150 coins, 50 of them on hold already: 100 available.
        open_account(store, payer, available + 50)
        store.create_hold(payer, "carol", 50, timeout_s=TIMEOUT_S, deadline=patient())
        seen: list[AccountView] = []

        def hold_for(target: str, payer: str = payer) -> OperationResult | HoldResult | LedgerError:
            return attempt(
                lambda: store.create_hold(payer, target, claim, timeout_s=TIMEOUT_S, deadline=patient())
            )

        def withdrawal(payer: str = payer) -> OperationResult | HoldResult | LedgerError:
            try:
                return store.withdraw(payer, claim, deadline=patient())
            except LedgerError as error:
                return error

        def observer(payer: str = payer, seen: list[AccountView] = seen) -> None:
            for _ in range(20):
                seen.append(store.account(payer, deadline=patient()))

        claims: list[Callable[[], object]] = [
            lambda: hold_for("bryan"),
            lambda: hold_for("carol"),
            withdrawal,
        ]
        rng.shuffle(claims)
        results = run_together([*claims, observer])[:3]

        succeeded = [result for result in results if isinstance(result, OperationResult | HoldResult)]
        assert len(succeeded) == winners, results
        assert all(
            isinstance(result, InsufficientFunds) for result in results if isinstance(result, LedgerError)
        )
        withdrawn = sum(claim for result in succeeded if isinstance(result, OperationResult))
        held = 50 + sum(claim for result in succeeded if isinstance(result, HoldResult))
        final = store.account(payer, deadline=patient())
        assert (final.balance, final.held) == (available + 50 - withdrawn, held)
        assert final.available == available - winners * claim >= 0
        for view in seen:
            assert 0 <= view.held <= view.balance
            assert view.available >= 0

    report = store.verify()
    assert report.ok, report.problems


# -- a busy pool ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    id: str
    source: str
    target: str
    amount: int


@pytest.mark.usefixtures("interleaved")
def test_a_pool_of_holds_captures_voids_and_expiries_conserves_money(
    clocked_store: LedgerStore, clock: FakeClock
) -> None:
    names = [f"member{index}" for index in range(8)]
    opening = 1_000
    workers, operations_per_worker = 12, 80
    store = clocked_store
    for name in names:
        open_account(store, name, opening)
    placed: list[Placed] = []  # appended by every worker (list.append is atomic)

    def worker(seed: int) -> list[tuple[str, object, object]]:
        rng = random.Random(seed)
        log: list[tuple[str, object, object]] = []
        for _ in range(operations_per_worker):
            roll = rng.random()
            if seed == 0 and roll < 0.3:
                clock.advance(1)  # the only thread that moves time: holds live 1..20 s
                continue
            if roll < 0.35 or not placed:
                source, target = rng.sample(names, 2)
                amount = rng.randint(1, 300)
                result = attempt(
                    lambda s=source, t=target, a=amount: store.create_hold(
                        s, t, a, timeout_s=rng.randint(1, 20), deadline=patient()
                    )
                )
                if isinstance(result, HoldResult):
                    placed.append(Placed(result.hold.id, source, target, amount))
                else:
                    assert isinstance(result, InsufficientFunds), result
                log.append(("hold", (source, target, amount), result))
            elif roll < 0.6:
                hold = rng.choice(placed)
                caller = rng.choice([hold.source, hold.target])
                asked = rng.choice([None, rng.randint(1, hold.amount)])
                result = attempt(
                    lambda h=hold, c=caller, a=asked: store.capture_hold(c, h.id, a, deadline=patient())
                )
                log.append(("capture", (hold, asked), result))
            elif roll < 0.75:
                hold = rng.choice(placed)
                caller = rng.choice([hold.source, hold.target])
                result = attempt(lambda h=hold, c=caller: store.void_hold(c, h.id, deadline=patient()))
                log.append(("void", hold, result))
            elif roll < 0.85:
                source, target = rng.sample(names, 2)
                amount = rng.randint(1, 200)
                try:
                    outcome: object = store.transfer(source, target, amount, deadline=patient())
                except LedgerError as error:
                    outcome = error
                log.append(("transfer", (source, target, amount), outcome))
            elif roll < 0.95:
                view = store.account(rng.choice(names), deadline=patient())  # a touch
                assert 0 <= view.held <= view.balance
            else:
                store.sweep_expired(deadline=patient())
        return log

    logs = run_together([lambda seed=seed: worker(seed) for seed in range(workers)])
    entries = [entry for log in logs for entry in log]
    assert placed

    def check(holds: dict[str, Hold]) -> Counter[HoldStatus]:
        """Exact balances and held money against the holds' fates; verify; the audit's counts."""
        expected = dict.fromkeys(names, opening)
        for kind, detail, result in entries:
            if kind == "transfer" and isinstance(result, OperationResult):
                source, target, amount = detail
                expected[source] -= amount
                expected[target] += amount
        pending = dict.fromkeys(names, 0)
        for hold in holds.values():
            expected[hold.source] -= hold.captured
            expected[hold.target] += hold.captured
            if hold.status is HoldStatus.PENDING:
                pending[hold.source] += hold.amount
        views = {name: store.account(name, deadline=patient()) for name in names}
        assert {name: view.balance for name, view in views.items()} == expected
        assert {name: view.held for name, view in views.items()} == pending
        assert sum(expected.values()) == opening * len(names)
        statuses = Counter(hold.status for hold in holds.values())
        kinds = Counter(record.type for record in trail(store) if record.status == Status.SUCCESS)
        assert kinds[OperationType.HOLD] == len(placed)
        assert kinds[OperationType.CAPTURE] == statuses[HoldStatus.CAPTURED]
        assert kinds[OperationType.VOID] == statuses[HoldStatus.VOIDED]
        assert kinds[OperationType.EXPIRE] == statuses[HoldStatus.EXPIRED]
        report = store.verify()
        assert report.ok, report.problems
        assert report.total_balance == opening * len(names)
        return statuses

    store.sweep_expired(deadline=patient())  # the clock stands still now: nothing falls due below
    holds = {hold.id: store.get_hold(hold.source, hold.id, deadline=patient()) for hold in placed}

    # A capture or void that won is its hold's fate, once; every loser names the fate.
    won: Counter[str] = Counter()
    for kind, detail, result in entries:
        if kind not in ("capture", "void"):
            continue
        hold = detail[0] if kind == "capture" else detail
        fate = holds[hold.id]
        if isinstance(result, HoldResult):
            won[hold.id] += 1
            assert fate.status is (HoldStatus.CAPTURED if kind == "capture" else HoldStatus.VOIDED)
            assert result.hold == fate
            if kind == "capture":
                asked = detail[1]
                assert fate.captured == (hold.amount if asked is None else asked)
        else:
            assert isinstance(result, HoldNotPending), result
            assert result.message == not_pending(fate.status)
    assert set(won.values()) <= {1}
    statuses = check(holds)
    assert len(won) == statuses[HoldStatus.CAPTURED] + statuses[HoldStatus.VOIDED]
    assert statuses[HoldStatus.CAPTURED], statuses
    assert statuses[HoldStatus.VOIDED], statuses

    # Later, every hold still pending expires; nothing stays held.
    clock.advance(21)
    assert store.sweep_expired(deadline=patient()) == statuses[HoldStatus.PENDING]
    holds = {hold.id: store.get_hold(hold.target, hold.id, deadline=patient()) for hold in placed}
    print(f"pool: {len(placed)} holds, fates {dict(statuses)}, won {len(won)}")
    after = check(holds)
    assert after[HoldStatus.PENDING] == 0
    assert after[HoldStatus.EXPIRED] == statuses[HoldStatus.EXPIRED] + statuses[HoldStatus.PENDING] > 0
