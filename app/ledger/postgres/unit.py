"""One transaction of the PostgreSQL store: lock, expire due holds, write, chain, commit.

Lock order
----------
Every writing transaction takes its locks in one order, so two of them can never
wait for each other in a cycle:

1. the rows of ``accounts`` it touches, all in one statement, sorted by username
   (``FOR NO KEY UPDATE``: foreign-key checks of new holds are not blocked);
2. holds are never locked themselves: a hold row is only changed by a transaction
   that holds both of its parties' account rows, so those locks protect it; a
   reversal then locks its original's ``audit`` row (``FOR UPDATE``, for its
   ``reversed_amount``), after that original's parties' account rows;
3. the single ``chain_head`` row, last, just before commit. That row is the
   global serialisation point (it makes sequences gap-free and the chain linear),
   so the section between taking it and committing is one round trip: the audit
   inserts and the ``COMMIT`` are sent together in one message.

A due hold found among the locked accounts whose other party is not locked makes
the transaction start again with that party added (``Restart``), rather than take
a lock out of order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import psycopg
from psycopg.rows import TupleRow

from app.ledger import rules
from app.ledger.accounts import AccountState, HoldState
from app.ledger.errors import CommitOutcomeUnknown, LedgerError, StoreInvariantBroken
from app.ledger.model import (
    BatchItem,
    Deadline,
    HoldStatus,
    OperationType,
    Tag,
    Transaction,
    new_id,
    utc_now_iso,
)
from app.ledger.postgres import sql
from app.ledger.records import RecordDraft, settle_balances, success

_log = logging.getLogger("goledger.postgres")

#: A pooled connection (rows as tuples), as every module of the store uses it.
Connection = psycopg.Connection[TupleRow]

_LOCK_ACCOUNTS = (
    "SELECT username, balance, held, version FROM accounts WHERE username = ANY(%s) "
    "ORDER BY username FOR NO KEY UPDATE"
)
_DUE_HOLDS = (
    "SELECT id, source, target, amount, reference, metadata FROM holds "
    "WHERE status = 'PENDING' AND expires_at_s <= %s AND (source = ANY(%s) OR target = ANY(%s)) "
    "ORDER BY expires_at_s, id"
)
_WRITE_ACCOUNTS = (
    "UPDATE accounts AS a SET balance = v.balance, held = v.held, version = v.version "
    "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) "
    "AS v(username, balance, held, version) "
    "WHERE a.username = v.username"
)
_INSERT_HOLDS = (
    "INSERT INTO holds (id, source, target, amount, captured, status, expires_at_s, created_at, reference, "
    "metadata) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], "
    "%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[]::jsonb[])"
)
_SETTLE_HOLDS = (
    "UPDATE holds AS h SET status = v.status, captured = v.captured "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS v(id, status, captured) WHERE h.id = v.id"
)
_APPEND = (
    "SELECT * FROM goledger_append(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]::jsonb[], %s::bigint[], %s::bigint[], "
    "%s::text[], %s::bytea[], %s::text[], %s::integer[])"
)


#: A statement and its parameters, one part of a ``Script``.
Statement = tuple[str, tuple[object, ...]]
_SET_TIMEOUTS = "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)"


def begin_within(deadline: Deadline) -> list[Statement]:
    """Begin a transaction whose every lock wait and statement ends by the deadline."""
    return [("BEGIN", ()), _timeouts(deadline)]


def _timeouts(deadline: Deadline) -> Statement:
    """Bound the transaction's next lock waits and statements by what is left of the deadline."""
    timeout_ms = str(max(1, int(deadline.remaining_s() * 1000)))  # 0 would mean "no limit"
    return (_SET_TIMEOUTS, (timeout_ms, timeout_ms))


def run_script(connection: Connection, statements: Sequence[Statement]) -> list[list[TupleRow]]:
    """Send ``statements`` to the server in one message (one round trip); the rows of each
    statement that returns rows, in order.

    Parameters are bound on the client (psycopg's ``ClientCursor`` quotes every value),
    which is what lets several statements share one message. A failing statement stops
    the rest, and leaves an open transaction aborted (the pool rolls it back).
    """
    cursor = psycopg.ClientCursor(connection)
    query = "; ".join(text for text, _ in statements)
    cursor.execute(query, tuple(value for _, values in statements for value in values))
    results = []
    while True:
        if cursor.pgresult is not None and cursor.pgresult.status == psycopg.pq.ExecStatus.TUPLES_OK:
            results.append(cursor.fetchall())
        if not cursor.nextset():
            return results


class Restart(Exception):
    """The transaction must start again with more accounts locked (never out of order)."""

    def __init__(self, names: set[str]) -> None:
        super().__init__(f"restart locking {sorted(names)}")
        self.names = names


class Unit:
    """The state of one transaction on one connection.

    ``commit``: whether ``append`` commits (a standalone operation) or leaves that to
    the caller (an operation inside an idempotency key's transaction).
    """

    def __init__(
        self,
        connection: Connection,
        *,
        now_s: float,
        commit: bool,
        url: str,
        extra: set[str],
    ) -> None:
        self.connection = connection
        #: Accounts a restart found it must lock besides the operation's own.
        self.extra = extra
        self.began = False
        #: The operation's deadline (from ``begin``): each message re-applies what is left of it.
        self.deadline: Deadline | None = None
        self.now_s = now_s
        self.commit = commit
        self.committed = False
        self.accounts: dict[str, AccountState] = {}
        self._original: dict[str, tuple[int, int, int]] = {}
        self.records: list[RecordDraft] = []
        self.outcomes: list[tuple[str, str]] = []
        self.new_holds: list[HoldState] = []
        self.settled: dict[str, HoldState] = {}
        #: Other writes the next ``append`` sends with its own (a reversed amount).
        self.statements: list[Statement] = []
        self.lock_wait_s = 0.0
        #: How long the round trip that carried the ``COMMIT`` took (once ``committed``).
        self.commit_s = 0.0
        #: The sequence of the last record this transaction appended (0: none yet).
        self.last_sequence = 0
        self._url = url

    # -- locking ----------------------------------------------------------------

    def begin(self, deadline: Deadline, names: Iterable[str]) -> None:
        """Begin, bound every wait by the deadline, lock ``names`` and expire their due holds."""
        touched = sorted(set(names))
        # Only the touched accounts' due holds expire (as in the embedded store); the
        # other parties of those holds are locked too, since their rows change.
        wanted = sorted({*touched, *self.extra})
        self.began = True
        self.deadline = deadline
        connection = self.connection
        started = time.perf_counter()
        statements = begin_within(deadline) if self.commit else []
        if wanted:  # (a FAILED record alone takes no lock on the accounts table at all)
            statements += [(_LOCK_ACCOUNTS, (wanted,)), (_DUE_HOLDS, (self.now_s, touched, touched))]
        if not statements:
            return
        try:
            results = run_script(connection, statements)
        finally:
            self.lock_wait_s = time.perf_counter() - started
        if not wanted:
            return
        locked, due = results[-2:]
        for username, balance, held, version in locked:
            self._adopt(AccountState(str(username), int(balance), int(held), int(version)))
        due_holds = [
            HoldState(str(h), str(s), str(t), int(a), 0.0, "", tag=sql.tag(r, m)) for h, s, t, a, r, m in due
        ]
        missing = {name for hold in due_holds for name in (hold.source, hold.target)} - set(wanted)
        if missing:
            raise Restart(set(wanted) | missing)
        for hold in due_holds:
            if hold.id in self.settled:
                continue
            self.release(hold, HoldStatus.EXPIRED)
            # An expiry carries the tag of its hold, as a capture or a void does.
            expiry = success(OperationType.EXPIRE, hold.source, hold.target, hold.amount, hold.tag)
            self.records.append(expiry)
            self.outcomes.append((OperationType.EXPIRE.value, "success"))

    def finish(self) -> None:
        """Commit a standalone transaction that wrote nothing (``append`` commits the others)."""
        if self.commit and self.began and not self.committed:
            started = time.perf_counter()
            self.connection.execute("COMMIT")
            self.commit_s = time.perf_counter() - started
            self.committed = True

    def _adopt(self, account: AccountState) -> None:
        self.accounts[account.username] = account
        self._original[account.username] = account.key()

    def release(self, hold: HoldState, status: HoldStatus) -> None:
        """Release a pending hold whose payer's account is locked (void, expiry)."""
        rules.release(self.accounts[hold.source], hold, status)
        self.settled[hold.id] = hold

    def capture(self, hold: HoldState, amount: int | None) -> int:
        """Capture a pending hold whose parties' accounts are locked; the amount moved."""
        captured = rules.capture(self.accounts.get, hold, amount)
        self.settled[hold.id] = hold
        return captured

    # -- writing ----------------------------------------------------------------

    def fail(self, label: str, error: LedgerError, draft: RecordDraft) -> LedgerError:
        """Audit a business failure in this transaction; the error, carrying its record."""
        self.outcomes.append((label, error.code))
        error.transaction = self.append([draft])[0]
        return error

    def append(self, drafts: Sequence[RecordDraft]) -> list[Transaction]:
        """Write the changed accounts and holds, chain every pending record, commit if standalone.

        One message, one round trip: the writes, ``goledger_append`` (which takes the
        chain head's lock, numbers and hashes the records in the database) and the
        ``COMMIT``. Returns the records of ``drafts`` (the expiries before them are
        chained too, first).
        """
        self.records.extend(drafts)
        self._settle_balances()
        created_at = utc_now_iso()
        numbered = [(new_id("tx_"), draft) for draft in self.records]
        statements = [*self._changes(), (_APPEND, _append_parameters(numbered, created_at))]
        if self.deadline is not None:
            # The bounds set at BEGIN would give this message the whole budget again.
            statements.insert(0, _timeouts(self.deadline))
        if self.commit:
            statements.append(("COMMIT", ()))
        started = time.perf_counter()
        try:
            *_, sealed = run_script(self.connection, statements)
        except psycopg.OperationalError:
            if not self.commit or not self.connection.broken:
                raise
            # The COMMIT went out with the rest and no answer came back: the transaction
            # may have landed. Only finding its records settles it; anything else must not
            # be retried (a retry would apply it twice) nor audited as "nothing applied".
            sealed = self._landed([record_id for record_id, _ in numbered])
            if not sealed:
                raise CommitOutcomeUnknown(
                    "The database connection broke while committing; the operation may or may not "
                    "have been applied. Retry with the same Idempotency-Key, or read the history."
                ) from None
            _log.warning("the connection broke during COMMIT, but the transaction had landed")
        self.committed = self.commit
        if self.committed:
            self.commit_s = time.perf_counter() - started
        records = [
            draft.sealed(record_id, sequence, created_at, previous_hash, digest)
            for (record_id, draft), (sequence, previous_hash, digest) in zip(numbered, sealed, strict=True)
        ]
        if records:
            self.last_sequence = records[-1].sequence
        self.records = []
        self._original = {name: account.key() for name, account in self.accounts.items()}
        self.new_holds = []
        self.settled = {}
        self.statements = []
        return records[len(records) - len(drafts) :]

    def _settle_balances(self) -> None:
        """Give each pending record its parties' balances right after it, from the balances
        this transaction locked (as of its last append) and what each record moves; they
        must come out at the accounts' balances now (a record that moves money it does not
        say it moves is a bug, refused here rather than hashed into the trail)."""
        balances = {name: original[0] for name, original in self._original.items()}
        settle_balances(self.records, balances)
        for name, account in self.accounts.items():
            if balances.get(name, account.balance) != account.balance:
                raise StoreInvariantBroken(
                    f"the records of this transaction leave {name} at {balances[name]}, the account at "
                    f"{account.balance}"
                )

    def _changes(self) -> list[Statement]:
        """The writes of changed accounts, new holds and settled holds."""
        statements: list[Statement] = []
        changed = [
            account for name, account in self.accounts.items() if account.key() != self._original[name]
        ]
        if changed:
            accounts: tuple[object, ...] = (
                [account.username for account in changed],
                [account.balance for account in changed],
                [account.held for account in changed],
                [account.version for account in changed],
            )
            statements.append((_WRITE_ACCOUNTS, accounts))
        if self.new_holds:
            statements.append((_INSERT_HOLDS, _columns(self.new_holds)))
        if self.settled:
            settled = list(self.settled.values())
            holds: tuple[object, ...] = (
                [hold.id for hold in settled],
                [hold.status.value for hold in settled],
                [hold.captured for hold in settled],
            )
            statements.append((_SETTLE_HOLDS, holds))
        return statements + self.statements

    def _landed(self, record_ids: list[str]) -> list[TupleRow]:
        """The sequences and hashes of a transaction whose ``COMMIT`` went unanswered, if it
        landed after all (empty if it did not, or if that cannot be told)."""
        if not self.connection.broken or not record_ids:
            return []
        try:
            with psycopg.connect(self._url, autocommit=True, connect_timeout=2) as probe:
                rows = probe.execute(
                    "SELECT sequence, previous_hash, hash FROM audit WHERE id = ANY(%s) ORDER BY sequence",
                    (record_ids,),
                ).fetchall()
        except psycopg.Error:
            return []
        return rows if len(rows) == len(record_ids) else []


def failed(
    kind: OperationType,
    source: str | None,
    target: str | None,
    amount: int,
    reason: str,
    parties: tuple[str, ...],
    tag: Tag | None = None,
) -> RecordDraft:
    """The draft of a FAILED record (``reason``: the error's code), in the history of ``parties``."""
    return RecordDraft(kind, source, target, amount, reason, parties, tag)


def item_draft(username: str, item: BatchItem, reason: str | None = None) -> RecordDraft:
    """The record of a money operation (a batch item) of ``username``: a success, or the
    failure ``reason`` in the caller's history alone; with the item's tag either way."""
    source, target = rules.roles(username, item)
    if reason is None:
        return success(item.kind, source, target, item.amount, item.tag)
    return failed(item.kind, source, target, item.amount, reason, (username,), item.tag)


def _append_parameters(numbered: Sequence[tuple[str, RecordDraft]], created_at: str) -> tuple[object, ...]:
    """``goledger_append``'s arguments: one array per column, each record's encoding tail,
    and one (name, record position) pair per account whose history shows a record."""
    parties = [
        (name, position) for position, (_, draft) in enumerate(numbered, 1) for name in draft.shown_to()
    ]
    drafts = [draft for _, draft in numbered]
    for name, position in parties:
        draft = drafts[position - 1]
        # audit_parties' counterparty column (the other party) assumes it.
        if name not in (draft.source, draft.target):
            raise StoreInvariantBroken(f"{draft!r} shown to {name}, who is not one of its parties")
    tags = [sql.tag_columns(draft.tag) for draft in drafts]
    return (
        [record_id for record_id, _ in numbered],
        [draft.kind.value for draft in drafts],
        [draft.source for draft in drafts],
        [draft.target for draft in drafts],
        [draft.amount for draft in drafts],
        [draft.status.value for draft in drafts],
        [draft.reason for draft in drafts],
        [created_at] * len(drafts),
        [reference for reference, _ in tags],
        [metadata for _, metadata in tags],
        [None if draft.balances is None else draft.balances[0] for draft in drafts],
        [None if draft.balances is None else draft.balances[1] for draft in drafts],
        [draft.reverses for draft in drafts],
        [draft.tail(record_id, created_at) for record_id, draft in numbered],
        [name for name, _ in parties],
        [position for _, position in parties],
    )


def _columns(holds: list[HoldState]) -> tuple[object, ...]:
    """The new holds as one array per column of ``holds``."""
    rows = [[*hold.columns(), *sql.tag_columns(hold.tag)] for hold in holds]
    return tuple(list(column) for column in zip(*rows, strict=True))
