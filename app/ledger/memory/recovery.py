"""Reading a data directory back into a ledger's state (``MockDB.open``).

``load`` builds a fresh ``LedgerState`` from the newest snapshot and the journal
segments after it, before any store shares it, so nothing here takes a lock. The
format is ``app.ledger.persistence``'s; the files are ``app.ledger.journal``'s.
"""

from __future__ import annotations

import gc
import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.ledger.accounts import AccountState, HoldState
from app.ledger.memory import persistence
from app.ledger.memory.archive import RECORDS_INDEX, RecordArchive, entry_from_row, frame_entries
from app.ledger.memory.checkpoints import checkpoint_from_row
from app.ledger.memory.files import (
    FRAME_HEADER_BYTES,
    SEGMENT_MAGIC,
    FileScan,
    Frame,
    JournalCorrupt,
    JournalError,
    Recovered,
    scan_file,
    segment_name,
)
from app.ledger.memory.holds import HoldBook, hold_ordinal
from app.ledger.memory.keys import IdempotencyTable
from app.ledger.memory.trail import Restored
from app.ledger.model import Checkpoint, OperationType, Status, Transaction
from app.ledger.outcomes import outcome_from_row

_log = logging.getLogger("goledger.journal")
_REVERSAL, _SUCCESS = OperationType.REVERSAL.value, Status.SUCCESS.value
#: Where a journal row holds the id a reversal reverses (the last field of its extension).
_REVERSES = persistence.EXTENDED_ROW + 4


@dataclass
class LedgerState:
    """Everything ``MockDB`` keeps in memory, as read back from disk."""

    accounts: dict[str, AccountState] = field(default_factory=dict)
    credentials: dict[str, bytes] = field(default_factory=dict)
    holds: HoldBook = field(default_factory=HoldBook)
    trail: Restored = field(default_factory=Restored)
    #: The checkpoint of the snapshot the start began from (``None``: no snapshot).
    checkpoint: Checkpoint | None = None
    #: How much of each transaction has been reversed (only those reversed at all).
    reversed: dict[str, int] = field(default_factory=dict)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a data directory is read and loaded.

    A load allocates millions of frames, lists and records, none of them garbage,
    and would otherwise trigger ever longer full collections (a million records
    took 10 s instead of 4). What was loaded is then frozen out of later
    collections: the ledger keeps it for good.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
    gc.freeze()


def load(
    recovered: Recovered, idempotency: IdempotencyTable, archive: RecordArchive, cache_size: int
) -> LedgerState:
    """The state a data directory holds; kept idempotency keys go back into ``idempotency``.

    The index files are trusted up to the snapshot (it synced them) and rebuilt from
    the journal after it; the last ``cache_size`` records replayed stay in memory.
    """
    loader = _Loader(idempotency, archive, cache_size)
    if recovered.snapshot is not None:
        loader.load_snapshot(recovered.snapshot, recovered)
    else:
        archive.truncate(0)
    for number, segment in enumerate(recovered.segments, start=recovered.first_segment):
        for found in segment.frames:
            loader.replay(found, segment, number)
    return loader.finish()


def snapshot_lsn(header: Frame) -> int:
    """The journal frame a snapshot covers up to, from its header frame."""
    try:
        fields = persistence.decode(header.payload)
        lsn, version = fields["lsn"], fields.get("format")
    except (ValueError, KeyError, TypeError):
        lsn = version = None
    if isinstance(version, int) and version != persistence.SNAPSHOT_FORMAT:
        raise JournalError(
            f"the snapshot is in format {version}, written by an earlier version of GoLedger; this "
            f"version reads format {persistence.SNAPSHOT_FORMAT} (the journal keeps the whole history)"
        )
    if not isinstance(lsn, int) or lsn < 0:
        raise JournalError(f"snapshot header at offset {header.offset} has no valid lsn")
    return lsn


class _Loader:
    def __init__(self, idempotency: IdempotencyTable, archive: RecordArchive, cache_size: int) -> None:
        self.state = LedgerState()
        self._idempotency = idempotency
        self._archive = archive
        self._recent: deque[persistence.Row] = deque(maxlen=cache_size)
        self._latest: dict[str, int] = {}

    def finish(self) -> LedgerState:
        trail = self.state.trail
        trail.latest, trail.recent = self._latest, [entry_from_row(row) for row in self._recent]
        return self.state

    def replay(self, found: Frame, segment: FileScan, number: int) -> None:
        """Apply one journal entry: the states it left behind, never its business rules; and
        index its rows."""
        state = self.state
        try:
            entry: dict[str, Any] = persistence.decode(found.payload)
            for row in entry.get("r", ()):
                self._record(row)
            for name, (balance, held, version) in entry.get("a", {}).items():
                account = state.accounts.get(name)
                if account is None:
                    state.accounts[name] = AccountState(name, balance, held, version)
                else:
                    account.balance, account.held, account.version = balance, held, version
            for name, digest in entry.get("c", {}).items():
                state.credentials[name] = bytes.fromhex(digest)
            for row in entry.get("h", ()):
                state.holds.put(HoldState.from_row(row))
            self._index(found, number, entry)
            if "i" in entry:
                self._key(entry["i"])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise JournalCorrupt(
                segment.path, found.offset, f"entry {found.lsn} cannot be replayed: {error!r}"
            ) from None

    def load_snapshot(self, scan: FileScan, recovered: Recovered) -> None:
        header = persistence.decode(scan.frames[0].payload)
        trail = self.state.trail
        try:
            trail.sequence, trail.last_hash = header["records"], header["last_hash"]
            self.state.holds.restore_ordinal(header["hold_ordinal"])
            self.state.checkpoint = checkpoint_from_row(header["checkpoint"])
        except (KeyError, TypeError, ValueError) as error:
            raise JournalCorrupt(scan.path, 0, f"the snapshot's header cannot be read: {error!r}") from None
        trail.checked = trail.sequence
        if self._archive.indexed < trail.sequence:
            self._rebuild_index(recovered, trail.sequence)
        self._archive.truncate(trail.sequence)
        counts: dict[str, int] = {}
        trailer: dict[str, Any] | None = None
        for found in scan.frames[1:]:
            if trailer is not None:
                raise JournalCorrupt(scan.path, found.offset, "data after the snapshot's trailer")
            chunk = persistence.decode(found.payload)
            if isinstance(chunk, dict):
                trailer = chunk
                continue
            name, rows = chunk
            counts[name] = counts.get(name, 0) + len(rows)
            try:
                self._section(name, rows)
            except (KeyError, TypeError, ValueError, LookupError) as error:
                raise JournalCorrupt(
                    scan.path, found.offset, f"snapshot chunk cannot be loaded: {error!r}"
                ) from None
        if trailer is None or trailer.get("counts") != counts:
            raise JournalCorrupt(scan.path, scan.size, "the snapshot is incomplete (no matching trailer)")

    def _rebuild_index(self, recovered: Recovered, records: int) -> None:
        """The index files lack records the snapshot covers (deleted, or copied without
        them): rebuild them from the segments before the snapshot, reading every frame."""
        _log.warning(
            "%s: %s holds %d of the %d records before the snapshot; rebuilding it from the journal",
            recovered.directory,
            RECORDS_INDEX,
            self._archive.indexed,
            records,
        )
        self._archive.truncate(0)
        lsn = 1
        for number in range(1, recovered.first_segment):
            path = recovered.directory / segment_name(number)
            scan = scan_file(path, SEGMENT_MAGIC, lsn, tail_allowed=False)
            for found in scan.frames:
                try:
                    entry = persistence.decode(found.payload)
                    self._index(found, number, entry)
                except (KeyError, TypeError, ValueError, IndexError) as error:
                    raise JournalCorrupt(
                        path, found.offset, f"entry {found.lsn} cannot be indexed: {error!r}"
                    ) from None
            lsn += len(scan.frames)

    def _index(self, found: Frame, number: int, entry: dict[str, Any]) -> None:
        """Add the places of an entry's record and hold rows to the index files."""
        record_spans, hold_spans = persistence.entry_spans(found.payload, entry)
        holds = [
            (ordinal, offset, length)
            for row, (offset, length) in zip(entry.get("h", ()), hold_spans, strict=True)
            if (ordinal := hold_ordinal(row[0])) is not None
        ]
        entries, hold_entries = frame_entries(number, found.offset + FRAME_HEADER_BYTES, record_spans, holds)
        self._archive.add(b"".join(entries), hold_entries)

    def _section(self, name: str, rows: list[persistence.Row]) -> None:
        state = self.state
        if name == "accounts":
            latest = self._latest
            for username, balance, held, version, digest, last in rows:
                state.accounts[username] = AccountState(username, balance, held, version)
                state.credentials[username] = bytes.fromhex(digest)
                if last:
                    latest[username] = last
        elif name == "latest":
            for username, sequence in rows:
                self._latest[username] = sequence
        elif name == "holds":
            for row in rows:
                state.holds.put(HoldState.from_row(row))
        elif name == "keys":
            for row in rows:
                self._key(row)
        elif name == "reversed":
            for transaction_id, amount in rows:
                state.reversed[transaction_id] = amount
        else:
            raise ValueError(f"unknown snapshot section {name!r}")

    def _record(self, row: persistence.Row) -> None:
        """Take a record read from the journal, checking its place in the chain.

        A record out of sequence, or not linked to the one before, is structural
        damage (``ValueError``: the start stops). Whether each record matches its
        hash is checked once the store runs (``MockDB._check_chain_in_background``):
        a trail that was edited still starts, so that it can be examined. Rows stay
        rows until the end of the load: only the last ``cache_size`` become records.
        """
        if len(row) < 13:
            raise ValueError("a record without history links, written by an earlier version of GoLedger")
        trail = self.state.trail
        sequence = row[0]
        if sequence != trail.sequence + 1 or row[9] != trail.last_hash:
            raise ValueError(f"audit record {sequence} does not follow record {trail.sequence}")
        trail.sequence, trail.last_hash = sequence, row[10]
        if row[2] == _REVERSAL and row[6] == _SUCCESS:  # its record journals what it reversed
            reversed_amounts = self.state.reversed
            original = row[_REVERSES]
            reversed_amounts[original] = reversed_amounts.get(original, 0) + row[5]
        self._recent.append(row)
        latest = self._latest
        for name in row[11]:
            latest[name] = sequence

    def _record_at(self, sequence: int) -> Transaction:
        recent = self._recent
        if recent and sequence >= recent[0][0]:
            return entry_from_row(recent[sequence - recent[0][0]])[0]
        return self._archive.read(sequence)[0]

    def _key(self, row: persistence.Row) -> None:
        username, key, fingerprint, created_at, outcome = row
        result = outcome_from_row(outcome, self._record_at)
        self._idempotency.restore(username, key, fingerprint, created_at, result)
