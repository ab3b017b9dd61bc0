"""The interface every ledger store implements (the embedded ``MockDB`` first).

The web layer talks only to this protocol, so the API and its conformance tests run
unchanged against each store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.ledger.audit import Verification
from app.ledger.filters import NO_FILTER, RecordFilter
from app.ledger.model import (
    AccountView,
    BalanceAt,
    BatchItem,
    BatchResult,
    CheckpointPage,
    Deadline,
    Hold,
    HoldResult,
    OperationResult,
    Page,
    Tag,
)
from app.ledger.outcomes import Outcome, Result

#: Upper bounds (seconds) of the lock-wait histogram's buckets; +Inf is implied.
LOCK_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/system/health`` reports about a store."""

    uptime_seconds: float
    operation_count: int
    database: bool
    audit_log: bool
    performance: bool


@dataclass(frozen=True, slots=True)
class Durations:
    """A latency histogram as counted: per upper bound of ``bounds_s`` the observations at
    or under it (cumulative), then the +Inf count; and the sum of every observation."""

    bounds_s: tuple[float, ...]
    buckets: tuple[int, ...]
    sum_s: float


@dataclass(frozen=True, slots=True)
class Counts:
    """What this process counted since it started, copied under the counters' locks, no I/O.

    Each worker process counts its own; ``/metrics`` adds them up across workers.
    """

    #: (operation, outcome) -> count; outcome is ``success`` or the error code.
    operations: Mapping[tuple[str, str], int]
    #: Time operations waited for their locks (the balance lock, or the account rows).
    lock_wait: Durations
    #: Other latencies the store measures, by name: ``pg_pool_wait`` and ``pg_commit``
    #: (PostgreSQL), ``journal_sync`` (the write-ahead journal).
    durations: Mapping[str, Durations] = field(default_factory=dict)
    #: The write-ahead journal's ``syncs``, ``frames`` and ``bytes``; empty without one.
    journal: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stats:
    """The ledger's sizes for ``/metrics``, as the store can tell them cheaply.

    The PostgreSQL store's ``accounts`` and ``idempotency_keys`` are the database's
    estimates (its live-row statistics), not counts.
    """

    accounts: int
    audit_records: int
    idempotency_keys: int
    #: Whether the write-ahead journal has failed; ``None`` for a store without one.
    journal_failed: bool | None = None


class LedgerStore(Protocol):
    """A ledger of integer coin balances with an audit trail.

    Every method that changes money either applies completely and returns the audit
    record, or raises a :class:`~app.ledger.errors.LedgerError` having changed no
    balance. Deadlines bound every lock wait.
    """

    def is_empty(self) -> bool:
        """Whether the ledger has no accounts (demo data only goes into an empty one)."""
        ...

    def create_account(
        self, username: str, token_digest: bytes, balance: int, *, deadline: Deadline
    ) -> AccountView:
        """Open an account; ``AccountExists`` if the name is taken."""
        ...

    def token_digest(self, username: str) -> bytes | None:
        """The stored hash of the account's token, ``None`` for an unknown account."""
        ...

    def account(self, username: str, *, deadline: Deadline) -> AccountView:
        """A consistent copy of one account's state."""
        ...

    def deposit(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult: ...

    def withdraw(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult: ...

    def transfer(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult:
        """Move ``amount`` from ``username`` to ``target`` atomically (``tag``: the caller's
        reference and metadata, carried by the record)."""
        ...

    def reverse(
        self,
        username: str | None,
        transaction_id: str,
        amount: int | None,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult:
        """Send back ``amount`` (default: all that is left) of transaction ``transaction_id``
        as a ``reversal`` record (``rules.reverse``).

        ``username``: the original's recipient (a transfer or capture they received), or
        ``None`` for the operator (any transfer, capture, deposit or withdrawal). The result's
        account is ``rules.reversal_account``'s, whose version ``expected_version`` names.
        """
        ...

    def batch(
        self,
        username: str,
        items: Sequence[BatchItem],
        *,
        atomic: bool,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> BatchResult:
        """Apply many operations of the caller under one lock acquisition.

        ``expected_version`` is checked once, before the first item.
        """
        ...

    def create_hold(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        timeout_s: int,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> HoldResult:
        """Reserve ``amount`` of the caller's available money for ``target`` (``tag``: carried
        by the hold's records, its capture's, void's or expiry's too)."""
        ...

    def capture_hold(
        self,
        username: str,
        hold_id: str,
        amount: int | None,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> HoldResult:
        """Move ``amount`` (default: all) of a pending hold to its payee; release the rest."""
        ...

    def void_hold(
        self, username: str, hold_id: str, *, deadline: Deadline, expected_version: int | None = None
    ) -> HoldResult: ...

    def get_hold(self, username: str, hold_id: str, *, deadline: Deadline) -> Hold: ...

    def sweep_expired(self, *, deadline: Deadline) -> int:
        """Expire every pending hold whose time is up."""
        ...

    def close(self) -> None:
        """Release background resources (threads, connections)."""
        ...

    def history(
        self, username: str, *, limit: int, cursor: str | None, where: RecordFilter = NO_FILTER
    ) -> Page:
        """The account's audit records that pass ``where``, newest first, ``limit`` at a time."""
        ...

    def balance_at(self, username: str, *, sequence: int | None = None, at: str | None = None) -> BalanceAt:
        """The account's balance right after its last record at or before a point: the one
        with the largest sequence among its records with ``sequence <= sequence``, or with
        ``created_at <= at`` (``at`` in the records' form; ``created_at`` need not grow with
        the sequence, so that is the definition). Exactly one of the two is given
        (``InvalidInput("invalid_parameter")`` otherwise); ``AccountNotFound`` if the account
        has no record there. Only durable records count. Logarithmic in the account's records.
        """
        ...

    def transactions(self, *, limit: int, cursor: str | None, where: RecordFilter = NO_FILTER) -> Page:
        """Every account's records that pass ``where``, oldest first, ``limit`` at a time
        (``/admin/transactions``; cursors ``rules.encode_cursor("t", sequence)``)."""
        ...

    def audit_page(self, *, limit: int, cursor: str | None) -> Page:
        """The whole audit trail, oldest first, ``limit`` records at a time."""
        ...

    def verify(self, *, from_sequence: int | None = None) -> Verification:
        """Check every invariant of the ledger against its audit trail, streaming it.

        ``from_sequence``: a checkpoint's sequence; only the records after it are checked,
        against it (``InvalidInput("invalid_parameter")`` if no checkpoint has that sequence).
        """
        ...

    def checkpoints(self, *, limit: int, cursor: str | None) -> CheckpointPage:
        """The ledger's checkpoints, newest first, ``limit`` at a time."""
        ...

    def idempotent(
        self,
        username: str,
        key: str,
        fingerprint: str,
        deadline: Deadline,
        operation: Callable[[], Result],
    ) -> Outcome:
        """Run ``operation`` at most once per ``(username, key)``; replay it afterwards."""
        ...

    def health(self) -> Health: ...

    def not_ready(self) -> str | None:
        """Why the store cannot serve writes right now (``None``: it can), within about a second.

        ``/readyz``'s answer: a database that does not answer, a failed journal, a
        balance lock wedged by a writer.
        """
        ...

    def stats(self) -> Stats:
        """The ledger's sizes; bounded in time (the last figures seen if they cannot be read)."""
        ...

    def counts(self) -> Counts:
        """This process's counters (``/metrics`` reads them often: no I/O, no store lock)."""
        ...
