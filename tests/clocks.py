"""Fake wall clocks for the stores' ``clock=``: time moves only when a test moves it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The fake wall clock starts here (2030-03-17T17:46:40Z), far from the real one.
START_S = 1_900_000_000.0


class FakeClock:
    """A wall clock that moves only when told; one thread may run ahead of the rest.

    ``ahead(s)`` puts the calling thread ``s`` seconds in the future (the others keep
    the shared time), so one racer can see a hold as due while the others do not.
    """

    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s
        self._local = threading.local()

    def __call__(self) -> float:
        return self.now_s + getattr(self._local, "ahead_s", 0.0)

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

    @contextmanager
    def ahead(self, seconds: float) -> Iterator[None]:
        self._local.ahead_s = seconds
        try:
            yield
        finally:
            self._local.ahead_s = 0.0
