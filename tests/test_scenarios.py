"""Financial scenarios on every store (a port of the original ``financial_test.go``).

Trading through a stalled writer, a bank run, payments authorised by a hold and
then captured less a fee or voided, circular transfers, and the audit trail a
regulator would read. Where one thread owns an account, the test replays that
thread's plan to predict every outcome, so the end states below are exact.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import pytest

from app.ledger.errors import (
    AccountNotFound,
    BalanceOverflow,
    InsufficientFunds,
    LedgerError,
    OperationTimeout,
)
from app.ledger.model import (
    MAX_BALANCE,
    AccountView,
    Deadline,
    HoldResult,
    OperationType,
    Page,
    Status,
    Transaction,
)
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver
from tests.outcomes import (
    PAGE_LIMIT,
    Outcome,
    assert_trail_explains,
    attempt,
    audit_trail,
    balances,
    expected_balances,
    expected_versions,
    flatten,
    full_history,
    mixed_worker,
    moved,
    patient,
    replay,
    roles,
    versions,
)
from tests.stores import open_account
from tests.threads import JOIN_TIMEOUT_S, Crew, run_together

TRANSFER = OperationType.TRANSFER


# -- high-frequency trading -----------------------------------------------------

#: The deadline of a trade attempted while the test holds the write lock.
STALLED_TRADE_MS = 20
#: The short deadline of every other trade.
TRADE_MS = 500


@pytest.mark.parametrize(("traders", "trades_per_trader"), [(50, 20), (64, 12)])
def test_high_frequency_trading_through_a_stalled_writer(
    store: LedgerStore, driver: StoreDriver, traders: int, trades_per_trader: int
) -> None:
    trader_opening, largest_trade = 100, 60
    names = [f"trader{index:02}" for index in range(traders)]
    opening = {"exchange": traders * (trades_per_trader + 1) * largest_trade} | dict.fromkeys(
        names, trader_opening
    )
    for username, balance in opening.items():
        open_account(store, username, balance)
    stalled = threading.Barrier(traders + 1, timeout=JOIN_TIMEOUT_S)
    resumed = threading.Barrier(traders + 1, timeout=JOIN_TIMEOUT_S)

    def trader(index: int) -> Callable[[], tuple[list[Outcome], list[Outcome]]]:
        name = names[index]

        def trade(source: str, target: str, amount: int, timeout_ms: int) -> Outcome:
            return attempt(store, TRANSFER, source, target, amount, deadline=Deadline.after_ms(timeout_ms))

        def run() -> tuple[list[Outcome], list[Outcome]]:
            rng = random.Random(index)
            blocked = [
                trade(name, "exchange", 10, STALLED_TRADE_MS),
                trade("exchange", name, 10, STALLED_TRADE_MS),
            ]
            stalled.wait()
            resumed.wait()
            # More than the trader has: refused, since only this thread moves its money.
            trades = [trade(name, "exchange", trader_opening + 1, TRADE_MS)]
            for _ in range(trades_per_trader):
                amount = rng.randint(1, largest_trade)
                buying = rng.random() < 0.6
                source, target = (name, "exchange") if buying else ("exchange", name)
                trades.append(trade(source, target, amount, TRADE_MS))
            return blocked, trades

        return run

    crew = Crew([trader(index) for index in range(traders)])
    with driver.holding_write_lock():
        crew.start()
        stalled.wait()
    # Every trader now waits on ``resumed``: the ledger is quiet, and no timed-out trade applied.
    assert balances(store, opening) == opening
    assert versions(store, opening) == dict.fromkeys(opening, 0)
    resumed.wait()
    per_trader = crew.join()

    blocked = flatten(stalled_trades for stalled_trades, _ in per_trader)
    assert all(isinstance(outcome.error, OperationTimeout) for outcome in blocked)
    counts = {"success": 0, "insufficient_funds": 0, "timeout": len(blocked)}
    for name, (_, trades) in zip(names, per_trader, strict=True):
        balance = trader_opening
        for outcome in trades:
            if isinstance(outcome.error, OperationTimeout):
                counts["timeout"] += 1  # possible, if unlikely, under load: it applied nothing
                continue
            buying = outcome.source == name
            assert outcome.succeeded == (not buying or outcome.amount <= balance), outcome
            if outcome.succeeded:
                balance += -outcome.amount if buying else outcome.amount
                counts["success"] += 1
            else:
                assert isinstance(outcome.error, InsufficientFunds)
                counts["insufficient_funds"] += 1
        assert store.account(name, deadline=patient()).balance == balance

    outcomes = blocked + flatten(trades for _, trades in per_trader)
    assert sum(counts.values()) == len(outcomes) == traders * (trades_per_trader + 3)
    assert counts["insufficient_funds"] >= traders
    assert counts["timeout"] >= 2 * traders
    final = balances(store, opening)
    assert final == expected_balances(opening, outcomes)
    assert sum(final.values()) == sum(opening.values())
    assert versions(store, opening) == expected_versions(opening, outcomes)
    trail = audit_trail(store, opening)
    assert_trail_explains(trail, len(opening), outcomes)
    assert replay(trail) == final
    health = store.health()
    assert health.audit_log
    assert not health.performance  # lock waits ran past their deadlines a moment ago


# -- bank run -------------------------------------------------------------------


@pytest.mark.parametrize("via", [OperationType.WITHDRAWAL, OperationType.TRANSFER])
@pytest.mark.parametrize(
    ("funds", "amount", "customers"),
    [(1_000, 30, 100), (1_000, 100, 50), (999, 1_000, 20), (2_000, 7, 400)],
)
def test_bank_run_pays_out_exactly_what_the_bank_holds(
    store: LedgerStore, funds: int, amount: int, customers: int, via: OperationType
) -> None:
    paid = funds // amount
    assert customers > paid, "a bank run needs more customers than the bank can pay"
    open_account(store, "bank", funds)
    names = [f"customer{index:04}" for index in range(customers)]
    if via is TRANSFER:
        for name in names:
            open_account(store, name, 0)

    def customer(name: str) -> Callable[[], Outcome | None]:
        source, target = roles(via, "bank", name)
        return lambda: attempt(store, via, source, target, amount)

    def observer() -> None:
        last_seen = funds
        for _ in range(200):
            balance = store.account("bank", deadline=patient()).balance
            assert 0 <= balance <= last_seen, "the bank's balance went negative or back up"
            last_seen = balance

    results = run_together([customer(name) for name in names] + [observer] * 4)

    outcomes = [outcome for outcome in results if outcome is not None]
    assert sum(outcome.succeeded for outcome in outcomes) == paid
    assert all(isinstance(outcome.error, InsufficientFunds) for outcome in outcomes if not outcome.succeeded)
    assert store.account("bank", deadline=patient()) == AccountView("bank", funds - paid * amount, paid)
    if via is TRANSFER:
        everyone = ["bank", *names]
        final = balances(store, everyone)
        assert sum(final.values()) == funds
        assert final == expected_balances({"bank": funds} | dict.fromkeys(names, 0), outcomes)
        assert versions(store, everyone) == expected_versions(everyone, outcomes)
    else:
        everyone = ["bank"]
        assert moved(outcomes, OperationType.WITHDRAWAL) == paid * amount
    trail = audit_trail(store, everyone)
    assert_trail_explains(trail, len(everyone), outcomes)
    assert replay(trail) == balances(store, everyone)


# -- payment processing ---------------------------------------------------------

FEE_PERCENT = 1
#: A merchant that was never opened: the payout fails with ``account_not_found``.
CLOSED_SHOP = "closed_shop"
#: A merchant whose balance cannot take another coin: the payout overflows.
FULL_SHOP = "full_shop"
#: Each customer runs this plan, rotated by its index, so merchants see every order.
PAYMENT_PLAN = (
    (250, "bookshop"),
    (199, CLOSED_SHOP),
    (300, "arcade"),
    (100, FULL_SHOP),
    (400, "bookshop"),
    (1, "arcade"),
    (350, "arcade"),
    (120, CLOSED_SHOP),
)
#: How long an authorisation (a hold) lives: far longer than any test runs.
AUTHORISATION_S = 3600
#: Audit records that only reserve or release money: they move no coin.
RESERVATIONS = (OperationType.HOLD, OperationType.VOID, OperationType.EXPIRE)


class Settlement(StrEnum):
    SETTLED = "settled"  # the merchant got the amount less the fee; the hold was captured
    DECLINED = "declined"  # the customer's available money could not cover the hold; nothing moved
    VOIDED = "voided"  # the payout failed and the processor voided the hold; nothing moved


@dataclass(frozen=True, slots=True)
class Payment:
    customer: str
    merchant: str
    amount: int
    legs: tuple[Outcome, ...]

    @property
    def fee(self) -> int:
        return self.amount * FEE_PERCENT // 100

    @property
    def settlement(self) -> Settlement:
        if len(self.legs) == 1:
            return Settlement.DECLINED
        return Settlement.SETTLED if self.legs[-1].type == OperationType.CAPTURE else Settlement.VOIDED


def hold_leg(
    kind: OperationType, customer: str, amount: int, operation: Callable[[], HoldResult]
) -> tuple[Outcome, HoldResult | None]:
    """Run one hold operation of a payment (always customer -> processor); a failure is an ``Outcome``."""
    try:
        result = operation()
    except LedgerError as error:
        failure = error
    else:
        return Outcome(kind, customer, "processor", amount, result.transaction), result
    assert failure.transaction is not None, f"{failure.code} was not audited"
    return Outcome(kind, customer, "processor", amount, failure.transaction, failure), None


def pay(store: LedgerStore, customer: str, merchant: str, amount: int) -> Payment:
    """Authorise, pay out, then capture or void.

    The customer puts ``amount`` on hold for the processor (declined if its available
    money falls short). The processor pays the merchant the amount less the fee out
    of its own float; if that payout succeeds it captures the whole hold, keeping the
    fee, and if it fails it voids the hold, so the customer pays nothing.
    """
    fee = amount * FEE_PERCENT // 100
    authorisation, held = hold_leg(
        OperationType.HOLD,
        customer,
        amount,
        lambda: store.create_hold(
            customer, "processor", amount, timeout_s=AUTHORISATION_S, deadline=patient()
        ),
    )
    if held is None:
        return Payment(customer, merchant, amount, (authorisation,))
    hold_id = held.hold.id
    payout = attempt(store, TRANSFER, "processor", merchant, amount - fee)
    if payout.succeeded:
        settle, _ = hold_leg(
            OperationType.CAPTURE,
            customer,
            amount,
            lambda: store.capture_hold("processor", hold_id, None, deadline=patient()),
        )
    else:
        settle, _ = hold_leg(
            OperationType.VOID,
            customer,
            amount,
            lambda: store.void_hold("processor", hold_id, deadline=patient()),
        )
    return Payment(customer, merchant, amount, (authorisation, payout, settle))


def predicted_settlements(customer_opening: int, plan: Sequence[tuple[int, str]]) -> list[Settlement]:
    """What one customer's payments come to when only that customer's thread moves its money."""
    balance, settlements = customer_opening, []
    for amount, merchant in plan:
        if amount > balance:
            settlements.append(Settlement.DECLINED)
        elif merchant in (CLOSED_SHOP, FULL_SHOP):
            settlements.append(Settlement.VOIDED)
        else:
            settlements.append(Settlement.SETTLED)
            balance -= amount
    return settlements


def payment_balances(opening: dict[str, int], legs: Iterable[Outcome]) -> dict[str, int]:
    """Opening balances plus every successful payout and capture (holds and voids move nothing)."""
    return expected_balances(opening, [leg for leg in legs if leg.type not in RESERVATIONS])


def payment_versions(usernames: Iterable[str], legs: Iterable[Outcome]) -> dict[str, int]:
    """A payout or capture changes both parties; a hold or void changes only the payer's account."""
    touched: Counter[str] = Counter()
    for leg in legs:
        if leg.succeeded:
            touched.update([leg.source] if leg.type in RESERVATIONS else leg.parties)
    return {username: touched[username] for username in usernames}


@pytest.fixture
def payments_store(store: LedgerStore) -> Iterator[LedgerStore]:
    yield store
    store.close()  # the hold sweeper thread


@pytest.mark.parametrize("customers", [8, 40])
def test_payment_processing_keeps_the_fee_and_strands_nothing(
    payments_store: LedgerStore, customers: int
) -> None:
    store = payments_store
    customer_opening = 1_000
    # Enough for every customer's largest payout at once: the processor never runs short.
    processor_float = customers * max(amount for amount, _ in PAYMENT_PLAN)
    names = [f"customer{index:02}" for index in range(customers)]
    opening = {
        "processor": processor_float,
        "bookshop": 0,
        "arcade": 0,
        FULL_SHOP: MAX_BALANCE,
    } | dict.fromkeys(names, customer_opening)
    for username, balance in opening.items():
        open_account(store, username, balance)
    plans = {
        name: PAYMENT_PLAN[index % len(PAYMENT_PLAN) :] + PAYMENT_PLAN[: index % len(PAYMENT_PLAN)]
        for index, name in enumerate(names)
    }

    def customer(name: str) -> Callable[[], list[Payment]]:
        return lambda: [pay(store, name, merchant, amount) for amount, merchant in plans[name]]

    payments = flatten(run_together([customer(name) for name in names]))

    for name in names:
        own = [payment.settlement for payment in payments if payment.customer == name]
        assert own == predicted_settlements(customer_opening, plans[name])
    settled = [payment for payment in payments if payment.settlement is Settlement.SETTLED]
    voided = [payment for payment in payments if payment.settlement is Settlement.VOIDED]
    declined = [payment for payment in payments if payment.settlement is Settlement.DECLINED]
    assert settled
    assert voided
    assert declined, "some payments should be declined"
    for payment in declined:
        [authorisation] = payment.legs
        assert isinstance(authorisation.error, InsufficientFunds)
    for payment in settled:
        authorisation, payout, capture = payment.legs
        assert authorisation.succeeded
        assert payout.succeeded
        assert capture.succeeded, "a capture of a pending hold must never fail"
        assert authorisation.record.sequence < payout.record.sequence < capture.record.sequence
    for payment in voided:
        authorisation, payout, void = payment.legs
        expected_error = AccountNotFound if payment.merchant == CLOSED_SHOP else BalanceOverflow
        assert isinstance(payout.error, expected_error)
        assert void.succeeded, "a void of a pending hold must never fail"
        assert authorisation.record.sequence < payout.record.sequence < void.record.sequence

    final = balances(store, opening)
    fees = sum(payment.fee for payment in settled)
    assert fees > 0
    assert final["processor"] == processor_float + fees, "only settled fees stay with the processor"
    for merchant in ("bookshop", "arcade"):
        owed = sum(payment.amount - payment.fee for payment in settled if payment.merchant == merchant)
        assert final[merchant] == owed
    assert final[FULL_SHOP] == MAX_BALANCE
    for name in names:
        spent = sum(payment.amount for payment in settled if payment.customer == name)
        assert final[name] == customer_opening - spent
    assert sum(final.values()) == sum(opening.values())
    # Every authorisation was captured or voided: nothing is left on hold.
    assert all(store.account(name, deadline=patient()).held == 0 for name in opening)
    legs = flatten(payment.legs for payment in payments)
    assert final == payment_balances(opening, legs)
    assert versions(store, opening) == payment_versions(opening, legs)
    trail = audit_trail(store, opening)
    assert_trail_explains(trail, len(opening), legs)
    moving = {sequence: record for sequence, record in trail.items() if record.type not in RESERVATIONS}
    assert replay(moving) == final
    report = store.verify()
    assert report.ok, report.problems


# -- circular transfers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("threads_per_direction", "transfers_per_thread", "amount"),
    [(1, 500, 1), (10, 50, 3), (25, 20, 1_000)],
)
def test_opposite_transfers_finish_without_deadlock(
    store: LedgerStore, threads_per_direction: int, transfers_per_thread: int, amount: int
) -> None:
    # Enough for one direction to run to the end before the other starts.
    opening = threads_per_direction * transfers_per_thread * amount
    open_account(store, "alice", opening)
    open_account(store, "bob", opening)

    def sender(source: str, target: str) -> Callable[[], list[Outcome]]:
        return lambda: [attempt(store, TRANSFER, source, target, amount) for _ in range(transfers_per_thread)]

    outcomes = flatten(
        run_together(
            [sender("alice", "bob")] * threads_per_direction
            + [sender("bob", "alice")] * threads_per_direction
        )
    )

    # A patient deadline never runs out unless the ledger stalls.
    assert all(outcome.succeeded for outcome in outcomes)
    transfers = 2 * threads_per_direction * transfers_per_thread
    assert store.account("alice", deadline=patient()) == AccountView("alice", opening, transfers)
    assert store.account("bob", deadline=patient()) == AccountView("bob", opening, transfers)


@pytest.mark.parametrize(
    ("ring_size", "threads_per_hop", "transfers_per_thread"),
    [(3, 4, 50), (10, 2, 40), (32, 1, 30)],
)
def test_ring_transfers_end_exact(
    store: LedgerStore, ring_size: int, threads_per_hop: int, transfers_per_thread: int
) -> None:
    """Account i sends i + 1 coins to account i + 1 (mod n), all hops at once."""
    names = [f"node{index:02}" for index in range(ring_size)]
    transfers_per_hop = threads_per_hop * transfers_per_thread
    opening = transfers_per_hop * ring_size  # covers every hop even if it ran first
    for name in names:
        open_account(store, name, opening)

    def hop(index: int) -> Callable[[], list[Outcome]]:
        source, target = names[index], names[(index + 1) % ring_size]
        return lambda: [
            attempt(store, TRANSFER, source, target, index + 1) for _ in range(transfers_per_thread)
        ]

    outcomes = flatten(
        run_together([hop(index) for index in range(ring_size) for _ in range(threads_per_hop)])
    )

    assert all(outcome.succeeded for outcome in outcomes)
    final = balances(store, names)
    for index, name in enumerate(names):
        received = ring_size if index == 0 else index  # the amount account i - 1 sends
        assert final[name] == opening - transfers_per_hop * (index + 1) + transfers_per_hop * received
    assert sum(final.values()) == ring_size * opening
    assert versions(store, names) == dict.fromkeys(names, 2 * transfers_per_hop)


@pytest.mark.parametrize(("ring_size", "opening", "amount"), [(2, 10, 7), (5, 10, 7), (12, 3, 2)])
def test_ring_with_scarce_money_conserves_it(
    store: LedgerStore, ring_size: int, opening: int, amount: int
) -> None:
    threads_per_hop, transfers_per_thread = 3, 40
    names = [f"node{index:02}" for index in range(ring_size)]
    for name in names:
        open_account(store, name, opening)

    def hop(index: int) -> Callable[[], list[Outcome]]:
        source, target = names[index], names[(index + 1) % ring_size]
        return lambda: [attempt(store, TRANSFER, source, target, amount) for _ in range(transfers_per_thread)]

    outcomes = flatten(
        run_together([hop(index) for index in range(ring_size) for _ in range(threads_per_hop)])
    )

    assert all(outcome.succeeded or isinstance(outcome.error, InsufficientFunds) for outcome in outcomes)
    final = balances(store, names)
    assert sum(final.values()) == ring_size * opening
    assert final == expected_balances(dict.fromkeys(names, opening), outcomes)
    assert versions(store, names) == expected_versions(names, outcomes)
    trail = audit_trail(store, names)
    assert_trail_explains(trail, ring_size, outcomes)
    assert replay(trail) == final


# -- compliance and auditing ----------------------------------------------------


def shown_to(record: Transaction) -> set[str]:
    """Whose history shows ``record``: every party of a success, only the caller of a failure."""
    if record.status == Status.SUCCESS:
        return {name for name in (record.source, record.target) if name is not None}
    caller = record.source or record.target  # the sender, or the account of a failed deposit
    assert caller is not None
    return {caller}


def test_every_operation_is_audited_once_and_each_history_shows_its_own(
    store: LedgerStore, driver: StoreDriver
) -> None:
    usernames = ("alice", "bob", "carol", "dave")
    threads, operations_per_thread, stalled_threads = 24, 25, 6
    for username in usernames:
        open_account(store, username, 150)

    def stalled(index: int) -> Callable[[], Outcome]:
        source, target = usernames[index % len(usernames)], usernames[(index + 1) % len(usernames)]
        return lambda: attempt(store, TRANSFER, source, target, 5, deadline=Deadline.after_ms(20))

    with driver.holding_write_lock():
        timed_out = run_together([stalled(index) for index in range(stalled_threads)])
    # One sure failure of each business kind, whatever the threads below happen to do.
    refused = [
        attempt(store, OperationType.WITHDRAWAL, "alice", None, 10**15),
        attempt(store, OperationType.DEPOSIT, None, "bob", 1, expected_version=7),
        attempt(store, TRANSFER, "carol", "nobody", 1),
    ]
    workers = [mixed_worker(store, usernames, seed, operations_per_thread) for seed in range(threads)]
    outcomes = timed_out + refused + flatten(run_together(workers))
    operations = stalled_threads + len(refused) + threads * operations_per_thread
    health = store.health()  # before any read below adds to the count

    assert all(isinstance(outcome.error, OperationTimeout) for outcome in timed_out)
    assert [outcome.record.reason for outcome in refused] == [
        "insufficient_funds",
        "version_conflict",
        "account_not_found",
    ]
    assert len(outcomes) == operations
    trail = audit_trail(store, usernames)
    assert_trail_explains(trail, len(usernames), outcomes)
    for username in usernames:
        expected = [
            trail[sequence]
            for sequence in sorted(trail, reverse=True)
            if username in shown_to(trail[sequence])
        ]
        assert full_history(store, username) == expected
        assert full_history(store, username, limit=1) == expected
    assert (health.operation_count, health.audit_log, health.database) == (
        len(usernames) + operations,
        True,
        True,
    )
    assert not health.performance
    assert replay(trail) == balances(store, usernames)


def assert_pages_exact(pages: Sequence[Page], history_now: Sequence[Transaction]) -> None:
    """The pages hold, newest first, each record up to the first page's newest exactly once."""
    collected = [record for page in pages for record in page.transactions]
    sequences = [record.sequence for record in collected]
    assert sequences == sorted(set(sequences), reverse=True), "a record repeated or came out of order"
    assert collected == [record for record in history_now if record.sequence <= sequences[0]]


def _write_to_auditee(store: LedgerStore, step: int) -> None:
    """One operation naming the auditee, of a kind chosen by ``step``; failures included."""
    kind = step % 4
    if kind == 0:
        attempt(store, OperationType.DEPOSIT, None, "auditee", 2)
    elif kind == 1:
        attempt(store, TRANSFER, "payer", "auditee", 3)
    elif kind == 2:
        attempt(store, OperationType.WITHDRAWAL, "auditee", None, 1)
    else:
        attempt(store, OperationType.WITHDRAWAL, "auditee", None, 10**15)  # fails, still shown


@pytest.mark.parametrize("limit", [1, PAGE_LIMIT, 25])
def test_paging_in_lockstep_with_writers_never_repeats_or_skips(store: LedgerStore, limit: int) -> None:
    writers, backlog = 4, 60
    open_account(store, "auditee", 0)
    open_account(store, "payer", 10**6)
    for _ in range(backlog):
        store.deposit("auditee", 1, deadline=patient())
    page_turns = backlog // limit  # backlog + 1 records, the opening included
    turned = threading.Barrier(writers + 1, timeout=JOIN_TIMEOUT_S)
    written = threading.Barrier(writers + 1, timeout=JOIN_TIMEOUT_S)
    pages: list[Page] = []

    def pager() -> None:
        pages.append(store.history("auditee", limit=limit, cursor=None))
        while pages[-1].next_cursor is not None:
            turned.wait()
            written.wait()  # every writer has added a record since the last page
            pages.append(store.history("auditee", limit=limit, cursor=pages[-1].next_cursor))

    def writer(index: int) -> Callable[[], None]:
        def run() -> None:
            for turn in range(page_turns):
                turned.wait()
                _write_to_auditee(store, index + turn)
                written.wait()

        return run

    run_together([pager] + [writer(index) for index in range(writers)])

    assert len(pages) == page_turns + 1
    history_now = full_history(store, "auditee")
    assert len(history_now) == backlog + 1 + writers * page_turns
    assert_pages_exact(pages, history_now)


def test_paging_while_writers_run_never_repeats_or_skips(store: LedgerStore) -> None:
    writers, operations_per_writer, pagers, passes_per_pager = 6, 150, 3, 10
    open_account(store, "auditee", 100)
    open_account(store, "payer", 10**6)
    passes: list[list[Page]] = []

    def pager() -> None:
        for _ in range(passes_per_pager):
            pages = [store.history("auditee", limit=PAGE_LIMIT, cursor=None)]
            while pages[-1].next_cursor is not None:
                pages.append(store.history("auditee", limit=PAGE_LIMIT, cursor=pages[-1].next_cursor))
            passes.append(pages)

    def writer(index: int) -> Callable[[], None]:
        def run() -> None:
            for step in range(operations_per_writer):
                _write_to_auditee(store, index + step)

        return run

    run_together([pager] * pagers + [writer(index) for index in range(writers)])

    history_now = full_history(store, "auditee")
    assert len(history_now) == 1 + writers * operations_per_writer
    assert len(passes) == pagers * passes_per_pager
    for pages in passes:
        assert_pages_exact(pages, history_now)
