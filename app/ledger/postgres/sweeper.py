"""The background sweeper of the PostgreSQL store: expiry sweeps and key purges.

Holds expire no later than the next operation touching either account (inside
that operation's transaction) or a sweep, whichever comes first; the sweeper is
what expires the holds of accounts nobody touches. Its two events (``_stop``,
``_wake``) are its only shared state; every sweep is an ordinary store operation.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from app.ledger.model import Deadline

_log = logging.getLogger("goledger.postgres")

SWEEP_INTERVAL_S = 1.0
SWEEP_DEADLINE_MS = 1000
#: How often the sweeper drops idempotency keys past their 24 hours.
KEY_PURGE_INTERVAL_S = 60.0


class Swept(Protocol):
    """What the sweeper runs: the store's own sweep and purge."""

    def sweep_expired(self, *, deadline: Deadline) -> int: ...

    def purge_keys(self) -> int: ...


class Sweeper:
    """A daemon thread that expires due holds every ``interval_s`` and purges old keys.

    Every worker process runs one; their sweeps lock accounts in the same order as any
    operation, so they only ever wait for each other briefly.
    """

    def __init__(self, store: Swept, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="goledger-hold-sweeper", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        last_purge = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._store.sweep_expired(deadline=Deadline.after_ms(SWEEP_DEADLINE_MS))
                if time.monotonic() - last_purge >= KEY_PURGE_INTERVAL_S:
                    last_purge = time.monotonic()
                    self._store.purge_keys()
            except Exception:  # the sweeper must survive a bad moment (a timeout, a restart)
                _log.warning("hold sweeper: a pass failed; the next one tries again", exc_info=True)
