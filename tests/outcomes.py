"""Money operations on a store as ``Outcome`` records, and what they must leave behind.

``attempt`` runs one deposit, withdrawal or transfer and keeps its audit record (a
refusal too); ``mixed_worker`` runs a seeded mix of them. The checks rebuild the
audit trail from the accounts' histories and hold it against the outcomes:
gap-free sequences, one record per operation, balances and versions that the
successful operations explain. Used by ``test_races.py`` and ``test_scenarios.py``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from app.ledger.errors import LedgerError
from app.ledger.model import Deadline, OperationType, Status, Transaction
from app.ledger.store import LedgerStore

T = TypeVar("T")

#: A deadline no healthy operation comes near, so only a wait the test forces times out.
PATIENT_MS = 5_000
#: A small page, so that every history below spans many pages.
PAGE_LIMIT = 7

_TRANSACTION_ID = re.compile(r"tx_[0-9a-f]{32}")


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
        if record.status != Status.SUCCESS:
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
