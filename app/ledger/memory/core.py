"""The core of ``MockDB``: its state, the lock order, and the write path every change takes.

``LedgerCore`` holds what the locks guard (see the package docstring for the order)
and the three paths through them: ``_write`` (an operation under the write lock,
audited and journaled whether it succeeds or fails), ``_read_after_expiry`` (a read
under the read lock, once no hold it shows is due) and ``_expire`` (due holds
released). ``MockDB`` adds the public operations on top.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from readerwriterlock import rwlock

from app.ledger import rules
from app.ledger.accounts import AccountState, HoldState
from app.ledger.counters import OperationCounters
from app.ledger.errors import LedgerError, OperationTimeout, StorageUnavailable, StoreInvariantBroken
from app.ledger.memory.durability import DEFAULT_CHECKPOINT_RECORDS, Durability, OutcomeOf
from app.ledger.memory.files import Recovered
from app.ledger.memory.holds import ExpirySweeper, HoldBook
from app.ledger.memory.index import RecordIndex
from app.ledger.memory.keys import IdempotencyTable
from app.ledger.memory.reversals import ReversalBook
from app.ledger.memory.trail import AuditTrail
from app.ledger.model import (
    AccountView,
    BatchItem,
    Deadline,
    Hold,
    HoldResult,
    HoldStatus,
    OperationResult,
    OperationType,
    Transaction,
)
from app.ledger.records import RecordDraft

T = TypeVar("T")
R = TypeVar("R", bound=OperationResult | HoldResult)
P = ParamSpec("P")
C = TypeVar("C", bound="LedgerCore")

#: Each operation type's name as counted (``.value`` is a descriptor call: this is a lookup).
_KIND_NAMES = {kind: kind.value for kind in OperationType}
#: How long the hold sweeper may wait for the balance lock on one pass.
SWEEP_LOCK_TIMEOUT_MS = 1000


def durable(method: Callable[Concatenate[C, P], T]) -> Callable[Concatenate[C, P], T]:
    """A write method that returns (or raises) only once its journal entries are durable."""

    @functools.wraps(method)
    def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
        durability = self._durability
        if durability.journal is None:  # in memory only: nothing to wait for, a checkpoint may be due
            try:
                return method(self, *args, **kwargs)
            finally:
                if durability.checkpoint_due(self._trail.sequence):
                    self._snapshot_due()
        durability.start_write()
        try:
            return method(self, *args, **kwargs)
        finally:
            self._await_written()

    return wrapper


class LedgerCore:
    """The embedded ledger's state under its locks, and the paths every operation takes."""

    def __init__(
        self,
        *,
        idempotency: IdempotencyTable | None = None,
        lock_trouble_after_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS,
    ) -> None:
        """An empty ledger in memory only (``MockDB.open`` gives one with a journal).

        ``lock_trouble_after_s``: a lock wait that times out after waiting at least
        this long marks health degraded (the app passes the default deadline, so a
        caller's own tight ``X-Timeout-Ms`` does not take the instance out of rotation).
        ``clock``: the wall clock that holds expire by (injectable for tests).
        ``checkpoint_records``: a checkpoint every this many audit records (0: only when
        asked for).
        """
        self._rw = rwlock.RWLockFair()
        self._accounts: dict[str, AccountState] = {}  # under _rw
        self._holds = HoldBook()  # under _rw, like the balances it reserves
        self._clock = clock
        self._sweeper = ExpirySweeper(self._sweep_due, clock=clock)
        self._credentials_lock = threading.Lock()
        self._credentials: dict[str, bytes] = {}  # under _credentials_lock
        # Reversed amounts per original; checked and added to under _rw held for writing.
        self._reversals = ReversalBook()
        self._trail = AuditTrail()
        self._counters = OperationCounters()
        self._lock_trouble_after_s = lock_trouble_after_s
        self._seen_lock = threading.Lock()
        self._accounts_seen = 0  # the last account count a metrics scrape saw (under _seen_lock)
        # Not ``or``: an empty table has len() == 0 and would be replaced.
        self._keys = idempotency if idempotency is not None else IdempotencyTable()
        self._durability = Durability(self._keys)
        self._durability.checkpoint_records = checkpoint_records
        # Filtered reads (in memory; beside the journal once ``open`` gives one). Never
        # written on the write path: it catches up with the trail by itself.
        self._index = RecordIndex(self._trail, self._indexable)
        self.recovery: Recovered | None = None
        #: The hash check of a trail read from disk, running from ``open`` on.
        self.chain_check: threading.Thread | None = None

    def _indexable(self) -> int:
        """The last record the index may hold: the last durable one (in memory only, the last)."""
        durable = self._durability.durable_sequence()
        return self._trail.sequence if durable is None else durable

    def _await_written(self) -> None:
        """Wait for this thread's journal entries (``durable``); then snapshot (or, in memory
        only, checkpoint) if one is due."""
        durability = self._durability
        if durability.await_written() or (
            durability.journal is None and durability.checkpoint_due(self._trail.sequence)
        ):
            self._snapshot_due()

    def _snapshot_due(self) -> None:
        """A snapshot or a checkpoint is due: ``MockDB`` makes it in the background."""

    def _read_after_expiry(
        self, username: str, deadline: Deadline, kind: str, read: Callable[[], tuple[T, int]]
    ) -> T:
        """``read`` under the read lock, once no hold of ``username`` is due; then durable.

        Whether a hold is due is checked under the same read lock as the read; only
        when one is does the read step aside, expire it under the write lock and try
        again (a second time nothing of this account can be due before the clock moves,
        and expiry is idempotent if it has). ``read`` also gives the journal frame that
        last changed what it read: the answer waits until that frame is durable.
        """
        for attempt in range(2):
            lock = self._rw.gen_rlock()
            waited_s = self._acquire(lock, deadline, kind)
            outcome = "success"
            try:
                if (
                    attempt == 0
                    and self._holds.has_due((username,), self._clock())
                    and self._durability.can_write()
                ):
                    outcome = "deferred"
                else:
                    value, lsn = read()
            except LedgerError as error:
                outcome = error.code
                raise
            finally:
                lock.release()
                if outcome != "deferred":
                    self._count(kind, outcome, waited_s)
            if outcome != "deferred":
                self._durability.await_lsn(lsn)
                return value
            self._expire_now((username,), deadline)
        raise StoreInvariantBroken("only the first read of an account may defer to expiry")

    def _sweep_due(self, hold_ids: list[str]) -> None:
        """The sweeper's pass: expire these holds if still pending and due.

        Looks up only the given ids (no scan of every pending hold under the write
        lock). A hold that is not due after all, because the wall clock stepped back, is
        scheduled again, so that the sweeper cannot lose it.
        """
        if not self._durability.can_write():
            return  # nothing can be kept; the holds expire after the restart
        self._durability.start_write()
        lock = self._rw.gen_wlock()
        self._acquire(lock, Deadline.after_ms(SWEEP_LOCK_TIMEOUT_MS), OperationType.EXPIRE.value)
        try:
            now_s = self._clock()
            pending = [
                state
                # Only holds in memory: every pending one is; a resolved one is no concern of
                # the sweeper's and is not read back from disk under the write lock.
                for state in (self._holds.resident(hold_id) for hold_id in hold_ids)
                if state is not None and state.status is HoldStatus.PENDING
            ]
            due = sorted(
                (state for state in pending if state.expires_at_s <= now_s),
                key=lambda state: (state.expires_at_s, state.id),
            )
            self._expire(due)
            # Lock order: _rw, then the sweeper's condition (never the other way round).
            for state in pending:
                if state.expires_at_s > now_s:
                    self._sweeper.schedule(state.expires_at_s, state.id)
        finally:
            lock.release()
        self._await_written()

    def _expire_due(self, names: Iterable[str | None]) -> int:
        """Expire what is due among these accounts' holds (the caller holds the write lock)."""
        if not self._holds.pending_by_account:  # no hold pending, nothing to read the clock for
            return 0
        return self._expire(self._holds.due(names, self._clock()))

    def _expire(self, states: Sequence[HoldState]) -> int:
        for state in states:
            rules.release(self._accounts[state.source], state, HoldStatus.EXPIRED)
            self._holds.resolved(state)
            draft = RecordDraft(OperationType.EXPIRE, state.source, state.target, state.amount, tag=state.tag)
            self._append([draft], accounts=(state.source,), holds=self._holds.drain_changed())
            self._count(OperationType.EXPIRE.value, "success", 0.0)
        return len(states)

    def _expire_now(self, names: tuple[str, ...], deadline: Deadline) -> None:
        lock = self._rw.gen_wlock()
        self._acquire(lock, deadline, OperationType.EXPIRE.value)
        try:
            self._durability.check_writable()
            self._expire_due(names)
        finally:
            lock.release()

    # -- the write path -------------------------------------------------------

    def _acquire(self, lock: rwlock.Lockable, deadline: Deadline, kind: str) -> float:
        """Take ``lock`` within the deadline; the seconds waited, or ``OperationTimeout``."""
        started = time.perf_counter()
        if lock.acquire(blocking=True, timeout=deadline.remaining_s()):
            return time.perf_counter() - started
        waited_s = time.perf_counter() - started
        if waited_s >= self._lock_trouble_after_s:
            self._counters.lock_trouble()
        self._count(kind, OperationTimeout.code, waited_s)
        raise OperationTimeout("The operation could not finish within its deadline.")

    def _write(
        self,
        username: str,
        draft: RecordDraft,
        deadline: Deadline,
        apply: Callable[[RecordDraft], T],
        finish: Callable[[Transaction, T], R],
        *,
        failed_for: tuple[str, ...] | None = None,
        credential: tuple[str, bytes] | None = None,
    ) -> R:
        """Run ``apply`` under the write lock; audit and journal the outcome either way.

        ``apply`` may fill in the draft's ``from``/``to``/amount as it finds them, and
        must copy out whatever it returns (it runs under the lock); ``finish`` makes the
        result from the record and that. A failure is shown in the history of
        ``failed_for`` (default: the caller alone, never a recipient who had no part in
        it). A timeout applied nothing, so its record needs only the audit trail's lock.
        ``credential``: the name and token digest of the account this opens.
        """
        failed_for = (username,) if failed_for is None else failed_for
        kind = _KIND_NAMES[draft.kind]
        lock = self._rw.gen_wlock()
        try:
            waited_s = self._acquire(lock, deadline, kind)
        except OperationTimeout as error:
            self._durability.check_writable()  # a failed journal keeps no record, not even of a timeout
            error.transaction = self._append([draft.failed(error.code, failed_for)])[0]
            raise
        outcome = "success"
        try:
            try:
                self._durability.check_writable()
                applied = apply(draft)
            except StorageUnavailable as error:
                outcome = error.code
                raise
            except LedgerError as error:
                outcome = error.code
                failed = draft.failed(error.code, failed_for)
                error.transaction = self._append([failed], outcome=failure_outcome(error))[0]
                raise
            if self._durability.journal is None:  # in memory only: nothing to journal
                self._holds.drain_changed()  # nothing keeps them
                record = self._trail.append_one(draft)
            else:
                [record] = self._append(
                    [draft],
                    accounts=draft.shown_to(),
                    holds=self._holds.drain_changed(),
                    credential=credential,
                    outcome=lambda records: finish(records[0], applied),
                )
        finally:
            lock.release()
            self._count(kind, outcome, waited_s)
        return finish(record, applied)

    def _append(
        self,
        drafts: Sequence[RecordDraft],
        *,
        accounts: Iterable[str] = (),
        holds: Sequence[HoldState] = (),
        credential: tuple[str, bytes] | None = None,
        outcome: OutcomeOf | None = None,
    ) -> list[Transaction]:
        """Seal ``drafts`` onto the audit trail and queue their journal entry.

        ``accounts`` and ``holds``: what the change left behind (journaled with it; the
        caller holds the write lock whenever there are any); ``outcome``: the answer to
        an idempotent request that ran it.
        """
        durability = self._durability
        if durability.journal is None:
            return self._trail.append(drafts)
        states = [self._accounts[name] for name in dict.fromkeys(accounts) if name in self._accounts]
        records = self._trail.append(
            drafts,
            lambda records, metas, encodings: durability.keep(
                records, metas, encodings, states, holds, credential, outcome
            ),
        )
        if holds:  # the write lock is held: the hold book may let resolved holds go
            self._holds.settled(holds, records[-1].sequence)
            self._holds.forget_settled(durability.journal.indexed_sequence)
        return records

    def _count(self, kind: str, outcome: str, lock_wait_s: float) -> None:
        self._counters.count_one(kind, outcome, lock_wait_s)

    def _count_items(
        self, items: Sequence[BatchItem], failures: Sequence[LedgerError | None], lock_wait_s: float
    ) -> None:
        """Count a batch: one operation per item, one lock wait for the whole batch."""
        outcomes = Counter(
            (_KIND_NAMES[item.kind], "success" if failure is None else failure.code)
            for item, failure in zip(items, failures, strict=False)
        )
        self._counters.count_tally(outcomes, lock_wait_s)


def hold_result(record: Transaction, applied: tuple[AccountView, Hold]) -> HoldResult:
    return HoldResult(applied[1], applied[0], record)


def failure_outcome(error: LedgerError) -> OutcomeOf:
    """What an idempotent retry of a failed operation answers: ``error``, with its record."""

    def outcome(records: list[Transaction]) -> LedgerError:
        error.transaction = records[0]
        return error

    return outcome
