"""Basic concurrency of every store (a port of the original ``basic_test.go``).

Every test releases its threads together on a barrier, joins each with a bound and
asserts exact end states. Money is conserved in every test, and the audit trail —
gap-free, one record per operation — must explain every coin.

The helpers at the top are shared with ``test_scenarios.py``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest

from app.ledger.errors import InsufficientFunds, LedgerError, OperationTimeout, VersionConflict
from app.ledger.model import AccountView, Deadline, OperationResult, OperationType, Status, Transaction
from app.ledger.store import LedgerStore
from tests.conftest import open_account
from tests.threads import JOIN_TIMEOUT_S, holding_write_lock, run_together

T = TypeVar("T")

#: A deadline no healthy operation comes near, so only a wait the test forces times out.
PATIENT_MS = 5_000
#: A small page, so that every history below spans many pages.
PAGE_LIMIT = 7

_TRANSACTION_ID = re.compile(r"tx_[0-9a-f]{32}")


# -- shared helpers -------------------------------------------------------------


def patient() -> Deadline:
    return Deadline.after_ms(PATIENT_MS)


def full_history(store: LedgerStore, username: str, *, limit: int = PAGE_LIMIT) -> list[Transaction]:
    """Every record in one account's history, page by page, newest first."""
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.history(username, limit=limit, cursor=cursor)
        assert len(page.transactions) <= limit
        records.extend(page.transactions)
        if page.next_cursor is None:
            return records
        assert len(page.transactions) == limit, "only the last page may be short"
        cursor = page.next_cursor


def audit_trail(store: LedgerStore, usernames: Iterable[str]) -> dict[int, Transaction]:
    """The whole audit trail by sequence, gathered from the histories of ``usernames``.

    Asserts on the way that no history repeats a record and each is newest first.
    """
    trail: dict[int, Transaction] = {}
    for username in usernames:
        history = full_history(store, username)
        sequences = [record.sequence for record in history]
        assert sequences == sorted(set(sequences), reverse=True), f"{username}: not strictly newest first"
        for record in history:
            assert trail.setdefault(record.sequence, record) == record
    return trail


def assert_gap_free(trail: dict[int, Transaction], expected_count: int) -> None:
    """Sequences 1..expected_count, each record with its own well-formed id."""
    assert sorted(trail) == list(range(1, expected_count + 1))
    ids = [record.id for record in trail.values()]
    assert len(set(ids)) == len(ids)
    assert all(_TRANSACTION_ID.fullmatch(transaction_id) for transaction_id in ids)


def replay(trail: dict[int, Transaction]) -> dict[str, int]:
    """The balances the trail explains, applied in sequence order; none ever negative."""
    balances: Counter[str] = Counter()
    for sequence in sorted(trail):
        record = trail[sequence]
        if record.status is not Status.SUCCESS:
            continue
        if record.source is not None:
            balances[record.source] -= record.amount
            assert balances[record.source] >= 0, f"record {sequence} overdraws {record.source}"
        if record.target is not None:
            balances[record.target] += record.amount
    return dict(balances)


def balances(store: LedgerStore, usernames: Iterable[str]) -> dict[str, int]:
    return {username: store.account(username, deadline=patient()).balance for username in usernames}


def versions(store: LedgerStore, usernames: Iterable[str]) -> dict[str, int]:
    return {username: store.account(username, deadline=patient()).version for username in usernames}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempted operation and what became of it."""

    type: OperationType
    source: str | None
    target: str | None
    amount: int
    record: Transaction
    error: LedgerError | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(name for name in (self.source, self.target) if name is not None)


def attempt(
    store: LedgerStore,
    kind: OperationType,
    source: str | None,
    target: str | None,
    amount: int,
    *,
    deadline: Deadline | None = None,
    expected_version: int | None = None,
) -> Outcome:
    """Run one money operation; a ``LedgerError`` becomes a failed ``Outcome``."""
    deadline = deadline or patient()
    try:
        if kind is OperationType.DEPOSIT:
            assert target is not None
            result = store.deposit(target, amount, deadline=deadline, expected_version=expected_version)
        elif kind is OperationType.WITHDRAWAL:
            assert source is not None
            result = store.withdraw(source, amount, deadline=deadline, expected_version=expected_version)
        else:
            assert source is not None
            assert target is not None
            result = store.transfer(
                source, target, amount, deadline=deadline, expected_version=expected_version
            )
    except LedgerError as error:
        failure = error
    else:
        return Outcome(kind, source, target, amount, result.transaction)
    assert failure.transaction is not None, f"{failure.code} was not audited"
    return Outcome(kind, source, target, amount, failure.transaction, failure)


def roles(kind: OperationType, caller: str, counterparty: str) -> tuple[str | None, str | None]:
    """The (source, target) of an operation of ``kind`` that ``caller`` runs."""
    if kind is OperationType.DEPOSIT:
        return None, caller
    if kind is OperationType.WITHDRAWAL:
        return caller, None
    return caller, counterparty


def assert_audited(outcome: Outcome) -> None:
    """The operation's own record describes it, with the status and reason of its outcome."""
    record = outcome.record
    assert (record.type, record.source, record.target, record.amount) == (
        outcome.type,
        outcome.source,
        outcome.target,
        outcome.amount,
    )
    if outcome.error is None:
        assert (record.status, record.reason) == (Status.SUCCESS, None)
    else:
        assert (record.status, record.reason) == (Status.FAILED, outcome.error.code)


def assert_trail_explains(trail: dict[int, Transaction], openings: int, outcomes: Sequence[Outcome]) -> None:
    """The trail is the openings, then exactly one record per operation, describing it."""
    assert_gap_free(trail, openings + len(outcomes))
    assert sorted(outcome.record.sequence for outcome in outcomes) == list(
        range(openings + 1, len(trail) + 1)
    )
    for outcome in outcomes:
        assert_audited(outcome)
        assert trail[outcome.record.sequence] == outcome.record


def expected_balances(opening: dict[str, int], outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Opening balances plus the effect of every successful operation."""
    result = dict(opening)
    for outcome in outcomes:
        if outcome.succeeded:
            if outcome.source is not None:
                result[outcome.source] -= outcome.amount
            if outcome.target is not None:
                result[outcome.target] += outcome.amount
    return result


def expected_versions(usernames: Iterable[str], outcomes: Iterable[Outcome]) -> dict[str, int]:
    """One version per successful operation touching the account, none for a failure."""
    touched = Counter(name for outcome in outcomes if outcome.succeeded for name in outcome.parties)
    return {username: touched[username] for username in usernames}


def moved(outcomes: Iterable[Outcome], kind: OperationType) -> int:
    """The coins that the successful operations of ``kind`` moved."""
    return sum(outcome.amount for outcome in outcomes if outcome.succeeded and outcome.type is kind)


def flatten(batches: Iterable[Iterable[T]]) -> list[T]:
    return [item for batch in batches for item in batch]


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
    reading = store._rw.gen_rlock()
    assert reading.acquire(blocking=True, timeout=JOIN_TIMEOUT_S)
    try:
        # Readers get in beside a reader already inside; a writer must wait for it.
        views = run_together([lambda: store.account("alice", deadline=patient())] * 50)
        with pytest.raises(OperationTimeout):
            store.deposit("alice", 1, deadline=Deadline.after_ms(20))
    finally:
        reading.release()
    assert set(views) == {AccountView("alice", 1000, 0)}

    with holding_write_lock(store), pytest.raises(OperationTimeout):
        store.account("alice", deadline=Deadline.after_ms(20))
    assert store.account("alice", deadline=patient()) == AccountView("alice", 1000, 0)


# -- audit sequence, ids and versions -------------------------------------------


_ACCOUNTS = ("alice", "bob", "carol")


def mixed_worker(
    store: LedgerStore, usernames: Sequence[str], seed: int, operations: int
) -> Callable[[], list[Outcome]]:
    """A worker that mixes every kind of operation and every business failure."""

    def run() -> list[Outcome]:
        rng = random.Random(seed)
        outcomes = []
        for _ in range(operations):
            source, target = rng.sample(usernames, 2)
            amount = rng.randint(1, 120)
            choice = rng.randrange(6)
            if choice == 0:
                outcomes.append(attempt(store, OperationType.DEPOSIT, None, target, amount))
            elif choice == 1:
                outcomes.append(attempt(store, OperationType.WITHDRAWAL, source, None, amount))
            elif choice == 2:
                outcomes.append(attempt(store, OperationType.TRANSFER, source, "nobody", amount))
            elif choice == 3:
                # A version that is almost certainly stale by now.
                outcomes.append(
                    attempt(store, OperationType.DEPOSIT, None, target, amount, expected_version=0)
                )
            else:
                outcomes.append(attempt(store, OperationType.TRANSFER, source, target, amount))
        return outcomes

    return run


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
def test_operations_past_their_deadline_apply_nothing(store: LedgerStore, kind: OperationType) -> None:
    waiters = 20
    open_account(store, "alice", 1000)
    open_account(store, "bob", 1000)
    source, target = roles(kind, "alice", "bob")

    with holding_write_lock(store):
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
