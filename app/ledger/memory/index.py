"""``RecordIndex``: the embedded store's filtered reads, answered from SQLite.

Filtered history and ``/admin/transactions`` pages ask for the few records that pass
a ``RecordFilter`` among maybe millions; the audit trail can only walk them. The
index keeps, in SQLite (the standard library's), one row per record (``records``, the
admin's view, oldest first), one per record and account whose history shows it
(``history``, with that account's counterparty) and one per metadata key of a record
(``metadata``: key, value as text, sequence), with composite indexes that give each
filter's matches in sequence order (``(account, type, sequence)`` and the like), so a
page reads about as many rows as it shows. ``RecordFilter.matches`` stays the
meaning; the tests hold every query here to it.

It is derived data, rebuilt from the trail whenever it cannot be trusted: with a
data directory it is ``index.sqlite3`` in it (WAL, no syncs: a crash can only lose
its tail, which it indexes again); without one it lives in memory. It notes the last
record it holds and that record's hash; at open an index ahead of the trail, or
whose last record's hash is not the trail's, is rebuilt from scratch, one behind
catches up. Only durable records are indexed (a record the journal may still lose
never reaches it). Writers never touch it: a background thread polls the trail
every ``CATCH_UP_INTERVAL_S`` and indexes what is new, and a query first indexes
whatever is left up to the records it may show.

Times: ``created_at`` is stamped before the record takes its place in the chain, so it
almost, but not always, grows with the sequence. Each row also notes whether it is
*late* (older than a record before it); for the others ``created_at`` grows with the
sequence, so a time filter becomes a range of sequences (found through the running
maximum ``latest_at``), and the few late rows are searched apart.

Balances in time: each ``history`` row also holds the account's balance right after its
record, from the index's own replay of every record (the rule of
``records.settle_balances``: SUCCESS only; ``records.balance_moves``), each account's
running balance kept in ``balances`` beside the rows it made, so a catch-up after a
restart continues it. Records written before records carried balances get theirs all
the same; a record that carries its own must agree with the replay
(``StoreInvariantBroken`` otherwise). ``balance_at`` answers "the balance right after the
account's last record at or before a point": by sequence, one step down the
``(account, sequence)`` key; by time, *the record with the largest sequence among the
account's records with* ``created_at <= at``: the last row up to the sequence bound of
the running maximum (every record up to it is at or before ``at``, every one after it
that is not late is after ``at``), or a late row after that bound, found among the late
rows stamped at most ``lateness_us`` (the greatest lateness indexed: how far a late
record's ``created_at`` fell behind the running maximum) before ``at``, since a late row
after the bound is at or before ``at`` only within that window.

Locking
-------
``RecordIndex._lock`` guards the SQLite connection and what the index knows of itself
(its last record, the running maximum, account ids). It is taken with no lock of the
store's held, and it is held while records are read from the trail (so it comes
before ``AuditTrail._lock``); the catch-up thread takes it once per chunk of
``CHUNK_RECORDS``, so a query waits for at most one chunk.
"""

from __future__ import annotations

import heapq
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from app.ledger.errors import StorageUnavailable, StoreInvariantBroken
from app.ledger.filters import RecordFilter, counterparties, metadata_values
from app.ledger.memory.archive import Entry
from app.ledger.memory.files import FILE_MODE
from app.ledger.memory.trail import AuditTrail
from app.ledger.model import Status, Transaction
from app.ledger.records import balance_moves

_log = logging.getLogger("goledger.store")

#: The index file's name in a data directory.
INDEX_FILE = "index.sqlite3"
#: Bumped whenever the tables change: an index of another version is rebuilt
#: (2: records carry their id, for a reversal to find its original; 3: history rows
#: carry the account's balance after them).
SCHEMA_VERSION = 3
#: Records indexed per SQLite transaction (and per hold of the lock).
CHUNK_RECORDS = 1024
#: How often the background thread looks for new records.
CATCH_UP_INTERVAL_S = 1.0
#: How long ``close`` waits for the background thread's chunk.
CLOSE_WAIT_S = 30.0
#: An amount range with fewer rows than this is read through the amount index (and sorted);
#: a wider one is scanned in sequence order, where its matches are dense enough.
AMOUNT_PROBE_ROWS = 4096
_MIN_SQL_INT, _MAX_SQL_INT = -(2**63), 2**63 - 1
#: The greatest lateness when a late record's time cannot be read (every late row is searched).
_UNBOUNDED_LATENESS_US = _MAX_SQL_INT
_SUCCESS = Status.SUCCESS.value

_SCHEMA = """
CREATE TABLE state (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE records (
    sequence INTEGER PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL, source INTEGER,
    target INTEGER, amount INTEGER NOT NULL, created_at TEXT NOT NULL, latest_at TEXT NOT NULL,
    late INTEGER NOT NULL, reference TEXT, id TEXT NOT NULL);
-- A rowid table's index ends with the rowid (the sequence): each is in sequence order per key.
CREATE INDEX records_type ON records (type);
CREATE INDEX records_status ON records (status);
CREATE INDEX records_source ON records (source);
CREATE INDEX records_target ON records (target);
CREATE INDEX records_amount ON records (amount);
CREATE INDEX records_reference ON records (reference) WHERE reference IS NOT NULL;
CREATE INDEX records_latest ON records (latest_at);
CREATE INDEX records_late ON records (late) WHERE late = 1;
CREATE INDEX records_id ON records (id);
CREATE TABLE history (
    account INTEGER NOT NULL, sequence INTEGER NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
    counterparty INTEGER, amount INTEGER NOT NULL, created_at TEXT NOT NULL, late INTEGER NOT NULL,
    reference TEXT, balance INTEGER NOT NULL, PRIMARY KEY (account, sequence)) WITHOUT ROWID;
CREATE INDEX history_type ON history (account, type, sequence);
CREATE INDEX history_status ON history (account, status, sequence);
CREATE INDEX history_counterparty ON history (account, counterparty, sequence);
CREATE INDEX history_amount ON history (account, amount, sequence);
CREATE INDEX history_reference ON history (account, reference, sequence) WHERE reference IS NOT NULL;
CREATE INDEX history_late ON history (account, late, sequence) WHERE late = 1;
CREATE INDEX history_late_time ON history (account, created_at) WHERE late = 1;
-- Each account's balance as of the last record indexed (the replay continues from it).
CREATE TABLE balances (account INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE metadata (
    key TEXT NOT NULL, value TEXT NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (key, value, sequence)) WITHOUT ROWID;
"""


class _Term(NamedTuple):
    """One condition of a query on table alias ``r``. ``sql`` has ``{p}`` where a driving
    term has nothing and a checked one ``+`` (which keeps SQLite off that index);
    ``via``: the index (its name after the table's) a scan on it follows (``None``: checked
    only)."""

    sql: str
    params: tuple[object, ...]
    via: str | None


class RecordIndex:
    """The SQLite index of one store's audit trail (see the module docstring)."""

    def __init__(self, trail: AuditTrail, last_safe: Callable[[], int], path: Path | None = None) -> None:
        """``last_safe``: the last record the index may hold (the last durable one);
        ``path``: the index file (``None``: in memory)."""
        self._trail = trail
        self._last_safe = last_safe
        self._path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None  # under _lock, opened on first use
        self._sequence = 0  # the last record indexed
        self._latest_at = ""  # the greatest created_at indexed
        self._lateness_us = 0  # the most a late record fell behind the running maximum
        self._names: dict[str, int] = {}
        self._balances: dict[int, int] = {}  # account id -> balance as of the last record indexed
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- opening, rebuilding, closing ---------------------------------------------

    def open(self) -> None:
        """Open (or create, or rebuild) the index and start keeping up in the background."""
        with self._lock:
            self._connected()

    def _connected(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageUnavailable("The ledger is closed.")
        if self._connection is None:
            try:
                self._connection = self._adopt()
            except sqlite3.DatabaseError:  # not an SQLite file, or a damaged one
                _log.warning("the record index %s cannot be read; rebuilding it", self._path)
                self._connection = self._adopt(fresh=True)
            self._thread = threading.Thread(
                target=_keep_up, args=(weakref.ref(self), self._stop), name="goledger-index", daemon=True
            )
            self._thread.start()
        return self._connection

    def _adopt(self, *, fresh: bool = False) -> sqlite3.Connection:
        """A connection to an index that agrees with the trail (rebuilt if it does not)."""
        if fresh:
            self._remove_files()
        connection = self._connect()
        try:
            state = dict(connection.execute("SELECT key, value FROM state").fetchall())
            if state.get("schema") == SCHEMA_VERSION and self._agrees(state):
                self._sequence, self._latest_at = state["sequence"], state["latest_at"]
                self._lateness_us = state["lateness_us"]
                self._reload(connection)
                return connection
        except BaseException:
            connection.close()
            raise
        connection.close()
        if fresh:
            raise StoreInvariantBroken("a freshly made record index does not agree with itself")
        _log.warning("the record index %s does not match the audit trail; rebuilding it", self._path)
        return self._adopt(fresh=True)

    def _agrees(self, state: dict[str, object]) -> bool:
        sequence = state.get("sequence")
        if not isinstance(sequence, int) or sequence > len(self._trail):
            return False
        if sequence == 0:
            return True
        entry = self._trail.entry(sequence)
        return entry is not None and entry[0].hash == state.get("hash")

    def _connect(self) -> sqlite3.Connection:
        if self._path is not None:  # private like the rest of the directory (its WAL files follow it)
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        connection = sqlite3.connect(
            ":memory:" if self._path is None else self._path, isolation_level=None, check_same_thread=False
        )
        try:
            # Rebuildable from the trail: no sync is worth its cost (a crash loses at most the tail).
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = OFF")
            connection.execute("PRAGMA cache_size = -65536")  # 64 MiB of pages
            if connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0:
                connection.executescript(_SCHEMA)
                connection.executemany(
                    "INSERT INTO state VALUES (?, ?)",
                    [
                        ("schema", SCHEMA_VERSION),
                        ("sequence", 0),
                        ("hash", ""),
                        ("latest_at", ""),
                        ("lateness_us", 0),
                    ],
                )
        except BaseException:
            connection.close()
            raise
        return connection

    def _remove_files(self) -> None:
        if self._path is None:
            return
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self._path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the background thread; close the connection (later queries are refused)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=CLOSE_WAIT_S)
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- keeping up with the trail ---------------------------------------------------

    @property
    def sequence(self) -> int:
        """The last record indexed (a plain read: it only grows, but for a rebuild)."""
        return self._sequence

    def catch_up(self) -> None:
        """Index every safe record not indexed yet, one chunk per hold of the lock."""
        target = self._last_safe()
        while self._sequence < target and not self._stop.is_set():
            with self._lock:
                self._index_upto(min(target, self._sequence + CHUNK_RECORDS))

    def _index_upto(self, last: int) -> None:
        """Index records up to ``last`` (under the lock)."""
        connection = self._connected()
        while self._sequence < last:
            first = self._sequence + 1
            self._index(connection, self._trail.entries(first, min(last, first + CHUNK_RECORDS - 1)))

    def _reload(self, connection: sqlite3.Connection) -> None:
        """Read the names and running balances back from the file (at open, after a rollback)."""
        self._names = dict(connection.execute("SELECT name, id FROM names").fetchall())
        self._balances = dict(connection.execute("SELECT account, balance FROM balances").fetchall())

    def _index(self, connection: sqlite3.Connection, entries: Sequence[Entry]) -> None:
        if not entries or entries[0][0].sequence != self._sequence + 1:
            raise StoreInvariantBroken(f"the audit trail has no record {self._sequence + 1} to index")
        latest_at, lateness_us = self._latest_at, self._lateness_us
        records, history, metadata = [], [], []
        changed: set[int] = set()
        connection.execute("BEGIN")
        try:
            for record, parties, _ in entries:
                sequence, created_at = record.sequence, record.created_at
                late = int(created_at < latest_at)
                if late:
                    lateness_us = max(lateness_us, _lateness_us(created_at, latest_at))
                latest_at = max(latest_at, created_at)
                changed.update(self._settle(connection, record))
                common = (record.type, record.status)
                records.append(
                    (sequence, *common, self._name_id(connection, record.source),
                     self._name_id(connection, record.target), record.amount, created_at,
                     latest_at, late, record.reference, record.id)
                )  # fmt: skip
                for party in parties:
                    history.append(
                        (self._name_id(connection, party), sequence, *common,
                         self._counterparty_id(connection, record, party), record.amount,
                         created_at, late, record.reference, self._balance_after(connection, record, party))
                    )  # fmt: skip
                metadata += [
                    (key, value, sequence) for key, value in metadata_values(record.metadata).items()
                ]
            connection.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            connection.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", history)
            connection.executemany("INSERT INTO metadata VALUES (?, ?, ?)", metadata)
            connection.executemany(
                "INSERT OR REPLACE INTO balances VALUES (?, ?)",
                [(account, self._balances[account]) for account in sorted(changed)],
            )
            last = entries[-1][0]
            connection.executemany(
                "UPDATE state SET value = ? WHERE key = ?",
                [
                    (last.sequence, "sequence"),
                    (last.hash, "hash"),
                    (latest_at, "latest_at"),
                    (lateness_us, "lateness_us"),
                ],
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            self._reload(connection)
            raise
        self._sequence, self._latest_at, self._lateness_us = last.sequence, latest_at, lateness_us

    def _settle(self, connection: sqlite3.Connection, record: Transaction) -> tuple[int, ...]:
        """Apply ``record`` to the running balances; the ids of the accounts it changed."""
        if record.status != _SUCCESS:
            return ()
        debits, credits = balance_moves(record.type)
        changed = []
        if debits and record.source is not None:
            source = self._id_of(connection, record.source)
            before = self._balances.get(source)
            if before is None:
                raise StoreInvariantBroken(f"record {record.sequence} debits {record.source}, never opened")
            self._balances[source] = before - record.amount
            changed.append(source)
        if credits and record.target is not None:
            target = self._id_of(connection, record.target)
            self._balances[target] = self._balances.get(target, 0) + record.amount
            changed.append(target)
        return tuple(changed)

    def _balance_after(self, connection: sqlite3.Connection, record: Transaction, party: str) -> int:
        """``party``'s balance right after ``record``, as replayed; checked against the one the
        record carries (records written before records carried balances carry none)."""
        replayed = self._balances.get(self._id_of(connection, party))
        if replayed is None:
            raise StoreInvariantBroken(f"record {record.sequence} is shown to {party}, never opened")
        carried = record.balance_after(party)
        if carried is not None and carried != replayed:
            raise StoreInvariantBroken(
                f"record {record.sequence} carries {carried} as {party}'s balance after it; "
                f"the records before it add up to {replayed}"
            )
        return replayed

    def _name_id(self, connection: sqlite3.Connection, name: str | None) -> int | None:
        return None if name is None else self._id_of(connection, name)

    def _id_of(self, connection: sqlite3.Connection, name: str) -> int:
        known = self._names.get(name)
        if known is None:
            known = self._names[name] = len(self._names) + 1
            connection.execute("INSERT INTO names VALUES (?, ?)", (known, name))
        return known

    def _counterparty_id(self, connection: sqlite3.Connection, record: Transaction, party: str) -> int | None:
        # A record is shown to its source or its target only (``RecordDraft.shown_to``, and a
        # failure to its caller, who is one of them): the history has one counterparty or none.
        names = counterparties(record, party)
        if len(names) > 1:
            raise StoreInvariantBroken(f"record {record!r} is shown to {party}, neither of its parties")
        return self._name_id(connection, names[0]) if names else None

    # -- queries ----------------------------------------------------------------------

    def history(
        self, account: str, where: RecordFilter, before: int | None, upto: int, want: int
    ) -> list[int]:
        """The sequences of ``account``'s first ``want`` records before ``before`` (and at
        most ``upto``) that pass ``where``, newest first."""
        high = upto if before is None else min(upto, before - 1)
        with self._lock:
            connection = self._ready(upto)
            account_id = self._names.get(account)
            if account_id is None:
                return []
            return self._select(connection, where, account_id, 0, high, want)

    def sequence_of(self, record_id: str, upto: int) -> int | None:
        """The sequence of the record whose id is ``record_id`` among those up to ``upto``
        (``None``: no such record). Record ids are unique; a reversal finds its original here."""
        with self._lock:
            row = (
                self._ready(upto)
                .execute(
                    "SELECT sequence FROM records INDEXED BY records_id WHERE id = ? AND sequence <= ?",
                    (record_id, upto),
                )
                .fetchone()
            )
        return None if row is None else int(row[0])

    def balance_at(
        self, account: str, *, sequence: int | None, at: str | None, upto: int
    ) -> BalanceRow | None:
        """``account``'s last record (and balance right after it) at or before ``sequence``, or
        the one with the largest sequence among those with ``created_at <= at`` (records up
        to ``upto`` only); ``None``: it has none there."""
        with self._lock:
            connection = self._ready(upto)
            account_id = self._names.get(account)
            if account_id is None:
                return None
            if at is None:
                if sequence is None:
                    raise StoreInvariantBroken("balance_at needs a sequence or a time")
                return _last_row(connection, account_id, min(sequence, upto))
            # Every record up to the bound is at or before ``at``; after it, only late ones may be.
            bound = min(upto, _sequence_where(connection, _LAST_NOT_AFTER, at) or 0)
            in_order = _last_row(connection, account_id, bound)
            late = connection.execute(
                _LAST_LATE, (account_id, _earlier_by(at, self._lateness_us), at, bound, upto)
            ).fetchone()
            if late is None:
                return in_order
            return BalanceRow(*late) if in_order is None or late[0] > in_order.sequence else in_order

    def transactions(self, where: RecordFilter, after: int, upto: int, want: int) -> list[int]:
        """The sequences of the first ``want`` records after ``after`` (and at most ``upto``)
        that pass ``where``, oldest first."""
        with self._lock:
            return self._select(self._ready(upto), where, None, after, upto, want)

    def _ready(self, upto: int) -> sqlite3.Connection:
        """The connection, once every record up to ``upto`` is indexed (under the lock)."""
        connection = self._connected()
        self._index_upto(upto)
        return connection

    def _select(
        self,
        connection: sqlite3.Connection,
        where: RecordFilter,
        account: int | None,
        low: int,
        high: int,
        want: int,
    ) -> list[int]:
        """Sequences in ``(low, high]`` passing ``where``: the union of one query per arm
        (a type of ``types``, a party of an admin's ``counterparty``, late or not)."""
        arms = self._arms(connection, where, account)
        if arms is None:
            return []
        newest_first = account is not None
        found: set[int] = set()
        for terms, arm_low, arm_high in arms:
            low_bound, high_bound = max(low, arm_low), min(high, arm_high)
            if low_bound < high_bound:
                query = _Query(connection, account, newest_first, low_bound, high_bound, want)
                found.update(query.run(terms))
        return (heapq.nlargest if newest_first else heapq.nsmallest)(want, found)

    def _arms(
        self, connection: sqlite3.Connection, where: RecordFilter, account: int | None
    ) -> list[tuple[list[_Term], int, int]] | None:
        """Each arm's terms and its range of sequences ``(low, high]``; ``None``: nothing matches."""
        common: list[_Term] = []
        if where.reference is not None:
            common.append(_Term("{p}r.reference = ?", (where.reference,), "reference"))
        common += [_Term("", pair, "metadata") for pair in where.metadata]
        parties: list[list[_Term]] = [[]]
        if where.counterparty is not None:
            other = self._names.get(where.counterparty)
            if other is None:
                return None
            if account is not None:
                common.append(_Term("{p}r.counterparty = ?", (other,), "counterparty"))
            else:  # either party: a source arm and a target arm
                parties = [[_Term(f"{{p}}r.{role} = ?", (other,), role)] for role in ("source", "target")]
        types: list[list[_Term]] = [[]]
        if where.types is not None:
            types = [[_Term("{p}r.type = ?", (kind,), "type")] for kind in sorted(where.types)]
        if where.status is not None:
            common.append(_Term("{p}r.status = ?", (where.status,), "status"))
        if where.min_amount is not None or where.max_amount is not None:
            bounds = (
                _MIN_SQL_INT if where.min_amount is None else where.min_amount,
                _MAX_SQL_INT if where.max_amount is None else where.max_amount,
            )
            common.append(_Term("{p}r.amount BETWEEN ? AND ?", bounds, "amount"))
        times = self._time_arms(connection, where)
        return [
            (time_terms + party + kind + common, low, high)
            for time_terms, low, high in times
            for party in parties
            for kind in types
        ]

    @staticmethod
    def _time_arms(connection: sqlite3.Connection, where: RecordFilter) -> list[tuple[list[_Term], int, int]]:
        """The rows in time order (a range of sequences) and the late ones (checked one by one)."""
        after, before = where.created_after, where.created_before
        if after is None and before is None:
            return [([], 0, _MAX_SQL_INT)]
        late: list[_Term] = [_Term("r.late = 1", (), "late")]
        low, high = 0, _MAX_SQL_INT
        if after is not None:
            late.append(_Term("+r.created_at > ?", (after,), None))
            # After the last record whose running maximum is not after it, every record in
            # time order is newer.
            low = _sequence_where(connection, _LAST_NOT_AFTER, after) or 0
        if before is not None:
            late.append(_Term("+r.created_at < ?", (before,), None))
            # Before the first one whose running maximum is not before it, every record is older.
            first = _sequence_where(connection, _FIRST_NOT_BEFORE, before)
            high = _MAX_SQL_INT if first is None else first - 1
        return [([_Term("+r.late = 0", (), None)], low, high), (late, 0, _MAX_SQL_INT)]


#: Through the running maximum of ``created_at`` (it only grows with the sequence).
_LAST_NOT_AFTER = (
    "SELECT sequence FROM records INDEXED BY records_latest WHERE latest_at <= ? "
    "ORDER BY latest_at DESC, sequence DESC LIMIT 1"
)
_FIRST_NOT_BEFORE = (
    "SELECT sequence FROM records INDEXED BY records_latest WHERE latest_at >= ? "
    "ORDER BY latest_at, sequence LIMIT 1"
)


def _sequence_where(connection: sqlite3.Connection, sql: str, stamp: str) -> int | None:
    row = connection.execute(sql, (stamp,)).fetchone()
    return None if row is None else int(row[0])


class BalanceRow(NamedTuple):
    """An account's record as ``balance_at`` finds it: its sequence, time, and the account's
    balance right after it."""

    sequence: int
    balance: int
    created_at: str


def _last_row(connection: sqlite3.Connection, account: int, high: int) -> BalanceRow | None:
    """The account's last row at or before sequence ``high`` (one step down its key)."""
    row = connection.execute(
        "SELECT sequence, balance, created_at FROM history WHERE account = ? AND sequence <= ? "
        "ORDER BY sequence DESC LIMIT 1",
        (account, high),
    ).fetchone()
    return None if row is None else BalanceRow(*row)


#: The account's last late row stamped in ``[low, at]`` with a sequence in ``(bound, upto]``.
_LAST_LATE = (
    "SELECT sequence, balance, created_at FROM history INDEXED BY history_late_time "
    "WHERE account = ? AND late = 1 AND created_at BETWEEN ? AND ? AND sequence > ? AND sequence <= ? "
    "ORDER BY sequence DESC LIMIT 1"
)


def _microseconds(stamp: str) -> int | None:
    """A record's time in microseconds since year 1 (``None``: not a time this reads)."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - datetime.min) // timedelta(microseconds=1)


def _lateness_us(created_at: str, latest_at: str) -> int:
    """How far a late record's time falls behind the running maximum before it."""
    created_us, latest_us = _microseconds(created_at), _microseconds(latest_at)
    if created_us is None or latest_us is None:
        return _UNBOUNDED_LATENESS_US
    return max(0, latest_us - created_us)


def _earlier_by(stamp: str, lateness_us: int) -> str:
    """``stamp`` less ``lateness_us``, in the records' form (``""``, before every record, if
    that is before year 1 or ``stamp`` cannot be read)."""
    stamp_us = _microseconds(stamp)
    if stamp_us is None or lateness_us >= stamp_us:
        return ""
    earlier = datetime.min + timedelta(microseconds=stamp_us - lateness_us)
    return earlier.isoformat(timespec="microseconds") + "Z"


class _Query(NamedTuple):
    """One arm's query: sequences in ``(low, high]``, in page order, at most ``want``. Its
    SQL is made of this module's constants only (every value is a parameter)."""

    connection: sqlite3.Connection
    account: int | None
    newest_first: bool
    low: int
    high: int
    want: int

    def run(self, terms: list[_Term]) -> list[int]:
        driver = self._driver(terms)
        table, scope, scope_params = self._scope()
        checks = [term for term in terms if term is not driver]
        where_sql = " ".join(f"AND {_checked(term)}" for term in checks)
        params = [param for term in checks for param in term.params]
        order = "DESC" if self.newest_first else "ASC"
        if driver is not None and driver.via == "metadata":
            sql = (
                f"SELECT m.sequence FROM metadata AS m CROSS JOIN {table} AS r "  # noqa: S608
                f"WHERE m.key = ? AND m.value = ? AND m.sequence > ? AND m.sequence <= ? "
                f"AND {scope}r.sequence = m.sequence {where_sql} ORDER BY m.sequence {order} LIMIT ?"
            )
            return self._sequences(sql, (*driver.params, self.low, self.high, *scope_params, *params))
        indexed = "" if driver is None else f"INDEXED BY {table}_{driver.via}"
        driving = "" if driver is None else f"AND {driver.sql.format(p='')}"
        sql = (
            f"SELECT r.sequence FROM {table} AS r {indexed} "  # noqa: S608
            f"WHERE {scope}r.sequence > ? AND r.sequence <= ? {driving} {where_sql} "
            f"ORDER BY r.sequence {order} LIMIT ?"
        )
        driver_params = () if driver is None else driver.params
        return self._sequences(sql, (*scope_params, self.low, self.high, *driver_params, *params))

    def _scope(self) -> tuple[str, str, tuple[object, ...]]:
        """The table, the condition that keeps to the account (if a history) and its parameters."""
        if self.account is None:
            return "records", "", ()
        return "history", "r.account = ? AND ", (self.account,)

    def _sequences(self, sql: str, params: Iterable[object]) -> list[int]:
        return [row[0] for row in self.connection.execute(sql, (*params, self.want))]

    def _driver(self, terms: list[_Term]) -> _Term | None:
        """The term whose index the scan follows: the first in ``_DRIVERS``' order; an amount
        range only when few rows fall in it (``None``: the scan follows the sequence)."""
        candidates = sorted(
            (term for term in terms if term.via is not None), key=lambda term: _DRIVERS.index(term.via or "")
        )
        for term in candidates:
            if term.via != "amount" or self._few_in_range(term):
                return term
        return None

    def _few_in_range(self, term: _Term) -> bool:
        """Whether fewer than ``AMOUNT_PROBE_ROWS`` rows (of any sequence: counting only those
        of the page's range could read far more) have an amount in the range."""
        table, scope, scope_params = self._scope()
        (rows,) = self.connection.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} AS r INDEXED BY {table}_amount "  # noqa: S608
            f"WHERE {scope}r.amount BETWEEN ? AND ? LIMIT ?)",
            (*scope_params, *term.params, AMOUNT_PROBE_ROWS),
        ).fetchone()
        return bool(rows < AMOUNT_PROBE_ROWS)


#: Which index drives a scan when a query has several: the rarest rows first.
_DRIVERS = ("late", "reference", "metadata", "counterparty", "source", "target", "type", "status", "amount")
#: A metadata pair checked on a row another index found.
_HAS_METADATA = (
    "EXISTS (SELECT 1 FROM metadata AS m WHERE m.key = ? AND m.value = ? AND m.sequence = r.sequence)"
)


def _checked(term: _Term) -> str:
    return _HAS_METADATA if term.via == "metadata" else term.sql.format(p="+")


def _keep_up(index_ref: weakref.ref[RecordIndex], stop: threading.Event) -> None:
    """The background thread: index new records every ``CATCH_UP_INTERVAL_S`` until the
    store closes (or is dropped without closing)."""
    while not stop.wait(CATCH_UP_INTERVAL_S):
        index = index_ref()
        if index is None:
            return
        try:
            index.catch_up()
        except StorageUnavailable:
            return
        except Exception:  # the next query indexes what is left, or fails itself
            _log.exception("the record index could not catch up with the audit trail; retrying")
        del index
