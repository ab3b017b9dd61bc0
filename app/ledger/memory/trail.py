"""``MockDB``'s audit trail: every record, each account's history, the chain's head.

Locking
-------
``AuditTrail._lock`` guards the records, the per-account index, the last hash and
how far health has checked the chain. It is taken after the store's balance lock
and before the idempotency table's and the journal's mutexes (``append`` queues
the change's journal entry while it holds it, so the journal's order is the audit
order). ``_check_lock`` (one incremental chain check at a time) is taken before
``_lock``, with no other lock held. Records are immutable: copies of the list are
handed out, never the list itself.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from app.ledger.audit import GENESIS_HASH, Verification, check_chain
from app.ledger.model import Transaction, new_id, utc_now_iso
from app.ledger.records import RecordDraft

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TrailCopy:
    """The whole trail as of one instant (for a snapshot or a verification)."""

    records: list[Transaction]
    index: dict[str, list[int]]
    last_hash: str


class AuditTrail:
    """The hash-chained audit records of one ledger, in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Transaction] = []
        self._by_account: dict[str, list[int]] = {}
        self._last_hash = GENESIS_HASH
        # Health re-checks only the records it has not checked yet; a full
        # verification that failed marks the trail broken until the next one passes.
        self._checked = 0
        self._problem: str | None = None
        self._check_lock = threading.Lock()

    def restore(self, records: list[Transaction], index: dict[str, list[int]], last_hash: str) -> None:
        """Adopt a trail read from disk (before the store is shared)."""
        self._records, self._by_account, self._last_hash = records, index, last_hash

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def append(
        self,
        drafts: Sequence[RecordDraft],
        keep: Callable[[list[Transaction]], None] | None = None,
    ) -> list[Transaction]:
        """Seal ``drafts`` onto the chain, in order, with one timestamp; ``keep`` (queueing
        their journal entry) runs before the lock is released."""
        created_at = utc_now_iso()
        ids = [new_id("tx_") for _ in drafts]
        sealed: list[Transaction] = []
        with self._lock:
            records, by_account, last_hash = self._records, self._by_account, self._last_hash
            for record_id, draft in zip(ids, drafts, strict=True):
                record = draft.seal(last_hash, len(records) + 1, record_id, created_at)
                records.append(record)
                last_hash = record.hash
                for name in draft.shown_to():
                    by_account.setdefault(name, []).append(record.sequence)
                sealed.append(record)
            self._last_hash = last_hash
            if keep is not None:
                keep(sealed)
        return sealed

    def history(
        self, username: str, before: int | None, limit: int
    ) -> tuple[tuple[Transaction, ...], int | None]:
        """Up to ``limit`` of ``username``'s records before sequence ``before``, newest first;
        and the sequence to continue before (``None``: that was the oldest)."""
        with self._lock:
            sequences = self._by_account.get(username, [])
            end = len(sequences) if before is None else bisect.bisect_left(sequences, before)
            start = max(0, end - limit)
            chosen = sequences[start:end]
            records = tuple(self._records[sequence - 1] for sequence in reversed(chosen))
        return records, chosen[0] if start > 0 else None

    def page(self, after: int, limit: int, last: int | None) -> tuple[tuple[Transaction, ...], bool]:
        """Up to ``limit`` records after sequence ``after`` (and at most up to ``last``);
        and whether more follow."""
        with self._lock:
            end = len(self._records) if last is None else min(last, len(self._records))
            records = tuple(self._records[after : min(after + limit, end)])
        return records, after + limit < end

    def copy(self, during: Callable[[], T]) -> tuple[TrailCopy, T]:
        """The whole trail, and what ``during`` returns when run at the same instant (under the lock)."""
        with self._lock:
            value = during()
            index = {name: list(sequences) for name, sequences in self._by_account.items()}
            return TrailCopy(list(self._records), index, self._last_hash), value

    def records(self) -> list[Transaction]:
        with self._lock:
            return list(self._records)

    # -- the chain's health ------------------------------------------------------

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
                start = self._checked
                fresh = self._records[start:]
                previous_hash = self._records[start - 1].hash if start else GENESIS_HASH
            problems = check_chain(fresh, previous_hash, start + 1)
            with self._lock:
                if problems:
                    self._problem = problems[0]
                elif self._checked == start:
                    self._checked = start + len(fresh)
                return self._problem is None
        finally:
            self._check_lock.release()
