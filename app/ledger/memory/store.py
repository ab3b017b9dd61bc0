"""``MockDB``: the public operations of the embedded store, and the order of its locks.

See the package docstring (``app.ledger.memory``) for the locks and the durability
guarantees. Every rule an operation applies is ``app.ledger.rules``'; this module
decides what runs under which lock, what is audited and what is journaled.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.ledger import rules
from app.ledger.accounts import AccountState
from app.ledger.audit import Replay, Verification
from app.ledger.errors import (
    AccountExists,
    LedgerError,
    OperationTimeout,
    StoreInvariantBroken,
    VersionConflict,
)
from app.ledger.filters import NO_FILTER, RecordFilter
from app.ledger.memory import files as journal_files
from app.ledger.memory import recovery
from app.ledger.memory.archive import RecordArchive
from app.ledger.memory.checkpoints import checkpoint_of
from app.ledger.memory.core import durable, failure_outcome
from app.ledger.memory.durability import (
    CLAIM,
    DEFAULT_RECORD_CACHE,
    DEFAULT_SNAPSHOT_BYTES,
    Claim,
    SnapshotReport,
    SnapshotState,
)
from app.ledger.memory.hold_operations import HoldOperations
from app.ledger.memory.index import INDEX_FILE, RecordIndex
from app.ledger.memory.journal import Journal
from app.ledger.memory.reversal_operations import ReversalOperations
from app.ledger.memory.reversals import ReversalBook
from app.ledger.memory.trail import AuditTrail
from app.ledger.model import (
    MAX_BALANCE,
    AccountView,
    BalanceAt,
    BatchItem,
    BatchResult,
    Checkpoint,
    CheckpointPage,
    Deadline,
    ItemOutcome,
    OperationResult,
    OperationType,
    Page,
    Transaction,
)
from app.ledger.outcomes import Outcome, Result, outcome_row
from app.ledger.records import RecordDraft
from app.ledger.store import Counts, Health, Stats

_log = logging.getLogger("goledger.store")

#: How long a readiness probe may wait for the balance lock (as a writer would).
READY_LOCK_TIMEOUT_S = 1.0
#: How long a metrics scrape may wait for the balance lock.
STATS_LOCK_TIMEOUT_S = 0.5
#: How long ``verify`` may wait for the balance lock.
VERIFY_LOCK_TIMEOUT_MS = 10_000
#: How long a close waits for the start's chain check (it reads records from the journal).
CLOSE_CHAIN_CHECK_WAIT_S = 60.0
#: How long a snapshot may wait for the balance lock.
SNAPSHOT_LOCK_TIMEOUT_MS = 30_000


class MockDB(HoldOperations, ReversalOperations, rules.SingleOperations):
    """The embedded store: balances in a dict under a reader-writer lock."""

    # -- opening a data directory --------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES,
        record_cache: int = DEFAULT_RECORD_CACHE,
        read_only: bool = False,
        sync: Callable[[int], None] | None = None,
        write: Callable[[int, memoryview], int] | None = None,
        **options: Any,
    ) -> MockDB:
        """The ledger kept in ``data_dir``: its snapshot loaded, the journal after it replayed,
        then journaling.

        Takes the directory's lock for as long as the store lives (``DataDirLocked`` if
        another process holds it). A torn tail is cut off and logged; any other damage
        raises ``JournalCorrupt``. ``read_only`` (offline verification): nothing on disk
        is changed, a torn tail is only reported, and every write is refused.
        ``snapshot_bytes``: snapshot automatically once the current journal segment
        grows past this many bytes (0: never), besides every ``checkpoint_records``
        records. ``record_cache``: how many recent audit records stay in memory (older
        ones are read from the journal). ``sync``/``write``: the system calls the
        journal uses (tests inject failing ones).
        """
        directory = journal_files.DataDirectory(Path(data_dir), create=not read_only)
        archive: RecordArchive | None = None
        try:
            store = cls(**options)
            durability = store._durability
            durability.directory = directory
            archive = RecordArchive(directory.path, read_only=read_only)
            with recovery.collector_paused():
                recovered = journal_files.read_directory(directory.path, recovery.snapshot_lsn)
                store.recovery = recovered
                checkpoint = store._restore(recovered, archive, record_cache)
                index_path = None if read_only else directory.path / INDEX_FILE
                store._index = RecordIndex(store._trail, store._indexable, index_path)
                last_lsn = recovered.last_lsn
                recovered.release_frames()
            durability.archive = archive
            durability.snapshot_lsn = recovered.snapshot_lsn
            durability.checkpoints.open(directory.path, read_only=read_only, upto=len(store._trail))
            if read_only:
                durability.refusal = f"{data_dir} is open read-only (offline verification)"
                return store  # ``verify`` checks the whole chain itself
            if checkpoint is not None and checkpoint.sequence:
                durability.checkpoints.add(checkpoint)  # a crash may have come between the two
            if recovered.torn is not None:
                journal_files.cut_torn_tail(recovered.torn)
            # What a crash between a snapshot's rename and its clean-up left behind.
            journal_files.remove_before(directory.path, recovered.first_segment)
            durability.journal = Journal(
                directory.path,
                recovered.last_segment,
                last_lsn,
                len(store._trail),
                sync=sync,
                write=write,
                archive=archive,
            )
            durability.snapshot_bytes = snapshot_bytes
            store._schedule_pending_holds()
        except BaseException:
            if archive is not None:
                archive.close()
            directory.release()
            raise
        store._check_chain_in_background()
        try:
            store._index.open()  # checked against the trail, then catching up in the background
        except (sqlite3.Error, OSError):
            _log.exception("the record index could not be opened; the next filtered read tries again")
        return store

    def _restore(
        self, recovered: journal_files.Recovered, archive: RecordArchive, record_cache: int
    ) -> Checkpoint | None:
        """Adopt what the data directory holds (before the store is shared); the checkpoint
        of the snapshot it started from."""
        state = recovery.load(recovered, self._keys, archive, record_cache)
        self._accounts = state.accounts
        self._credentials = state.credentials
        self._holds = state.holds
        self._holds.archived = archive.hold_row
        self._holds.forget_resolved()
        self._reversals = ReversalBook(state.reversed)
        self._trail = AuditTrail(record_cache)
        self._trail.restore(
            state.trail, archive, {name: account.balance for name, account in self._accounts.items()}
        )
        return state.checkpoint

    def _schedule_pending_holds(self) -> None:
        """Hand the pending holds read from disk to the sweeper, once the journal can keep
        what it does (an expiry before that would be lost)."""
        now_s = self._clock()
        for hold in self._holds.pending():
            self._sweeper.schedule(max(hold.expires_at_s, now_s), hold.id)

    def _check_chain_in_background(self) -> None:
        """Hash-check the records read from the journal while the ledger already serves.

        Replay checks every record's place in the chain; recomputing the hashes of the
        records after the snapshot is health's incremental check, started here at once
        instead of at the first probe (``/admin/verify`` checks every record). A broken
        record marks the trail broken: health answers 503 and ``verify`` lists it.
        """

        def check() -> None:
            if not self._trail.check_new_records(wait=True):
                _log.error("the audit trail read from disk is broken: %s", self._trail.problem)

        self.chain_check = threading.Thread(target=check, name="goledger-chain-check", daemon=True)
        self.chain_check.start()

    # -- durability -----------------------------------------------------------

    def _snapshot_due(self) -> None:
        durability = self._durability
        durability.snapshot_in_background(
            self.snapshot if durability.journal is not None else self.checkpoint
        )

    def snapshot(self) -> SnapshotReport:
        """Write the state (accounts, pending holds, idempotency keys) to a snapshot, with a
        checkpoint; a start then replays only the journal after it.

        Writers pause while the state is copied (under the write lock, then the audit
        trail's lock, then the idempotency table's): time proportional to the accounts,
        not the history; the file is written after every lock is released.
        """
        return self._durability.snapshot(self._capture_snapshot)

    def checkpoint(self) -> Checkpoint | None:
        """Record a checkpoint now (with a data directory: a snapshot); ``None`` for an empty ledger."""
        durability = self._durability
        if durability.journal is not None:
            self.snapshot()
            return durability.checkpoints.last
        lock = self._rw.gen_rlock()
        self._acquire(lock, Deadline.after_ms(SNAPSHOT_LOCK_TIMEOUT_MS), "checkpoint")
        try:
            head, balances = self._trail.head(
                lambda: [(name, account.balance) for name, account in self._accounts.items()]
            )
        finally:
            lock.release()
        if not head.sequence:
            return None
        point = checkpoint_of(head.sequence, head.last_hash, balances)
        durability.checkpoints.add(point)
        return point

    def _capture_snapshot(self, journal: Journal) -> SnapshotState:
        lock = self._rw.gen_wlock()
        self._acquire(lock, Deadline.after_ms(SNAPSHOT_LOCK_TIMEOUT_MS), "snapshot")
        locked_at = time.perf_counter()
        try:

            def at_the_same_instant() -> tuple[int, int, list[Any], dict[str, bytes], list[Any], list[Any]]:
                # Only copies here (writers wait): the rows are made after the lock is released.
                self._durability.check_writable()
                number = journal.rotate()
                accounts = [
                    (name, account.balance, account.held, account.version)
                    for name, account in self._accounts.items()
                ]
                holds = [state.row() for state in self._holds.pending()]
                kept = self._keys.kept()
                return number, journal.appended_lsn, accounts, self._credentials.copy(), holds, kept

            head, (number, lsn, accounts, credentials, holds, kept) = self._trail.head(at_the_same_instant)
            reversed_rows = self._reversals.rows()  # changed only under the write lock held here
            ordinal = self._holds.ordinal
        finally:
            lock.release()
        lock_held_s = time.perf_counter() - locked_at
        latest = head.latest  # a copy: each account's latest record goes into its row
        header = {
            "lsn": lsn,
            "segment": number,
            "records": head.sequence,
            "last_hash": head.last_hash,
            "hold_ordinal": ordinal,
        }
        sections: list[tuple[str, Sequence[Any]]] = [
            (
                "accounts",
                [
                    [*account, credentials[account[0]].hex(), latest.pop(account[0], 0)]
                    for account in accounts
                ],
            ),
            ("latest", [[name, sequence] for name, sequence in latest.items()]),  # names without an account
            ("holds", holds),
            ("reversed", reversed_rows),
            (
                "keys",
                [
                    [username, key, fingerprint, created_at, outcome_row(outcome)]
                    for username, key, fingerprint, created_at, outcome in kept
                ],
            ),
        ]
        balances = [(account[0], account[1]) for account in accounts]
        return SnapshotState(
            lsn, number, header, sections, head.sequence, head.last_hash, balances, lock_held_s
        )

    @property
    def snapshot_thread(self) -> threading.Thread | None:
        """The automatic snapshot's thread, once one has started."""
        return self._durability.snapshot_thread

    # -- accounts -------------------------------------------------------------

    def is_empty(self) -> bool:
        with self._rw.gen_rlock():
            return not self._accounts

    @durable
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

    # -- money ----------------------------------------------------------------

    @durable
    def _run_one(
        self, username: str, item: BatchItem, deadline: Deadline, expected_version: int | None
    ) -> OperationResult:
        rules.check_amount(item.amount)

        def apply(_: RecordDraft) -> AccountView:
            self._expire_due((username, item.target))
            rules.check_version(rules.existing(self._accounts.get, username), expected_version)
            rules.apply_item(self._accounts.get, username, item)
            return self._accounts[username].view()

        draft = RecordDraft(item.kind, *rules.roles(username, item), item.amount, tag=item.tag)
        return self._write(username, draft, deadline, apply, OperationResult)

    @durable
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
        drafts = [
            RecordDraft(item.kind, *rules.roles(username, item), item.amount, tag=item.tag) for item in items
        ]
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
                error.transaction = self._append(refused, outcome=failure_outcome(error))[0]
                raise
            failures, failed_index = rules.apply_batch(self._accounts.get, username, items, atomic=atomic)
            account = caller.view()
            final = (
                [
                    draft if failure is None else draft.failed(failure.code, (username,))
                    for draft, failure in zip(drafts, failures, strict=True)
                ]
                if any(failures)
                else drafts
            )
            # The accounts the batch changed: what its journal entry keeps (in memory only, nothing).
            changed = (
                dict.fromkeys(name for draft in final if draft.reason is None for name in draft.shown_to())
                if self._durability.journal is not None
                else {}
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

    def stop_sweeper(self) -> None:
        """Stop only the background hold sweeper (tests that expire holds by touch alone)."""
        self._sweeper.stop()

    def close(self) -> None:
        """Stop the background sweeper; snapshot (a clean shutdown's checkpoint) if the journal
        holds anything after the last snapshot; sync and close the journal, release the data
        directory."""
        self._sweeper.stop()
        self._index.close()
        durability = self._durability
        if (
            durability.journal is not None
            and durability.can_write()
            and durability.journal.appended_lsn > durability.snapshot_lsn
        ):
            try:
                self.snapshot()
            except (LedgerError, OSError):
                _log.exception("the snapshot at shutdown failed; the next start replays more of the journal")
        durability.close()
        if durability.archive is not None:
            if self.chain_check is not None:  # it reads the journal's records: let it end first
                self._trail.stop_checking()
                self.chain_check.join(timeout=CLOSE_CHAIN_CHECK_WAIT_S)
            durability.archive.close()

    # -- history and audit ----------------------------------------------------

    def history(
        self, username: str, *, limit: int, cursor: str | None, where: RecordFilter = NO_FILTER
    ) -> Page:
        rules.check_limit(limit)
        before = None if cursor is None else rules.decode_cursor(cursor, rules.HISTORY_CURSOR)
        upto = self._durability.durable_sequence()
        if where.is_empty:
            records, more_before = self._trail.history(username, before, limit, upto)
            return self._shown(
                Page(records, None if more_before is None else rules.encode_cursor("h", more_before))
            )
        if before is not None:
            self._trail.own_entry(username, before)  # invalid_cursor unless one of the account's
        last = self._trail.sequence if upto is None else upto
        sequences = self._index.history(username, where, before, last, limit + 1)
        return self._shown(filtered_page(self._records(sequences), limit, "h"))

    def _shown(self, page: Page) -> Page:
        """``page`` with the reversed amounts of its records, copied as it is read."""
        amounts = self._reversals.of(record.id for record in page.transactions)
        return dataclasses.replace(page, reversed=amounts) if amounts else page

    def balance_at(self, username: str, *, sequence: int | None = None, at: str | None = None) -> BalanceAt:
        rules.check_point(sequence, at)
        found = self._index.balance_at(username, sequence=sequence, at=at, upto=self._indexable())
        if found is None:
            raise rules.no_record_before(username)
        return BalanceAt(username, found.balance, found.sequence, found.created_at)

    def transactions(self, *, limit: int, cursor: str | None, where: RecordFilter = NO_FILTER) -> Page:
        rules.check_limit(limit)
        after = 0 if cursor is None else rules.decode_cursor(cursor, rules.TRANSACTIONS_CURSOR)
        if where.is_empty:
            return self._shown(self._oldest_first(after, limit, "t"))
        durable, last = self._durability.durable_sequence(), self._trail.sequence
        if durable is not None:
            last = min(last, durable)
        sequences = self._index.transactions(where, after, last, limit + 1)
        return self._shown(filtered_page(self._records(sequences), limit, "t"))

    def _records(self, sequences: Sequence[int]) -> list[Transaction]:
        """The records the index named (each one is in the trail: the index holds no other)."""
        records = []
        for sequence in sequences:
            entry = self._trail.entry(sequence)
            if entry is None:
                raise StoreInvariantBroken(f"the record index names record {sequence}, which the trail lacks")
            records.append(entry[0])
        return records

    def _oldest_first(self, after: int, limit: int, prefix: str) -> Page:
        """Up to ``limit`` records after ``after``, up to the last durable one."""
        records, more = self._trail.page(after, limit, self._durability.durable_sequence())
        return Page(records, rules.encode_cursor(prefix, records[-1].sequence) if more and records else None)

    def audit_page(self, *, limit: int, cursor: str | None) -> Page:
        rules.check_limit(limit)
        after = 0 if cursor is None else rules.decode_cursor(cursor, rules.AUDIT_CURSOR)
        return self._shown(self._oldest_first(after, limit, "a"))

    def checkpoints(self, *, limit: int, cursor: str | None) -> CheckpointPage:
        rules.check_limit(limit)
        before = None if cursor is None else rules.decode_cursor(cursor, rules.CHECKPOINT_CURSOR)
        points, more = self._durability.checkpoints.page(before, limit)
        next_cursor = rules.encode_cursor("k", points[-1].sequence) if more and points else None
        return CheckpointPage(tuple(points), next_cursor)

    def verify(self, *, from_sequence: int | None = None) -> Verification:
        """Check the ledger, streaming its records (from disk where the journal holds them).

        The balances and pending holds are copied under the read lock with the chain's
        head (so they are the state those records left); the records are then read
        and checked outside every lock. ``from_sequence``: only the records after that
        checkpoint, against it.
        """
        book = self._durability.checkpoints
        start = None if from_sequence is None else book.at(from_sequence)
        lock = self._rw.gen_rlock()
        self._acquire(lock, Deadline.after_ms(VERIFY_LOCK_TIMEOUT_MS), "verify")
        try:
            # Plain (balance, held) tuples: this copy holds the read lock, one per account.
            accounts = {name: (account.balance, account.held) for name, account in self._accounts.items()}
            holds = self._holds.snapshot()
            head = self._trail.tip()
        finally:
            lock.release()
        # Checkpoints made after the copy lie past it: a later verification confirms them.
        passed = [point for point in book.all() if point.sequence <= head[0]] if start is None else []
        replay = Replay(start, passed)
        try:
            self._trail.verify_into(replay, head[0])
        except (journal_files.JournalCorrupt, OSError, ValueError, TypeError, IndexError, KeyError) as error:
            # A row that cannot be read at all (orjson's errors are ValueErrors): listed, not raised.
            replay.report.problems.append(
                f"the audit records after {replay.sequence} cannot be read: {error}"
            )
        report = replay.finish(accounts, holds, head[1])
        if start is None:
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

    def not_ready(self) -> str | None:
        refusal = self._durability.refusal_reason()
        if refusal is not None:
            return f"writes are refused: {refusal}"
        probe = self._rw.gen_wlock()
        if not probe.acquire(blocking=True, timeout=READY_LOCK_TIMEOUT_S):
            return f"the balance lock was not free within {READY_LOCK_TIMEOUT_S:g} s (a wedged writer)"
        probe.release()
        return None

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
        journal = self._durability.journal
        return Stats(
            accounts=accounts,
            audit_records=audit_records,
            idempotency_keys=len(self._keys),
            journal_failed=None if journal is None else journal.failure is not None,
        )

    def counts(self) -> Counts:
        counts = self._counters.snapshot()
        journal = self._durability.journal
        if journal is None:
            return counts
        return dataclasses.replace(
            counts, durations={"journal_sync": journal.sync_durations()}, journal=journal.counters()
        )


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


def filtered_page(found: Sequence[Transaction], limit: int, prefix: str) -> Page:
    """A page of the first ``limit`` of ``found`` (up to ``limit + 1`` matches, in page order):
    its cursor is the last one shown, if more matched."""
    more = len(found) > limit
    return Page(
        tuple(found[:limit]), rules.encode_cursor(prefix, found[limit - 1].sequence) if more else None
    )
