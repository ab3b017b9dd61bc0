"""Basic concurrency of every store (a port of the original ``basic_test.go``).

Every test releases its threads together on a barrier, joins each with a bound and
asserts exact end states. Money is conserved in every test, and the audit trail —
gap-free, one record per operation — must explain every coin.

The helpers (``attempt``, ``Outcome`` and the checks of what outcomes leave) are in
``tests/outcomes.py``, shared with ``test_scenarios.py``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from app.ledger.errors import InsufficientFunds, OperationTimeout, VersionConflict
from app.ledger.model import AccountView, Deadline, OperationResult, OperationType
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver, memory_driver
from tests.outcomes import (
    Outcome,
    assert_gap_free,
    assert_trail_explains,
    attempt,
    audit_trail,
    balances,
    expected_balances,
    expected_versions,
    flatten,
    mixed_worker,
    moved,
    patient,
    replay,
    roles,
    versions,
)
from tests.stores import open_account
from tests.threads import run_together

# -- deposits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "deposits_per_thread", "amount"),
    [(50, 20, 1), (20, 25, 7), (8, 100, 10**15)],
)
def test_concurrent_deposits_all_apply(
    store: LedgerStore, threads: int, deposits_per_thread: int, amount: int
) -> None:
    open_account(store, "alice", 1000)

    def depositor() -> list[OperationResult]:
        return [store.deposit("alice", amount, deadline=patient()) for _ in range(deposits_per_thread)]

    results = flatten(run_together([depositor] * threads))

    deposits = threads * deposits_per_thread
    assert store.account("alice", deadline=patient()) == AccountView(
        "alice", 1000 + deposits * amount, deposits
    )
    # Each deposit moved the version by exactly one and saw the balance of its version.
    assert sorted(result.account.version for result in results) == list(range(1, deposits + 1))
    assert all(result.account.balance == 1000 + result.account.version * amount for result in results)
    assert replay(audit_trail(store, ["alice"])) == {"alice": 1000 + deposits * amount}


# -- deposits and withdrawals ---------------------------------------------------


@pytest.mark.parametrize(
    ("depositors", "withdrawers", "operations_per_thread", "deposit_amount", "withdrawal_amount"),
    [(25, 25, 20, 3, 2), (10, 40, 10, 1, 5), (40, 10, 10, 9, 1)],
)
def test_mixed_deposits_and_withdrawals_end_exact(
    store: LedgerStore,
    depositors: int,
    withdrawers: int,
    operations_per_thread: int,
    deposit_amount: int,
    withdrawal_amount: int,
) -> None:
    # Enough for every withdrawal even if all of them run before any deposit.
    withdrawn = withdrawers * operations_per_thread * withdrawal_amount
    deposited = depositors * operations_per_thread * deposit_amount
    open_account(store, "alice", withdrawn)

    def depositor() -> None:
        for _ in range(operations_per_thread):
            store.deposit("alice", deposit_amount, deadline=patient())

    def withdrawer() -> None:
        for _ in range(operations_per_thread):
            store.withdraw("alice", withdrawal_amount, deadline=patient())

    run_together([depositor] * depositors + [withdrawer] * withdrawers)

    operations = (depositors + withdrawers) * operations_per_thread
    assert store.account("alice", deadline=patient()) == AccountView("alice", deposited, operations)
    assert replay(audit_trail(store, ["alice"])) == {"alice": deposited}


def test_withdrawals_beyond_the_funds_fail_and_never_overdraw(store: LedgerStore) -> None:
    opening, deposit_amount, withdrawal_amount = 100, 5, 10
    depositors, withdrawers, operations_per_thread, observers = 10, 20, 10, 4
    open_account(store, "alice", opening)
    deposited = depositors * operations_per_thread * deposit_amount
    attempted = withdrawers * operations_per_thread * withdrawal_amount
    # More is asked for than ever exists, so some withdrawals must fail.
    must_fail = (attempted - opening - deposited) // withdrawal_amount
    assert must_fail > 0

    def depositor() -> list[Outcome]:
        return [
            attempt(store, OperationType.DEPOSIT, None, "alice", deposit_amount)
            for _ in range(operations_per_thread)
        ]

    def withdrawer() -> list[Outcome]:
        return [
            attempt(store, OperationType.WITHDRAWAL, "alice", None, withdrawal_amount)
            for _ in range(operations_per_thread)
        ]

    def observer() -> list[Outcome]:
        for _ in range(200):
            assert store.account("alice", deadline=patient()).balance >= 0
        return []

    outcomes = flatten(
        run_together([depositor] * depositors + [withdrawer] * withdrawers + [observer] * observers)
    )

    failures = [outcome for outcome in outcomes if not outcome.succeeded]
    assert len(failures) >= must_fail
    assert all(isinstance(outcome.error, InsufficientFunds) for outcome in failures)
    final = opening + deposited - moved(outcomes, OperationType.WITHDRAWAL)
    assert final >= 0
    successes = len(outcomes) - len(failures)
    assert store.account("alice", deadline=patient()) == AccountView("alice", final, successes)
    trail = audit_trail(store, ["alice"])
    assert_trail_explains(trail, 1, outcomes)
    assert replay(trail) == {"alice": final}


# -- transfers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("users", "threads", "transfers_per_thread", "opening", "largest_amount"),
    [(20, 40, 25, 100, 80), (5, 50, 20, 1_000, 10), (50, 10, 100, 10, 10)],
)
def test_concurrent_transfers_conserve_money(
    store: LedgerStore, users: int, threads: int, transfers_per_thread: int, opening: int, largest_amount: int
) -> None:
    usernames = [f"user{index:02}" for index in range(users)]
    for username in usernames:
        open_account(store, username, opening)

    def trader(seed: int) -> Callable[[], list[Outcome]]:
        def run() -> list[Outcome]:
            rng = random.Random(seed)
            outcomes = []
            for _ in range(transfers_per_thread):
                source, target = rng.sample(usernames, 2)
                amount = rng.randint(1, largest_amount)
                outcomes.append(attempt(store, OperationType.TRANSFER, source, target, amount))
            return outcomes

        return run

    outcomes = flatten(run_together([trader(seed) for seed in range(threads)]))

    assert all(outcome.succeeded or isinstance(outcome.error, InsufficientFunds) for outcome in outcomes)
    final = balances(store, usernames)
    assert sum(final.values()) == users * opening
    assert final == expected_balances(dict.fromkeys(usernames, opening), outcomes)
    assert versions(store, usernames) == expected_versions(usernames, outcomes)
    trail = audit_trail(store, usernames)
    assert_trail_explains(trail, users, outcomes)
    assert replay(trail) == final


# -- readers and writers --------------------------------------------------------


def test_readers_never_see_a_torn_account(store: LedgerStore) -> None:
    """Only transfers of one coin: each side's balance is a function of its version."""
    opening, writers, transfers_per_writer, readers, reads_per_reader = 10_000, 10, 100, 10, 300
    open_account(store, "source", opening)
    open_account(store, "target", opening)

    def writer() -> None:
        for _ in range(transfers_per_writer):
            store.transfer("source", "target", 1, deadline=patient())

    def reader() -> None:
        last_seen = {"source": -1, "target": -1}
        for read in range(reads_per_reader):
            username = "source" if read % 2 else "target"
            view = store.account(username, deadline=patient())
            direction = -1 if username == "source" else 1
            assert view.balance == opening + direction * view.version, view
            assert view.version >= last_seen[username], "a version went backwards"
            last_seen[username] = view.version

    run_together([writer] * writers + [reader] * readers)

    moved = writers * transfers_per_writer
    assert store.account("source", deadline=patient()) == AccountView("source", opening - moved, moved)
    assert store.account("target", deadline=patient()) == AccountView("target", opening + moved, moved)


@pytest.mark.memory_only  # MockDB's reader-writer lock
def test_reads_share_the_lock_and_writes_wait_behind_it(store: LedgerStore) -> None:
    open_account(store, "alice", 1000)
    driver = memory_driver(store)
    with driver.holding_read_lock():
        # Readers get in beside a reader already inside; a writer must wait for it.
        views = run_together([lambda: store.account("alice", deadline=patient())] * 50)
        with pytest.raises(OperationTimeout):
            store.deposit("alice", 1, deadline=Deadline.after_ms(20))
    assert set(views) == {AccountView("alice", 1000, 0)}

    with driver.holding_write_lock(), pytest.raises(OperationTimeout):
        store.account("alice", deadline=Deadline.after_ms(20))
    assert store.account("alice", deadline=patient()) == AccountView("alice", 1000, 0)


# -- audit sequence, ids and versions -------------------------------------------


_ACCOUNTS = ("alice", "bob", "carol")


def test_audit_sequence_is_gap_free_with_unique_ids(store: LedgerStore) -> None:
    threads, operations_per_thread = 30, 30
    for username in _ACCOUNTS:
        open_account(store, username, 200)

    per_thread = run_together(
        [mixed_worker(store, _ACCOUNTS, seed, operations_per_thread) for seed in range(threads)]
    )

    trail = audit_trail(store, _ACCOUNTS)
    assert_trail_explains(trail, len(_ACCOUNTS), flatten(per_thread))
    for outcomes in per_thread:
        # One thread's operations complete in program order, so its records do too.
        sequences = [outcome.record.sequence for outcome in outcomes]
        assert sequences == sorted(sequences)
    health = store.health()
    assert health.audit_log
    assert replay(trail) == balances(store, _ACCOUNTS)


def test_version_moves_once_per_successful_change_only(store: LedgerStore) -> None:
    threads, operations_per_thread = 30, 30
    opening = dict.fromkeys(_ACCOUNTS, 200)
    for username, balance in opening.items():
        open_account(store, username, balance)

    outcomes = flatten(
        run_together([mixed_worker(store, _ACCOUNTS, seed, operations_per_thread) for seed in range(threads)])
    )

    reasons = Counter(outcome.error.code for outcome in outcomes if outcome.error is not None)
    assert reasons.keys() <= {"insufficient_funds", "account_not_found", "version_conflict"}
    assert reasons["account_not_found"] > 0
    assert versions(store, _ACCOUNTS) == expected_versions(_ACCOUNTS, outcomes)
    final = balances(store, _ACCOUNTS)
    assert final == expected_balances(opening, outcomes)
    deposited = moved(outcomes, OperationType.DEPOSIT)
    withdrawn = moved(outcomes, OperationType.WITHDRAWAL)
    assert sum(final.values()) == sum(opening.values()) + deposited - withdrawn


# -- If-Match -------------------------------------------------------------------


@pytest.mark.parametrize("kind", [OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER])
def test_if_match_race_has_exactly_one_winner(store: LedgerStore, kind: OperationType) -> None:
    contenders = 50
    open_account(store, "alice", 1000)
    open_account(store, "bob", 1000)
    source, target = roles(kind, "alice", "bob")

    outcomes = run_together(
        [lambda: attempt(store, kind, source, target, 10, expected_version=0)] * contenders
    )

    winners = [outcome for outcome in outcomes if outcome.succeeded]
    assert len(winners) == 1
    assert all(isinstance(outcome.error, VersionConflict) for outcome in outcomes if not outcome.succeeded)
    assert balances(store, ["alice", "bob"]) == expected_balances({"alice": 1000, "bob": 1000}, winners)
    assert versions(store, ["alice", "bob"]) == expected_versions(["alice", "bob"], winners)
    assert_trail_explains(audit_trail(store, ["alice", "bob"]), 2, outcomes)


def test_if_match_retry_loop_applies_every_deposit_once(store: LedgerStore) -> None:
    """Optimistic concurrency: read the version, deposit If-Match, retry on conflict."""
    threads, deposits_per_thread, max_attempts = 10, 10, 10_000
    open_account(store, "alice", 0)

    def depositor() -> int:
        conflicts = 0
        for _ in range(deposits_per_thread):
            for _ in range(max_attempts):
                version = store.account("alice", deadline=patient()).version
                try:
                    store.deposit("alice", 1, deadline=patient(), expected_version=version)
                    break
                except VersionConflict:
                    conflicts += 1
            else:
                pytest.fail(f"no deposit got through in {max_attempts} attempts")
        return conflicts

    conflicts = sum(run_together([depositor] * threads))

    deposits = threads * deposits_per_thread
    assert store.account("alice", deadline=patient()) == AccountView("alice", deposits, deposits)
    trail = audit_trail(store, ["alice"])
    assert_gap_free(trail, 1 + deposits + conflicts)
    # Counter equality counts a missing reason as zero: the scheduler may leave no conflict.
    reasons = Counter(record.reason for record in trail.values())
    assert reasons == Counter({None: 1 + deposits, "version_conflict": conflicts})


# -- timeouts -------------------------------------------------------------------


@pytest.mark.parametrize("kind", [OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER])
def test_operations_past_their_deadline_apply_nothing(
    store: LedgerStore, driver: StoreDriver, kind: OperationType
) -> None:
    waiters = 20
    open_account(store, "alice", 1000)
    open_account(store, "bob", 1000)
    source, target = roles(kind, "alice", "bob")

    with driver.holding_write_lock():
        outcomes = run_together(
            [lambda: attempt(store, kind, source, target, 10, deadline=Deadline.after_ms(30))] * waiters
        )

    assert all(isinstance(outcome.error, OperationTimeout) for outcome in outcomes)
    assert store.account("alice", deadline=patient()) == AccountView("alice", 1000, 0)
    assert store.account("bob", deadline=patient()) == AccountView("bob", 1000, 0)
    assert_trail_explains(audit_trail(store, ["alice", "bob"]), 2, outcomes)
    health = store.health()
    assert health.audit_log
    assert not health.performance


@pytest.mark.parametrize("amount", [0, -5, 10**15 + 1])
@pytest.mark.parametrize("operation", ["deposit", "withdraw"])
def test_the_store_itself_refuses_amounts_out_of_range(
    store: LedgerStore, operation: str, amount: int
) -> None:
    from app.ledger.errors import InvalidInput

    open_account(store, "alice", 100)
    with pytest.raises(InvalidInput, match="amount"):
        getattr(store, operation)("alice", amount, deadline=Deadline.after_ms(1000))
    with pytest.raises(InvalidInput, match="amount"):
        store.transfer("alice", "alice", amount, deadline=Deadline.after_ms(1000))
    assert store.account("alice", deadline=Deadline.after_ms(1000)).balance == 100
    assert store.verify().ok
