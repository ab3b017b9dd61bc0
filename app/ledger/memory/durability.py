"""``MockDB``'s side of the journal: entries queued in audit order, awaited after the locks.

``Durability`` owns the data directory, the journal and the snapshot machinery of one
store. It takes no lock of the store's: ``keep`` is called by the audit trail while
it holds its own lock (so the journal's order is the audit order), ``await_written``
by a write method once it has released every lock (group commit). ``_snapshot_lock``
(one snapshot at a time) is taken before the store's balance lock, by ``snapshot``
only; ``_snapshot_starter`` guards the background thread's handle, for an instant.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.ledger.accounts import AccountState, HoldState
from app.ledger.errors import LedgerError, StorageUnavailable
from app.ledger.memory import files as journal_files
from app.ledger.memory import persistence
from app.ledger.memory.archive import RecordArchive
from app.ledger.memory.checkpoints import CheckpointBook, checkpoint_of, checkpoint_row
from app.ledger.memory.files import JournalUnavailable
from app.ledger.memory.holds import hold_ordinal
from app.ledger.memory.journal import Journal
from app.ledger.memory.keys import NOT_KEPT, IdempotencyTable
from app.ledger.model import Transaction
from app.ledger.outcomes import Result, outcome_row

_log = logging.getLogger("goledger.store")
encode_row = orjson.dumps

#: The journal size past which the store snapshots itself (``LEDGER_SNAPSHOT_BYTES``).
DEFAULT_SNAPSHOT_BYTES = 64 * 1024 * 1024
#: Recent audit records a store with a data directory keeps in memory (``LEDGER_RECORD_CACHE``).
DEFAULT_RECORD_CACHE = 50_000
#: A checkpoint every this many audit records (``LEDGER_CHECKPOINT_RECORDS``).
DEFAULT_CHECKPOINT_RECORDS = 50_000
#: How long after a failed automatic snapshot the next one may start.
SNAPSHOT_RETRY_S = 60.0
#: The lsn of an account whose last change could not be journaled: never durable.
NEVER_DURABLE = 2**62

#: What an idempotent request answers, built from its sealed records.
OutcomeOf = Callable[[list[Transaction]], Result | LedgerError]


@dataclass(frozen=True, slots=True)
class Claim:
    """The idempotency key an operation runs under (set by ``MockDB.idempotent``)."""

    username: str
    key: str
    fingerprint: str
    created_at: float


CLAIM: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("goledger_claim", default=None)


@dataclass(frozen=True, slots=True)
class SnapshotReport:
    path: str
    bytes: int
    records: int
    accounts: int
    lock_held_s: float
    seconds: float


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """What a snapshot writes, copied by the store under its locks."""

    lsn: int
    segment: int
    header: dict[str, Any]
    sections: list[tuple[str, Sequence[persistence.Row]]]
    #: The last audit record the state includes, and its hash.
    records: int
    last_hash: str
    #: Every account's balance (the checkpoint's digest is made of them).
    balances: list[tuple[str, int]]
    #: How long writers waited while the state was copied.
    lock_held_s: float

    @property
    def accounts(self) -> int:
        return len(self.balances)


class Durability:
    """The journal of one store, or nothing at all (a ledger in memory only)."""

    def __init__(self, keys: IdempotencyTable) -> None:
        self._keys = keys
        self.directory: journal_files.DataDirectory | None = None
        self.journal: Journal | None = None
        self.snapshot_bytes = 0
        #: The index files the journal's leader writes (synced before each snapshot).
        self.archive: RecordArchive | None = None
        #: The ledger's checkpoints (each snapshot adds one) and how often one is due.
        self.checkpoints = CheckpointBook()
        self.checkpoint_records = 0
        #: The last journal frame the newest snapshot covers (under _snapshot_lock once open).
        self.snapshot_lsn = 0
        self._written = threading.local()  # the lsn the current thread's write must wait for
        #: Why writes are refused before they start (``None``: they are not).
        self.refusal: str | None = None
        self._snapshot_lock = threading.Lock()  # one snapshot at a time; taken before the balance lock
        self._snapshot_starter = threading.Lock()  # guards the two below; held for an instant
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_retry_at = 0.0  # after a failed automatic snapshot (monotonic clock)
        self._closed = False  # under _snapshot_lock: no snapshot once the store is closed

    # -- refusing writes ------------------------------------------------------

    def can_write(self) -> bool:
        return self.refusal is None and (self.journal is None or self.journal.failure is None)

    def refusal_reason(self) -> str | None:
        """Why writes are refused (a read-only open, a failed journal), or ``None``."""
        if self.refusal is None and self.journal is not None:
            return self.journal.failure
        return self.refusal

    def check_writable(self) -> None:
        """Refuse a write before it applies anything when the journal cannot keep it."""
        if self.can_write():
            return
        refusal = self.refusal_reason()
        if refusal is not None:
            raise StorageUnavailable(
                f"The ledger cannot keep new operations ({refusal}); nothing was applied. Reads still work."
            )

    # -- journaling -----------------------------------------------------------

    def keep(
        self,
        records: list[Transaction],
        metas: Sequence[tuple[tuple[str, ...], tuple[int, ...]]],
        encodings: Sequence[bytes],
        accounts: Iterable[AccountState],
        holds: Sequence[HoldState],
        credential: tuple[str, bytes] | None,
        outcome: OutcomeOf | None,
    ) -> None:
        """Queue the journal entry of a change (the caller holds the audit trail's lock).

        ``metas``: each record's parties and their links; ``encodings``: each record's
        canonical encoding, which its row begins with; ``accounts`` and ``holds``: the
        states the change left (the caller holds the write lock whenever there are any);
        ``credential``: the token digest of an account it opened; ``outcome``: what an
        idempotent request answers, kept under its key when the request runs under one.
        """
        if self.journal is None:
            return
        touched = list(accounts)
        rows = [
            persistence.encoded_record_row(encoding, record, parties, links)
            for encoding, record, (parties, links) in zip(encodings, records, metas, strict=True)
        ]
        hold_rows = [encode_row(hold.row()) for hold in holds]
        rest: dict[str, Any] = {}
        if touched:
            rest["a"] = {account.username: account.row() for account in touched}
        if credential is not None:
            rest["c"] = {credential[0]: credential[1].hex()}
        claim = CLAIM.get()
        kept: Result | LedgerError | None = None
        lsn = NEVER_DURABLE
        try:
            if claim is not None and outcome is not None:
                kept = outcome(records)
                if isinstance(kept, NOT_KEPT):
                    kept = None
                else:
                    rest["i"] = [
                        claim.username,
                        claim.key,
                        claim.fingerprint,
                        claim.created_at,
                        outcome_row(kept),
                    ]
            payload, record_spans, hold_spans = persistence.entry_payload(rows, hold_rows, rest)
            lsn = self.journal.append(
                payload,
                records[-1].sequence,
                record_spans,
                [
                    (ordinal, offset, length)
                    for hold, (offset, length) in zip(holds, hold_spans, strict=True)
                    if (ordinal := hold_ordinal(hold.id)) is not None
                ],
            )
        except JournalUnavailable as error:
            raise StorageUnavailable(
                f"The ledger cannot keep new operations ({error}); the operation was not acknowledged."
            ) from None
        except Exception as error:
            # The change is applied and chained in memory but cannot be journaled: the
            # journal must not take anything after it (a replay would find a gap).
            self.journal.fail(f"a journal entry could not be written: {error!r}")
            raise StorageUnavailable(
                "The ledger cannot keep new operations (a journal entry could not be written); "
                "the operation was not acknowledged."
            ) from error
        finally:
            for account in touched:
                account.lsn = lsn
        if claim is not None and kept is not None:
            self._keys.record(claim.username, claim.key, kept)
        self._written.lsn = lsn

    def start_write(self) -> None:
        self._written.lsn = 0

    def await_written(self) -> bool:
        """Wait until what this thread's write queued is durable (group commit).

        ``True`` when a snapshot is due: the journal's segment has outgrown its bound,
        or ``checkpoint_records`` records were added since the last checkpoint.
        """
        lsn: int = getattr(self._written, "lsn", 0)
        if not lsn or self.journal is None:
            return False
        self._written.lsn = 0
        self.await_lsn(lsn)
        if self.snapshot_bytes and self.journal.segment_bytes >= self.snapshot_bytes:
            return True
        return self.checkpoint_due(self.journal.durable_sequence)

    def checkpoint_due(self, sequence: int) -> bool:
        """Whether ``checkpoint_records`` records were added since the last checkpoint (every
        write asks: a plain read of the book's last sequence, no lock)."""
        records = self.checkpoint_records
        return bool(records) and sequence - self.checkpoints.last_sequence >= records

    def await_lsn(self, lsn: int) -> None:
        if self.journal is None or not lsn:
            return
        try:
            self.journal.wait_durable(lsn)
        except JournalUnavailable as error:
            raise StorageUnavailable(
                f"The journal failed ({error}) before this could be made durable; it was not acknowledged "
                "and its outcome is known only after a restart."
            ) from None

    def durable_sequence(self) -> int | None:
        """The last audit record on disk (``None``: no journal, every record counts)."""
        return None if self.journal is None else self.journal.durable_sequence

    # -- snapshots ------------------------------------------------------------

    def snapshot(self, capture: Callable[[Journal], SnapshotState]) -> SnapshotReport:
        """Write the state ``capture`` copies (under the store's locks), with its checkpoint.

        ``capture`` rotates the journal at the instant it copies, so the snapshot plus
        the segments from the new one on are the whole state; the file is written
        after every store lock is released. The segments before stay: they hold the
        history. The index files are synced first (a start trusts them up to the
        snapshot), the checkpoint is added once the snapshot is in place, and older
        snapshots are deleted.
        """
        if self.journal is None or self.directory is None:
            raise StorageUnavailable("This ledger has no data directory to snapshot into.")
        with self._snapshot_lock:
            if self._closed:
                raise StorageUnavailable("The ledger is closed; its data directory belongs to it no more.")
            started = time.perf_counter()
            state = capture(self.journal)
            lock_held_s = state.lock_held_s
            self.await_lsn(state.lsn)  # the segments the snapshot stands for are complete on disk
            try:
                self.journal.settle()  # and the segment it names exists
            except JournalUnavailable as error:
                raise StorageUnavailable(f"The journal failed ({error}); no snapshot was written.") from None
            point = checkpoint_of(state.records, state.last_hash, state.balances)
            if self.archive is not None:
                self.archive.sync()
            header = {**state.header, "checkpoint": checkpoint_row(point)}
            path, size = journal_files.write_snapshot(
                self.directory.path,
                state.segment,
                persistence.snapshot_payloads(header, state.sections),
            )
            journal_files.remove_before(self.directory.path, state.segment)
            self.snapshot_lsn = state.lsn
            if state.records:
                self.checkpoints.add(point)
        seconds = time.perf_counter() - started
        _log.info(
            "snapshot %s: %d records, %d accounts, %d bytes in %.2f s (writers paused %.3f s)",
            path,
            state.records,
            state.accounts,
            size,
            seconds,
            lock_held_s,
        )
        return SnapshotReport(str(path), size, state.records, state.accounts, lock_held_s, seconds)

    def snapshot_in_background(self, work: Callable[[], object]) -> None:
        """Run ``work`` (a snapshot, or a checkpoint of a ledger in memory) on one background
        thread unless one is running or a failed one is too recent.

        Called by writers: it only ever takes ``_snapshot_starter``, never the lock a
        running snapshot holds while it writes its file.
        """
        with self._snapshot_starter:
            running = self._snapshot_thread is not None and self._snapshot_thread.is_alive()
            if running or time.monotonic() < self._snapshot_retry_at:
                return
            self._snapshot_thread = threading.Thread(
                target=self._snapshot_logged, args=(work,), name="goledger-snapshot", daemon=True
            )
            self._snapshot_thread.start()

    @property
    def snapshot_thread(self) -> threading.Thread | None:
        """The automatic snapshot's thread, once one has started."""
        with self._snapshot_starter:
            return self._snapshot_thread

    def _snapshot_logged(self, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:
            _log.exception(
                "automatic snapshot or checkpoint failed; next attempt in %d s",
                SNAPSHOT_RETRY_S,
            )
            with self._snapshot_starter:
                self._snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY_S

    def close(self) -> None:
        """Let a running snapshot finish and start no other; sync and close the journal;
        release the data directory."""
        with self._snapshot_lock:
            self.snapshot_bytes = 0
            self._closed = True
        if self.journal is not None:
            self.journal.close()
        if self.directory is not None:
            self.directory.release()
