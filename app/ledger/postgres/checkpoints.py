"""Checkpoints of the PostgreSQL store: taken on one MVCC snapshot, every so many records.

A checkpoint (``app.ledger.model.Checkpoint``) names a record of the chain and the
digest of every balance right after it. ``Checkpointer.take`` reads both in one
``REPEATABLE READ, READ ONLY`` transaction (``Runner.read_snapshot``): the
``chain_head`` row, then the accounts streamed in byte order of their names through
a server-side cursor into ``balances_digest``. A writer changes its accounts and
the head in one transaction, so that snapshot holds exactly the balances at the
head's sequence. The read takes no row lock: no writer waits for it, nor it for
them. The row is then inserted on its own, ``ON CONFLICT DO NOTHING``, so workers
that race to one sequence keep one row.

When
----
After a committed write (``Runner.appended``) whose sequence crossed a multiple of
``every_records`` past the last checkpoint this process knows of, a background
thread takes one, one thread at a time per process. Another worker may have taken
one meanwhile: a checkpoint fewer than half an interval behind the head makes the
thread skip. ``close`` takes one more at the head (unless one is there already), so
that a verification after a clean shutdown starts from the end. Never at sequence 0.

Lock
----
``_lock`` guards ``_known``, ``_thread``, ``_closed`` and ``_retry_at``; it is never
held across I/O (only around a thread's start), and no other lock is taken under it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import psycopg

from app.ledger.audit import balances_digest
from app.ledger.errors import LedgerError, StoreInvariantBroken
from app.ledger.model import Checkpoint, CheckpointPage, Deadline, utc_now_iso
from app.ledger.postgres import sql
from app.ledger.postgres.runner import Runner
from app.ledger.postgres.unit import Connection
from app.ledger.rules import CHECKPOINT_CURSOR, check_limit, decode_cursor, encode_cursor

_log = logging.getLogger("goledger.postgres")

#: The bound of one checkpoint's snapshot: it reads every account.
CHECKPOINT_TIMEOUT_S = 300.0
#: The longest wait for a pooled connection: a checkpoint never queues long behind requests.
POOL_WAIT_S = 1.0
#: Accounts fetched per round trip of the server-side cursor (client memory: one page).
BALANCES_ITERSIZE = 5_000
#: After a failed background checkpoint, writes start no other one for this long.
RETRY_AFTER_S = 5.0
#: ``close`` waits this long for a background checkpoint still running.
CLOSE_JOIN_TIMEOUT_S = 30.0

_HEAD_AND_LATEST = "SELECT c.sequence, c.hash, (SELECT max(k.sequence) FROM checkpoints k) FROM chain_head c"
_INSERT = (
    f"INSERT INTO checkpoints ({sql.CHECKPOINT}) VALUES (%s, %s, %s, %s) "  # noqa: S608
    "ON CONFLICT (sequence) DO NOTHING"
)
_PAGE = f"SELECT {sql.CHECKPOINT} FROM checkpoints WHERE sequence < %s ORDER BY sequence DESC LIMIT %s"  # noqa: S608
_OLDEST_FIRST = f"SELECT {sql.CHECKPOINT} FROM checkpoints ORDER BY sequence"  # noqa: S608


def every_checkpoint(connection: Connection) -> list[Checkpoint]:
    """Every checkpoint, oldest first (one per ``every_records`` records: a few thousand at most)."""
    return [sql.checkpoint(row) for row in connection.execute(_OLDEST_FIRST)]


def page(runner: Runner, limit: int, cursor: str | None) -> CheckpointPage:
    """Checkpoints newest first, ``limit`` at a time; a cursor means "sequences below this"."""
    check_limit(limit)
    below = 2**63 - 1 if cursor is None else decode_cursor(cursor, CHECKPOINT_CURSOR)
    rows = runner.read(lambda connection: connection.execute(_PAGE, (below, limit + 1)).fetchall())
    points = tuple(sql.checkpoint(row) for row in rows[:limit])
    next_cursor = encode_cursor("k", points[-1].sequence) if len(rows) > limit else None
    return CheckpointPage(points, next_cursor)


class Checkpointer:
    """Takes this process's checkpoints: in the background every ``every_records`` records,
    and at ``close``."""

    def __init__(self, runner: Runner, every_records: int) -> None:
        if every_records < 1:
            raise ValueError(f"a checkpoint every {every_records} records")
        self._runner = runner
        self._every_records = every_records
        self._lock = threading.Lock()  # guards the four fields below; never held across I/O
        #: The sequence of the last checkpoint this process knows of, or up to which it
        #: found one recent enough.
        self._known = self._latest()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._retry_at = 0.0

    def appended(self, sequence: int) -> None:
        """A write committed records up to ``sequence``: start a background checkpoint if that
        crossed a multiple of ``every_records`` past the last one known (and none is running)."""
        every = self._every_records
        # Read without the lock first (an int, read whole under the GIL): nearly every write
        # crosses nothing, and then costs no lock at all.
        if sequence // every <= self._known // every:
            return
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            crossed = sequence // every > self._known // every
            if self._closed or running or not crossed or time.monotonic() < self._retry_at:
                return
            self._thread = threading.Thread(target=self._run, name="goledger-checkpoint", daemon=True)
            self._thread.start()

    def take(self, *, min_gap: int) -> Checkpoint | None:
        """Take a checkpoint at the chain head, unless the head is 0 or the latest checkpoint
        is fewer than ``min_gap`` records behind it; the checkpoint taken, or ``None``."""
        deadline = Deadline.after_ms(int(CHECKPOINT_TIMEOUT_S * 1000))
        head, latest, point = self._runner.read_snapshot(
            functools.partial(_at_head, min_gap), deadline, pool_wait_s=POOL_WAIT_S
        )
        if point is not None:
            values = (point.sequence, point.chain_head, point.balances_digest, point.created_at)
            self._runner.read(lambda connection: connection.execute(_INSERT, values))
        with self._lock:
            # Skipped: a checkpoint recent enough stands for this stretch of the chain.
            self._known = max(self._known, latest, head if point is None else point.sequence)
        return point

    def settle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the background checkpoint running now, if any;
        whether none is running any more."""
        with self._lock:
            running = self._thread
        if running is None:
            return True
        running.join(timeout_s)
        return not running.is_alive()

    def close(self) -> None:
        """Start no more; wait for the running one, then take the checkpoint of a clean
        shutdown. A database that does not answer costs ``POOL_WAIT_S``, logged, not raised."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.settle(CLOSE_JOIN_TIMEOUT_S):
            _log.warning("checkpoint: the background one still runs after %g s", CLOSE_JOIN_TIMEOUT_S)
        try:
            self.take(min_gap=1)
        except (LedgerError, psycopg.Error):
            _log.warning("checkpoint: none taken at shutdown", exc_info=True)

    def _run(self) -> None:
        try:
            self.take(min_gap=max(1, self._every_records // 2))
        except Exception:  # the thread must not die silently; a later write tries again
            _log.warning("checkpoint: a background one failed; next in %g s", RETRY_AFTER_S, exc_info=True)
            with self._lock:
                self._retry_at = time.monotonic() + RETRY_AFTER_S

    def _latest(self) -> int:
        """The sequence of the newest checkpoint in the database (0: none, no answer, or a schema
        not migrated yet: the store then simply takes its first one early)."""
        try:
            row = self._runner.read(
                lambda connection: connection.execute("SELECT max(sequence) FROM checkpoints").fetchone()
            )
        except (LedgerError, psycopg.Error):
            _log.warning("checkpoint: the newest one could not be read; counting from 0")
            return 0
        return int(row[0]) if row is not None and row[0] is not None else 0


def _at_head(min_gap: int, connection: Connection) -> tuple[int, int, Checkpoint | None]:
    """In a snapshot: the head's sequence, the latest checkpoint's, and a new checkpoint at the
    head (``None`` at sequence 0 or when the latest is fewer than ``min_gap`` records behind)."""
    row = connection.execute(_HEAD_AND_LATEST).fetchone()
    if row is None:
        raise StoreInvariantBroken("the chain_head row is missing")
    head, head_hash, latest = int(row[0]), str(row[1]), int(row[2] or 0)
    if head == 0 or head - latest < min_gap:
        return head, latest, None
    with connection.cursor(name="goledger_checkpoint_balances") as cursor:
        cursor.itersize = BALANCES_ITERSIZE
        cursor.execute(sql.BALANCES_BY_NAME)
        digest = balances_digest(((str(name), int(balance)) for name, balance in cursor), ordered=True)
    return head, latest, Checkpoint(head, head_hash, digest, utc_now_iso())
