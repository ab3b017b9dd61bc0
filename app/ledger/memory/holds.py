"""Holds of ``MockDB``, and the background sweeper that expires idle ones.

``HoldBook`` has no lock of its own: it is part of the ledger's state and every
method must be called with ``MockDB._rw`` held for writing (reads: for reading).
The rules that change a hold are ``app.ledger.rules``'; the book indexes holds and
notes which changed, so that the journal entry of the change carries them.

``ExpirySweeper`` is a single daemon thread with a deadline-ordered heap. Its
condition variable guards only the heap; it is never held while the thread takes
the ledger's lock (the sweeper pops what is due, releases the condition, then asks
the store to expire), so it adds no lock-order edge.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from app.ledger.accounts import HoldState
from app.ledger.model import Hold, HoldStatus

_log = logging.getLogger("goledger.holds")


def hold_ordinal(hold_id: str) -> int | None:
    """The ordinal a hold id of this store carries (``hold_`` and 12 hex digits of it, then
    20 random ones), or ``None`` for an id of another shape."""
    digits = hold_id[5:17]
    if len(hold_id) != 37 or not digits.startswith("00"):
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


class HoldBook:
    """The pending holds by id, and each account's pending holds in deadline order.

    Holds are numbered as they are made (the ordinal is in the id). With a data
    directory, a resolved hold stays here only until the index files hold its final
    state (``forget_settled``); ``get`` then reads it back from disk through
    ``archived``. Without one, every hold stays.

    Each account with pending holds (as payer or payee) has a min-heap of
    ``(expires_at_s, hold_id)``: finding what is due costs what is due, never a scan
    of the account's holds, however many it has. A hold resolved before its deadline
    leaves a stale entry behind; stale entries are dropped when they reach the top,
    and an account's heap is rebuilt once they outnumber its pending holds.
    """

    def __init__(self) -> None:
        self._holds: dict[str, HoldState] = {}
        self._deadlines: dict[str, list[tuple[float, str]]] = {}
        #: How many pending holds each account has (only accounts with any): empty when no
        #: hold is pending, which lets a money operation skip looking for due ones.
        self.pending_by_account: dict[str, int] = {}
        self._changed: list[HoldState] = []
        self._ordinal = 0  # the last hold number given out
        #: Reads a hold's latest row from disk by ordinal (``None``: no data directory).
        self.archived: Callable[[int], list[Any] | None] | None = None
        # Resolved holds still here, with the last audit record of the entry that resolved them.
        self._settled: deque[tuple[int, str]] = deque()

    def new_id(self) -> str:
        """A new hold's id: its ordinal and 80 random bits."""
        self._ordinal += 1
        return f"hold_{self._ordinal:012x}{os.urandom(10).hex()}"

    def restore_ordinal(self, ordinal: int) -> None:
        self._ordinal = max(self._ordinal, ordinal)

    @property
    def ordinal(self) -> int:
        return self._ordinal

    def settled(self, states: Iterable[HoldState], sequence: int) -> None:
        """These holds' states were journaled with records up to ``sequence``; the resolved ones
        may leave memory once the index holds that record."""
        if self.archived is None:
            return
        for state in states:
            if state.status is not HoldStatus.PENDING:
                self._settled.append((sequence, state.id))

    def forget_settled(self, indexed: int) -> None:
        """Let resolved holds whose final state the index holds (records up to ``indexed``) go."""
        settled = self._settled
        while settled and settled[0][0] <= indexed:
            _, hold_id = settled.popleft()
            state = self._holds.get(hold_id)
            if state is not None and state.status is not HoldStatus.PENDING:
                del self._holds[hold_id]

    def __len__(self) -> int:
        """Holds in memory (the pending ones, and resolved ones not yet on disk)."""
        return len(self._holds)

    def forget_resolved(self) -> None:
        """Drop every resolved hold (a start: the index holds them all)."""
        self._holds = {key: state for key, state in self._holds.items() if state.status is HoldStatus.PENDING}

    def add(self, state: HoldState) -> None:
        self._holds[state.id] = state
        self._index(state)
        self._changed.append(state)

    def drain_changed(self) -> list[HoldState]:
        """The holds added or resolved since the last call (what a journal entry carries)."""
        changed, self._changed = self._changed, []
        return changed

    def put(self, state: HoldState) -> None:
        """Set a hold as the journal or a snapshot has it (replay: new or changed)."""
        self.restore_ordinal(hold_ordinal(state.id) or 0)
        previous = self._holds.get(state.id)
        self._holds[state.id] = state
        was_pending = previous is not None and previous.status is HoldStatus.PENDING
        if state.status is HoldStatus.PENDING and not was_pending:
            self._index(state)
        elif was_pending and state.status is not HoldStatus.PENDING:
            self._unindex(state)

    def pending(self) -> list[HoldState]:
        return [state for state in self._holds.values() if state.status is HoldStatus.PENDING]

    def resident(self, hold_id: str) -> HoldState | None:
        """The hold if it is in memory (every pending one is), never read from disk."""
        return self._holds.get(hold_id)

    def get(self, hold_id: str) -> HoldState | None:
        """The hold, from memory or (resolved) from disk; ``None``: no such hold."""
        state = self._holds.get(hold_id)
        if state is not None or self.archived is None:
            return state
        ordinal = hold_ordinal(hold_id)
        row = None if ordinal is None or ordinal > self._ordinal else self.archived(ordinal)
        return HoldState.from_row(row) if row is not None and row[0] == hold_id else None

    def resolved(self, state: HoldState) -> None:
        """Note that a rule resolved this hold: it is pending no more."""
        self._changed.append(state)
        self._unindex(state)

    def has_due(self, names: Iterable[str | None], now_s: float) -> bool:
        """Whether a hold of these accounts may be due (a read-only look: the caller may
        hold the lock for reading only). A stale entry can make it say so wrongly; the
        ``due`` that follows, under the write lock, drops it."""
        for name in names:
            heap = self._deadlines.get(name) if name is not None else None
            if heap and heap[0][0] <= now_s:
                return True
        return False

    def due(self, names: Iterable[str | None], now_s: float) -> list[HoldState]:
        """Pending holds of these accounts whose time is up, oldest deadline first.

        Takes them off the accounts' heaps: the caller (holding the write lock) expires
        every hold it returns before it releases the lock.
        """
        found: dict[str, HoldState] = {}
        for name in names:
            heap = self._deadlines.get(name) if name is not None else None
            while heap and heap[0][0] <= now_s:
                _, hold_id = heapq.heappop(heap)
                state = self._holds.get(hold_id)  # a stale entry's hold may have left memory
                if state is not None and state.status is HoldStatus.PENDING and state.expires_at_s <= now_s:
                    found[hold_id] = state
        return sorted(found.values(), key=lambda state: (state.expires_at_s, state.id))

    def all_due(self, now_s: float) -> list[HoldState]:
        return self.due(list(self._deadlines), now_s)

    def snapshot(self) -> list[Hold]:
        """The pending holds (what a verification checks the held money against)."""
        return [state.view() for state in self.pending()]

    def _index(self, state: HoldState) -> None:
        for name in (state.source, state.target):
            heapq.heappush(self._deadlines.setdefault(name, []), (state.expires_at_s, state.id))
            self.pending_by_account[name] = self.pending_by_account.get(name, 0) + 1

    def _unindex(self, state: HoldState) -> None:
        for name in (state.source, state.target):
            left = self.pending_by_account.get(name, 0) - 1
            if left <= 0:
                self.pending_by_account.pop(name, None)
                self._deadlines.pop(name, None)  # every entry left is stale
                continue
            self.pending_by_account[name] = left
            heap = self._deadlines[name]
            if len(heap) > 2 * left + 16:
                heap[:] = [entry for entry in heap if self._is_pending(entry[1])]
                heapq.heapify(heap)

    def _is_pending(self, hold_id: str) -> bool:
        state = self._holds.get(hold_id)
        return state is not None and state.status is HoldStatus.PENDING


class ExpirySweeper:
    """Calls ``expire(ids)`` with the holds whose scheduled deadline has passed.

    Only the ids popped from the heap are handed over, so a pass costs what is due,
    not a scan of every pending hold under the ledger's write lock. An id whose
    hold is already resolved is simply skipped by the callback, which may also
    ``schedule`` a hold again (the wall clock stepped back: not due after all).

    ``clock`` is the same wall clock the store uses for deadlines (injectable for
    tests); waits are on the real monotonic clock, bounded by ``max_wait_s`` so that
    a jump of the wall clock is noticed within that bound.
    """

    def __init__(
        self,
        expire: Callable[[list[str]], None],
        *,
        clock: Callable[[], float] = time.time,
        max_wait_s: float = 1.0,
    ) -> None:
        self._expire = expire
        self._clock = clock
        self._max_wait_s = max_wait_s
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, str]] = []
        self._stopped = False
        self._thread: threading.Thread | None = None

    def schedule(self, due_s: float, hold_id: str) -> None:
        with self._condition:
            if self._stopped:
                return
            heapq.heappush(self._heap, (due_s, hold_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="goledger-hold-sweeper", daemon=True)
                self._thread.start()
            self._condition.notify()

    def wake(self) -> None:
        """Look at the heap again now (tests advance their clock, then wake the sweeper)."""
        with self._condition:
            self._condition.notify()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._condition:
            self._stopped = True
            thread = self._thread
            self._condition.notify()
        if thread is not None:
            thread.join(timeout=timeout_s)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and not self._is_due():
                    self._condition.wait(self._wait_s())
                if self._stopped:
                    return
                now_s = self._clock()
                due_ids = []
                while self._heap and self._heap[0][0] <= now_s:
                    due_ids.append(heapq.heappop(self._heap)[1])
            try:
                self._expire(due_ids)
            except Exception:  # the sweeper must survive a bad moment (e.g. a lock timeout)
                _log.exception("hold sweeper: expiring due holds failed; will retry")
                with self._condition:
                    retry_at_s = self._clock() + self._max_wait_s
                    for hold_id in due_ids:
                        heapq.heappush(self._heap, (retry_at_s, hold_id))

    def _is_due(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= self._clock()

    def _wait_s(self) -> float | None:
        if not self._heap:
            return None
        return min(self._max_wait_s, max(0.0, self._heap[0][0] - self._clock()))
