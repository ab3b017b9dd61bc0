"""Per-process operation counters for ``/metrics`` and ``/system/health``.

One mutex guards them and is held only for a few dictionary updates, never across
I/O. With several worker processes each counts its own operations (Prometheus
adds them up across scrape targets).
"""

from __future__ import annotations

import bisect
import threading
import time

from app.ledger.store import LOCK_WAIT_BUCKETS_S

#: A lock wait that ran past its deadline this recently makes health "degraded".
LOCK_TROUBLE_WINDOW_S = 60.0


class OperationCounters:
    def __init__(self, *, lock_trouble_after_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._operation_count = 0
        self._operations: dict[tuple[str, str], int] = {}
        self._lock_wait_buckets = [0] * (len(LOCK_WAIT_BUCKETS_S) + 1)
        self._lock_wait_sum_s = 0.0
        self._last_lock_timeout_at: float | None = None
        self._lock_trouble_after_s = lock_trouble_after_s
        self._aborts: dict[str, int] = {}
        self.started_at = time.monotonic()

    def count(self, outcomes: list[tuple[str, str]], lock_wait_s: float) -> None:
        """Count operations (kind, outcome) served by one lock acquisition (one, or a batch's items)."""
        bucket = bisect.bisect_left(LOCK_WAIT_BUCKETS_S, lock_wait_s)
        with self._lock:
            for key in outcomes:
                self._operations[key] = self._operations.get(key, 0) + 1
            self._operation_count += len(outcomes)
            self._lock_wait_buckets[bucket] += 1
            self._lock_wait_sum_s += lock_wait_s

    def aborted(self, reason: str) -> None:
        """The database aborted an attempt for ``reason`` (``deadlock``: it broke a lock cycle)."""
        with self._lock:
            self._aborts[reason] = self._aborts.get(reason, 0) + 1

    def aborts(self) -> dict[str, int]:
        """Attempts the database aborted so far, by reason."""
        with self._lock:
            return dict(self._aborts)

    def lock_timed_out(self, budget_s: float) -> None:
        """An operation timed out that reached the store with ``budget_s`` of its deadline left.

        It counts against health only if that was at least half the default deadline
        (``lock_trouble_after_s``): a caller's own tight ``X-Timeout-Ms`` is theirs alone.
        """
        if budget_s * 2 >= self._lock_trouble_after_s:
            self.lock_trouble()

    def lock_trouble(self) -> None:
        """Health turns "degraded" for ``LOCK_TROUBLE_WINDOW_S`` from now."""
        with self._lock:
            self._last_lock_timeout_at = time.monotonic()

    def performance_ok(self) -> bool:
        with self._lock:
            last = self._last_lock_timeout_at
        return last is None or time.monotonic() - last > LOCK_TROUBLE_WINDOW_S

    def operation_count(self) -> int:
        with self._lock:
            return self._operation_count

    def snapshot(self) -> tuple[dict[tuple[str, str], int], tuple[int, ...], float]:
        """Operations, cumulative lock-wait bucket counts (then +Inf) and the wait sum."""
        with self._lock:
            operations = dict(self._operations)
            buckets = list(self._lock_wait_buckets)
            wait_sum_s = self._lock_wait_sum_s
        cumulative = []
        running = 0
        for count in buckets:
            running += count
            cumulative.append(running)
        return operations, tuple(cumulative), wait_sum_s
