"""Idempotency keys: each (user, key) runs once; retries get the first outcome back.

Locking
-------
One mutex, ``_lock``, guards the table and is only ever held for a few dictionary
operations: never while the operation runs, never together with a store lock. A
request that finds its key in flight waits on that entry's event (bounded by its
own deadline), not on the mutex.

What is kept
------------
The outcome of the first request with a key: its result, or its business failure
(``insufficient_funds``, ``version_conflict``…), so that a retry gets the same status
and body. A timeout or an unexpected error applied nothing and is *not* kept: the
key is released and a retry runs afresh; so is an operation the journal could not
make durable (``storage_unavailable``: no retry can run before a restart, which
replays the key's outcome if the operation reached the disk after all).

With a journal, the store writes a key's outcome in the same journal entry as the
operation (so a crash cannot separate them), hands it to ``record`` under its audit
lock, and on start puts every kept key back with ``restore``. Keys live at least ``ttl_s`` (24 hours);
older ones are dropped as new ones arrive. The table holds at most ``max_keys``
entries: when every slot holds a key younger than ``ttl_s``, new keys are refused
(``503 idempotency_store_full``) rather than forgetting a promise early. One user may
hold at most ``max_keys_per_user`` of them, so that a single client cannot fill the
table for everyone: past its share, that user alone is refused the same way.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from app.ledger.errors import (
    IdempotencyKeyReused,
    IdempotencyStoreFull,
    LedgerError,
    OperationTimeout,
    StorageUnavailable,
)
from app.ledger.model import Deadline
from app.ledger.outcomes import Outcome, Result

KEY_TTL_S = 24 * 3600.0
DEFAULT_MAX_KEYS = 1_000_000
#: One user's share of the table by default (a hundredth).
DEFAULT_MAX_KEYS_PER_USER = 10_000


#: Failures that applied nothing durable: the key is released, not kept.
NOT_KEPT = (OperationTimeout, StorageUnavailable)


#: Shared by every finished entry, so that a kept key does not keep an Event
#: (about a kilobyte) alive for 24 hours.
_FINISHED = threading.Event()
_FINISHED.set()


class _Entry:
    __slots__ = ("created_at", "done", "fingerprint", "journaled", "result")

    def __init__(self, fingerprint: str, created_at: float) -> None:
        self.fingerprint = fingerprint
        self.created_at = created_at
        self.done = threading.Event()
        #: The answer, set once it may be given: what waiters and retries get back.
        self.result: Result | LedgerError | None = None
        #: The outcome as the journal holds it, before it is durable (for snapshots only:
        #: never answered from, since the operation may still fail to become durable).
        self.journaled: Result | LedgerError | None = None


class IdempotencyTable:
    def __init__(
        self,
        *,
        ttl_s: float = KEY_TTL_S,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_keys_per_user: int = DEFAULT_MAX_KEYS_PER_USER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._max_keys_per_user = max_keys_per_user
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._per_user: dict[str, int] = {}  # keys held by each user (under _lock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def run(
        self,
        username: str,
        key: str,
        fingerprint: str,
        deadline: Deadline,
        operation: Callable[[], Result],
    ) -> Outcome:
        """Run ``operation`` once for ``(username, key)``; replay its outcome afterwards."""
        slot = (username, key)
        while True:
            entry, owner = self._claim(slot, fingerprint)
            if owner:
                return self._run_owned(slot, entry, operation)
            if entry.fingerprint != fingerprint:
                raise IdempotencyKeyReused("This Idempotency-Key was used with different parameters.")
            if not entry.done.wait(deadline.remaining_s()):
                raise OperationTimeout(
                    "A request with this Idempotency-Key is still in flight; retry to get its outcome."
                )
            if entry.result is not None:
                return Outcome(entry.result, replayed=True)
            # The first request applied nothing and released the key: try to run it.

    def _claim(self, slot: tuple[str, str], fingerprint: str) -> tuple[_Entry, bool]:
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(slot)
            if entry is not None:
                return entry, False
            if len(self._entries) >= self._max_keys:
                raise IdempotencyStoreFull(
                    "Too many idempotency keys are held; retry later or send the request without a key."
                )
            if self._per_user.get(slot[0], 0) >= self._max_keys_per_user:
                raise IdempotencyStoreFull(
                    f"You hold {self._max_keys_per_user} idempotency keys younger than a day, your share; "
                    "retry later or send the request without a key."
                )
            entry = _Entry(fingerprint, now)
            self._add(slot, entry)
            return entry, True

    def _run_owned(self, slot: tuple[str, str], entry: _Entry, operation: Callable[[], Result]) -> Outcome:
        try:
            result: Result | LedgerError = operation()
        except NOT_KEPT:
            self._release(slot, entry)
            raise
        except LedgerError as error:
            result = error
        except BaseException:
            self._release(slot, entry)
            raise
        entry.result = result
        _finish(entry)
        return Outcome(result, replayed=False)

    def record(self, username: str, key: str, outcome: Result | LedgerError) -> None:
        """Note a claimed key's outcome as soon as it is journaled, before it is durable.

        A snapshot taken from then on keeps the key. Nobody is answered from it: the
        answer is set by ``run`` once the operation has returned, durable.
        """
        with self._lock:
            entry = self._entries.get((username, key))
            if entry is not None:
                entry.journaled = outcome

    def restore(
        self, username: str, key: str, fingerprint: str, created_at: float, outcome: Result | LedgerError
    ) -> None:
        """Put back a key read from the journal or a snapshot (replay, in journal order)."""
        entry = _Entry(fingerprint, created_at)
        entry.result = outcome
        _finish(entry)
        with self._lock:
            self._add((username, key), entry)

    def kept(self) -> list[tuple[str, str, str, float, Result | LedgerError]]:
        """Every key with an outcome, answered or journaled:
        ``(username, key, fingerprint, created_at, outcome)``."""
        with self._lock:
            kept = []
            for (username, key), entry in self._entries.items():
                outcome = entry.result if entry.result is not None else entry.journaled
                if outcome is not None:
                    kept.append((username, key, entry.fingerprint, entry.created_at, outcome))
            return kept

    def _release(self, slot: tuple[str, str], entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(slot) is entry:
                self._remove(slot)
        _finish(entry)

    def _add(self, slot: tuple[str, str], entry: _Entry) -> None:
        """Hold ``entry`` under ``slot`` (the caller holds ``_lock``)."""
        if slot not in self._entries:
            self._per_user[slot[0]] = self._per_user.get(slot[0], 0) + 1
        self._entries[slot] = entry

    def _remove(self, slot: tuple[str, str]) -> None:
        """Drop the entry under ``slot`` (the caller holds ``_lock``)."""
        del self._entries[slot]
        left = self._per_user[slot[0]] - 1
        if left:
            self._per_user[slot[0]] = left
        else:
            del self._per_user[slot[0]]

    def _expire(self, now: float) -> None:
        """Drop keys past their retention (oldest first; the caller holds ``_lock``)."""
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.created_at < self._ttl_s or not oldest.done.is_set():
                return
            self._remove(next(iter(self._entries)))


def _finish(entry: _Entry) -> None:
    """Wake the waiters (they hold the entry's own event) and drop that event."""
    event = entry.done
    entry.done = _FINISHED
    event.set()
