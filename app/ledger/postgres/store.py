"""``PostgresStore``: the ledger on PostgreSQL, shared by many worker processes and hosts.

Transactions and locks
----------------------
Every money or hold operation is one transaction (a ``unit.Unit``, run by
``runner.Runner``): it locks the account rows it touches in username order, expires
their due holds, checks and applies the business rules (``app.ledger.rules``) to
copies of the rows, writes back what changed, and appends its audit records under
the ``chain_head`` row lock, taken last, just before ``COMMIT``. ``CHECK (balance >= 0)``
and friends in the schema are the second line of defence: a violation is a bug
(500), never a silent overdraft. The package docstring lists every lock.

Every wait (lock waits, statements, taking a pooled connection) is bounded by the
operation's deadline through ``lock_timeout`` and ``statement_timeout``.
Serialisation failures, deadlocks and lost connections are retried, at most
``runner.MAX_ATTEMPTS`` times and only within the deadline; then the answer is
``503 timeout`` with nothing applied (and a FAILED audit record written apart,
when the database can still take one). A ``COMMIT`` whose answer is lost is
settled by looking for its audit record before anything is retried.

Idempotency keys live in the database (``keys.Keys``): the key's row is inserted in
the same transaction as the operation it guards (``idempotent``), so a crash cannot
separate them, and a retry on another worker waits on the row's unique index until
the first transaction ends, then replays its committed outcome.

Holds expire no later than the next operation touching either account (inside
that operation's transaction) or a background sweep (``sweeper.Sweeper``, one per
process, every ``SWEEP_INTERVAL_S``), whichever comes first. Expiry instants are on
the application's wall clock, as in the embedded store.

Checkpoints and verification
----------------------------
Every ``checkpoint_records`` records, and at a clean ``close``, a checkpoint (the
chain head and a digest of every balance) is taken on one MVCC snapshot, in a
background thread that takes no row lock (``checkpoints.Checkpointer``).
``verify`` streams the audit trail through a server-side cursor in one
repeatable-read snapshot, from the first record or from a checkpoint (``monitor``).

Durability
----------
PostgreSQL's: an operation is answered only after its transaction committed.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from psycopg.rows import TupleRow

from app.ledger import rules
from app.ledger.audit import Verification
from app.ledger.errors import (
    AccountExists,
    AccountNotFound,
    HoldNotFound,
    LedgerError,
    OperationTimeout,
    StoreInvariantBroken,
    VersionConflict,
)
from app.ledger.filters import NO_FILTER, RecordFilter
from app.ledger.model import (
    MAX_BALANCE,
    AccountView,
    BalanceAt,
    BatchItem,
    BatchResult,
    CheckpointPage,
    Deadline,
    Hold,
    HoldResult,
    ItemOutcome,
    OperationResult,
    OperationType,
    Page,
    Tag,
    Transaction,
)
from app.ledger.outcomes import Outcome, Result
from app.ledger.postgres import checkpoints, pages, schema, sql
from app.ledger.postgres.checkpoints import Checkpointer
from app.ledger.postgres.holds import Holds
from app.ledger.postgres.keys import Keys
from app.ledger.postgres.monitor import Monitor
from app.ledger.postgres.reversals import Reversals, reversed_amounts
from app.ledger.postgres.runner import Runner
from app.ledger.postgres.sweeper import SWEEP_INTERVAL_S, Sweeper
from app.ledger.postgres.unit import Connection, Unit, failed, item_draft
from app.ledger.records import success
from app.ledger.rules import (
    AUDIT_CURSOR,
    HISTORY_CURSOR,
    TRANSACTIONS_CURSOR,
    apply_batch,
    apply_item,
    check_amount,
    check_batch,
    check_limit,
    check_version,
    decode_cursor,
    encode_cursor,
)
from app.ledger.store import Counts, Health, Stats

T = TypeVar("T")

#: Due holds expired per sweep transaction.
SWEEP_BATCH = 500
#: Token digests one worker remembers (about 100 bytes each).
DIGEST_CACHE_SIZE = 100_000
#: A checkpoint every this many audit records (``LEDGER_CHECKPOINT_RECORDS``'s default).
DEFAULT_CHECKPOINT_RECORDS = 50_000


class PostgresStore(rules.SingleOperations):
    """The ledger in a PostgreSQL database, through a pool of psycopg connections.

    ``deposit``, ``withdraw`` and ``transfer`` are ``rules.SingleOperations``', each one
    item run by ``_run_one``.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 10,
        min_connections: int = 1,
        lock_trouble_after_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        sweep_interval_s: float | None = SWEEP_INTERVAL_S,
        migrate: bool = True,
        checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS,
    ) -> None:
        if migrate:
            schema.migrate(url)
        self._runner = Runner(
            url,
            max_connections=max_connections,
            min_connections=min_connections,
            lock_trouble_after_s=lock_trouble_after_s,
            clock=clock,
        )
        self._counters = self._runner.counters
        self._keys = Keys(self._runner)
        self._monitor = Monitor(self._runner)
        self._holds = Holds(self._runner)
        self._reversals = Reversals(self._runner)
        self._checkpointer = Checkpointer(self._runner, checkpoint_records)
        self._runner.appended = self._checkpointer.appended
        #: username -> token digest (see ``token_digest``); dict operations are atomic under the GIL.
        self._digests: dict[str, bytes] = {}
        self._sweeper = Sweeper(self, sweep_interval_s) if sweep_interval_s else None

    @property
    def url(self) -> str:
        """The database this store works on."""
        return self._runner.url

    @property
    def _clock(self) -> Callable[[], float]:
        """The application's wall clock (the runner's: tests swap it for a fake one)."""
        return self._runner.clock

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        self._runner.clock = clock

    # -- accounts -----------------------------------------------------------------

    def is_empty(self) -> bool:
        row = self._runner.read(lambda c: c.execute("SELECT NOT EXISTS (SELECT 1 FROM accounts)").fetchone())
        return bool(row and row[0])

    def create_account(
        self, username: str, token_digest: bytes, balance: int, *, deadline: Deadline
    ) -> AccountView:
        if not 0 <= balance <= MAX_BALANCE:
            raise StoreInvariantBroken(f"opening balance {balance} out of range")

        def work(unit: Unit) -> AccountView:
            unit.begin(deadline, ())
            inserted = unit.connection.execute(
                "INSERT INTO accounts (username, token_digest, balance) VALUES (%s, %s, %s) "
                "ON CONFLICT (username) DO NOTHING RETURNING 1",
                (username, token_digest, balance),
            ).fetchone()
            if inserted is None:
                # Audited, but in nobody's history: it is not the holder's doing.
                error = AccountExists(f"Account {username} already exists.")
                raise unit.fail(
                    "open", error, failed(OperationType.OPEN, None, username, balance, error.code, ())
                )
            unit.append([success(OperationType.OPEN, None, username, balance)])
            unit.outcomes.append(("open", "success"))
            return AccountView(username, balance, 0, 0)

        timeout = failed(OperationType.OPEN, None, username, balance, OperationTimeout.code, ())
        return self._runner.write("open", deadline, work, [timeout])

    def token_digest(self, username: str) -> bytes | None:
        """The account's token digest; known ones come from this process's cache.

        A digest never changes and an account is never deleted (the API has no way to
        do either), so a digest once read stays right: every authenticated request
        after the first saves a round trip. Unknown names are not cached (the account
        may be opened on another worker a moment later).
        """
        cached = self._digests.get(username)
        if cached is not None:
            return cached
        row = self._runner.read(
            lambda c: c.execute(
                "SELECT token_digest FROM accounts WHERE username = %s", (username,)
            ).fetchone()
        )
        if row is None:
            return None
        digest = bytes(row[0])
        if len(self._digests) >= DIGEST_CACHE_SIZE:
            self._digests.clear()  # crude but bounded; refilled one request at a time
        self._digests[username] = digest
        return digest

    def account(self, username: str, *, deadline: Deadline) -> AccountView:
        def read(now_s: float, connection: Connection) -> tuple[AccountView, bool]:
            row = connection.execute(sql.READ_ACCOUNT, (now_s, username, username, username)).fetchone()
            if row is None:
                raise AccountNotFound(f"Account {username} does not exist.")
            return AccountView(username, row[0], row[2], row[1]), bool(row[3])

        return self._read_after_expiry(username, deadline, "balance", read)

    def _read_after_expiry(
        self,
        username: str,
        deadline: Deadline,
        kind: str,
        read: Callable[[float, Connection], tuple[T, bool]],
    ) -> T:
        """``read`` once no hold of ``username`` is due (``read`` tells whether one is)."""
        for attempt in range(2):
            started = time.perf_counter()
            now_s = self._clock()
            try:
                value, due = self._runner.read(functools.partial(read, now_s), deadline)
            except LedgerError as error:
                self._counters.count([(kind, error.code)], time.perf_counter() - started)
                raise
            if not due or attempt:
                self._counters.count([(kind, "success")], time.perf_counter() - started)
                return value
            self._expire_now((username,), deadline)
        raise StoreInvariantBroken("only the first read of an account may defer to expiry")

    # -- money ----------------------------------------------------------------------

    def _run_one(
        self, username: str, item: BatchItem, deadline: Deadline, expected_version: int | None
    ) -> OperationResult:
        check_amount(item.amount)
        sql.tag_columns(item.tag)
        label = item.kind.value

        def work(unit: Unit) -> OperationResult:
            unit.begin(deadline, [name for name in (username, item.target) if name is not None])
            try:
                caller = rules.existing(unit.accounts.get, username)
                check_version(caller, expected_version)
                apply_item(unit.accounts.get, username, item)
            except LedgerError as error:
                raise unit.fail(label, error, item_draft(username, item, error.code)) from None
            [record] = unit.append([item_draft(username, item)])
            unit.outcomes.append((label, "success"))
            return OperationResult(record, unit.accounts[username].view())

        timeout = item_draft(username, item, OperationTimeout.code)
        return self._runner.write(label, deadline, work, [timeout])

    def reverse(
        self,
        username: str | None,
        transaction_id: str,
        amount: int | None,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult:
        """Send back a transaction (``reversals.Reversals``)."""
        return self._reversals.reverse(username, transaction_id, amount, deadline, expected_version, tag)

    def batch(
        self,
        username: str,
        items: Sequence[BatchItem],
        *,
        atomic: bool,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> BatchResult:
        """Apply ``items`` in order in one transaction; atomic: all or none (on copies first)."""
        check_batch(items)
        for item in items:
            sql.tag_columns(item.tag)
        names = {username, *(item.target for item in items if item.target is not None)}

        def work(unit: Unit) -> BatchResult:
            unit.begin(deadline, names)
            caller = rules.existing(unit.accounts.get, username)
            try:
                check_version(caller, expected_version)
            except VersionConflict as error:
                error.transaction = self._append_items(unit, username, items, [error] * len(items))[0]
                raise
            failures, failed_index = apply_batch(unit.accounts.get, username, items, atomic=atomic)
            records = self._append_items(unit, username, items, failures)
            outcomes = tuple(
                ItemOutcome(index, record)
                if failure is None
                else ItemOutcome(index, record, failure.status, failure.code, failure.message)
                for index, (record, failure) in enumerate(zip(records, failures, strict=True))
            )
            return BatchResult(outcomes, unit.accounts[username].view(), atomic, failed_index)

        timeouts = [item_draft(username, item, OperationTimeout.code) for item in items]
        return self._runner.write("batch", deadline, work, timeouts)

    def _append_items(
        self, unit: Unit, username: str, items: Sequence[BatchItem], failures: Sequence[LedgerError | None]
    ) -> list[Transaction]:
        specs = []
        for item, failure in zip(items, failures, strict=True):
            specs.append(item_draft(username, item, None if failure is None else failure.code))
            unit.outcomes.append((item.kind.value, "success" if failure is None else failure.code))
        return unit.append(specs)

    # -- holds ------------------------------------------------------------------------

    def create_hold(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        timeout_s: int,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> HoldResult:
        return self._holds.create(username, target, amount, timeout_s, deadline, expected_version, tag)

    def capture_hold(
        self,
        username: str,
        hold_id: str,
        amount: int | None,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> HoldResult:
        """Move ``amount`` (default: all) of a pending hold to its payee; release the rest."""
        return self._holds.capture(username, hold_id, amount, deadline, expected_version)

    def void_hold(
        self, username: str, hold_id: str, *, deadline: Deadline, expected_version: int | None = None
    ) -> HoldResult:
        """Release the whole of a pending hold."""
        return self._holds.void(username, hold_id, deadline, expected_version)

    def get_hold(self, username: str, hold_id: str, *, deadline: Deadline) -> Hold:
        def read(now_s: float, connection: Connection) -> tuple[Hold, bool]:
            row = connection.execute(sql.READ_HOLD, (now_s, username, username, hold_id)).fetchone()
            if row is None or username not in (row[1], row[2]):
                raise HoldNotFound(f"No hold {hold_id} of yours.")
            return sql.hold(row).view(), bool(row[10])

        return self._read_after_expiry(username, deadline, "hold_read", read)

    def sweep_expired(self, *, deadline: Deadline) -> int:
        """Expire every pending hold whose time is up (oldest deadline first); how many were."""
        expired = 0
        while True:
            rows = self._runner.read(functools.partial(_due_parties, self._clock()), deadline)
            if not rows:
                return expired
            expired += self._expire_now({name for row in rows for name in row}, deadline)
            if len(rows) < SWEEP_BATCH:
                return expired

    def _expire_now(self, names: Iterable[str], deadline: Deadline) -> int:
        def work(unit: Unit) -> int:
            unit.begin(deadline, names)
            expired = len(unit.settled)
            if expired:
                unit.append([])
            return expired

        return self._runner.write(OperationType.EXPIRE.value, deadline, work, ())

    def close(self) -> None:
        """Stop the sweeper, take the checkpoint of a clean shutdown, close every pooled connection."""
        if self._sweeper is not None:
            self._sweeper.stop()
        self._checkpointer.close()
        self._runner.pool.close()

    def wait_until_connected(self, timeout_s: float) -> None:
        """Block until the pool holds its minimum of live connections (after a start or an outage).

        ``PoolTimeout`` (and a closed pool) if that takes longer than ``timeout_s``.
        """
        self._runner.pool.wait(timeout=timeout_s)

    def stop_sweeper(self) -> None:
        """Stop only the background sweeper (tests that expire holds by touch alone)."""
        if self._sweeper is not None:
            self._sweeper.stop()

    def purge_keys(self, **bounds: int) -> int:
        """Drop idempotency keys past their 24 hours, in short batches; how many were
        (``bounds``: ``batch`` and ``max_batches``, see ``Keys.purge``)."""
        return self._keys.purge(**bounds)

    # -- history --------------------------------------------------------------------

    def history(
        self, username: str, *, limit: int, cursor: str | None, where: RecordFilter = NO_FILTER
    ) -> Page:
        """``username``'s records passing ``where``, newest first (``pages.history``)."""
        check_limit(limit)
        before = 2**63 - 1 if cursor is None else decode_cursor(cursor, HISTORY_CURSOR)
        return self._shown(_page("h", pages.history(self._runner, username, before, limit + 1, where), limit))

    def balance_at(self, username: str, *, sequence: int | None = None, at: str | None = None) -> BalanceAt:
        """The account's row at that point in ``audit_parties``, with its balance (``pages.balance_at``)."""
        rules.check_point(sequence, at)
        found = pages.balance_at(self._runner, username, sequence, at)
        if found is None:
            raise rules.no_record_before(username)
        found_sequence, balance, created_at = found
        if balance is None:
            raise StoreInvariantBroken(f"{username}'s row of record {found_sequence} has no balance_after")
        return BalanceAt(username, balance, found_sequence, created_at)

    def transactions(self, *, limit: int, cursor: str | None, where: RecordFilter = NO_FILTER) -> Page:
        """Every account's records passing ``where``, oldest first (``pages.transactions``)."""
        check_limit(limit)
        after = 0 if cursor is None else decode_cursor(cursor, TRANSACTIONS_CURSOR)
        return self._shown(_page("t", pages.transactions(self._runner, after, limit + 1, where), limit))

    def audit_page(self, *, limit: int, cursor: str | None) -> Page:
        check_limit(limit)
        after = 0 if cursor is None else decode_cursor(cursor, AUDIT_CURSOR)
        rows = self._runner.read(lambda c: c.execute(sql.RECORDS_AFTER, (after, limit + 1)).fetchall())
        return self._shown(_page("a", [sql.record(row) for row in rows], limit))

    def _shown(self, page: Page) -> Page:
        """``page`` with the reversed amounts of its records (read after them: as of the answer)."""
        amounts = reversed_amounts(self._runner, page.transactions)
        return dataclasses.replace(page, reversed=amounts) if amounts else page

    def verify(self, *, from_sequence: int | None = None) -> Verification:
        """Check every invariant on one consistent snapshot (a repeatable-read transaction),
        streaming the audit trail; from a checkpoint, only the records after it."""
        return self._monitor.verify(from_sequence)

    def checkpoints(self, *, limit: int, cursor: str | None) -> CheckpointPage:
        return checkpoints.page(self._runner, limit, cursor)

    # -- idempotency ------------------------------------------------------------------

    def idempotent(
        self,
        username: str,
        key: str,
        fingerprint: str,
        deadline: Deadline,
        operation: Callable[[], Result],
    ) -> Outcome:
        """Run ``operation`` once per ``(username, key)`` across every process; replay afterwards."""
        return self._keys.run(username, key, fingerprint, deadline, operation)

    # -- health and metrics -------------------------------------------------------------

    def health(self) -> Health:
        return self._monitor.health()

    def not_ready(self) -> str | None:
        return self._monitor.not_ready()

    def stats(self) -> Stats:
        return self._monitor.stats()

    def counts(self) -> Counts:
        return self._counters.snapshot()


def _page(prefix: str, found: Sequence[Transaction], limit: int) -> Page:
    """A page of the first ``limit`` of ``found`` (up to ``limit + 1`` records: one more says
    there is a next page, which starts after the last record shown)."""
    records = tuple(found[:limit])
    return Page(records, encode_cursor(prefix, records[-1].sequence) if len(found) > limit else None)


def _due_parties(now_s: float, connection: Connection) -> list[TupleRow]:
    """The parties of (at most ``SWEEP_BATCH``) pending holds due at ``now_s``, oldest first."""
    return connection.execute(
        "SELECT source, target FROM holds WHERE status = 'PENDING' AND expires_at_s <= %s "
        "ORDER BY expires_at_s, id LIMIT %s",
        (now_s, SWEEP_BATCH),
    ).fetchall()
