"""Audit records and resolved holds on disk: where each one is, and reading them back.

The journal's segments are the ledger's permanent record: they are never deleted,
and each record's row sits in them as one JSON array (``persistence.entry_payload``
lays entries out so). Two index files say where:

``records.idx``
    16 bytes per audit record, in sequence order (record ``s`` at byte ``(s - 1) * 16``):
    the segment number (u32), the row's length (u32) and its byte offset in that
    segment (u64).
``holds.idx``
    16 bytes per hold, at byte ``ordinal * 16`` (a hold id carries its ordinal): where
    the row of the hold's latest state is, the same way; zeros for a hold never written.

Both are written by the journal's leader right after the frames they point into
(before the sync that acknowledges them), without a sync of their own: they are
derived data. A snapshot syncs them before it is put in place, and a start rebuilds
the entries of the journal after the snapshot from the journal itself, so a crash
can never leave an index pointing at a record that is not there.

Reads take no lock of the store's: written records never change, and the store only
reads a record from disk once the index holds it (``RecordArchive.indexed``).
``_lock`` guards only the table of open segment files (at most ``MAX_OPEN_SEGMENTS``,
none closed while a read uses it).
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from app.ledger.memory.files import FILE_MODE, JournalCorrupt, segment_name
from app.ledger.memory.persistence import Row, record_from_row
from app.ledger.model import Transaction

ENTRY = struct.Struct("<IIQ")
#: Journal segments kept open for reading at once (a segment holds about 50,000 records by
#: default; the usual limit of open files is 1,024).
MAX_OPEN_SEGMENTS = 256
RECORDS_INDEX = "records.idx"
HOLDS_INDEX = "holds.idx"

#: A record read back: the record, the accounts whose history shows it, and for each of
#: them the sequence of their record before it (0: none).
Entry = tuple[Transaction, tuple[str, ...], tuple[int, ...]]


def frame_entries(
    segment: int,
    payload_at: int,
    records: Iterable[tuple[int, int]],
    holds: Iterable[tuple[int, int, int]],
) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """The index entries of one journal frame whose payload starts at byte ``payload_at`` of
    ``segment``: one per record row ``(offset, length)`` in the payload, in order, and one
    per hold row ``(ordinal, offset, length)``."""
    pack = ENTRY.pack
    return (
        [pack(segment, length, payload_at + offset) for offset, length in records],
        [(ordinal, pack(segment, length, payload_at + offset)) for ordinal, offset, length in holds],
    )


def entry_from_row(row: Row) -> Entry:
    record, parties = record_from_row(row)
    return record, tuple(parties), tuple(row[12])


class RecordArchive:
    """The index files of one data directory, and reads of the rows they point at.

    ``read_only`` (offline verification): the files are never changed; the entries a
    start rebuilds are kept in memory instead.
    """

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        self._directory = directory
        self._read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT
        self._records_fd = _open(directory / RECORDS_INDEX, flags)
        self._holds_fd = _open(directory / HOLDS_INDEX, flags)
        size = 0 if self._records_fd < 0 else os.fstat(self._records_fd).st_size
        #: Records the index holds (the leader, or a start, advances it; others only read it).
        self.indexed = size // ENTRY.size
        # Entries a read-only start rebuilt, from record ``_overlay_first`` on; and holds'.
        self._overlay_first = self.indexed + 1 if read_only else 2**63
        self._overlay = bytearray()
        self._hold_overlay: dict[int, bytes] = {}
        self._lock = threading.Lock()  # guards _segments
        #: Open segment files, least recently read first: number -> [fd, reads in progress].
        self._segments: OrderedDict[int, list[int]] = OrderedDict()

    # -- writing (the journal's leader, or a start before the store is shared) ----

    def truncate(self, records: int) -> None:
        """Forget index entries past record ``records`` (a start rebuilds them from the journal)."""
        if records > self.indexed:
            raise JournalCorrupt(
                self._directory / RECORDS_INDEX,
                self.indexed * ENTRY.size,
                f"the index ends at record {self.indexed}, before the snapshot's {records}",
            )
        if self._read_only:
            self._overlay_first, self._overlay = records + 1, bytearray()
        else:
            os.ftruncate(self._records_fd, records * ENTRY.size)
        self.indexed = records

    def add(self, entries: bytes, holds: list[tuple[int, bytes]]) -> None:
        """Append the entries of the records after ``indexed``; set the holds' entries."""
        if self._read_only:
            self._overlay += entries
            for ordinal, entry in holds:
                self._hold_overlay[ordinal] = entry
        else:
            if entries:
                _write_at(self._records_fd, entries, self.indexed * ENTRY.size)
            for ordinal, entry in holds:
                _write_at(self._holds_fd, entry, ordinal * ENTRY.size)
        self.indexed += len(entries) // ENTRY.size

    def sync(self) -> None:
        """Make the index files durable (before a snapshot that relies on them)."""
        if not self._read_only:
            os.fsync(self._records_fd)
            os.fsync(self._holds_fd)

    # -- reading ------------------------------------------------------------------

    def read(self, sequence: int) -> Entry:
        """Record ``sequence`` (it must be indexed)."""
        return self.read_range(sequence, sequence)[0]

    def _decode(self, data: bytes, segment: int, offset: int, sequence: int) -> Entry:
        try:
            entry = entry_from_row(orjson.loads(data))
            if entry[0].sequence != sequence:
                raise ValueError(f"the row there is record {entry[0].sequence}'s, not {sequence}'s")
            return entry
        except (ValueError, TypeError, IndexError, KeyError) as error:
            raise JournalCorrupt(
                self._directory / segment_name(segment),
                offset,
                f"no audit record where the index points: {error}",
            ) from None

    def read_range(self, first: int, last: int) -> list[Entry]:
        """Records ``first`` to ``last`` (indexed), with one read per segment they span."""
        return [
            self._decode(data, segment, offset, sequence)
            for sequence, (segment, offset, data) in enumerate(self._stored(first, last), start=first)
        ]

    def encoded_rows(self, first: int, last: int) -> list[bytes]:
        """The stored bytes of records ``first`` to ``last``'s rows (indexed), undecoded; the
        first and the last checked to start as the rows of their records."""
        found = [data for _, _, data in self._stored(first, last)]
        for sequence in (first, last) if found else ():
            if not found[sequence - first].startswith(b"[%d," % sequence):
                path, offset = self._directory / RECORDS_INDEX, (sequence - 1) * ENTRY.size
                raise JournalCorrupt(path, offset, f"no row of record {sequence} where the index points")
        return found

    def _stored(self, first: int, last: int) -> list[tuple[int, int, bytes]]:
        """(segment, offset, bytes) of the rows of records ``first`` to ``last``, read with
        one ``pread`` per segment they span."""
        if last < first:
            return []
        found: list[tuple[int, int, bytes]] = []
        locations = ENTRY.iter_unpack(self._entries(first, last - first + 1))
        for segment, run in itertools.groupby(locations, key=itemgetter(0)):
            rows = list(run)
            low = rows[0][2]
            data = self._pread(segment, rows[-1][2] + rows[-1][1] - low, low)
            found.extend(
                (segment, offset, data[offset - low : offset - low + length]) for _, length, offset in rows
            )
        return found

    def hold_row(self, ordinal: int) -> list[Any] | None:
        """The latest row written for hold ``ordinal``, or ``None``."""
        if ordinal in self._hold_overlay:
            data = self._hold_overlay[ordinal]
        elif self._holds_fd < 0:
            return None
        else:
            data = os.pread(self._holds_fd, ENTRY.size, ordinal * ENTRY.size)
        if len(data) < ENTRY.size:
            return None
        segment, length, offset = ENTRY.unpack(data)
        if not length:
            return None
        row: list[Any] = orjson.loads(self._pread(segment, length, offset))
        return row

    def _entries(self, first: int, count: int) -> bytes:
        if first < 1 or first + count - 1 > self.indexed:
            raise LookupError(f"records {first}..{first + count - 1} are not on disk")
        if first >= self._overlay_first:
            start = (first - self._overlay_first) * ENTRY.size
            return bytes(self._overlay[start : start + count * ENTRY.size])
        head = min(count, self._overlay_first - first)
        data = os.pread(self._records_fd, head * ENTRY.size, (first - 1) * ENTRY.size)
        if len(data) != head * ENTRY.size:
            raise JournalCorrupt(self._directory / RECORDS_INDEX, (first - 1) * ENTRY.size, "cut short")
        if head < count:
            data += bytes(self._overlay[: (count - head) * ENTRY.size])
        return data

    def _pread(self, segment: int, length: int, offset: int) -> bytes:
        """``length`` bytes at ``offset`` of a journal segment, through a bounded table of open
        files: at most ``MAX_OPEN_SEGMENTS`` stay open (the least recently read closed first),
        and a file is never closed while a read uses it."""
        with self._lock:
            entry = self._segments.get(segment)
            if entry is None:
                entry = self._segments[segment] = [
                    os.open(self._directory / segment_name(segment), os.O_RDONLY),
                    0,
                ]
            else:
                self._segments.move_to_end(segment)
            entry[1] += 1
            if len(self._segments) > MAX_OPEN_SEGMENTS:
                for number, (fd, readers) in list(self._segments.items()):
                    if len(self._segments) <= MAX_OPEN_SEGMENTS:
                        break
                    if not readers:
                        os.close(fd)
                        del self._segments[number]
        try:
            return os.pread(entry[0], length, offset)
        finally:
            with self._lock:
                entry[1] -= 1

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._segments.values():
                os.close(fd)
            for fd in (self._records_fd, self._holds_fd):
                if fd >= 0:
                    os.close(fd)
            self._segments.clear()
            self._records_fd = self._holds_fd = -1


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        if flags == os.O_RDONLY:
            return -1
        raise


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("an index write made no progress")
        view, offset = view[written:], offset + written
