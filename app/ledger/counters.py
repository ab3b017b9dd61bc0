"""Per-process operation counters and latency histograms for ``/metrics`` and ``/system/health``.

One mutex guards the operation counters (and one each histogram), held only for a
few updates, never across I/O. With several worker processes each counts its own;
``/metrics`` adds them up (``app.observability``).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Mapping

from app.ledger.store import LOCK_WAIT_BUCKETS_S, Counts, Durations

#: Upper bounds (seconds) of the other latency histograms' buckets (pool waits, commits,
#: journal syncs): finer than the lock waits' from 0.1 to 10 ms, where most of them fall.
DURATION_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
#: Most lock waits fall in the first bucket: no bisect for those.
_FIRST_LOCK_WAIT_BOUND_S = LOCK_WAIT_BUCKETS_S[0]
#: A lock wait that ran past its deadline this recently makes health "degraded".
LOCK_TROUBLE_WINDOW_S = 60.0


class DurationHistogram:
    """A latency histogram a store keeps: ``observe`` is a bisect and two additions under
    its own mutex; ``/metrics`` copies it out when it is scraped."""

    def __init__(self, bounds_s: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self._bounds_s = bounds_s
        self._lock = threading.Lock()
        self._buckets = [0] * (len(bounds_s) + 1)
        self._sum_s = 0.0

    def observe(self, duration_s: float) -> None:
        bucket = bisect.bisect_left(self._bounds_s, duration_s)
        with self._lock:
            self._buckets[bucket] += 1
            self._sum_s += duration_s

    def snapshot(self) -> Durations:
        with self._lock:
            buckets = list(self._buckets)
            sum_s = self._sum_s
        return Durations(self._bounds_s, _cumulative(buckets), sum_s)


class OperationCounters:
    """Operations by kind and outcome, their lock waits, and the store's other latencies.

    ``durations``: the names of the latency histograms the store keeps besides the lock
    waits (``Counts.durations``), each then ``self.durations[name]``.
    """

    def __init__(self, *, lock_trouble_after_s: float = 0.0, durations: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._operation_count = 0
        self._operations: dict[tuple[str, str], int] = {}
        self._lock_wait_buckets = [0] * (len(LOCK_WAIT_BUCKETS_S) + 1)
        self._lock_wait_sum_s = 0.0
        self._last_lock_timeout_at: float | None = None
        self._lock_trouble_after_s = lock_trouble_after_s
        self._aborts: dict[str, int] = {}
        self.started_at = time.monotonic()
        self.durations = {name: DurationHistogram() for name in durations}

    def count(self, outcomes: list[tuple[str, str]], lock_wait_s: float) -> None:
        """Count operations (kind, outcome) served by one lock acquisition (one, or a batch's items)."""
        self.count_tally(Counter(outcomes), lock_wait_s)

    def count_tally(self, tally: Mapping[tuple[str, str], int], lock_wait_s: float) -> None:
        """``count`` of operations already tallied by (kind, outcome) (a batch's items)."""
        bucket = _lock_wait_bucket(lock_wait_s)
        with self._lock:
            operations = self._operations
            for key, number in tally.items():
                operations[key] = operations.get(key, 0) + number
                self._operation_count += number
            self._lock_wait_buckets[bucket] += 1
            self._lock_wait_sum_s += lock_wait_s

    def count_one(self, kind: str, outcome: str, lock_wait_s: float) -> None:
        """``count`` of a single operation (every money request's: no list to build)."""
        bucket = _lock_wait_bucket(lock_wait_s)
        key = (kind, outcome)
        with self._lock:
            operations = self._operations
            operations[key] = operations.get(key, 0) + 1
            self._operation_count += 1
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

    def snapshot(self) -> Counts:
        """Operations, lock waits and the other latency histograms, each copied under its lock."""
        with self._lock:
            operations = dict(self._operations)
            buckets = list(self._lock_wait_buckets)
            wait_sum_s = self._lock_wait_sum_s
        return Counts(
            operations=operations,
            lock_wait=Durations(LOCK_WAIT_BUCKETS_S, _cumulative(buckets), wait_sum_s),
            durations={name: histogram.snapshot() for name, histogram in self.durations.items()},
        )


def _lock_wait_bucket(lock_wait_s: float) -> int:
    """The lock-wait bucket of a wait: most fall in the first, found without a bisect."""
    if lock_wait_s <= _FIRST_LOCK_WAIT_BOUND_S:
        return 0
    return bisect.bisect_left(LOCK_WAIT_BUCKETS_S, lock_wait_s)


def _cumulative(buckets: list[int]) -> tuple[int, ...]:
    """Counts per bucket as Prometheus has them: each bucket also counts those below it."""
    running = 0
    cumulative = []
    for count in buckets:
        running += count
        cumulative.append(running)
    return tuple(cumulative)
