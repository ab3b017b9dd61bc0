"""The ledger's value objects: accounts as seen by callers, audit records, deadlines.

Everything here is immutable, so a value handed out of a store can never be used to
reach back into the store's internal state. The values every operation makes
(records, account views, results, deadlines, batch items) are named tuples: built in
a quarter of the time of a frozen dataclass, and a record of strings and integers is
one the garbage collector stops tracking, which keeps its passes short however many
records a ledger holds in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple

#: The largest amount one operation may move (contract: 1 <= amount <= 10^15).
MAX_AMOUNT = 10**15
#: No balance may ever exceed a signed 64-bit integer.
MAX_BALANCE = 2**63 - 1


class OperationType(StrEnum):
    """The kinds of audit record; the value is what the API shows."""

    OPEN = "open"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER = "transfer"
    HOLD = "hold"
    CAPTURE = "capture"
    VOID = "void"
    EXPIRE = "expire"
    #: Money sent back along a transfer, capture, deposit or withdrawal (``reverses``: its id).
    REVERSAL = "reversal"


class Status(StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


def new_id(prefix: str) -> str:
    """A unique, time-ordered identifier: ``prefix`` and 32 lowercase hex digits.

    48 bits of milliseconds since the epoch, then 80 random bits (the layout of a
    ULID, spelled in hex): ids sort by creation time to the millisecond and never
    collide in practice. Hex because it is made on every operation's hot path and
    ``bytes.hex`` is a single C call.
    """
    return id_stamp(prefix) + os.urandom(10).hex()


def id_stamp(prefix: str) -> str:
    """An id's ``prefix`` and its 12 hex digits of milliseconds: what ``new_id`` puts
    before its 20 random digits (the audit trail adds those from ``RandomHex``)."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}"


def utc_now_iso() -> str:
    """The current time as the API shows it: ISO 8601, microseconds, ``Z``.

    The same text as ``datetime.now(UTC).isoformat(timespec="microseconds")`` without
    its offset, at a third of the cost: every audit record is stamped on the hot path,
    so the date and time of day are formatted once a second and only the microseconds
    each time. The cached second and its text are one tuple, replaced whole, so
    threads racing over a change of second never pair one second with another's text.
    """
    global _second
    now_us = time.time_ns() // 1000
    second = now_us // 1_000_000
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{now_us % 1_000_000:06d}Z"


#: The whole second ``utc_now_iso`` last formatted, and its ``YYYY-MM-DDTHH:MM:SS``.
_second: tuple[int, str] = (-1, "")


class RandomHex:
    """Random hex digits for ids, drawn from ``os.urandom`` a few kilobytes at a time.

    ``os.urandom`` is a system call; ids are made on every operation's hot path, so one
    call serves ``batch`` ids. Not thread-safe: its owner calls ``take`` under its own
    lock (the audit trail's).
    """

    __slots__ = ("_batch", "_buffer", "_digits", "_position")

    def __init__(self, digits: int = 20, batch: int = 512) -> None:
        self._digits = digits
        self._batch = batch
        self._buffer = ""
        self._position = 0

    def take(self) -> str:
        """``digits`` fresh random hex digits (never handed out twice)."""
        position = self._position
        if position + self._digits > len(self._buffer):
            self._buffer = os.urandom((self._digits * self._batch + 1) // 2).hex()
            position = 0
        self._position = position + self._digits
        return self._buffer[position : position + self._digits]


class AccountView(NamedTuple):
    """A copy of one account's state, taken under the store's lock."""

    username: str
    balance: int
    version: int
    held: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


class Transaction(NamedTuple):
    """One audit record: a money operation that reached the ledger.

    ``sequence`` is the ledger-wide order (1, 2, 3, … with no gaps); ``source`` and
    ``target`` are the contract's ``from`` and ``to``. ``type`` and ``status`` are an
    ``OperationType``'s and a ``Status``'s value, as plain strings (equal to the enum
    members): a record made only of strings, integers and ``None`` is one the garbage
    collector stops tracking, so its full passes do not walk every record a ledger
    keeps in memory (an enum member inside would keep the record tracked).
    """

    id: str
    sequence: int
    type: str
    source: str | None
    target: str | None
    amount: int
    status: str
    reason: str | None
    created_at: str
    #: The hash chain (see ``app.ledger.audit``): the record before this one, and this one.
    previous_hash: str
    hash: str
    #: The caller's external id for the operation (``None``: none given).
    reference: str | None = None
    #: The caller's metadata as canonical JSON text (keys sorted, no spaces), ``None`` when
    #: none was given: text rather than a dict, so a record stays immutable and untracked
    #: by the garbage collector, and the API writes it out without re-encoding.
    metadata: str | None = None
    #: The balances of ``source`` and ``target`` right after this record (``None``: no such
    #: account, or a record written before records carried balances).
    from_balance_after: int | None = None
    to_balance_after: int | None = None
    #: The id of the transaction this record reverses (a ``reversal`` only).
    reverses: str | None = None

    def balance_after(self, account: str) -> int | None:
        """The balance of ``account`` (one of the record's parties) right after it."""
        return self.from_balance_after if account == self.source else self.to_balance_after


class BalanceAt(NamedTuple):
    """An account's balance right after its last record at or before a point in the trail
    (``GET /account/coins?at=`` or ``?sequence=``): that record's ``sequence`` and ``created_at``."""

    username: str
    balance: int
    sequence: int
    created_at: str


class Tag(NamedTuple):
    """What the caller attached to an operation: a reference and metadata.

    ``metadata`` is canonical JSON text (``app.ledger.records.metadata_text``) of a
    non-empty object. An operation with neither carries no tag at all (``None``), and
    its record is encoded and hashed exactly as records were before tags existed.
    """

    reference: str | None
    metadata: str | None


class OperationResult(NamedTuple):
    """The outcome of a successful money operation: its record and the caller's account."""

    transaction: Transaction
    account: AccountView


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified place in the audit trail: the record ``sequence``, its hash, and a digest of
    every account's balance right after it (``app.ledger.audit.balances_digest``)."""

    sequence: int
    chain_head: str
    balances_digest: str
    created_at: str


@dataclass(frozen=True, slots=True)
class CheckpointPage:
    """Checkpoints, newest first, and the cursor of the next page (``None`` at the end)."""

    checkpoints: tuple[Checkpoint, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of audit records and the cursor of the next page (``None`` at the end)."""

    transactions: tuple[Transaction, ...]
    next_cursor: str | None
    #: How much of each record on the page has been reversed, by id (a record not named:
    #: nothing). Mutable state beside the immutable records, copied when the page is read.
    reversed: Mapping[str, int] = field(default_factory=dict)


class Deadline(NamedTuple):
    """When an operation must have finished, on the monotonic clock."""

    expires_at: float

    @classmethod
    def after_ms(cls, timeout_ms: int) -> Deadline:
        return cls(time.monotonic() + timeout_ms / 1000)

    def remaining_s(self) -> float:
        """Seconds left, never negative (zero still allows one non-blocking try)."""
        return max(0.0, self.expires_at - time.monotonic())


#: The most operations one batch may carry (the contract's limit).
MAX_BATCH_ITEMS = 8189


class BatchItem(NamedTuple):
    """One operation of a batch, on the caller's account (``target`` for transfers)."""

    kind: OperationType
    amount: int
    target: str | None = None
    tag: Tag | None = None


class ItemOutcome(NamedTuple):
    """What became of one batch item: its audit record, and the failure if it failed.

    ``code``/``status``/``message`` describe the failure (``None`` on success). A named
    tuple like the records (a batch makes thousands); its ``index`` field hides
    ``tuple.index``, which nothing calls on an outcome.
    """

    index: int  # type: ignore[assignment]
    transaction: Transaction
    status: int | None = None
    code: str | None = None
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.code is None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of a batch and the caller's account afterwards.

    ``failed_index`` is set when an atomic batch was refused because of that item
    (then nothing was applied).
    """

    items: tuple[ItemOutcome, ...]
    account: AccountView
    atomic: bool
    failed_index: int | None = None


#: Bounds of a hold's lifetime (``timeout_s``) and its default.
MIN_HOLD_TIMEOUT_S = 1
MAX_HOLD_TIMEOUT_S = 604_800
DEFAULT_HOLD_TIMEOUT_S = 3600


class HoldStatus(StrEnum):
    PENDING = "PENDING"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class Hold:
    """A copy of one hold: money of ``source`` reserved for ``target``."""

    id: str
    source: str
    target: str
    amount: int
    captured: int
    status: HoldStatus
    expires_at: str
    created_at: str
    #: The reference and metadata given with the hold (``None``: neither).
    tag: Tag | None = None


@dataclass(frozen=True, slots=True)
class HoldResult:
    """The outcome of a hold operation: the hold, the caller's account, the audit record."""

    hold: Hold
    account: AccountView
    transaction: Transaction


def iso_from_epoch(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="microseconds")[:-6] + "Z"
