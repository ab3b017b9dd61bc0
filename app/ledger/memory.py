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
4. the health and metrics counters (``app.ledger.counters.OperationCounters``, shared
   with the PostgreSQL store) have a mutex of their own, taken last and only for a
   few dictionary updates; ``_seen_lock`` guards the account count metrics saw last.

Idempotency keys live in an ``IdempotencyTable`` with its own mutex. With a
journal, the store hands a key's outcome to the table while it holds
``_audit_lock`` (so that a snapshot sees every journaled key), so the table's mutex
comes after ``_audit_lock``; the table never calls back into the store while it
holds its mutex. The journal's own mutex (``Journal._condition``) is taken last of
all, only to queue a frame or to wait for a sync, and is never held across the
write or the sync itself. ``_snapshot_lock`` (one snapshot at a time) is taken
before ``_rw``. Holds live in a ``HoldBook`` under ``_rw``; the expiry sweeper's
heap has its own condition, never held while the sweeper takes ``_rw``.

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
Without a data directory, none: everything lives in this process's memory.

With one (``MockDB.open``), every state change is also written to a write-ahead
journal (``app.ledger.journal``) as one entry holding the audit records it appends
and the states it leaves behind (``app.ledger.persistence``): account creations,
every money and hold operation, FAILED ones too, expiries, and the outcome of an
idempotent request in the same entry as its operation. Entries are queued under
``_audit_lock``, so the journal's order is the audit order; the fsync happens after
every lock is released, shared by all requests waiting at that moment (group
commit), and a write method returns only once its entries are durable. Reads never
show a state that is not durable yet: a balance or hold read waits for the entry
that last changed the account, history and audit pages stop at the last durable
record. If the journal fails, writes are refused (``StorageUnavailable``) before
anything is applied, and reads of accounts whose last change was not made durable
are refused too; everything else keeps being served. ``snapshot`` writes the whole
state and drops the journal before it, so that a start loads one file and replays
a short tail.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from readerwriterlock import rwlock

from app.ledger import journal as journal_files
from app.ledger import persistence, recovery, rules
from app.ledger.accounts import AccountState
from app.ledger.audit import (
    GENESIS_HASH,
    AccountSnapshot,
    Verification,
    check_chain,
    sealed_record,
    verify_ledger,
)
from app.ledger.counters import OperationCounters
from app.ledger.errors import (
    AccountExists,
    AccountNotFound,
    HoldNotFound,
    HoldNotPending,
    InvalidInput,
    LedgerError,
    OperationTimeout,
    StorageUnavailable,
    StoreInvariantBroken,
    VersionConflict,
)
from app.ledger.holds import ExpirySweeper, HoldBook, HoldState
from app.ledger.idempotency import NOT_KEPT, IdempotencyTable, Outcome, Result
from app.ledger.journal import Journal, JournalUnavailable
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
    Status,
    Transaction,
    new_id,
    utc_now_iso,
)
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
#: The journal size past which the store snapshots itself (``LEDGER_SNAPSHOT_BYTES``).
DEFAULT_SNAPSHOT_BYTES = 64 * 1024 * 1024
#: How long after a failed automatic snapshot the next one may start.
SNAPSHOT_RETRY_S = 60.0
#: The lsn of an account whose last change could not be journaled: never durable.
_NEVER_DURABLE = 2**62


@dataclass(frozen=True, slots=True)
class _Claim:
    """The idempotency key an operation runs under (set by ``MockDB.idempotent``)."""

    username: str
    key: str
    fingerprint: str
    created_at: float


_CLAIM: contextvars.ContextVar[_Claim | None] = contextvars.ContextVar("goledger_claim", default=None)


@dataclass(frozen=True, slots=True)
class SnapshotReport:
    path: str
    bytes: int
    records: int
    accounts: int
    lock_held_s: float
    seconds: float


def _durable(method: Callable[Concatenate[MockDB, P], T]) -> Callable[Concatenate[MockDB, P], T]:
    """A write method that returns (or raises) only once its journal entries are durable."""

    @functools.wraps(method)
    def wrapper(self: MockDB, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._written.lsn = 0
        try:
            return method(self, *args, **kwargs)
        finally:
            self._await_written()

    return wrapper


class _AuditFields:
    """What an operation's audit record and journal entry will carry, filled in as found.

    ``from``/``to``/amount for the record; the hold it touched and the token digest
    of the account it opened, for the journal.
    """

    __slots__ = ("amount", "credential", "hold", "source", "target")

    def __init__(self, source: str | None, target: str | None, amount: int) -> None:
        self.source = source
        self.target = target
        self.amount = amount
        self.hold: HoldState | None = None
        self.credential: bytes | None = None


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
        self._accounts: dict[str, AccountState] = {}
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
        # One incremental check at a time (taken before _audit_lock, with no other lock).
        self._chain_check_lock = threading.Lock()
        #: The hash check of a trail read from disk, running from ``open`` on.
        self.chain_check: threading.Thread | None = None

        self._counters = OperationCounters()  # health and metrics counters, their own mutex
        self._lock_trouble_after_s = lock_trouble_after_s
        self._seen_lock = threading.Lock()
        self._accounts_seen = 0  # the last account count a metrics scrape saw (under _seen_lock)

        # Not ``or``: an empty table has len() == 0 and would be replaced.
        self._idempotency = idempotency if idempotency is not None else IdempotencyTable()

        # Durability (see ``open``): the journal is set once, before the store is shared.
        self._directory: journal_files.DataDirectory | None = None
        self._journal: Journal | None = None
        self._snapshot_bytes = 0
        self._written = threading.local()  # the lsn the current write must wait for
        self._snapshot_lock = threading.Lock()  # one snapshot at a time; taken before _rw
        self._snapshot_starter = threading.Lock()  # guards the two below; held for an instant
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_retry_at = 0.0  # after a failed automatic snapshot (monotonic clock)
        self._closed = False  # under _snapshot_lock: no snapshot once the store is closed
        self.recovery: journal_files.Recovered | None = None
        #: Why writes are refused before they start (``None``: they are not).
        self._refusal: str | None = None

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
            store._directory = directory
            with recovery.collector_paused():
                recovered = journal_files.read_directory(directory.path, recovery.snapshot_lsn)
                store.recovery = recovered
                store._restore(recovered)
                last_lsn = recovered.last_lsn
                recovered.release_frames()
            if read_only:
                store._refusal = f"{data_dir} is open read-only (offline verification)"
                return store  # ``verify`` checks the whole chain itself
            if recovered.torn is not None:
                journal_files.cut_torn_tail(recovered.torn)
            # What a crash between a snapshot's rename and its clean-up left behind.
            journal_files.remove_before(directory.path, recovered.first_segment)
            store._journal = Journal(
                directory.path,
                recovered.last_segment,
                last_lsn,
                len(store._audit),
                sync=sync,
                write=write,
            )
            store._snapshot_bytes = snapshot_bytes
        except BaseException:
            directory.release()
            raise
        store._check_chain_in_background()
        return store

    def _restore(self, recovered: journal_files.Recovered) -> None:
        """Adopt what the data directory holds (before the store is shared)."""
        state = recovery.load(recovered, self._idempotency)
        self._accounts = state.accounts
        self._credentials = state.credentials
        self._holds = state.holds
        self._audit = state.audit
        self._records_by_account = state.records_by_account
        self._last_hash = state.last_hash
        now_s = self._clock()
        for hold in self._holds.pending():
            self._sweeper.schedule(max(hold.expires_at_s, now_s), hold.id)

    # -- durability -----------------------------------------------------------

    def _can_write(self) -> bool:
        return self._refusal is None and (self._journal is None or self._journal.failure is None)

    def _check_writable(self) -> None:
        """Refuse a write before it applies anything when the journal cannot keep it."""
        refusal = self._refusal
        if refusal is None and self._journal is not None:
            refusal = self._journal.failure
        if refusal is not None:
            raise StorageUnavailable(
                f"The ledger cannot keep new operations ({refusal}); nothing was applied. Reads still work."
            )

    def _persist(
        self,
        records: Sequence[tuple[Transaction, tuple[str, ...]]],
        accounts: Iterable[str | None] = (),
        *,
        audit: _AuditFields | None = None,
        outcome: Callable[[list[Transaction]], Result | LedgerError] | None = None,
    ) -> None:
        """Queue the journal entry of a change (the caller holds ``_audit_lock``).

        ``accounts``: the accounts whose state the change set (the caller holds the
        write lock whenever there are any); ``outcome``: what an idempotent request
        answers, kept under its key when the request runs under one.
        """
        if self._journal is None:
            return
        names = [name for name in dict.fromkeys(accounts) if name is not None and name in self._accounts]
        entry: dict[str, Any] = {
            "r": [persistence.record_row(record, parties) for record, parties in records],
        }
        if names:
            entry["a"] = {name: self._accounts[name].row() for name in names}
        if audit is not None and audit.credential is not None and audit.target is not None:
            entry["c"] = {audit.target: audit.credential.hex()}
        if audit is not None and audit.hold is not None:
            entry["h"] = [recovery.hold_row(audit.hold)]
        claim = _CLAIM.get()
        kept: Result | LedgerError | None = None
        lsn = _NEVER_DURABLE
        try:
            if claim is not None and outcome is not None:
                kept = outcome([record for record, _ in records])
                if isinstance(kept, NOT_KEPT):
                    kept = None
                else:
                    entry["i"] = [
                        claim.username,
                        claim.key,
                        claim.fingerprint,
                        claim.created_at,
                        persistence.outcome_row(kept),
                    ]
            lsn = self._journal.append(persistence.encode(entry), records[-1][0].sequence)
        except JournalUnavailable as error:
            raise StorageUnavailable(
                f"The ledger cannot keep new operations ({error}); the operation was not acknowledged."
            ) from None
        except Exception as error:
            # The change is applied and chained in memory but cannot be journaled: the
            # journal must not take anything after it (a replay would find a gap).
            self._journal.fail(f"a journal entry could not be written: {error!r}")
            raise StorageUnavailable(
                "The ledger cannot keep new operations (a journal entry could not be written); "
                "the operation was not acknowledged."
            ) from error
        finally:
            for name in names:
                self._accounts[name].lsn = lsn
        if claim is not None and kept is not None:
            self._idempotency.record(claim.username, claim.key, kept)
        self._written.lsn = lsn

    def _await_written(self) -> None:
        """Wait until what this thread's write queued is durable (group commit)."""
        lsn: int = getattr(self._written, "lsn", 0)
        if not lsn or self._journal is None:
            return
        self._written.lsn = 0
        self._await_lsn(lsn)
        if self._snapshot_bytes and self._journal.segment_bytes >= self._snapshot_bytes:
            self._snapshot_in_background()

    def _await_lsn(self, lsn: int) -> None:
        if self._journal is None or not lsn:
            return
        try:
            self._journal.wait_durable(lsn)
        except JournalUnavailable as error:
            raise StorageUnavailable(
                f"The journal failed ({error}) before this could be made durable; it was not acknowledged "
                "and its outcome is known only after a restart."
            ) from None

    def snapshot(self) -> SnapshotReport:
        """Write the whole state to a snapshot and delete the journal it makes redundant.

        Writers pause while the state is copied (under the write lock, then the audit
        lock, then the idempotency table's); the file is written after every lock is
        released. The journal switches to a new segment at the same instant, so the
        snapshot plus the segments from that one on are the whole ledger.
        """
        if self._journal is None or self._directory is None:
            raise StorageUnavailable("This ledger has no data directory to snapshot into.")
        journal = self._journal
        with self._snapshot_lock:
            if self._closed:
                raise StorageUnavailable("The ledger is closed; its data directory belongs to it no more.")
            started = time.perf_counter()
            lock = self._rw.gen_wlock()
            self._acquire(lock, Deadline.after_ms(SNAPSHOT_LOCK_TIMEOUT_MS), "snapshot")
            try:
                with self._audit_lock:
                    self._check_writable()
                    number = journal.rotate()
                    lsn = journal.appended_lsn
                    header = {
                        "lsn": lsn,
                        "segment": number,
                        "records": len(self._audit),
                        "last_hash": self._last_hash,
                    }
                    accounts = [
                        [name, account.balance, account.held, account.version, self._credentials[name].hex()]
                        for name, account in self._accounts.items()
                    ]
                    holds = [recovery.hold_row(state) for state in self._holds.all()]
                    records = list(self._audit)
                    index = {name: list(sequences) for name, sequences in self._records_by_account.items()}
                    keys = self._idempotency.kept()
            finally:
                lock.release()
            lock_held_s = time.perf_counter() - started
            sections: list[tuple[str, Sequence[persistence.Row]]] = [
                ("accounts", accounts),
                ("holds", holds),
                ("records", [persistence.snapshot_record_row(record) for record in records]),
                ("index", [[name, sequences] for name, sequences in index.items()]),
                (
                    "keys",
                    [
                        [username, key, fingerprint, created_at, persistence.outcome_row(outcome)]
                        for username, key, fingerprint, created_at, outcome in keys
                    ],
                ),
            ]
            self._await_lsn(lsn)  # the segments the snapshot replaces are complete on disk
            path, size = journal_files.write_snapshot(
                self._directory.path, number, persistence.snapshot_payloads(header, sections)
            )
            journal_files.remove_before(self._directory.path, number)
        seconds = time.perf_counter() - started
        _log.info(
            "snapshot %s: %d records, %d accounts, %d bytes in %.2f s (writers paused %.3f s)",
            path,
            len(records),
            len(accounts),
            size,
            seconds,
            lock_held_s,
        )
        return SnapshotReport(str(path), size, len(records), len(accounts), lock_held_s, seconds)

    def _snapshot_in_background(self) -> None:
        """Start one snapshot thread unless one is running (the journal outgrew its bound).

        Called by writers: it only ever takes ``_snapshot_starter``, never the lock a
        running snapshot holds while it writes its file.
        """
        with self._snapshot_starter:
            running = self._snapshot_thread is not None and self._snapshot_thread.is_alive()
            if running or time.monotonic() < self._snapshot_retry_at:
                return
            self._snapshot_thread = threading.Thread(
                target=self._snapshot_logged, name="goledger-snapshot", daemon=True
            )
            self._snapshot_thread.start()

    def _snapshot_logged(self) -> None:
        try:
            self.snapshot()
        except Exception:
            _log.exception(
                "automatic snapshot failed; the journal keeps growing, next attempt in %d s",
                SNAPSHOT_RETRY_S,
            )
            with self._snapshot_starter:
                self._snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY_S

    # -- accounts -------------------------------------------------------------

    def is_empty(self) -> bool:
        with self._rw.gen_rlock():
            return not self._accounts

    @_durable
    def create_account(
        self, username: str, token_digest: bytes, balance: int, *, deadline: Deadline
    ) -> AccountView:
        def apply() -> AccountView:
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
        return self._run_write(
            OperationType.OPEN,
            username,
            None,
            username,
            balance,
            deadline,
            apply,
            failure_parties=(),
            credential=token_digest,
        ).account

    def token_digest(self, username: str) -> bytes | None:
        with self._credentials_lock:
            return self._credentials.get(username)

    def account(self, username: str, *, deadline: Deadline) -> AccountView:
        def read() -> tuple[AccountView, int]:
            account = self._existing(username)
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
                if attempt == 0 and self._holds.due((username,), self._clock()) and self._can_write():
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
                self._await_lsn(lsn)
                return value
            self._expire_now((username,), deadline)
        raise StoreInvariantBroken("only the first read of an account may defer to expiry")

    # -- money ----------------------------------------------------------------

    @_durable
    def deposit(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        return self._run_one(username, BatchItem(OperationType.DEPOSIT, amount), deadline, expected_version)

    @_durable
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
        """Apply ``items`` in order under one write-lock acquisition.

        Not atomic: each item stands alone. Atomic: the items are first applied to
        copies of the accounts they touch; only if every one succeeds are the copies
        written back, otherwise nothing changes. Either way every item is audited,
        and all the batch's records are appended in one go, in item order.
        """
        rules.check_batch(items)
        lock = self._rw.gen_wlock()
        try:
            waited_s = self._acquire(lock, deadline, "batch")
        except OperationTimeout as error:
            self._check_writable()  # a failed journal keeps no record, not even of a timeout
            self._append_items(username, items, [error] * len(items))
            raise
        failures: list[LedgerError | None] = []
        try:
            self._check_writable()
            self._expire_due({username, *(item.target for item in items)})
            caller = self._existing(username)
            try:
                rules.check_version(caller, expected_version)
            except VersionConflict as error:
                failures = [error] * len(items)
                error.transaction = self._append_items(
                    username, items, failures, outcome=_failure_outcome(error)
                )[0]
                raise
            failures, failed_index = rules.apply_batch(self._accounts.get, username, items, atomic=atomic)
            account = caller.view()
            records = self._append_items(
                username,
                items,
                failures,
                outcome=lambda records: _batch_result(records, failures, account, atomic, failed_index),
            )
        finally:
            lock.release()
            self._count_items(items, failures, waited_s)
        return _batch_result(records, failures, account, atomic, failed_index)

    def _run_one(
        self, username: str, item: BatchItem, deadline: Deadline, expected_version: int | None
    ) -> OperationResult:
        source, target = rules.roles(username, item)

        def apply() -> AccountView:
            self._expire_due((username, item.target))
            caller = self._existing(username)
            rules.check_version(caller, expected_version)
            rules.apply_item(self._accounts.get, username, item)
            return caller.view()

        return self._run_write(item.kind, username, source, target, item.amount, deadline, apply)

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

        def apply(audit: _AuditFields) -> tuple[AccountView, HoldState]:
            audit.target = target
            self._expire_due((username, target))
            caller = self._existing(username)
            rules.check_version(caller, expected_version)
            if target not in self._accounts:
                raise AccountNotFound(f"Account {target} does not exist.")
            if target == username:
                raise InvalidInput("same_account", "The payer and the payee are the same account.")
            rules.check_funds(caller, amount)
            caller.held += amount
            caller.version += 1
            rules.check_account(caller)
            state = HoldState(hold_id, username, target, amount, self._clock() + timeout_s, utc_now_iso())
            self._holds.add(state)
            return caller.view(), state

        result = self._run_hold(OperationType.HOLD, username, amount, deadline, apply, target=target)
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

        def apply(audit: _AuditFields) -> tuple[AccountView, HoldState]:
            state = self._pending_hold_of(username, hold_id, audit, expected_version)
            captured = state.amount if amount is None else amount
            audit.amount = captured
            if captured > state.amount:
                raise InvalidInput(
                    "invalid_amount", f"The hold is for {state.amount} coins, {captured} requested."
                )
            source, target = self._accounts[state.source], self._accounts[state.target]
            rules.check_credit(target, captured)
            source.held -= state.amount
            source.balance -= captured
            source.version += 1
            target.balance += captured
            target.version += 1
            rules.check_account(source)
            self._holds.settle(state, HoldStatus.CAPTURED, captured)
            return self._accounts[username].view(), state

        return self._run_hold(OperationType.CAPTURE, username, amount or 0, deadline, apply)

    @_durable
    def void_hold(
        self, username: str, hold_id: str, *, deadline: Deadline, expected_version: int | None = None
    ) -> HoldResult:
        """Release the whole of a pending hold."""

        def apply(audit: _AuditFields) -> tuple[AccountView, HoldState]:
            state = self._pending_hold_of(username, hold_id, audit, expected_version)
            self._release(state, HoldStatus.VOIDED)
            return self._accounts[username].view(), state

        return self._run_hold(OperationType.VOID, username, 0, deadline, apply)

    def get_hold(self, username: str, hold_id: str, *, deadline: Deadline) -> Hold:
        def read() -> tuple[Hold, int]:
            state = self._holds.get(hold_id)
            if state is None or username not in (state.source, state.target):
                raise HoldNotFound(f"No hold {hold_id} of yours.")
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
            self._check_writable()
            return self._expire(self._holds.all_due(self._clock()))
        finally:
            lock.release()

    def close(self) -> None:
        """Stop the background sweeper; sync and close the journal, release the data directory."""
        self._sweeper.stop()
        with self._snapshot_lock:  # let a running snapshot finish, start no other
            self._snapshot_bytes = 0
            self._closed = True
        if self._journal is not None:
            self._journal.close()
        if self._directory is not None:
            self._directory.release()

    def _sweep_due(self, hold_ids: list[str]) -> None:
        """The sweeper's pass: expire these holds if still pending and due.

        Looks up only the given ids (no scan of every pending hold under the write
        lock). A hold that is not due after all, because the wall clock stepped back, is
        scheduled again, so that the sweeper cannot lose it.
        """
        if not self._can_write():
            return  # nothing can be kept; the holds expire after the restart
        self._written.lsn = 0
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
        rules.check_version(self._accounts[username], expected_version)
        return state

    def _release(self, state: HoldState, status: HoldStatus) -> None:
        source = self._accounts[state.source]
        source.held -= state.amount
        source.version += 1
        rules.check_account(source)
        self._holds.settle(state, status)

    def _expire_due(self, names: Iterable[str | None]) -> int:
        """Expire what is due among these accounts' holds (the caller holds the write lock)."""
        return self._expire(self._holds.due(names, self._clock()))

    def _expire(self, states: Sequence[HoldState]) -> int:
        for state in states:
            self._release(state, HoldStatus.EXPIRED)
            parties = (state.source, state.target)
            audit = _AuditFields(state.source, state.target, state.amount)
            audit.hold = state
            self._append(OperationType.EXPIRE, audit, parties, None, accounts=(state.source,))
            self._count(OperationType.EXPIRE.value, "success", 0.0)
        return len(states)

    def _expire_now(self, names: tuple[str, ...], deadline: Deadline) -> None:
        lock = self._rw.gen_wlock()
        self._acquire(lock, deadline, OperationType.EXPIRE.value)
        try:
            self._check_writable()
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
            audit.hold = state
            return account, state.view()  # copied under the lock

        return self._run_audited(
            kind,
            username,
            audit,
            deadline,
            apply_and_copy,
            lambda applied, record: HoldResult(applied[1], applied[0], record),
            (username,),
        )

    # -- history --------------------------------------------------------------

    def history(self, username: str, *, limit: int, cursor: str | None) -> Page:
        rules.check_limit(limit)
        before = None if cursor is None else rules.decode_cursor(cursor, rules.HISTORY_CURSOR)
        durable = self._durable_sequence()
        if durable is not None:
            before = durable + 1 if before is None else min(before, durable + 1)
        with self._audit_lock:
            sequences = self._records_by_account.get(username, [])
            end = len(sequences) if before is None else bisect.bisect_left(sequences, before)
            start = max(0, end - limit)
            chosen = sequences[start:end]
            records = tuple(self._audit[sequence - 1] for sequence in reversed(chosen))
        next_cursor = rules.encode_cursor("h", chosen[0]) if start > 0 else None
        return Page(records, next_cursor)

    # -- audit ----------------------------------------------------------------

    def audit_page(self, *, limit: int, cursor: str | None) -> Page:
        rules.check_limit(limit)
        after = 0 if cursor is None else rules.decode_cursor(cursor, rules.AUDIT_CURSOR)
        durable = self._durable_sequence()
        with self._audit_lock:
            last = len(self._audit) if durable is None else min(durable, len(self._audit))
            records = tuple(self._audit[after : min(after + limit, last)])
            more = after + limit < last
        next_cursor = rules.encode_cursor("a", records[-1].sequence) if more and records else None
        return Page(records, next_cursor)

    def _durable_sequence(self) -> int | None:
        """The last audit record on disk (``None``: no journal, every record counts)."""
        return None if self._journal is None else self._journal.durable_sequence

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
        claim = _Claim(username, key, fingerprint, time.time())

        def claimed() -> Result:
            # The operation's journal entry carries the key and the outcome (see _persist).
            token = _CLAIM.set(claim)
            try:
                return operation()
            finally:
                _CLAIM.reset(token)

        return self._idempotency.run(username, key, fingerprint, deadline, claimed)

    # -- health ---------------------------------------------------------------

    def health(self) -> Health:
        # Each lock is taken alone and in the documented order.
        probe = self._rw.gen_rlock()
        database_ok = probe.acquire(blocking=True, timeout=1.0)
        if database_ok:
            probe.release()
        if self._journal is not None and self._journal.failure is not None:
            database_ok = False  # writes are refused until a restart
        audit_ok = self._check_new_records()
        return Health(
            uptime_seconds=time.monotonic() - self._counters.started_at,
            operation_count=self._counters.operation_count(),
            database=database_ok,
            audit_log=audit_ok,
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
        with self._audit_lock:
            audit_records = len(self._audit)
        with self._seen_lock:
            if accounts is not None:
                self._accounts_seen = accounts
            accounts = self._accounts_seen
        operations, cumulative, wait_sum_s = self._counters.snapshot()
        return Stats(
            operations=operations,
            lock_wait_buckets=cumulative,
            lock_wait_sum_s=wait_sum_s,
            accounts=accounts,
            audit_records=audit_records,
            idempotency_keys=len(self._idempotency),
            journal={} if self._journal is None else self._journal.counters(),
        )

    def _check_chain_in_background(self) -> None:
        """Hash-check the trail read from disk while the ledger already serves.

        Replay checks every record's place in the chain; recomputing every hash
        (a second per million records) is health's incremental check, started here
        at once instead of at the first probe. A broken record marks the trail
        broken: health answers 503 and ``verify`` lists it.
        """

        def check() -> None:
            if not self._check_new_records(wait=True):
                _log.error("the audit trail read from disk is broken: %s", self._chain_problem)

        self.chain_check = threading.Thread(target=check, name="goledger-chain-check", daemon=True)
        self.chain_check.start()

    def _check_new_records(self, *, wait: bool = False) -> bool:
        """Check the stretch of the chain appended since the last check (health's share).

        While another check runs (the one started at boot over a long trail), a
        health probe does not wait for it unless ``wait``: it reports what is known.
        """
        if not self._chain_check_lock.acquire(blocking=wait):
            with self._audit_lock:
                return self._chain_problem is None
        try:
            return self._check_chain_stretch()
        finally:
            self._chain_check_lock.release()

    def _check_chain_stretch(self) -> bool:
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

    def _existing(self, username: str) -> AccountState:
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
            self._counters.lock_trouble()
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
        credential: bytes | None = None,
    ) -> OperationResult:
        """``_run_audited`` for operations whose ``from``/``to``/amount are known up front.

        A failure is shown in the history of ``failure_parties`` (default: the caller
        alone, never a recipient who had no part in it). ``credential``: the token
        digest of the account this opens, for the journal.
        """
        if kind is not OperationType.OPEN:
            rules.check_amount(amount)
        failed_for = (username,) if failure_parties is None else failure_parties
        audit = _AuditFields(source, target, amount)
        audit.credential = credential
        return self._run_audited(
            kind,
            username,
            audit,
            deadline,
            apply,
            lambda account, record: OperationResult(record, account),
            failed_for,
        )

    def _run_audited(
        self,
        kind: OperationType,
        username: str,
        audit: _AuditFields,
        deadline: Deadline,
        apply: Callable[[], T],
        finish: Callable[[T, Transaction], R],
        failed_for: tuple[str, ...],
    ) -> R:
        """Run ``apply`` under the write lock, audit and journal the outcome either way.

        ``audit`` holds the record's ``from``/``to``/amount; ``apply`` may fill them
        in as it finds them. ``finish`` makes the result from what ``apply`` returned
        and the record. A timeout applied nothing, so its record needs only the audit
        lock. ``apply`` must copy out whatever it returns: it runs under the lock.
        """
        lock = self._rw.gen_wlock()
        try:
            waited_s = self._acquire(lock, deadline, kind.value)
        except OperationTimeout as error:
            self._check_writable()  # a failed journal keeps no record, not even of a timeout
            error.transaction = self._append(kind, audit, failed_for, error.code)
            raise
        outcome = "success"
        try:
            try:
                self._check_writable()
                applied = apply()
            except StorageUnavailable as error:
                outcome = error.code
                raise
            except LedgerError as error:
                outcome = error.code
                error.transaction = self._append(
                    kind, audit, failed_for, error.code, outcome=_failure_outcome(error)
                )
                raise
            parties = tuple(name for name in (audit.source, audit.target) if name is not None)
            record = self._append(
                kind,
                audit,
                parties,
                None,
                accounts=parties,
                outcome=lambda records: finish(applied, records[0]),
            )
        finally:
            lock.release()
            self._count(kind.value, outcome, waited_s)
        return finish(applied, record)

    def _append(
        self,
        kind: OperationType,
        audit: _AuditFields,
        parties: tuple[str, ...],
        failure: str | None,
        *,
        accounts: tuple[str, ...] = (),
        outcome: Callable[[list[Transaction]], Result | LedgerError] | None = None,
    ) -> Transaction:
        """Append one chained audit record and queue its journal entry.

        ``parties`` are the accounts whose history shows it; ``accounts`` those whose
        state it changed (journaled with it), ``outcome`` the answer to an idempotent
        request that ran it.
        """
        transaction_id = new_id("tx_")
        created_at = utc_now_iso()
        status = Status.SUCCESS if failure is None else Status.FAILED
        with self._audit_lock:
            record = self._chain(
                transaction_id,
                kind,
                audit.source,
                audit.target,
                audit.amount,
                status,
                failure,
                created_at,
                parties,
            )
            self._persist(
                [(record, parties)], accounts, audit=audit if failure is None else None, outcome=outcome
            )
            return record

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
        self._counters.count([(kind, outcome)], lock_wait_s)

    def _append_items(
        self,
        username: str,
        items: Sequence[BatchItem],
        failures: Sequence[LedgerError | None],
        *,
        outcome: Callable[[list[Transaction]], Result | LedgerError] | None = None,
    ) -> list[Transaction]:
        """Audit a batch's items in one critical section, in item order, one timestamp.

        One journal entry holds every record and the accounts the batch changed.
        """
        created_at = utc_now_iso()
        entries: list[tuple[BatchItem, str | None, str | None, Status, str | None, tuple[str, ...]]] = []
        changed: dict[str, None] = {}
        for item, failure in zip(items, failures, strict=True):
            source, target = rules.roles(username, item)
            if failure is None:
                parties = tuple(name for name in (source, target) if name is not None)
                entries.append((item, source, target, Status.SUCCESS, None, parties))
                changed.update(dict.fromkeys(parties))
            else:
                entries.append((item, source, target, Status.FAILED, failure.code, (username,)))
        ids = [new_id("tx_") for _ in entries]
        chained: list[tuple[Transaction, tuple[str, ...]]] = []
        with self._audit_lock:
            for transaction_id, (item, source, target, status, reason, parties) in zip(
                ids, entries, strict=True
            ):
                record = self._chain(
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
                chained.append((record, parties))
            self._persist(chained, changed, outcome=outcome)
        return [record for record, _ in chained]

    def _count_items(
        self, items: Sequence[BatchItem], failures: Sequence[LedgerError | None], lock_wait_s: float
    ) -> None:
        """Count a batch: one operation per item, one lock wait for the whole batch."""
        outcomes = [
            (item.kind.value, "success" if failure is None else failure.code)
            for item, failure in zip(items, failures, strict=False)
        ]
        self._counters.count(outcomes, lock_wait_s)


def _failure_outcome(error: LedgerError) -> Callable[[list[Transaction]], LedgerError]:
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
