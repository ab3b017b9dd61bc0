"""Helpers for threaded tests: release threads together, join them within a bound.

Nothing here sleeps: threads start on a ``threading.Barrier`` and every join and
wait has a timeout, so a deadlock fails the test instead of hanging it. Stalling a
store's writers is the store driver's ``holding_write_lock`` (``tests/drivers.py``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")

#: The bound on every thread join and barrier wait; a healthy run needs milliseconds.
JOIN_TIMEOUT_S = 10.0


class Crew(Generic[T]):
    """Threads released together on a barrier and joined within ``JOIN_TIMEOUT_S``.

    An exception raised in a worker (an assertion included) is re-raised by ``join``.
    """

    def __init__(self, workers: Sequence[Callable[[], T]]) -> None:
        self._start = threading.Barrier(len(workers), timeout=JOIN_TIMEOUT_S)
        self._results: dict[int, T] = {}
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, args=(index, worker), name=f"worker-{index}", daemon=True)
            for index, worker in enumerate(workers)
        ]

    def _run(self, index: int, worker: Callable[[], T]) -> None:
        try:
            self._start.wait()
            self._results[index] = worker()
        except BaseException as error:
            self._errors.append(error)

    def start(self) -> Crew[T]:
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> list[T]:
        give_up_at = time.monotonic() + JOIN_TIMEOUT_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, give_up_at - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        assert not stuck, f"still running after {JOIN_TIMEOUT_S} s (a deadlock?): {stuck}"
        if self._errors:
            raise self._errors[0]
        return [self._results[index] for index in range(len(self._threads))]


def run_together(workers: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``workers`` on threads released at the same instant; their results in order."""
    crew = Crew(workers)
    crew.start()
    return crew.join()


@contextmanager
def switching_often(interval_s: float = 1e-6) -> Iterator[None]:
    """Switch threads every ``interval_s`` (not every 5 ms), so that short workers interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
