"""``MockDB``'s audit trail: the chain's head, each account's latest record, recent records.

Each record names, for each account whose history shows it, that account's record
before it (its *links*), so an account's history is a walk back from its latest
record, one record a step: the trail keeps one sequence number per account, never
an index of every record.

Without a data directory every record stays in memory. With one, only the most
recent ``cache_size`` records do (a few more while the journal's leader has not
indexed them yet); older ones are read back from the journal through
``RecordArchive``, so what the store keeps grows with its accounts, not its history.

Locking
-------
``AuditTrail._lock`` guards the recent records, the chain's head, each account's
latest record and how far health has checked the chain. It is taken after the
store's balance lock and before the idempotency table's and the journal's mutexes
(``append`` queues the change's journal entry while it holds it, so the journal's
order is the audit order). ``_check_lock`` (one incremental chain check at a time)
is taken before ``_lock``, with no other lock held. ``RecordIndex._lock`` may be held
while ``_lock`` is taken (the index reads records). Records are immutable; reads
from disk take no lock (what the index holds never changes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from app.ledger.audit import GENESIS_HASH, Replay, Verification, check_chain
from app.ledger.errors import InvalidInput
from app.ledger.memory.archive import Entry, RecordArchive
from app.ledger.model import RandomHex, Transaction, id_stamp, utc_now_iso
from app.ledger.records import RecordDraft, settle_balances

T = TypeVar("T")

#: A record kept as a plain tuple, as the ``Transaction`` it is.
as_record = Transaction._make
#: A record's parties (the accounts whose history shows it) and, for each, its previous record.
Meta = tuple[tuple[str, ...], tuple[int, ...]]
#: Records read from memory or disk at a time by a stream.
STREAM_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class TrailHead:
    """The trail as of one instant (for a snapshot or a verification)."""

    sequence: int
    last_hash: str
    latest: dict[str, int]


@dataclass(slots=True)
class Restored:
    """A trail read back from disk: its head, each account's latest record, recent records."""

    sequence: int = 0
    last_hash: str = GENESIS_HASH
    latest: dict[str, int] | None = None
    recent: list[Entry] | None = None
    #: Records up to here were checked when their checkpoint was made (health resumes after).
    checked: int = 0


class AuditTrail:
    """The hash-chained audit records of one ledger: recent ones in memory, the rest on disk."""

    def __init__(self, cache_size: int | None = None) -> None:
        """``cache_size``: records kept in memory once a data directory holds them all
        (``None``: keep every record, as a ledger without a data directory must)."""
        self._lock = threading.Lock()
        # The records _first.._sequence, oldest first, with their parties and links.
        # Each record as a plain tuple of its fields: a named tuple is never untracked by the
        # garbage collector, a plain one of strings and integers is, so that its full passes
        # do not walk every record a ledger in memory holds (``as_record`` makes it one again).
        self._records: list[tuple[Any, ...]] = []
        self._parties: list[Meta] = []
        self._first = 1
        self._sequence = 0
        self._latest: dict[str, int] = {}
        # Every account's balance as of the last record: each record carries its parties'
        # balances right after it (``records.settle_balances``), set as it is sealed.
        self._balances: dict[str, int] = {}
        self._last_hash = GENESIS_HASH
        self._random = RandomHex()  # the random part of record ids (under _lock)
        self._cache_size = cache_size
        self._archive: RecordArchive | None = None
        # Health re-checks only the records it has not checked yet; a full
        # verification that failed marks the trail broken until the next one passes.
        self._checked = 0
        self._problem: str | None = None
        self._check_lock = threading.Lock()
        self._stopping = threading.Event()  # a closing store: a running check ends early

    def restore(self, restored: Restored, archive: RecordArchive | None, balances: dict[str, int]) -> None:
        """Adopt a trail read from disk (before the store is shared), and every account's
        balance as of its last record."""
        self._balances = balances
        recent = restored.recent or []
        self._records = [tuple(record) for record, _, _ in recent]
        self._parties = [(parties, links) for _, parties, links in recent]
        self._sequence, self._last_hash = restored.sequence, restored.last_hash
        self._first = restored.sequence - len(recent) + 1
        self._latest = dict(restored.latest or {})
        self._archive = archive
        self._checked = restored.checked

    def __len__(self) -> int:
        return self._sequence

    @property
    def sequence(self) -> int:
        """The last record's sequence (a plain read: it only grows)."""
        return self._sequence

    def append(
        self,
        drafts: Sequence[RecordDraft],
        keep: Callable[[list[Transaction], list[Meta], list[bytes]], None] | None = None,
    ) -> list[Transaction]:
        """Seal ``drafts`` onto the chain, in order, with one timestamp; ``keep`` (queueing
        their journal entry, given the records, their parties and links, and their
        canonical encodings) runs before the lock is released."""
        created_at = utc_now_iso()
        id_prefix = id_stamp("tx_")
        sealed: list[Transaction] = []
        metas: list[Meta] = []
        encodings: list[bytes] = []
        with self._lock:
            last_hash, sequence = self._last_hash, self._sequence
            take_random, link_latest = self._random.take, self._link_latest
            settle_balances(drafts, self._balances)
            for draft in drafts:
                sequence += 1
                record, encoding = draft.seal_encoded(
                    last_hash, sequence, id_prefix + take_random(), created_at
                )
                last_hash = record.hash
                parties = draft.shown_to()
                sealed.append(record)
                metas.append((parties, link_latest(parties, sequence)))
                if keep is not None:
                    encodings.append(encoding)
            self._records.extend(map(tuple, sealed))
            self._parties += metas
            self._sequence, self._last_hash = sequence, last_hash
            if keep is not None:
                keep(sealed, metas, encodings)
            if self._archive is not None and self._cache_size is not None:
                self._trim(self._cache_size, self._archive.indexed)
        return sealed

    def append_one(self, draft: RecordDraft) -> Transaction:
        """``append`` of one draft with nothing to keep (a ledger in memory only): the same
        record, without the lists a batch needs."""
        created_at = utc_now_iso()
        record_id = id_stamp("tx_")
        with self._lock:
            sequence = self._sequence + 1
            settle_balances((draft,), self._balances)
            record, _ = draft.seal_encoded(
                self._last_hash, sequence, record_id + self._random.take(), created_at
            )
            parties = draft.shown_to()
            self._records.append(tuple(record))
            self._parties.append((parties, self._link_latest(parties, sequence)))
            self._sequence, self._last_hash = sequence, record.hash
        return record

    def _link_latest(self, parties: tuple[str, ...], sequence: int) -> tuple[int, ...]:
        """Each party's latest record before ``sequence``, which becomes their latest."""
        latest = self._latest
        if len(parties) == 2:  # a success between two accounts, the common case
            first, second = parties
            pair = (latest.get(first, 0), latest.get(second, 0))
            latest[first] = latest[second] = sequence
            return pair
        if len(parties) == 1:  # a deposit, a withdrawal, a failure
            (only,) = parties
            previous = latest.get(only, 0)
            latest[only] = sequence
            return (previous,)
        return ()

    def _trim(self, size: int, indexed: int) -> None:
        """Drop the oldest cached records beyond ``size`` that the index holds (under the lock).

        Trims in steps of an eighth of the cache (at least 64 records), so the list is
        not shifted on every append.
        """
        excess = len(self._records) - size
        if excess < max(64, size // 8):
            return
        cut = min(excess, indexed - self._first + 1)
        if cut > 0:
            del self._records[:cut]
            del self._parties[:cut]
            self._first += cut

    # -- reading records ------------------------------------------------------------

    def entry(self, sequence: int) -> Entry | None:
        """Record ``sequence`` with its parties and links (memory or disk), or ``None``."""
        with self._lock:
            index = sequence - self._first
            if 0 <= index < len(self._records):
                return as_record(self._records[index]), *self._parties[index]
            on_disk = 1 <= sequence < self._first
        if not on_disk or self._archive is None:
            return None
        return self._archive.read(sequence)

    def history(
        self, username: str, before: int | None, limit: int, upto: int | None
    ) -> tuple[tuple[Transaction, ...], int | None]:
        """Up to ``limit`` of ``username``'s records before sequence ``before`` (and at most
        ``upto``), newest first; and the sequence to continue before (``None``: that was
        the oldest). ``before`` must be one of ``username``'s records (a cursor this
        trail issued), else ``invalid_cursor``."""
        if before is None:
            with self._lock:
                sequence = self._latest.get(username, 0)
        else:
            sequence = self._link(self.own_entry(username, before), username)
        while upto is not None and sequence > upto:  # not durable yet: always in memory
            sequence = self._link(self.own_entry(username, sequence), username)
        found: list[Transaction] = []
        while sequence and len(found) < limit:
            entry = self.own_entry(username, sequence)
            found.append(entry[0])
            sequence = self._link(entry, username)
        return tuple(found), found[-1].sequence if sequence and found else None

    def own_entry(self, username: str, sequence: int) -> Entry:
        """Record ``sequence`` as an entry, if ``username``'s history shows it; else
        ``invalid_cursor`` (a history cursor names one of the account's records)."""
        entry = self.entry(sequence)
        if entry is None or username not in entry[1]:
            raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.")
        return entry

    @staticmethod
    def _link(entry: Entry, username: str) -> int:
        _, parties, links = entry
        return links[parties.index(username)]

    def page(self, after: int, limit: int, last: int | None) -> tuple[tuple[Transaction, ...], bool]:
        """Up to ``limit`` records after sequence ``after`` (and at most up to ``last``);
        and whether more follow."""
        end = self._sequence if last is None else min(last, self._sequence)
        records = self.read(after + 1, min(after + limit, end))
        return tuple(records), after + limit < end

    def read(self, first: int, last: int) -> list[Transaction]:
        """Records ``first`` to ``last``: the older ones from disk, the recent from memory."""
        if last < first:
            return []
        with self._lock:
            split = self._first
            start = max(first, split)
            cached = (
                list(map(as_record, self._records[start - self._first : last - self._first + 1]))
                if start <= last
                else []
            )
        older: list[Transaction] = []
        if first < split and self._archive is not None:
            older = [record for record, _, _ in self._archive.read_range(first, min(last, split - 1))]
        return older + cached

    def entries(self, first: int, last: int) -> list[Entry]:
        """``read``'s records with their parties and links (what the record index needs)."""
        if last < first:
            return []
        with self._lock:
            split = self._first
            cached = [
                (as_record(self._records[index]), *self._parties[index])
                for index in range(max(first, split) - split, last - split + 1)
            ]
        older: list[Entry] = []
        if first < split and self._archive is not None:
            older = self._archive.read_range(first, min(last, split - 1))
        return older + cached

    def stream(self, first: int, last: int) -> Iterator[Transaction]:
        """Records ``first`` to ``last`` in order, ``STREAM_CHUNK`` at a time."""
        for low in range(first, last + 1, STREAM_CHUNK):
            yield from self.read(low, min(low + STREAM_CHUNK - 1, last))

    def verify_into(self, replay: Replay, last: int) -> None:
        """Feed records ``replay.sequence + 1`` to ``last`` to ``replay``: every record the
        index holds as the journal keeps it (not the cached copy), the rest from memory."""
        first = replay.sequence + 1
        with self._lock:
            split = self._first if self._archive is None else min(self._archive.indexed + 1, last + 1)
        if self._archive is not None:
            for low in range(first, split, STREAM_CHUNK):
                replay.add_encoded_rows(
                    self._archive.encoded_rows(low, min(low + STREAM_CHUNK - 1, split - 1))
                )
        replay.add_all(self.stream(max(first, split), last))

    def head(self, during: Callable[[], T]) -> tuple[TrailHead, T]:
        """The trail's head and each account's latest record, and what ``during`` returns
        when run at the same instant (under the lock)."""
        with self._lock:
            value = during()
            return TrailHead(self._sequence, self._last_hash, self._latest.copy()), value

    def tip(self) -> tuple[int, str]:
        """The last record's sequence and hash, read together."""
        with self._lock:
            return self._sequence, self._last_hash

    def cached(self) -> int:
        """How many records are in memory."""
        with self._lock:
            return len(self._records)

    # -- the chain's health ------------------------------------------------------

    def stop_checking(self) -> None:
        """The store is closing: a chain check that runs ends at its next stretch."""
        self._stopping.set()

    def verified(self, report: Verification) -> None:
        """A full verification's verdict: broken until the next one passes."""
        with self._lock:
            self._problem = None if report.ok else report.problems[0]

    @property
    def problem(self) -> str | None:
        with self._lock:
            return self._problem

    def check_new_records(self, *, wait: bool = False) -> bool:
        """Check the stretch of the chain appended since the last check (health's share).

        While another check runs (the one started at boot over a long trail), a
        health probe does not wait for it unless ``wait``: it reports what is known.
        """
        if not self._check_lock.acquire(blocking=wait):
            with self._lock:
                return self._problem is None
        try:
            with self._lock:
                start, end = self._checked, self._sequence
            previous = self.entry(start) if start else None
            previous_hash = GENESIS_HASH if previous is None else previous[0].hash
            problems: list[str] = []
            for low in range(start + 1, end + 1, STREAM_CHUNK):
                if self._stopping.is_set():
                    return self.problem is None  # unfinished: the next check starts where this one did
                fresh = self.read(low, min(low + STREAM_CHUNK - 1, end))
                problems = check_chain(fresh, previous_hash, low)
                if problems or not fresh:
                    break
                previous_hash = fresh[-1].hash
            with self._lock:
                if problems:
                    self._problem = problems[0]
                elif self._checked == start:
                    self._checked = end
                return self._problem is None
        finally:
            self._check_lock.release()
