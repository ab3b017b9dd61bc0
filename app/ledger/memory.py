"""``MockDB``: the embedded, in-process ledger store.

Locking
-------
Four locks, each the only owner of its data, always taken in this order:

1. ``_rw`` (a fair ``readerwriterlock``) guards ``_accounts``: balances, versions
   and holds. Reads share it; every change holds it exclusively, and
   the funds check and the mutation happen under that one write lock.
2. ``_credentials_lock`` guards ``_credentials``, the token digests. It is apart
   from ``_rw`` so that authenticating a request never waits behind a balance
   writer; an account's digest is added right after the account, under ``_rw``.
3. ``_audit_lock`` guards the audit trail (``_audit``, ``_records_by_account``,
   the chain's last hash and how far health has checked it). Records of applied
   operations are appended while the write lock is still held, so the audit order
   is exactly the order in which balances changed, and each record's hash chains to
   the one before it.
4. ``_counters_lock`` guards the health and metrics counters.

Idempotency keys live in an ``IdempotencyTable`` with its own mutex, which is
never held together with any of the four above. Holds live in a ``HoldBook`` under
``_rw``; the expiry sweeper's heap has its own condition, never held while the
sweeper takes ``_rw``.

Holds expire no later than the next operation that touches either of their
accounts (each write, and a balance read, expires what is due first) or the
sweeper's next pass, whichever comes first.

A path may skip a lock but never takes them out of order, and never takes one
twice (the readerwriterlock locks are not reentrant). Lock handles are generated
afresh on every use and never stored. Waits for ``_rw`` are bounded by the
operation's deadline; the other three are only ever held for a few dictionary or
list operations, never across I/O.

Durability
----------
None: everything lives in this process's memory and is lost when it exits.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from readerwriterlock import rwlock

from app.ledger.audit import (
    GENESIS_HASH,
    AccountSnapshot,
    Verification,
    check_chain,
    sealed_record,
    verify_ledger,
)
from app.ledger.errors import (
    AccountExists,
    AccountNotFound,
    BalanceOverflow,
    BatchFailed,
    HoldNotFound,
    HoldNotPending,
    InsufficientFunds,
    InvalidInput,
    LedgerError,
    OperationTimeout,
    StoreInvariantBroken,
    VersionConflict,
)
from app.ledger.holds import ExpirySweeper, HoldBook, HoldState
from app.ledger.idempotency import IdempotencyTable, Outcome, Result
from app.ledger.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_BATCH_ITEMS,
    MAX_HOLD_TIMEOUT_S,
    MIN_HOLD_TIMEOUT_S,
    AccountView,
    BatchItem,
    BatchResult,
    Deadline,
    Hold,
    HoldResult,
    HoldStatus,
    ItemOutcome,
    OperationResult,
    OperationType,
    Page,
    Status,
    Transaction,
    new_id,
    utc_now_iso,
)
from app.ledger.store import LOCK_WAIT_BUCKETS_S, Health, Stats

T = TypeVar("T")

#: A lock wait that ran past its deadline this recently makes health "degraded".
LOCK_TROUBLE_WINDOW_S = 60.0

#: How long the hold sweeper may wait for the balance lock on one pass.
SWEEP_LOCK_TIMEOUT_MS = 1000
#: How long a metrics scrape may wait for the balance lock.
STATS_LOCK_TIMEOUT_S = 0.5
#: How long ``verify`` may wait for the balance lock.
VERIFY_LOCK_TIMEOUT_MS = 10_000

_HISTORY_CURSOR = re.compile(r"h:([1-9][0-9]{0,18})")
_AUDIT_CURSOR = re.compile(r"a:([1-9][0-9]{0,18})")


class _Account:
    """Mutable account state; only ever touched under ``MockDB._rw``."""

    __slots__ = ("balance", "held", "version")

    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.held = 0
        self.version = 0

    def view(self, username: str) -> AccountView:
        return AccountView(username, self.balance, self.version, self.held)

    def copy(self) -> _Account:
        twin = _Account(self.balance)
        twin.take(self)
        return twin

    def take(self, other: _Account) -> None:
        """Adopt another copy's state (an atomic batch writing back its result)."""
        self.balance = other.balance
        self.held = other.held
        self.version = other.version


class _AuditFields:
    """The ``from``/``to``/amount an operation's audit record will carry, filled in as found."""

    __slots__ = ("amount", "source", "target")

    def __init__(self, source: str | None, target: str | None, amount: int) -> None:
        self.source = source
        self.target = target
        self.amount = amount


class MockDB:
    """The embedded store: balances in a dict under a reader-writer lock."""

    def __init__(
        self,
        *,
        idempotency: IdempotencyTable | None = None,
        lock_trouble_after_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``lock_trouble_after_s``: a lock wait that times out after waiting at least
        this long marks health degraded (the app passes the default deadline, so a
        caller's own tight ``X-Timeout-Ms`` does not take the instance out of rotation).
        ``clock``: the wall clock that holds expire by (injectable for tests).
        """
        self._rw = rwlock.RWLockFair()
        self._accounts: dict[str, _Account] = {}
        self._holds = HoldBook()  # guarded by _rw, like the balances it reserves
        self._clock = clock
        self._sweeper = ExpirySweeper(self._sweep_due, clock=clock)

        self._credentials_lock = threading.Lock()
        self._credentials: dict[str, bytes] = {}

        self._audit_lock = threading.Lock()
        self._audit: list[Transaction] = []
        self._records_by_account: dict[str, list[int]] = {}
        self._last_hash = GENESIS_HASH
        # Health re-checks only the records it has not checked yet; a full
        # verification that failed marks the trail broken until the next one passes.
        self._chain_checked = 0
        self._chain_problem: str | None = None

        self._counters_lock = threading.Lock()
        self._operation_count = 0
        self._operations: dict[tuple[str, str], int] = {}
        self._lock_wait_buckets = [0] * (len(LOCK_WAIT_BUCKETS_S) + 1)
        self._lock_wait_sum_s = 0.0
        self._last_lock_timeout_at: float | None = None
        self._lock_trouble_after_s = lock_trouble_after_s
        self._accounts_seen = 0  # the last account count a metrics scrape saw
        self._started_at = time.monotonic()

        # Not ``or``: an empty table has len() == 0 and would be replaced.
        self._idempotency = idempotency if idempotency is not None else IdempotencyTable()

    # -- accounts -------------------------------------------------------------

    def is_empty(self) -> bool:
        with self._rw.gen_rlock():
            return not self._accounts

    def create_account(
        self, username: str, token_digest: bytes, balance: int, *, deadline: Deadline
    ) -> AccountView:
        def apply() -> AccountView:
            if username in self._accounts:
                raise AccountExists(f"Account {username} already exists.")
            if not 0 <= balance <= MAX_BALANCE:
                raise StoreInvariantBroken(f"opening balance {balance} out of range")
            account = _Account(balance)
            self._accounts[username] = account
            with self._credentials_lock:
                self._credentials[username] = token_digest
            return account.view(username)

        # The opening balance is audited like a deposit so that the audit trail alone
        # explains every coin in the ledger. A refused opening (the name is taken) is
        # audited too, but shown in nobody's history: it is not the holder's doing.
        return self._run_write(
            OperationType.OPEN, username, None, username, balance, deadline, apply, failure_parties=()
        ).account

    def token_digest(self, username: str) -> bytes | None:
        with self._credentials_lock:
            return self._credentials.get(username)

    def account(self, username: str, *, deadline: Deadline) -> AccountView:
        return self._read_after_expiry(
            username, deadline, "balance", lambda: self._existing(username).view(username)
        )

    def _read_after_expiry(self, username: str, deadline: Deadline, kind: str, read: Callable[[], T]) -> T:
        """``read`` under the read lock, once no hold of ``username`` is due.

        Whether a hold is due is checked under the same read lock as the read; only
        when one is does the read step aside, expire it under the write lock and try
        again (a second time nothing of this account can be due before the clock moves,
        and expiry is idempotent if it has).
        """
        for attempt in range(2):
            lock = self._rw.gen_rlock()
            waited_s = self._acquire(lock, deadline, kind)
            outcome = "success"
            try:
                if attempt == 0 and self._holds.due((username,), self._clock()):
                    outcome = "deferred"
                else:
                    return read()
            except LedgerError as error:
                outcome = error.code
                raise
            finally:
                lock.release()
                if outcome != "deferred":
                    self._count(kind, outcome, waited_s)
            self._expire_now((username,), deadline)
        raise StoreInvariantBroken("only the first read of an account may defer to expiry")

    # -- money ----------------------------------------------------------------

    def deposit(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        return self._run_one(username, BatchItem(OperationType.DEPOSIT, amount), deadline, expected_version)

    def withdraw(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        return self._run_one(
            username, BatchItem(OperationType.WITHDRAWAL, amount), deadline, expected_version
        )

    def transfer(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        return self._run_one(
            username, BatchItem(OperationType.TRANSFER, amount, target), deadline, expected_version
        )

    def batch(
        self,
        username: str,
        items: Sequence[BatchItem],
        *,
        atomic: bool,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> BatchResult:
        """Apply ``items`` in order under one write-lock acquisition.

        Not atomic: each item stands alone. Atomic: the items are first applied to
        copies of the accounts they touch; only if every one succeeds are the copies
        written back, otherwise nothing changes. Either way every item is audited,
        and all the batch's records are appended in one go, in item order.
        """
        _check_batch(items)
        lock = self._rw.gen_wlock()
        try:
            waited_s = self._acquire(lock, deadline, "batch")
        except OperationTimeout as error:
            self._append_items(username, items, [error] * len(items))
            raise
        failures: list[LedgerError | None] = []
        try:
            self._expire_due({username, *(item.target for item in items)})
            caller = self._existing(username)
            try:
                _check_version(caller, expected_version)
            except VersionConflict as error:
                failures = [error] * len(items)
                error.transaction = self._append_items(username, items, failures)[0]
                raise
            if atomic:
                failures, failed_index = self._apply_atomically(username, items)
            else:
                failures, failed_index = [self._apply_alone(username, item) for item in items], None
            records = self._append_items(username, items, failures)
            account = caller.view(username)
        finally:
            lock.release()
            self._count_items(items, failures, waited_s)
        outcomes = tuple(
            ItemOutcome(index, record)
            if failure is None
            else ItemOutcome(index, record, failure.status, failure.code, failure.message)
            for index, (record, failure) in enumerate(zip(records, failures, strict=True))
        )
        return BatchResult(outcomes, account, atomic, failed_index)

    def _run_one(
        self, username: str, item: BatchItem, deadline: Deadline, expected_version: int | None
    ) -> OperationResult:
        source, target = _roles(username, item)

        def apply() -> AccountView:
            self._expire_due((username, item.target))
            caller = self._existing(username)
            _check_version(caller, expected_version)
            _apply_item(self._accounts.get, username, item)
            return caller.view(username)

        return self._run_write(item.kind, username, source, target, item.amount, deadline, apply)

    def _apply_alone(self, username: str, item: BatchItem) -> LedgerError | None:
        try:
            _apply_item(self._accounts.get, username, item)
        except LedgerError as error:
            return error
        return None

    def _apply_atomically(
        self, username: str, items: Sequence[BatchItem]
    ) -> tuple[list[LedgerError | None], int | None]:
        copies: dict[str, _Account] = {}

        def copy_of(name: str) -> _Account | None:
            if name not in copies:
                account = self._accounts.get(name)
                if account is None:
                    return None
                copies[name] = account.copy()
            return copies[name]

        for index, item in enumerate(items):
            try:
                _apply_item(copy_of, username, item)
            except LedgerError as error:
                refused = BatchFailed(
                    f"Not applied: item {index} of this atomic batch failed ({error.code})."
                )
                failures: list[LedgerError | None] = [refused] * len(items)
                failures[index] = error
                return failures, index
        for name, copy in copies.items():
            self._accounts[name].take(copy)
        return [None] * len(items), None

    # -- holds ----------------------------------------------------------------

    def create_hold(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        timeout_s: int,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> HoldResult:
        """Reserve ``amount`` of the caller's available money for ``target``."""
        if not 1 <= amount <= MAX_AMOUNT:
            raise InvalidInput("invalid_amount", f"The amount must be from 1 to {MAX_AMOUNT}.")
        if not MIN_HOLD_TIMEOUT_S <= timeout_s <= MAX_HOLD_TIMEOUT_S:
            raise InvalidInput("invalid_timeout", "timeout_s is out of range.")
        hold_id = new_id("hold_")

        def apply(audit: _AuditFields) -> tuple[AccountView, HoldState]:
            audit.target = target
            self._expire_due((username, target))
            caller = self._existing(username)
            _check_version(caller, expected_version)
            if target not in self._accounts:
                raise AccountNotFound(f"Account {target} does not exist.")
            if target == username:
                raise InvalidInput("same_account", "The payer and the payee are the same account.")
            _check_funds(username, caller, amount)
            caller.held += amount
            caller.version += 1
            _check_account(username, caller)
            state = HoldState(hold_id, username, target, amount, self._clock() + timeout_s, utc_now_iso())
            self._holds.add(state)
            return caller.view(username), state

        result = self._run_hold(OperationType.HOLD, username, amount, deadline, apply, target=target)
        self._sweeper.schedule(self._clock() + timeout_s, hold_id)
        return result

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
        if amount is not None and not 1 <= amount <= MAX_AMOUNT:
            raise InvalidInput("invalid_amount", f"The amount must be from 1 to {MAX_AMOUNT}.")

        def apply(audit: _AuditFields) -> tuple[AccountView, HoldState]:
            state = self._pending_hold_of(username, hold_id, audit, expected_version)
            captured = state.amount if amount is None else amount
            audit.amount = captured
            if captured > state.amount:
                raise InvalidInput(
                    "invalid_amount", f"The hold is for {state.amount} coins, {captured} requested."
                )
            source, target = self._accounts[state.source], self._accounts[state.target]
            _check_credit(state.target, target, captured)
            source.held -= state.amount
            source.balance -= captured
            source.version += 1
            target.balance += captured
            target.version += 1
            _check_account(state.source, source)
            self._holds.settle(state, HoldStatus.CAPTURED, captured)
            return self._accounts[username].view(username), state

        return self._run_hold(OperationType.CAPTURE, username, amount or 0, deadline, apply)

    def void_hold(
        self, username: str, hold_id: str, *, deadline: Deadline, expected_version: int | None = None
    ) -> HoldResult:
        """Release the whole of a pending hold."""

        def apply(audit: _AuditFields) -> tuple[AccountView, HoldState]:
            state = self._pending_hold_of(username, hold_id, audit, expected_version)
            self._release(state, HoldStatus.VOIDED)
            return self._accounts[username].view(username), state

        return self._run_hold(OperationType.VOID, username, 0, deadline, apply)

    def get_hold(self, username: str, hold_id: str, *, deadline: Deadline) -> Hold:
        def read() -> Hold:
            state = self._holds.get(hold_id)
            if state is None or username not in (state.source, state.target):
                raise HoldNotFound(f"No hold {hold_id} of yours.")
            return state.view()

        return self._read_after_expiry(username, deadline, "hold_read", read)

    def sweep_expired(self, *, deadline: Deadline) -> int:
        """Expire every pending hold whose time is up; how many were."""
        lock = self._rw.gen_wlock()
        self._acquire(lock, deadline, OperationType.EXPIRE.value)
        try:
            return self._expire(self._holds.all_due(self._clock()))
        finally:
            lock.release()

    def close(self) -> None:
        """Stop the background sweeper (the ledger itself needs no closing)."""
        self._sweeper.stop()

    def _sweep_due(self, hold_ids: list[str]) -> None:
        """The sweeper's pass: expire these holds if still pending and due.

        Looks up only the given ids (no scan of every pending hold under the write
        lock). A hold that is not due after all, because the wall clock stepped back, is
        scheduled again, so that the sweeper cannot lose it.
        """
        lock = self._rw.gen_wlock()
        self._acquire(lock, Deadline.after_ms(SWEEP_LOCK_TIMEOUT_MS), OperationType.EXPIRE.value)
        try:
            now_s = self._clock()
            pending = [
                state
                for state in (self._holds.get(hold_id) for hold_id in hold_ids)
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

    def _pending_hold_of(
        self, username: str, hold_id: str, audit: _AuditFields, expected_version: int | None
    ) -> HoldState:
        """The caller's pending hold; ``expected_version`` (If-Match) is the caller's account's."""
        state = self._holds.get(hold_id)
        if state is None or username not in (state.source, state.target):
            raise HoldNotFound(f"No hold {hold_id} of yours.")
        audit.source, audit.target = state.source, state.target
        audit.amount = state.amount
        self._expire_due((state.source, state.target))
        if state.status is not HoldStatus.PENDING:
            raise HoldNotPending(f"The hold is {state.status.value}, no longer PENDING.")
        _check_version(self._accounts[username], expected_version)
        return state

    def _release(self, state: HoldState, status: HoldStatus) -> None:
        source = self._accounts[state.source]
        source.held -= state.amount
        source.version += 1
        _check_account(state.source, source)
        self._holds.settle(state, status)

    def _expire_due(self, names: Iterable[str | None]) -> int:
        """Expire what is due among these accounts' holds (the caller holds the write lock)."""
        return self._expire(self._holds.due(names, self._clock()))

    def _expire(self, states: Sequence[HoldState]) -> int:
        for state in states:
            self._release(state, HoldStatus.EXPIRED)
            parties = (state.source, state.target)
            self._append(OperationType.EXPIRE, state.source, state.target, state.amount, parties, None)
            self._count(OperationType.EXPIRE.value, "success", 0.0)
        return len(states)

    def _expire_now(self, names: tuple[str, ...], deadline: Deadline) -> None:
        lock = self._rw.gen_wlock()
        self._acquire(lock, deadline, OperationType.EXPIRE.value)
        try:
            self._expire_due(names)
        finally:
            lock.release()

    def _run_hold(
        self,
        kind: OperationType,
        username: str,
        amount: int,
        deadline: Deadline,
        apply: Callable[[_AuditFields], tuple[AccountView, HoldState]],
        target: str | None = None,
    ) -> HoldResult:
        """``_run_audited`` for hold operations, whose parties are known only once found."""
        audit = _AuditFields(username, target, amount)

        def apply_and_copy() -> tuple[AccountView, Hold]:
            account, state = apply(audit)
            return account, state.view()  # copied under the lock

        (account, hold), record = self._run_audited(
            kind, username, audit, deadline, apply_and_copy, (username,)
        )
        return HoldResult(hold, account, record)

    # -- history --------------------------------------------------------------

    def history(self, username: str, *, limit: int, cursor: str | None) -> Page:
        if limit < 1:
            raise InvalidInput("invalid_limit", "The limit must be at least 1.")
        before = None if cursor is None else _decode_cursor(cursor, _HISTORY_CURSOR)
        with self._audit_lock:
            sequences = self._records_by_account.get(username, [])
            end = len(sequences) if before is None else bisect.bisect_left(sequences, before)
            start = max(0, end - limit)
            chosen = sequences[start:end]
            records = tuple(self._audit[sequence - 1] for sequence in reversed(chosen))
        next_cursor = _encode_cursor("h", chosen[0]) if start > 0 else None
        return Page(records, next_cursor)

    # -- audit ----------------------------------------------------------------

    def audit_page(self, *, limit: int, cursor: str | None) -> Page:
        if limit < 1:
            raise InvalidInput("invalid_limit", "The limit must be at least 1.")
        after = 0 if cursor is None else _decode_cursor(cursor, _AUDIT_CURSOR)
        with self._audit_lock:
            records = tuple(self._audit[after : after + limit])
            more = after + limit < len(self._audit)
        next_cursor = _encode_cursor("a", records[-1].sequence) if more and records else None
        return Page(records, next_cursor)

    def verify(self) -> Verification:
        # A consistent snapshot under both locks (in order), checked outside them:
        # records are immutable, so copying the list is enough.
        lock = self._rw.gen_rlock()
        self._acquire(lock, Deadline.after_ms(VERIFY_LOCK_TIMEOUT_MS), "verify")
        try:
            accounts = {
                name: AccountSnapshot(account.balance, account.held)
                for name, account in self._accounts.items()
            }
            holds = self._holds.snapshot()
            with self._audit_lock:
                records = list(self._audit)
        finally:
            lock.release()
        report = verify_ledger(accounts, records, holds)
        with self._audit_lock:
            self._chain_problem = None if report.ok else report.problems[0]
        return report

    # -- idempotency ----------------------------------------------------------

    def idempotent(
        self,
        username: str,
        key: str,
        fingerprint: str,
        deadline: Deadline,
        operation: Callable[[], Result],
    ) -> Outcome:
        return self._idempotency.run(username, key, fingerprint, deadline, operation)

    # -- health ---------------------------------------------------------------

    def health(self) -> Health:
        # Each lock is taken alone and in the documented order.
        probe = self._rw.gen_rlock()
        database_ok = probe.acquire(blocking=True, timeout=1.0)
        if database_ok:
            probe.release()
        audit_ok = self._check_new_records()
        with self._counters_lock:
            operation_count = self._operation_count
            last_timeout = self._last_lock_timeout_at
        now = time.monotonic()
        return Health(
            uptime_seconds=now - self._started_at,
            operation_count=operation_count,
            database=database_ok,
            audit_log=audit_ok,
            performance=last_timeout is None or now - last_timeout > LOCK_TROUBLE_WINDOW_S,
        )

    def stats(self) -> Stats:
        # A scrape must not hang behind a wedged writer: after a bounded wait it
        # reports the account count it saw last.
        probe = self._rw.gen_rlock()
        accounts: int | None = None
        if probe.acquire(blocking=True, timeout=STATS_LOCK_TIMEOUT_S):
            try:
                accounts = len(self._accounts)
            finally:
                probe.release()
        with self._audit_lock:
            audit_records = len(self._audit)
        with self._counters_lock:
            if accounts is not None:
                self._accounts_seen = accounts
            accounts = self._accounts_seen
            operations = dict(self._operations)
            buckets = tuple(self._lock_wait_buckets)
            wait_sum_s = self._lock_wait_sum_s
        cumulative = []
        running = 0
        for count in buckets:
            running += count
            cumulative.append(running)
        return Stats(
            operations=operations,
            lock_wait_buckets=tuple(cumulative),
            lock_wait_sum_s=wait_sum_s,
            accounts=accounts,
            audit_records=audit_records,
            idempotency_keys=len(self._idempotency),
        )

    def _check_new_records(self) -> bool:
        """Check the stretch of the chain appended since the last check (health's share)."""
        with self._audit_lock:
            start = self._chain_checked
            fresh = self._audit[start:]
            previous_hash = self._audit[start - 1].hash if start else GENESIS_HASH
        problems = check_chain(fresh, previous_hash, start + 1)
        with self._audit_lock:
            if problems:
                self._chain_problem = problems[0]
            elif self._chain_checked == start:
                self._chain_checked = start + len(fresh)
            return self._chain_problem is None

    # -- internals ------------------------------------------------------------

    def _existing(self, username: str) -> _Account:
        account = self._accounts.get(username)
        if account is None:
            raise AccountNotFound(f"Account {username} does not exist.")
        return account

    def _acquire(self, lock: rwlock.Lockable, deadline: Deadline, kind: str) -> float:
        """Take ``lock`` within the deadline; the seconds waited, or ``OperationTimeout``."""
        started = time.perf_counter()
        if lock.acquire(blocking=True, timeout=deadline.remaining_s()):
            return time.perf_counter() - started
        waited_s = time.perf_counter() - started
        if waited_s >= self._lock_trouble_after_s:
            with self._counters_lock:
                self._last_lock_timeout_at = time.monotonic()
        self._count(kind, OperationTimeout.code, waited_s)
        raise OperationTimeout("The operation could not finish within its deadline.")

    def _run_write(
        self,
        kind: OperationType,
        username: str,
        source: str | None,
        target: str | None,
        amount: int,
        deadline: Deadline,
        apply: Callable[[], AccountView],
        failure_parties: tuple[str, ...] | None = None,
    ) -> OperationResult:
        """``_run_audited`` for operations whose ``from``/``to``/amount are known up front.

        A failure is shown in the history of ``failure_parties`` (default: the caller
        alone, never a recipient who had no part in it).
        """
        if kind is not OperationType.OPEN and not 1 <= amount <= MAX_AMOUNT:
            # The web layer validates amounts; the core checks again rather than trust it.
            raise InvalidInput("invalid_amount", f"The amount must be from 1 to {MAX_AMOUNT}.")
        failed_for = (username,) if failure_parties is None else failure_parties
        audit = _AuditFields(source, target, amount)
        account, record = self._run_audited(kind, username, audit, deadline, apply, failed_for)
        return OperationResult(record, account)

    def _run_audited(
        self,
        kind: OperationType,
        username: str,
        audit: _AuditFields,
        deadline: Deadline,
        apply: Callable[[], T],
        failed_for: tuple[str, ...],
    ) -> tuple[T, Transaction]:
        """Run ``apply`` under the write lock and audit the outcome either way.

        ``audit`` holds the record's ``from``/``to``/amount; ``apply`` may fill them
        in as it finds them. A timeout applied nothing, so its record needs only the
        audit lock. ``apply`` must copy out whatever it returns: it runs under the lock.
        """
        lock = self._rw.gen_wlock()
        try:
            waited_s = self._acquire(lock, deadline, kind.value)
        except OperationTimeout as error:
            error.transaction = self._append(
                kind, audit.source, audit.target, audit.amount, failed_for, error.code
            )
            raise
        outcome = "success"
        try:
            try:
                result = apply()
            except LedgerError as error:
                outcome = error.code
                error.transaction = self._append(
                    kind, audit.source, audit.target, audit.amount, failed_for, error.code
                )
                raise
            parties = tuple(name for name in (audit.source, audit.target) if name is not None)
            record = self._append(kind, audit.source, audit.target, audit.amount, parties, None)
        finally:
            lock.release()
            self._count(kind.value, outcome, waited_s)
        return result, record

    def _append(
        self,
        kind: OperationType,
        source: str | None,
        target: str | None,
        amount: int,
        parties: tuple[str, ...],
        failure: str | None,
    ) -> Transaction:
        """Append one chained audit record; ``parties`` are the accounts whose history shows it."""
        transaction_id = new_id("tx_")
        created_at = utc_now_iso()
        status = Status.SUCCESS if failure is None else Status.FAILED
        with self._audit_lock:
            return self._chain(
                transaction_id, kind, source, target, amount, status, failure, created_at, parties
            )

    def _chain(
        self,
        transaction_id: str,
        kind: OperationType,
        source: str | None,
        target: str | None,
        amount: int,
        status: Status,
        reason: str | None,
        created_at: str,
        parties: tuple[str, ...],
    ) -> Transaction:
        """Seal the next record onto the chain and index it (the caller holds ``_audit_lock``)."""
        record = sealed_record(
            self._last_hash,
            len(self._audit) + 1,
            transaction_id,
            kind,
            source,
            target,
            amount,
            status,
            reason,
            created_at,
        )
        self._audit.append(record)
        self._last_hash = record.hash
        for name in parties:
            self._records_by_account.setdefault(name, []).append(record.sequence)
        return record

    def _count(self, kind: str, outcome: str, lock_wait_s: float) -> None:
        bucket = bisect.bisect_left(LOCK_WAIT_BUCKETS_S, lock_wait_s)
        with self._counters_lock:
            self._operation_count += 1
            self._operations[(kind, outcome)] = self._operations.get((kind, outcome), 0) + 1
            self._lock_wait_buckets[bucket] += 1
            self._lock_wait_sum_s += lock_wait_s

    def _append_items(
        self, username: str, items: Sequence[BatchItem], failures: Sequence[LedgerError | None]
    ) -> list[Transaction]:
        """Audit a batch's items in one critical section, in item order, one timestamp."""
        created_at = utc_now_iso()
        entries: list[tuple[BatchItem, str | None, str | None, Status, str | None, tuple[str, ...]]] = []
        for item, failure in zip(items, failures, strict=True):
            source, target = _roles(username, item)
            if failure is None:
                parties = tuple(name for name in (source, target) if name is not None)
                entries.append((item, source, target, Status.SUCCESS, None, parties))
            else:
                entries.append((item, source, target, Status.FAILED, failure.code, (username,)))
        ids = [new_id("tx_") for _ in entries]
        records = []
        with self._audit_lock:
            for transaction_id, (item, source, target, status, reason, parties) in zip(
                ids, entries, strict=True
            ):
                records.append(
                    self._chain(
                        transaction_id,
                        item.kind,
                        source,
                        target,
                        item.amount,
                        status,
                        reason,
                        created_at,
                        parties,
                    )
                )
        return records

    def _count_items(
        self, items: Sequence[BatchItem], failures: Sequence[LedgerError | None], lock_wait_s: float
    ) -> None:
        """Count a batch: one operation per item, one lock wait for the whole batch."""
        bucket = bisect.bisect_left(LOCK_WAIT_BUCKETS_S, lock_wait_s)
        with self._counters_lock:
            for item, failure in zip(items, failures, strict=False):
                key = (item.kind.value, "success" if failure is None else failure.code)
                self._operations[key] = self._operations.get(key, 0) + 1
            self._operation_count += len(items)
            self._lock_wait_buckets[bucket] += 1
            self._lock_wait_sum_s += lock_wait_s


def _check_version(account: _Account, expected_version: int | None) -> None:
    if expected_version is not None and account.version != expected_version:
        raise VersionConflict(f"The account is at version {account.version}, not {expected_version}.")


def _check_funds(username: str, account: _Account, amount: int) -> None:
    available = account.balance - account.held
    if amount > available:
        raise InsufficientFunds(f"{username} has {available} coins, {amount} requested")


def _check_credit(username: str, account: _Account, amount: int) -> None:
    if account.balance > MAX_BALANCE - amount:
        raise BalanceOverflow(f"Crediting {amount} coins would overflow the balance of {username}.")


def _check_account(username: str, account: _Account) -> None:
    """The invariants every account keeps after every change."""
    if account.balance < 0 or account.held < 0 or account.held > account.balance:
        raise StoreInvariantBroken(
            f"account {username} broke an invariant: balance {account.balance}, held {account.held}"
        )


def _roles(username: str, item: BatchItem) -> tuple[str | None, str | None]:
    """The contract's ``from`` and ``to`` of an item acting on ``username``'s account."""
    if item.kind is OperationType.DEPOSIT:
        return None, username
    if item.kind is OperationType.WITHDRAWAL:
        return username, None
    return username, item.target


def _apply_item(lookup: Callable[[str], _Account | None], username: str, item: BatchItem) -> None:
    """Check, then apply, one money operation; a failing check raises before any change."""
    caller = lookup(username)
    if caller is None:
        raise AccountNotFound(f"Account {username} does not exist.")
    amount = item.amount
    if item.kind is OperationType.DEPOSIT:
        _check_credit(username, caller, amount)
        caller.balance += amount
        caller.version += 1
        return
    if item.kind is OperationType.WITHDRAWAL:
        _check_funds(username, caller, amount)
        caller.balance -= amount
        caller.version += 1
        _check_account(username, caller)
        return
    if item.kind is not OperationType.TRANSFER or item.target is None:
        raise StoreInvariantBroken(f"not a money operation: {item}")
    target = lookup(item.target)
    if target is None:
        raise AccountNotFound(f"Account {item.target} does not exist.")
    if target is caller:
        raise InvalidInput("same_account", "Cannot transfer to the same account.")
    _check_funds(username, caller, amount)
    _check_credit(item.target, target, amount)
    caller.balance -= amount
    caller.version += 1
    target.balance += amount
    target.version += 1
    _check_account(username, caller)


_MONEY_OPERATIONS = (OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER)


def _check_batch(items: Sequence[BatchItem]) -> None:
    """The core checks again what the web layer validated, rather than trust it."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise InvalidInput("invalid_batch", f"A batch holds 1 to {MAX_BATCH_ITEMS} operations.")
    for index, item in enumerate(items):
        if item.kind not in _MONEY_OPERATIONS or (item.kind is OperationType.TRANSFER) != (
            item.target is not None
        ):
            raise InvalidInput(
                "invalid_batch", f"Operation {index} is not a deposit, withdrawal or transfer."
            )
        if not 1 <= item.amount <= MAX_AMOUNT:
            raise InvalidInput(
                "invalid_amount", f"Operation {index}: the amount must be from 1 to {MAX_AMOUNT}."
            )


def _encode_cursor(prefix: str, sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{sequence}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, pattern: re.Pattern[str]) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.") from None
    match = pattern.fullmatch(text)
    if match is None:
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.")
    return int(match.group(1))
