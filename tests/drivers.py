"""One driver per kind of store: every difference between the stores that a test needs.

Tests use a store through ``LedgerStore``. What that interface cannot do they ask of
the store's driver: change its data behind its back (``tamper``, ``remove``,
``adjust``, ``rehash``), stall its writers (``holding_write_lock``), stop its hold
sweeper, put an app's store on a fake clock, read raw account and hold state without
the expiry a read through the store would cause (``peek_*``), and size a race to the
store (``race_rounds``). ``MemoryDriver`` drives ``MockDB``; ``PostgresDriver`` drives
``PostgresStore``. ``MemoryDriver`` also reaches the internals that only
``memory_only`` tests look at (its reader-writer lock, its sweeper, its idempotency
table).

The ``driver`` fixture (``tests/conftest.py``) gives the driver of the test's store;
``driver_for(store)`` that of any other. This module is the only one in ``tests/``
that touches a store's private attributes; each such line says in a comment what it
reaches, so that a change inside a store is answered here alone.
"""

from __future__ import annotations

import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from app.ledger.audit import chain_hash
from app.ledger.counters import OperationCounters
from app.ledger.errors import LedgerError
from app.ledger.memory import MockDB
from app.ledger.memory.durability import Durability
from app.ledger.memory.holds import ExpirySweeper
from app.ledger.memory.keys import IdempotencyTable
from app.ledger.memory.trail import AuditTrail
from app.ledger.model import AccountView, Checkpoint, Hold, HoldStatus, Transaction, iso_from_epoch
from app.ledger.outcomes import Result
from app.ledger.postgres import PostgresStore
from app.ledger.store import LedgerStore
from tests.threads import JOIN_TIMEOUT_S
from tests.windows import Tap, WatchedLock, WatchedReaderWriterLock, Window, pausing


@dataclasses.dataclass(frozen=True)
class MemoryParts:
    """The objects of ``MockDB`` that own its locks (``MemoryDriver.parts``)."""

    keys: IdempotencyTable
    counters: OperationCounters
    trail: AuditTrail
    durability: Durability
    sweeper: ExpirySweeper


#: The columns of ``audit`` that ``PostgresDriver.tamper`` may rewrite.
_RECORD_COLUMNS = {"amount", "target", "status", "created_at", "hash", "from_balance_after"}


class StoreDriver(ABC):
    """What tests do to a store beyond ``LedgerStore``; ``close()`` it when done (or use ``with``)."""

    store: LedgerStore
    #: Whether an idempotent replay hands back the very result object it kept (MockDB
    #: does); otherwise an equal copy (PostgreSQL may replay on another worker).
    replays_the_kept_object: bool

    def __enter__(self) -> StoreDriver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release what the driver opened of its own (never the store)."""

    # -- tampering: an attacker with access to the memory or the disk --------------------

    @abstractmethod
    def tamper(self, sequence: int, **changes: object) -> None:
        """Rewrite fields of one stored audit record."""

    @abstractmethod
    def remove(self, sequence: int) -> None:
        """Delete one stored audit record."""

    @abstractmethod
    def adjust(self, username: str, *, balance: int = 0, held: int = 0) -> None:
        """Add to an account's stored balance and held money."""

    def record(self, sequence: int) -> Transaction:
        """One audit record as the store reads it back."""
        return self.store.audit_page(limit=sequence, cursor=None).transactions[sequence - 1]

    def rehash(self, sequence: int, **changes: object) -> None:
        """Change a record's fields and give it the hash that matches (the next link still breaks)."""
        forged = self.record(sequence)._replace(**changes)
        self.tamper(sequence, **changes, hash=chain_hash(forged.previous_hash, forged))

    # -- time and the sweeper ---------------------------------------------------------------

    @abstractmethod
    def holding_write_lock(self) -> AbstractContextManager[None]:
        """Stall every writer of the store while the block runs, as a wedged writer would."""

    @abstractmethod
    def stop_sweeper(self) -> None:
        """Stop the store's background hold sweeper, leaving the store usable."""

    @abstractmethod
    def sweeper_running(self) -> bool:
        """Whether the store's background hold sweeper thread is alive."""

    @abstractmethod
    def set_clock(self, clock: Callable[[], float]) -> None:
        """Put a store that ``create_app`` built on ``clock`` (the app config takes no clock).

        A store a test builds itself gets ``clock=`` in its constructor instead.
        """

    def settle_checkpoints(self) -> None:
        """Wait (within ``JOIN_TIMEOUT_S``) for the checkpoint the store is taking in the
        background, if any (a store that takes them inline has nothing to wait for)."""

    @abstractmethod
    def race_rounds(self, rounds: int) -> int:
        """How many of a race's ``rounds`` run on this store."""

    # -- widening a critical section (``tests/windows.py``) ----------------------------------

    def _swap_lock(self, owner: Any, attribute: str) -> WatchedLock:
        """Put a ``WatchedLock`` in place of ``owner.<attribute>`` (a lock or a condition)."""
        watched = WatchedLock()
        condition = isinstance(getattr(owner, attribute), threading.Condition)
        setattr(owner, attribute, threading.Condition(watched) if condition else watched)
        return watched

    @abstractmethod
    def watch(self, lock: str) -> WatchedLock:
        """Swap the store's lock named ``lock`` (see ``locks``) for a ``WatchedLock``, before the
        store is shared (nothing may hold or wait on the lock it replaces)."""

    @abstractmethod
    def widen(self, part: str, window: Window | Tap, *methods: str, iterating: bool = False) -> None:
        """Have ``methods`` of the store's structure named ``part`` step into ``window``
        (``tests.windows.pausing``)."""

    @abstractmethod
    def deadlock_retries(self) -> int:
        """Attempts the database aborted to break a deadlock (each retried or timed out; MockDB: 0)."""

    # -- raw state: reads that expire nothing -----------------------------------------------

    @abstractmethod
    def peek_account(self, username: str) -> AccountView:
        """An account as stored (a balance read through the store would expire its due holds)."""

    @abstractmethod
    def peek_hold(self, hold_id: str) -> Hold | None:
        """A hold as stored, or ``None``."""

    @abstractmethod
    def peek_hold_count(self) -> int:
        """How many holds the store keeps, of every status."""


class MemoryDriver(StoreDriver):
    """``MockDB``: its structures changed in place, its own write lock held."""

    replays_the_kept_object = True

    def __init__(self, store: MockDB) -> None:
        self.store: MockDB = store

    def tamper(self, sequence: int, **changes: object) -> None:
        index = sequence - 1
        trail = self.store._trail._records  # MockDB._trail: its AuditTrail; ._records: the records in order
        trail[index] = tuple(Transaction._make(trail[index])._replace(**changes))  # kept as plain tuples

    def remove(self, sequence: int) -> None:
        del self.store._trail._records[sequence - 1]  # MockDB._trail: its AuditTrail; ._records: the records

    def in_memory(self) -> tuple[int, int]:
        """How many audit records and holds the store keeps in memory."""
        # MockDB._trail: its AuditTrail; MockDB._holds: its HoldBook
        return self.store._trail.cached(), len(self.store._holds)

    def adjust(self, username: str, *, balance: int = 0, held: int = 0) -> None:
        account = self.store._accounts[username]  # MockDB._accounts: username -> AccountState
        account.balance += balance
        account.held += held

    @contextmanager
    def holding_write_lock(self) -> Iterator[None]:
        """Its write lock, held in this thread (readers wait too)."""
        with self._holding(self.store._rw.gen_wlock()):  # MockDB._rw: its reader-writer lock
            yield

    @contextmanager
    def holding_read_lock(self) -> Iterator[None]:
        """Its read lock, held in this thread: other readers get in beside it, writers wait."""
        with self._holding(self.store._rw.gen_rlock()):  # MockDB._rw: its reader-writer lock
            yield

    @staticmethod
    @contextmanager
    def _holding(lock: Any) -> Iterator[None]:
        assert lock.acquire(blocking=True, timeout=JOIN_TIMEOUT_S)
        try:
            yield
        finally:
            lock.release()

    def stop_sweeper(self) -> None:
        self.store.stop_sweeper()

    def sweeper_running(self) -> bool:
        return self.store._sweeper.running  # MockDB._sweeper: its ExpirySweeper

    def set_clock(self, clock: Callable[[], float]) -> None:
        self.store._clock = clock  # MockDB._clock: the wall clock its holds expire by

    def race_rounds(self, rounds: int) -> int:
        """All of them: a round costs microseconds."""
        return rounds

    def peek_account(self, username: str) -> AccountView:
        return self.store._accounts[username].view()  # MockDB._accounts: username -> AccountState

    def peek_hold(self, hold_id: str) -> Hold | None:
        state = self.store._holds.get(hold_id)  # MockDB._holds: its HoldBook (hold id -> HoldState)
        return None if state is None else state.view()

    def peek_hold_count(self) -> int:
        return len(self.store._holds)  # MockDB._holds: its HoldBook (without a data directory: every hold)

    # -- widening ----------------------------------------------------------------------------

    def _lock_owners(self) -> dict[str, tuple[Any, str]]:
        store = self.store
        journal = store._durability.journal  # MockDB._durability.journal: None without a data dir
        return {
            "keys": (store._keys, "_lock"),  # MockDB._keys: its IdempotencyTable
            "counters": (store._counters, "_lock"),  # MockDB._counters: its OperationCounters
            "trail": (store._trail, "_lock"),  # MockDB._trail: its AuditTrail
            "chain_check": (store._trail, "_check_lock"),  # AuditTrail._check_lock: one chain check at a time
            "credentials": (store, "_credentials_lock"),  # MockDB._credentials_lock: the token digests'
            "seen": (store, "_seen_lock"),  # MockDB._seen_lock: the account count a scrape saw last
            "snapshot": (store._durability, "_snapshot_lock"),  # Durability._snapshot_lock: one snapshot
            "snapshot_starter": (store._durability, "_snapshot_starter"),  # Durability: the snapshot thread's
            "journal": (journal, "_condition"),  # Journal._condition: its queue and counters
            "sweeper": (store._sweeper, "_condition"),  # ExpirySweeper._condition: its heap
        }

    def watch(self, lock: str) -> WatchedLock:
        owner, attribute = self._lock_owners()[lock]
        assert owner is not None, f"{lock}: this store has none (no data directory?)"
        return self._swap_lock(owner, attribute)

    def watch_balances(self, *, test_reads: bool = False) -> WatchedReaderWriterLock:
        """Swap ``MockDB._rw`` (balances and holds) for a ``WatchedReaderWriterLock``; the test's
        side of it is the write lock, or the read lock when ``test_reads``."""
        watched = WatchedReaderWriterLock(self.store._rw, test_reads=test_reads)  # MockDB._rw: its lock
        self.store._rw = watched  # type: ignore[assignment]  # MockDB._rw, as above
        return watched

    def widen(self, part: str, window: Window | Tap, *methods: str, iterating: bool = False) -> None:
        store = self.store
        owner, attribute = {
            "key_table": (store._keys, "_entries"),  # IdempotencyTable._entries: (user, key) -> entry
            "counters": (store._counters, "_operations"),  # OperationCounters._operations: (kind, outcome)
            "credentials": (store, "_credentials"),  # MockDB._credentials: username -> token digest
            "audit_records": (store._trail, "_records"),  # AuditTrail._records: the records in order
            "audit_index": (store._trail, "_latest"),  # AuditTrail._latest: username -> latest record
            "accounts": (store, "_accounts"),  # MockDB._accounts: username -> AccountState
        }[part]
        setattr(owner, attribute, pausing(getattr(owner, attribute), window, *methods, iterating=iterating))

    def deadlock_retries(self) -> int:
        return 0

    def parts(self) -> MemoryParts:
        """The objects behind ``MockDB``'s locks, for tests that call them one at a time."""
        store = self.store
        return MemoryParts(
            keys=store._keys,  # MockDB._keys: its IdempotencyTable
            counters=store._counters,  # MockDB._counters: its OperationCounters
            trail=store._trail,  # MockDB._trail: its AuditTrail
            durability=store._durability,  # MockDB._durability: its data directory, journal, snapshots
            sweeper=store._sweeper,  # MockDB._sweeper: its ExpirySweeper
        )

    def sweeper_heap(self) -> list[tuple[float, str]]:
        """A copy of what the sweeper has scheduled (read under its condition by the caller)."""
        return sorted(self.store._sweeper._heap)  # ExpirySweeper._heap: (due_s, hold id)

    def snapshot_retry_at(self) -> float:
        """When an automatic snapshot may start again after a failed one (monotonic clock)."""
        return self.store._durability._snapshot_retry_at  # Durability: set after a failed automatic snapshot

    def background_snapshot_thread(self) -> threading.Thread | None:
        """The automatic snapshot's thread, read without taking the lock that guards it."""
        return self.store._durability._snapshot_thread  # Durability._snapshot_thread: its handle

    def journal_counters(self) -> dict[str, int]:
        """The journal's counters as they stand (no lock taken: the caller holds it)."""
        journal = self.store._durability.journal  # MockDB._durability.journal: its Journal
        assert journal is not None
        return dict(journal._counters)  # Journal._counters: syncs, frames, bytes

    def chain_checked(self) -> int:
        """How many audit records health has hash-checked (no lock taken: the caller holds it)."""
        return self.store._trail._checked  # AuditTrail._checked: the records health checked so far

    # -- MockDB's own internals, for memory_only tests ---------------------------------------

    def wake_sweeper(self) -> None:
        """Make the sweeper look at its clock now (it otherwise waits up to its max wait)."""
        self.store._sweeper.wake()  # MockDB._sweeper: its ExpirySweeper

    def after_each_sweep(self, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(hold_ids)`` in the sweeper's thread after each of its passes."""
        sweeper = self.store._sweeper  # MockDB._sweeper: its ExpirySweeper
        expire = sweeper._expire  # ExpirySweeper._expire: the pass it runs on due ids (MockDB._sweep_due)

        def expire_then_call(hold_ids: list[str]) -> None:
            expire(hold_ids)
            callback(hold_ids)

        sweeper._expire = expire_then_call  # ExpirySweeper._expire: the pass it runs on due ids

    def catch_reschedules(self) -> list[tuple[float, str]]:
        """From now on, what the store hands its sweeper to schedule lands in the list returned
        (``(due_s, hold_id)``), and the sweeper never sees it."""
        caught: list[tuple[float, str]] = []

        def schedule(due_s: float, hold_id: str) -> None:
            caught.append((due_s, hold_id))

        sweeper = self.store._sweeper  # MockDB._sweeper: its ExpirySweeper
        sweeper.schedule = schedule  # type: ignore[method-assign]
        return caught

    def sweep_due(self, hold_ids: list[str]) -> None:
        """Run one sweeper pass over these hold ids, in this thread."""
        self.store._sweep_due(hold_ids)  # MockDB._sweep_due: the sweeper's pass (expire these if due)

    def kept_keys(self) -> list[tuple[str, str, str, float, Result | LedgerError]]:
        """Every idempotency key with an outcome: ``(username, key, fingerprint, created_at, outcome)``."""
        return self.store._keys.kept()  # MockDB._keys: its IdempotencyTable

    def on_key_in_flight(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a request finds its key claimed by a request still running."""
        table = self.store._keys  # MockDB._keys: its IdempotencyTable
        claim = table._claim  # IdempotencyTable._claim: a request takes its key's slot, or finds it taken

        def claim_and_tell(slot: tuple[str, str], fingerprint: str) -> Any:
            entry, owner = claim(slot, fingerprint)
            if not owner:
                callback()
            return entry, owner

        table._claim = claim_and_tell  # type: ignore[method-assign]  # IdempotencyTable._claim, as above


class PostgresDriver(StoreDriver):
    """``PostgresStore``: its rows changed and read through a connection of the driver's own
    (never through the store's pool); writers stalled by a table lock from another one."""

    replays_the_kept_object = False

    def __init__(self, store: PostgresStore) -> None:
        self.store: PostgresStore = store
        self._connection: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _sql(self) -> psycopg.Connection[Any]:
        """The driver's own autocommit connection to the store's database (opened on first use)."""
        if self._connection is None:
            self._connection = psycopg.connect(self.store.url, autocommit=True)
        return self._connection

    def tamper(self, sequence: int, **changes: object) -> None:
        for column, value in changes.items():
            assert column in _RECORD_COLUMNS, column
            statement = sql.SQL("UPDATE audit SET {} = %s WHERE sequence = %s").format(sql.Identifier(column))
            self._sql().execute(statement, (value, sequence))

    def remove(self, sequence: int) -> None:
        self._sql().execute("DELETE FROM audit_parties WHERE sequence = %s", (sequence,))
        self._sql().execute("DELETE FROM audit WHERE sequence = %s", (sequence,))

    def adjust(self, username: str, *, balance: int = 0, held: int = 0) -> None:
        self._sql().execute(
            "UPDATE accounts SET balance = balance + %s, held = held + %s WHERE username = %s",
            (balance, held, username),
        )

    @contextmanager
    def holding_write_lock(self) -> Iterator[None]:
        """An ``EXCLUSIVE`` lock on the accounts table from another connection: every row lock
        a write takes waits; plain reads (MVCC) do not."""
        with psycopg.connect(self.store.url, autocommit=True) as blocker, blocker.transaction():
            blocker.execute("LOCK TABLE accounts IN EXCLUSIVE MODE")
            yield

    def stop_sweeper(self) -> None:
        self.store.stop_sweeper()

    def sweeper_running(self) -> bool:
        sweeper = self.store._sweeper  # PostgresStore._sweeper: its sweeper thread (None: built without)
        return sweeper is not None and sweeper.running

    def set_clock(self, clock: Callable[[], float]) -> None:
        self.store._clock = clock  # PostgresStore._clock: the wall clock its holds expire by

    def settle_checkpoints(self) -> None:
        checkpointer = self.store._checkpointer  # PostgresStore._checkpointer: its background checkpoints
        assert checkpointer.settle(JOIN_TIMEOUT_S), f"a checkpoint still runs after {JOIN_TIMEOUT_S} s"

    def take_checkpoint(self, *, min_gap: int = 1) -> Checkpoint | None:
        """Take a checkpoint now, in this thread, as the background one does (``None``: skipped)."""
        return self.store._checkpointer.take(min_gap=min_gap)  # PostgresStore._checkpointer: its checkpoints

    def run_pooled(self, statement: str) -> None:
        """Run one statement on a connection of the store's pool (with the pool's session settings)."""
        with self.store._runner.pool.connection() as connection:  # Runner.pool: its psycopg_pool pool
            connection.execute(statement.encode())

    def race_rounds(self, rounds: int) -> int:
        """A quarter of them: each round costs round trips to the server."""
        return rounds // 4

    def watch(self, lock: str) -> WatchedLock:
        owner, attribute = {
            "counters": (self.store._runner.counters, "_lock"),  # PostgresStore._runner: its Runner
            "health": (self.store._monitor, "_health_lock"),  # PostgresStore._monitor: its Monitor
        }[lock]
        return self._swap_lock(owner, attribute)

    def widen(self, part: str, window: Window | Tap, *methods: str, iterating: bool = False) -> None:
        owner, attribute = {
            "counters": (self.store._runner.counters, "_operations"),  # OperationCounters._operations
        }[part]
        setattr(owner, attribute, pausing(getattr(owner, attribute), window, *methods, iterating=iterating))

    def deadlock_retries(self) -> int:
        return self.store._runner.counters.aborts().get("deadlock", 0)  # PostgresStore._runner: its Runner

    def monitor(self) -> Any:
        """The store's ``Monitor`` (verify, health, stats), for tests that call it directly."""
        return self.store._monitor  # PostgresStore._monitor: its Monitor

    def health_state(self) -> tuple[int, str, str | None, tuple[int, int, int]]:
        """What ``Monitor._health_lock`` guards (no lock taken: the caller holds it)."""
        monitor = self.store._monitor  # PostgresStore._monitor: its Monitor
        return monitor._chain_checked, monitor._chain_hash, monitor._chain_problem, monitor._figures_seen

    def on_connection(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` before every connection the store takes from its pool from now on
        (it may raise ``PoolTimeout``: the database is gone)."""
        pool = self.store._runner.pool  # Runner.pool: its psycopg_pool ConnectionPool
        connection = pool.connection

        def connection_after_callback(*args: Any, **kwargs: Any) -> Any:
            callback()
            return connection(*args, **kwargs)

        pool.connection = connection_after_callback  # type: ignore[method-assign]

    def peek_account(self, username: str) -> AccountView:
        row = (
            self._sql()
            .execute("SELECT balance, version, held FROM accounts WHERE username = %s", (username,))
            .fetchone()
        )
        assert row is not None, username
        return AccountView(username, *row)

    def peek_hold(self, hold_id: str) -> Hold | None:
        row = (
            self._sql()
            .execute(
                "SELECT id, source, target, amount, captured, status, expires_at_s, created_at "
                "FROM holds WHERE id = %s",
                (hold_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        hold_id, source, target, amount, captured, status, expires_at_s, created_at = row
        return Hold(
            hold_id,
            source,
            target,
            amount,
            captured,
            HoldStatus(status),
            iso_from_epoch(expires_at_s),
            created_at,
        )

    def peek_hold_count(self) -> int:
        row = self._sql().execute("SELECT count(*) FROM holds").fetchone()
        assert row is not None
        return int(row[0])


def driver_for(store: LedgerStore) -> StoreDriver:
    """The driver of ``store`` (a ``MockDB`` or a ``PostgresStore``)."""
    if isinstance(store, MockDB):
        return MemoryDriver(store)
    assert isinstance(store, PostgresStore), type(store)
    return PostgresDriver(store)


def memory_driver(store: LedgerStore) -> MemoryDriver:
    """The driver of a store that must be a ``MockDB`` (in a ``memory_only`` test)."""
    driver = driver_for(store)
    assert isinstance(driver, MemoryDriver), type(store)
    return driver
