"""``MockDB``: the public operations of the embedded store, and the order of its locks.

See the package docstring (``app.ledger.memory``) for the locks and the durability
guarantees. Every rule an operation applies is ``app.ledger.rules``'; this module
decides what runs under which lock, what is audited and what is journaled.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from readerwriterlock import rwlock

from app.ledger import rules
from app.ledger.accounts import AccountState, HoldState
from app.ledger.audit import AccountSnapshot, Verification, verify_ledger
from app.ledger.counters import OperationCounters
from app.ledger.errors import (
    AccountExists,
    LedgerError,
    OperationTimeout,
    StorageUnavailable,
    StoreInvariantBroken,
    VersionConflict,
)
from app.ledger.memory import journal as journal_files
from app.ledger.memory import recovery
from app.ledger.memory.durability import (
    CLAIM,
    DEFAULT_SNAPSHOT_BYTES,
    Claim,
    Durability,
    OutcomeOf,
    SnapshotReport,
    SnapshotState,
)
from app.ledger.memory.holds import ExpirySweeper, HoldBook
from app.ledger.memory.journal import Journal
from app.ledger.memory.keys import IdempotencyTable
from app.ledger.memory.persistence import snapshot_record_row
from app.ledger.memory.trail import AuditTrail
from app.ledger.model import (
    MAX_BALANCE,
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
    Transaction,
    new_id,
    utc_now_iso,
)
from app.ledger.outcomes import Outcome, Result, outcome_row
from app.ledger.records import RecordDraft
from app.ledger.store import Health, Stats

T = TypeVar("T")
R = TypeVar("R", bound=OperationResult | HoldResult)
P = ParamSpec("P")

_log = logging.getLogger("goledger.store")

#: How long the hold sweeper may wait for the balance lock on one pass.
SWEEP_LOCK_TIMEOUT_MS = 1000
#: How long a metrics scrape may wait for the balance lock.
STATS_LOCK_TIMEOUT_S = 0.5
#: How long ``verify`` may wait for the balance lock.
VERIFY_LOCK_TIMEOUT_MS = 10_000
#: How long a snapshot may wait for the balance lock.
SNAPSHOT_LOCK_TIMEOUT_MS = 30_000


def _durable(method: Callable[Concatenate[MockDB, P], T]) -> Callable[Concatenate[MockDB, P], T]:
    """A write method that returns (or raises) only once its journal entries are durable."""

    @functools.wraps(method)
    def wrapper(self: MockDB, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._durability.start_write()
        try:
            return method(self, *args, **kwargs)
        finally:
            self._await_written()

    return wrapper


class MockDB:
    """The embedded store: balances in a dict under a reader-writer lock."""

    def __init__(
        self,
        *,
        idempotency: IdempotencyTable | None = None,
        lock_trouble_after_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """An empty ledger in memory only (``MockDB.open`` gives one with a journal).

        ``lock_trouble_after_s``: a lock wait that times out after waiting at least
        this long marks health degraded (the app passes the default deadline, so a
        caller's own tight ``X-Timeout-Ms`` does not take the instance out of rotation).
        ``clock``: the wall clock that holds expire by (injectable for tests).
        """
        self._rw = rwlock.RWLockFair()
        self._accounts: dict[str, AccountState] = {}  # under _rw
        self._holds = HoldBook()  # under _rw, like the balances it reserves
        self._clock = clock
        self._sweeper = ExpirySweeper(self._sweep_due, clock=clock)
        self._credentials_lock = threading.Lock()
        self._credentials: dict[str, bytes] = {}  # under _credentials_lock
        self._trail = AuditTrail()
        self._counters = OperationCounters()
        self._lock_trouble_after_s = lock_trouble_after_s
        self._seen_lock = threading.Lock()
        self._accounts_seen = 0  # the last account count a metrics scrape saw (under _seen_lock)
        # Not ``or``: an empty table has len() == 0 and would be replaced.
        self._keys = idempotency if idempotency is not None else IdempotencyTable()
        self._durability = Durability(self._keys)
        self.recovery: journal_files.Recovered | None = None
        #: The hash check of a trail read from disk, running from ``open`` on.
        self.chain_check: threading.Thread | None = None

    # -- opening a data directory --------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES,
        read_only: bool = False,
        sync: Callable[[int], None] | None = None,
        write: Callable[[int, memoryview], int] | None = None,
        **options: Any,
    ) -> MockDB:
        """The ledger kept in ``data_dir``: its snapshot and journal replayed, then journaling.

        Takes the directory's lock for as long as the store lives (``DataDirLocked`` if
        another process holds it). A torn tail is cut off and logged; any other damage
        raises ``JournalCorrupt``. ``read_only`` (offline verification): nothing on disk
        is changed, a torn tail is only reported, and every write is refused.
        ``snapshot_bytes``: snapshot automatically once the current journal segment
        grows past this many bytes (0: never). ``sync``/``write``: the system calls the
        journal uses (tests inject failing ones).
        """
        directory = journal_files.DataDirectory(Path(data_dir), create=not read_only)
        try:
            store = cls(**options)
            durability = store._durability
            durability.directory = directory
            with recovery.collector_paused():
                recovered = journal_files.read_directory(directory.path, recovery.snapshot_lsn)
                store.recovery = recovered
                store._restore(recovered)
                last_lsn = recovered.last_lsn
                recovered.release_frames()
            if read_only:
                durability.refusal = f"{data_dir} is open read-only (offline verification)"
                return store  # ``verify`` checks the whole chain itself
            if recovered.torn is not None:
                journal_files.cut_torn_tail(recovered.torn)
            # What a crash between a snapshot's rename and its clean-up left behind.
            journal_files.remove_before(directory.path, recovered.first_segment)
            durability.journal = Journal(
                directory.path, recovered.last_segment, last_lsn, len(store._trail), sync=sync, write=write
            )
            durability.snapshot_bytes = snapshot_bytes
        except BaseException:
            directory.release()
            raise
        store._check_chain_in_background()
        return store

    def _restore(self, recovered: journal_files.Recovered) -> None:
        """Adopt what the data directory holds (before the store is shared)."""
        state = recovery.load(recovered, self._keys)
        self._accounts = state.accounts
        self._credentials = state.credentials
        self._holds = state.holds
        self._trail.restore(state.audit, state.records_by_account, state.last_hash)
        now_s = self._clock()
        for hold in self._holds.pending():
            self._sweeper.schedule(max(hold.expires_at_s, now_s), hold.id)

    def _check_chain_in_background(self) -> None:
        """Hash-check the trail read from disk while the ledger already serves.

        Replay checks every record's place in the chain; recomputing every hash
        (a second per million records) is health's incremental check, started here
        at once instead of at the first probe. A broken record marks the trail
        broken: health answers 503 and ``verify`` lists it.
        """

        def check() -> None:
            if not self._trail.check_new_records(wait=True):
                _log.error("the audit trail read from disk is broken: %s", self._trail.problem)

        self.chain_check = threading.Thread(target=check, name="goledger-chain-check", daemon=True)
        self.chain_check.start()

    # -- durability -----------------------------------------------------------

    def _await_written(self) -> None:
        if self._durability.await_written():
            self._durability.snapshot_in_background(self._capture_snapshot)

    def snapshot(self) -> SnapshotReport:
        """Write the whole state to a snapshot and delete the journal it makes redundant.

        Writers pause while the state is copied (under the write lock, then the audit
        trail's lock, then the idempotency table's); the file is written after every
        lock is released.
        """
        return self._durability.snapshot(self._capture_snapshot)

    def _capture_snapshot(self, journal: Journal) -> SnapshotState:
        lock = self._rw.gen_wlock()
        self._acquire(lock, Deadline.after_ms(SNAPSHOT_LOCK_TIMEOUT_MS), "snapshot")
        try:

            def at_the_same_instant() -> tuple[int, int, list[Any], list[Any], list[Any]]:
                self._durability.check_writable()
                number = journal.rotate()
                accounts = [
                    [name, account.balance, account.held, account.version, self._credentials[name].hex()]
                    for name, account in self._accounts.items()
                ]
                keys = [
                    [username, key, fingerprint, created_at, outcome_row(outcome)]
                    for username, key, fingerprint, created_at, outcome in self._keys.kept()
                ]
                holds = [state.row() for state in self._holds.all()]
                return number, journal.appended_lsn, accounts, holds, keys

            trail, (number, lsn, accounts, holds, keys) = self._trail.copy(at_the_same_instant)
        finally:
            lock.release()
        header = {"lsn": lsn, "segment": number, "records": len(trail.records), "last_hash": trail.last_hash}
        sections: list[tuple[str, Sequence[Any]]] = [
            ("accounts", accounts),
            ("holds", holds),
            ("records", [snapshot_record_row(record) for record in trail.records]),
            ("index", [[name, sequences] for name, sequences in trail.index.items()]),
            ("keys", keys),
        ]
        return SnapshotState(lsn, number, header, sections, len(trail.records), len(accounts))

    @property
    def snapshot_thread(self) -> threading.Thread | None:
        """The automatic snapshot's thread, once one has started."""
        return self._durability.snapshot_thread

    # -- accounts -------------------------------------------------------------

    def is_empty(self) -> bool:
        with self._rw.gen_rlock():
            return not self._accounts

    @_durable
    def create_account(
        self, username: str, token_digest: bytes, balance: int, *, deadline: Deadline
    ) -> AccountView:
        def apply(_: RecordDraft) -> AccountView:
            if username in self._accounts:
                raise AccountExists(f"Account {username} already exists.")
            if not 0 <= balance <= MAX_BALANCE:
                raise StoreInvariantBroken(f"opening balance {balance} out of range")
            account = AccountState(username, balance)
            self._accounts[username] = account
            with self._credentials_lock:
                self._credentials[username] = token_digest
            return account.view()

        # The opening balance is audited like a deposit so that the audit trail alone
        # explains every coin in the ledger. A refused opening (the name is taken) is
        # audited too, but shown in nobody's history: it is not the holder's doing.
        draft = RecordDraft(OperationType.OPEN, None, username, balance)
        return self._write(
            username,
            draft,
            deadline,
            apply,
            OperationResult,
            failed_for=(),
            credential=(username, token_digest),
        ).account

    def token_digest(self, username: str) -> bytes | None:
        with self._credentials_lock:
            return self._credentials.get(username)

    def account(self, username: str, *, deadline: Deadline) -> AccountView:
        def read() -> tuple[AccountView, int]:
            account = rules.existing(self._accounts.get, username)
            return account.view(), account.lsn

        return self._read_after_expiry(username, deadline, "balance", read)

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
                    and self._holds.due((username,), self._clock())
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

    # -- money ----------------------------------------------------------------

    @_durable
    def deposit(
        self, username: str, amount: int, *, deadline: Deadline, expected_version: int | None = None
    ) -> OperationResult:
        return self._run_one(username, BatchItem(OperationType.DEPOSIT, amount), deadline, expected_version)

    @_durable
    def withdraw(
        self, username: str, amount: int, *, deadline: Deadline, expected_version: int | None = None
    ) -> OperationResult:
        return self._run_one(
            username, BatchItem(OperationType.WITHDRAWAL, amount), deadline, expected_version
        )

    @_durable
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

    def _run_one(
        self, username: str, item: BatchItem, deadline: Deadline, expected_version: int | None
    ) -> OperationResult:
        rules.check_amount(item.amount)

        def apply(_: RecordDraft) -> AccountView:
            self._expire_due((username, item.target))
            rules.check_version(rules.existing(self._accounts.get, username), expected_version)
            rules.apply_item(self._accounts.get, username, item)
            return self._accounts[username].view()

        draft = RecordDraft(item.kind, *rules.roles(username, item), item.amount)
        return self._write(username, draft, deadline, apply, OperationResult)

    @_durable
    def batch(
        self,
        username: str,
        items: Sequence[BatchItem],
        *,
        atomic: bool,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> BatchResult:
        """Apply ``items`` in order under one write-lock acquisition (``rules.apply_batch``).

        Either way every item is audited, and all the batch's records are appended in
        one go, in item order, with one journal entry.
        """
        rules.check_batch(items)
        drafts = [RecordDraft(item.kind, *rules.roles(username, item), item.amount) for item in items]
        lock = self._rw.gen_wlock()
        try:
            waited_s = self._acquire(lock, deadline, "batch")
        except OperationTimeout as error:
            self._durability.check_writable()  # a failed journal keeps no record, not even of a timeout
            self._append([draft.failed(error.code, (username,)) for draft in drafts])
            raise
        failures: list[LedgerError | None] = []
        try:
            self._durability.check_writable()
            self._expire_due({username, *(item.target for item in items)})
            caller = rules.existing(self._accounts.get, username)
            try:
                rules.check_version(caller, expected_version)
            except VersionConflict as error:
                failures = [error] * len(items)
                refused = [draft.failed(error.code, (username,)) for draft in drafts]
                error.transaction = self._append(refused, outcome=_failure_outcome(error))[0]
                raise
            failures, failed_index = rules.apply_batch(self._accounts.get, username, items, atomic=atomic)
            account = caller.view()
            final = [
                draft if failure is None else draft.failed(failure.code, (username,))
                for draft, failure in zip(drafts, failures, strict=True)
            ]
            changed = dict.fromkeys(
                name for draft in final if draft.reason is None for name in draft.shown_to()
            )
            records = self._append(
                final,
                accounts=changed,
                outcome=lambda records: _batch_result(records, failures, account, atomic, failed_index),
            )
        finally:
            lock.release()
            self._count_items(items, failures, waited_s)
        return _batch_result(records, failures, account, atomic, failed_index)

    # -- holds ----------------------------------------------------------------

    @_durable
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
        rules.check_amount(amount)
        rules.check_hold_timeout(timeout_s)
        hold_id = new_id("hold_")

        def apply(_: RecordDraft) -> tuple[AccountView, Hold]:
            self._expire_due((username, target))
            caller = rules.reserve(self._accounts.get, username, target, amount, expected_version)
            state = HoldState(hold_id, username, target, amount, self._clock() + timeout_s, utc_now_iso())
            self._holds.add(state)
            return caller.view(), state.view()

        draft = RecordDraft(OperationType.HOLD, username, target, amount)
        result = self._write(username, draft, deadline, apply, _hold_result)
        self._sweeper.schedule(self._clock() + timeout_s, hold_id)
        return result

    @_durable
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
        if amount is not None:
            rules.check_amount(amount)

        def apply(draft: RecordDraft) -> tuple[AccountView, Hold]:
            state = self._pending_hold_of(username, hold_id, draft, expected_version)
            draft.amount = state.amount if amount is None else amount
            rules.capture(self._accounts.get, state, amount)
            self._holds.resolved(state)
            return self._accounts[username].view(), state.view()

        draft = RecordDraft(OperationType.CAPTURE, username, None, amount or 0)
        return self._write(username, draft, deadline, apply, _hold_result)

    @_durable
    def void_hold(
        self, username: str, hold_id: str, *, deadline: Deadline, expected_version: int | None = None
    ) -> HoldResult:
        """Release the whole of a pending hold."""

        def apply(draft: RecordDraft) -> tuple[AccountView, Hold]:
            state = self._pending_hold_of(username, hold_id, draft, expected_version)
            rules.release(self._accounts[state.source], state, HoldStatus.VOIDED)
            self._holds.resolved(state)
            return self._accounts[username].view(), state.view()

        draft = RecordDraft(OperationType.VOID, username, None, 0)
        return self._write(username, draft, deadline, apply, _hold_result)

    def _pending_hold_of(
        self, username: str, hold_id: str, draft: RecordDraft, expected_version: int | None
    ) -> HoldState:
        """The caller's hold, its due holds expired first; ``rules.check_pending`` passed."""
        state = rules.check_hold_of(self._holds.get(hold_id), username, hold_id)
        draft.source, draft.target, draft.amount = state.source, state.target, state.amount
        self._expire_due((state.source, state.target))
        rules.check_pending(self._accounts.get, state, username, expected_version)
        return state

    def get_hold(self, username: str, hold_id: str, *, deadline: Deadline) -> Hold:
        def read() -> tuple[Hold, int]:
            state = rules.check_hold_of(self._holds.get(hold_id), username, hold_id)
            # Every change of a hold changes its payer's account, a capture the payee's too.
            lsn = max(self._accounts[state.source].lsn, self._accounts[state.target].lsn)
            return state.view(), lsn

        return self._read_after_expiry(username, deadline, "hold_read", read)

    @_durable
    def sweep_expired(self, *, deadline: Deadline) -> int:
        """Expire every pending hold whose time is up; how many were."""
        lock = self._rw.gen_wlock()
        self._acquire(lock, deadline, OperationType.EXPIRE.value)
        try:
            self._durability.check_writable()
            return self._expire(self._holds.all_due(self._clock()))
        finally:
            lock.release()

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
        self._await_written()

    def _expire_due(self, names: Iterable[str | None]) -> int:
        """Expire what is due among these accounts' holds (the caller holds the write lock)."""
        return self._expire(self._holds.due(names, self._clock()))

    def _expire(self, states: Sequence[HoldState]) -> int:
        for state in states:
            rules.release(self._accounts[state.source], state, HoldStatus.EXPIRED)
            self._holds.resolved(state)
            draft = RecordDraft(OperationType.EXPIRE, state.source, state.target, state.amount)
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

    def close(self) -> None:
        """Stop the background sweeper; sync and close the journal, release the data directory."""
        self._sweeper.stop()
        self._durability.close()

    # -- history and audit ----------------------------------------------------

    def history(self, username: str, *, limit: int, cursor: str | None) -> Page:
        rules.check_limit(limit)
        before = None if cursor is None else rules.decode_cursor(cursor, rules.HISTORY_CURSOR)
        durable = self._durability.durable_sequence()
        if durable is not None:
            before = durable + 1 if before is None else min(before, durable + 1)
        records, more_before = self._trail.history(username, before, limit)
        return Page(records, None if more_before is None else rules.encode_cursor("h", more_before))

    def audit_page(self, *, limit: int, cursor: str | None) -> Page:
        rules.check_limit(limit)
        after = 0 if cursor is None else rules.decode_cursor(cursor, rules.AUDIT_CURSOR)
        records, more = self._trail.page(after, limit, self._durability.durable_sequence())
        next_cursor = rules.encode_cursor("a", records[-1].sequence) if more and records else None
        return Page(records, next_cursor)

    def verify(self) -> Verification:
        # A consistent copy under both locks (in order), checked outside them:
        # records are immutable, so copying the list is enough.
        lock = self._rw.gen_rlock()
        self._acquire(lock, Deadline.after_ms(VERIFY_LOCK_TIMEOUT_MS), "verify")
        try:
            accounts = {
                name: AccountSnapshot(account.balance, account.held)
                for name, account in self._accounts.items()
            }
            holds = self._holds.snapshot()
            records = self._trail.records()
        finally:
            lock.release()
        report = verify_ledger(accounts, records, holds)
        self._trail.verified(report)
        return report

    # -- idempotency ----------------------------------------------------------

    def idempotent(
        self, username: str, key: str, fingerprint: str, deadline: Deadline, operation: Callable[[], Result]
    ) -> Outcome:
        claim = Claim(username, key, fingerprint, time.time())

        def claimed() -> Result:
            # The operation's journal entry carries the key and the outcome (``Durability.keep``).
            token = CLAIM.set(claim)
            try:
                return operation()
            finally:
                CLAIM.reset(token)

        return self._keys.run(username, key, fingerprint, deadline, claimed)

    # -- health ---------------------------------------------------------------

    def health(self) -> Health:
        # Each lock is taken alone and in the documented order.
        probe = self._rw.gen_rlock()
        database_ok = probe.acquire(blocking=True, timeout=1.0)
        if database_ok:
            probe.release()
        journal = self._durability.journal
        if journal is not None and journal.failure is not None:
            database_ok = False  # writes are refused until a restart
        return Health(
            uptime_seconds=time.monotonic() - self._counters.started_at,
            operation_count=self._counters.operation_count(),
            database=database_ok,
            audit_log=self._trail.check_new_records(),
            performance=self._counters.performance_ok(),
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
        audit_records = len(self._trail)
        with self._seen_lock:
            if accounts is not None:
                self._accounts_seen = accounts
            accounts = self._accounts_seen
        operations, cumulative, wait_sum_s = self._counters.snapshot()
        journal = self._durability.journal
        return Stats(
            operations=operations,
            lock_wait_buckets=cumulative,
            lock_wait_sum_s=wait_sum_s,
            accounts=accounts,
            audit_records=audit_records,
            idempotency_keys=len(self._keys),
            journal={} if journal is None else journal.counters(),
        )

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
        kind = draft.kind.value
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
                error.transaction = self._append([failed], outcome=_failure_outcome(error))[0]
                raise
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
        return self._trail.append(
            drafts, lambda records: durability.keep(records, drafts, states, holds, credential, outcome)
        )

    def _count(self, kind: str, outcome: str, lock_wait_s: float) -> None:
        self._counters.count([(kind, outcome)], lock_wait_s)

    def _count_items(
        self, items: Sequence[BatchItem], failures: Sequence[LedgerError | None], lock_wait_s: float
    ) -> None:
        """Count a batch: one operation per item, one lock wait for the whole batch."""
        outcomes = [
            (item.kind.value, "success" if failure is None else failure.code)
            for item, failure in zip(items, failures, strict=False)
        ]
        self._counters.count(outcomes, lock_wait_s)


def _hold_result(record: Transaction, applied: tuple[AccountView, Hold]) -> HoldResult:
    return HoldResult(applied[1], applied[0], record)


def _failure_outcome(error: LedgerError) -> OutcomeOf:
    """What an idempotent retry of a failed operation answers: ``error``, with its record."""

    def outcome(records: list[Transaction]) -> LedgerError:
        error.transaction = records[0]
        return error

    return outcome


def _batch_result(
    records: Sequence[Transaction],
    failures: Sequence[LedgerError | None],
    account: AccountView,
    atomic: bool,
    failed_index: int | None,
) -> BatchResult:
    outcomes = tuple(
        ItemOutcome(index, record)
        if failure is None
        else ItemOutcome(index, record, failure.status, failure.code, failure.message)
        for index, (record, failure) in enumerate(zip(records, failures, strict=True))
    )
    return BatchResult(outcomes, account, atomic, failed_index)
