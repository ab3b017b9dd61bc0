"""Each store against a model: a hypothesis state machine of opens, money, idempotent retries and holds.

The model is deliberately naive — a dict of balances, held money and versions, the
holds with their deadlines, the list of audit records it expects, and the
idempotency keys it has seen — and predicts, for every step, whether the store must
succeed or fail and with which reason. After every step the store must agree with it
exactly: balances, held money, versions, every hold, the whole audit trail (paged),
each account's history, ``verify()``, and conservation of money.

Time is a ``ManualClock`` that only ``let_time_pass`` moves, and the store's
background sweeper is stopped before the first hold, so a due hold (``expires_at <=
now``) is expired exactly when the model says an operation expires it: a write
touching either of its accounts (a failed one too), a balance read or hold read by
either party (a hold read expires only the reader's holds), a capture or void of it
(which first expire what is due of both its parties), or ``sweep_expired``; the
expiry's record comes before the operation's own. The invariants read an account
with a due hold without going through ``account()`` (which would expire it), so that
due holds survive from one step to the next and later rules meet them; every other
account is read through ``account()``, which must then expire nothing.

Batches (atomic or not, now and then with an If-Match) are a rule of their own: every
item audited in item order, an atomic batch all or nothing (``batch_failed`` for the
items that did not refuse it).

The machine runs three times: whole; without its idempotency rules (``HoldsMachine``),
which leaves holds and the clock more of its steps; and with a concurrent step
(``ConcurrentMachine``): two or three operations or batches released together on a
barrier, after which the store must be the model after them in SOME sequential order
(every permutation is tried on a copy of the model), each operation answered as in
that same order — a linearizability check. The model then follows the order found.

The run is derandomized and keeps no example database, so CI sees the same examples
every time. On PostgreSQL the same machines run fewer and shorter examples (every
step's invariants read the whole trail over the network). "Peeking" goes through the
store's driver (``tests/drivers.py``): MockDB's structures, or on PostgreSQL a plain
query on a connection of the driver's own; either expires nothing.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.auth import token_digest
from app.ledger.errors import (
    AccountExists,
    AccountNotFound,
    HoldNotFound,
    IdempotencyKeyReused,
    LedgerError,
    VersionConflict,
)
from app.ledger.memory import MockDB
from app.ledger.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_HOLD_TIMEOUT_S,
    MIN_HOLD_TIMEOUT_S,
    AccountView,
    BatchItem,
    BatchResult,
    Deadline,
    Hold,
    HoldResult,
    HoldStatus,
    OperationResult,
    OperationType,
    Status,
    Transaction,
    iso_from_epoch,
)
from app.ledger.outcomes import Outcome
from app.ledger.postgres import PostgresStore
from app.ledger.store import LedgerStore
from tests.drivers import driver_for
from tests.stores import empty_postgres
from tests.threads import run_together, switching_often

#: Names accounts may be opened under; a small alphabet so that they collide often.
NAMES = ("ann", "bob", "cyd", "dee")
#: Never opened: the unknown recipient (or caller).
GHOST = "zed"
PARTIES = (*NAMES, GHOST)
#: Who calls: mostly account holders, now and then a name with no account.
callers = st.sampled_from((*NAMES, *NAMES, *NAMES, GHOST))
recipients = st.sampled_from((*NAMES, *NAMES, GHOST))
#: Who calls in a concurrent step: the first three names far more often (their
#: operations meet), now and then the others.
contenders = st.sampled_from((*NAMES[:3], *NAMES[:3], *NAMES[:3], *NAMES[3:], GHOST))
#: Idempotency keys; few, so that callers reuse them.
KEYS = ("k1", "k2", "k3")
MONEY_KINDS = (OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER)

#: Small audit pages, so that paging is exercised as well as the contract's 500.
SMALL_PAGE = 7

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    # A failure is shrunk to one short example, well within the suite's timeout: every
    # step checks the whole trail, so shrinking several bugs and "explaining" each takes minutes.
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

amounts = st.one_of(
    st.integers(1, 1_000),
    st.integers(1, 2_000_000),
    st.integers(MAX_AMOUNT - 1_000, MAX_AMOUNT),
)
opening_balances = st.one_of(st.just(0), st.integers(0, 10**6))
#: ``None``: no If-Match; 0: the account's current version; otherwise that far off it.
version_offsets = st.sampled_from([None, None, None, 0, 0, 1, -1, 5])

#: The fake wall clock starts here (2030-03-17T17:46:40Z), far from the real one. Every
#: step is a multiple of half a second, so deadlines and "now" are exact floats.
START_S = 1_900_000_000.0
#: Hold lifetimes: short, so that the clock rules make them due; now and then out of range.
timeouts = st.one_of(
    st.integers(1, 10), st.integers(1, 100), st.sampled_from([MIN_HOLD_TIMEOUT_S - 1, 1, 100])
)
#: Mostly shorter than the timeouts, so that holds live on for a few steps after a tick.
clock_steps = st.sampled_from([0.5, 1, 2, 5, 10, 30, 120])
#: Valid hold lifetimes only (for holds that are meant to be created).
valid_timeouts = st.one_of(st.integers(MIN_HOLD_TIMEOUT_S, 10), st.integers(MIN_HOLD_TIMEOUT_S, 100))
#: Never issued by the store: capturing, voiding or reading it is ``hold_not_found``.
UNKNOWN_HOLD = "hold_" + "0" * 32


def deadline() -> Deadline:
    return Deadline.after_ms(5_000)


@dataclass(frozen=True, slots=True)
class Expected:
    """An audit record as the model predicts it (everything but ids, times and hashes)."""

    type: OperationType
    source: str | None
    target: str | None
    amount: int
    status: Status
    reason: str | None

    @classmethod
    def of(cls, record: Transaction) -> Expected:
        return cls(record.type, record.source, record.target, record.amount, record.status, record.reason)


class ManualClock:
    """A wall clock that moves only when told (the store's ``clock``)."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@dataclass(slots=True)
class ModelAccount:
    balance: int
    version: int = 0
    held: int = 0


@dataclass(slots=True)
class ModelHold:
    id: str
    source: str
    target: str
    amount: int
    expires_at_s: float
    #: The store's own stamp, taken from the answer that created the hold.
    created_at: str
    status: HoldStatus = HoldStatus.PENDING
    captured: int = 0

    def view(self) -> Hold:
        return Hold(
            self.id,
            self.source,
            self.target,
            self.amount,
            self.captured,
            self.status,
            iso_from_epoch(self.expires_at_s),
            self.created_at,
        )


@dataclass(frozen=True, slots=True)
class Op:
    """A money operation with every parameter resolved (what an idempotent retry repeats)."""

    kind: OperationType
    caller: str
    amount: int
    target: str | None = None
    expected_version: int | None = None

    @property
    def fingerprint(self) -> str:
        return repr((self.kind.value, self.target, self.amount, self.expected_version))

    @property
    def roles(self) -> tuple[str | None, str | None]:
        """The record's ``from`` and ``to``."""
        if self.kind is OperationType.DEPOSIT:
            return None, self.caller
        return self.caller, self.target


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch of the caller's: its items are ``Op``s of that caller without a version of their own."""

    caller: str
    ops: tuple[Op, ...]
    atomic: bool
    expected_version: int | None = None


@dataclass(slots=True)
class Model:
    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    records: list[Expected] = field(default_factory=list)
    #: Sequences each name's history must show, oldest first.
    histories: dict[str, list[int]] = field(default_factory=dict)
    deposited: int = 0
    withdrawn: int = 0
    #: Every hold ever created, in creation order (ids come from the store).
    holds: dict[str, ModelHold] = field(default_factory=dict)
    now_s: float = START_S

    def _audit(self, expected: Expected, parties: tuple[str, ...]) -> None:
        self.records.append(expected)
        for name in parties:
            self.histories.setdefault(name, []).append(len(self.records))

    def open(self, name: str, balance: int) -> str | None:
        """Open an account; the predicted failure reason, ``None`` for success."""
        if name in self.accounts:
            # Audited, but in nobody's history: the holder did not ask for it.
            self._audit(
                Expected(OperationType.OPEN, None, name, balance, Status.FAILED, "account_exists"), ()
            )
            return "account_exists"
        self.accounts[name] = ModelAccount(balance)
        self.deposited += balance
        self._audit(Expected(OperationType.OPEN, None, name, balance, Status.SUCCESS, None), (name,))
        return None

    def apply(self, op: Op) -> str | None:
        """Apply ``op`` (checks in the store's order); the predicted failure reason or ``None``."""
        if not 1 <= op.amount <= MAX_AMOUNT:
            return "invalid_amount"  # refused before the ledger: no record, nothing changes
        # Under the write lock, before any check: what is due of the caller's and the
        # recipient's holds expires (audited first), whether or not the operation succeeds.
        self.expire_due((op.caller, op.target))
        reason = self._try(op)
        self._record(op, reason)
        return reason

    def batch(self, batch: Batch) -> list[str | None]:
        """Apply a batch of the (existing) caller's; each item's failure reason, ``None``: applied.

        As the store does: expire what is due of the caller's and the targets' holds,
        check the version once (a conflict fails every item), then apply the items in
        order, each alone or (atomic) all or none (the others then ``batch_failed``);
        every item is audited, in item order, after all of them ran.
        """
        self.expire_due((batch.caller, *(op.target for op in batch.ops)))
        if (
            batch.expected_version is not None
            and batch.expected_version != self.accounts[batch.caller].version
        ):
            reasons: list[str | None] = ["version_conflict"] * len(batch.ops)
        elif not batch.atomic:
            reasons = [self._try(op) for op in batch.ops]
        else:
            saved = (copy.deepcopy(self.accounts), self.deposited, self.withdrawn)
            reasons = [None] * len(batch.ops)
            for index, op in enumerate(batch.ops):
                reason = self._try(op)
                if reason is not None:
                    self.accounts, self.deposited, self.withdrawn = saved
                    reasons = ["batch_failed"] * len(batch.ops)
                    reasons[index] = reason
                    break
        for op, reason in zip(batch.ops, reasons, strict=True):
            self._record(op, reason)
        return reasons

    def _try(self, op: Op) -> str | None:
        """Check ``op`` and, if it passes, move its money (nothing audited); its failure reason."""
        reason = self._refusal(op)
        if reason is not None:
            return reason
        source, target = op.roles
        if source is not None:
            self.accounts[source].balance -= op.amount
            self.accounts[source].version += 1
        if target is not None:
            self.accounts[target].balance += op.amount
            self.accounts[target].version += 1
        if op.kind is OperationType.DEPOSIT:
            self.deposited += op.amount
        elif op.kind is OperationType.WITHDRAWAL:
            self.withdrawn += op.amount
        return None

    def _record(self, op: Op, reason: str | None) -> None:
        """Audit ``op``: a failure shown to its caller, a success to both its parties."""
        source, target = op.roles
        if reason is not None:
            self._audit(Expected(op.kind, source, target, op.amount, Status.FAILED, reason), (op.caller,))
            return
        parties = tuple(name for name in (source, target) if name is not None)
        self._audit(Expected(op.kind, source, target, op.amount, Status.SUCCESS, None), parties)

    def _refusal(self, op: Op) -> str | None:
        account = self.accounts.get(op.caller)
        if account is None:
            return "account_not_found"
        if op.expected_version is not None and op.expected_version != account.version:
            return "version_conflict"
        if op.kind is OperationType.DEPOSIT:
            return "balance_overflow" if account.balance + op.amount > MAX_BALANCE else None
        if op.kind is OperationType.TRANSFER:
            assert op.target is not None
            recipient = self.accounts.get(op.target)
            if recipient is None:
                return "account_not_found"
            if op.target == op.caller:
                return "same_account"
        if op.amount > account.balance - account.held:
            return "insufficient_funds"
        if op.kind is OperationType.TRANSFER and recipient.balance + op.amount > MAX_BALANCE:
            return "balance_overflow"
        return None

    def view(self, name: str) -> AccountView:
        account = self.accounts[name]
        return AccountView(name, account.balance, account.version, account.held)

    # -- holds ------------------------------------------------------------------

    def pending(self) -> list[ModelHold]:
        return [hold for hold in self.holds.values() if hold.status is HoldStatus.PENDING]

    def due(self, names: tuple[str | None, ...]) -> list[ModelHold]:
        """Pending holds of these accounts (either role) whose time is up, in the store's order."""
        found = [
            hold
            for hold in self.pending()
            if hold.expires_at_s <= self.now_s and (hold.source in names or hold.target in names)
        ]
        return sorted(found, key=lambda hold: (hold.expires_at_s, hold.id))

    def expire_due(self, names: tuple[str | None, ...]) -> int:
        """Expire what is due among these accounts' holds: released like a void, audited as "expire"."""
        due = self.due(names)
        for hold in due:
            self._release(hold, HoldStatus.EXPIRED)
            self._audit(
                Expected(OperationType.EXPIRE, hold.source, hold.target, hold.amount, Status.SUCCESS, None),
                (hold.source, hold.target),
            )
        return len(due)

    def sweep(self) -> int:
        return self.expire_due(tuple(self.accounts))

    def touch(self, name: str) -> None:
        """A balance read of ``name``: first expires what is due of its holds."""
        self.expire_due((name,))

    def available_after_expiry(self, name: str) -> int:
        """What ``name`` may spend once an operation touching it has expired its due holds."""
        account = self.accounts.get(name)
        if account is None:
            return 0
        releasing = sum(hold.amount for hold in self.due((name,)) if hold.source == name)
        return account.balance - account.held + releasing

    def _release(self, hold: ModelHold, status: HoldStatus) -> None:
        payer = self.accounts[hold.source]
        payer.held -= hold.amount
        payer.version += 1
        hold.status = status

    def create_hold(
        self,
        caller: str,
        target: str,
        amount: int,
        timeout_s: int,
        expected_version: int | None,
        issued: tuple[str, str],
    ) -> str | None:
        """Hold ``amount`` of ``caller`` for ``target``; ``issued`` is the store's (id, created_at)."""
        if not 1 <= amount <= MAX_AMOUNT:
            return "invalid_amount"
        if not MIN_HOLD_TIMEOUT_S <= timeout_s <= MAX_HOLD_TIMEOUT_S:
            return "invalid_timeout"
        self.expire_due((caller, target))
        reason = self._hold_refusal(caller, target, amount, expected_version)
        if reason is not None:
            self._audit(
                Expected(OperationType.HOLD, caller, target, amount, Status.FAILED, reason), (caller,)
            )
            return reason
        payer = self.accounts[caller]
        payer.held += amount
        payer.version += 1
        hold_id, created_at = issued
        self.holds[hold_id] = ModelHold(hold_id, caller, target, amount, self.now_s + timeout_s, created_at)
        self._audit(
            Expected(OperationType.HOLD, caller, target, amount, Status.SUCCESS, None), (caller, target)
        )
        return None

    def _hold_refusal(
        self, caller: str, target: str, amount: int, expected_version: int | None
    ) -> str | None:
        account = self.accounts.get(caller)
        if account is None:
            return "account_not_found"
        if expected_version is not None and expected_version != account.version:
            return "version_conflict"
        if target not in self.accounts:
            return "account_not_found"
        if target == caller:
            return "same_account"
        if amount > account.balance - account.held:
            return "insufficient_funds"
        return None

    def capture(
        self, caller: str, hold_id: str, amount: int | None, expected_version: int | None
    ) -> str | None:
        """Capture ``amount`` (``None``: all) of a hold; the predicted failure reason or ``None``."""
        if amount is not None and not 1 <= amount <= MAX_AMOUNT:
            return "invalid_amount"
        hold, reason = self._pending_hold(caller, hold_id, expected_version)
        if hold is None:
            self._audit(
                Expected(OperationType.CAPTURE, caller, None, amount or 0, Status.FAILED, reason), (caller,)
            )
            return reason
        if reason is not None:
            # The hold was found: the record names its parties and its amount.
            self._audit(
                Expected(OperationType.CAPTURE, hold.source, hold.target, hold.amount, Status.FAILED, reason),
                (caller,),
            )
            return reason
        captured = hold.amount if amount is None else amount
        payee = self.accounts[hold.target]
        if captured > hold.amount:
            reason = "invalid_amount"
        elif payee.balance + captured > MAX_BALANCE:
            reason = "balance_overflow"
        if reason is not None:
            self._audit(
                Expected(OperationType.CAPTURE, hold.source, hold.target, captured, Status.FAILED, reason),
                (caller,),
            )
            return reason
        payer = self.accounts[hold.source]
        payer.held -= hold.amount
        payer.balance -= captured
        payer.version += 1
        payee.balance += captured
        payee.version += 1
        hold.status = HoldStatus.CAPTURED
        hold.captured = captured
        self._audit(
            Expected(OperationType.CAPTURE, hold.source, hold.target, captured, Status.SUCCESS, None),
            (hold.source, hold.target),
        )
        return None

    def void(self, caller: str, hold_id: str, expected_version: int | None) -> str | None:
        hold, reason = self._pending_hold(caller, hold_id, expected_version)
        if hold is None:
            self._audit(Expected(OperationType.VOID, caller, None, 0, Status.FAILED, reason), (caller,))
            return reason
        if reason is not None:
            self._audit(
                Expected(OperationType.VOID, hold.source, hold.target, hold.amount, Status.FAILED, reason),
                (caller,),
            )
            return reason
        self._release(hold, HoldStatus.VOIDED)
        self._audit(
            Expected(OperationType.VOID, hold.source, hold.target, hold.amount, Status.SUCCESS, None),
            (hold.source, hold.target),
        )
        return None

    def _pending_hold(
        self, caller: str, hold_id: str, expected_version: int | None
    ) -> tuple[ModelHold | None, str | None]:
        """The caller's hold (``None``: not one of theirs) and why it cannot be resolved, if it cannot.

        An unknown hold expires nothing; a known one first expires what is due of its
        two parties' holds (so a due hold is itself expired, and then not pending).
        """
        hold = self.holds.get(hold_id)
        if hold is None or caller not in (hold.source, hold.target):
            return None, "hold_not_found"
        self.expire_due((hold.source, hold.target))
        if hold.status is not HoldStatus.PENDING:
            return hold, "hold_not_pending"
        if expected_version is not None and expected_version != self.accounts[caller].version:
            return hold, "version_conflict"
        return hold, None

    def read_hold(self, caller: str, hold_id: str) -> ModelHold | None:
        """A hold read: expires the caller's due holds (only the caller's), then looks."""
        self.expire_due((caller,))
        hold = self.holds.get(hold_id)
        if hold is None or caller not in (hold.source, hold.target):
            return None
        return hold


def run_op(store: LedgerStore, op: Op) -> OperationResult:
    if op.kind is OperationType.DEPOSIT:
        return store.deposit(op.caller, op.amount, deadline=deadline(), expected_version=op.expected_version)
    if op.kind is OperationType.WITHDRAWAL:
        return store.withdraw(op.caller, op.amount, deadline=deadline(), expected_version=op.expected_version)
    assert op.target is not None
    return store.transfer(
        op.caller, op.target, op.amount, deadline=deadline(), expected_version=op.expected_version
    )


#: What became of one operation, as the linearizability check compares it: its failure
#: reason (a batch: each item's, or ``version_conflict`` for the whole of it; ``None``:
#: applied) and the caller's account as the answer showed it (``None`` for a refusal).
Summary = tuple[object, AccountView | None]


def perform(
    store: LedgerStore, action: Op | Batch
) -> tuple[Summary, OperationResult | BatchResult | LedgerError]:
    """Run an operation or a batch on the store; its summary and the store's answer."""
    try:
        if isinstance(action, Batch):
            items = [BatchItem(op.kind, op.amount, op.target) for op in action.ops]
            result: OperationResult | BatchResult = store.batch(
                action.caller,
                items,
                atomic=action.atomic,
                deadline=deadline(),
                expected_version=action.expected_version,
            )
        else:
            result = run_op(store, action)
    except LedgerError as error:
        return (error.code, None), error
    if isinstance(result, BatchResult):
        return (tuple(item.code for item in result.items), result.account), result
    return (None, result.account), result


def summarize(store: LedgerStore, action: Op | Batch) -> Summary:
    return perform(store, action)[0]


def predict(model: Model, action: Op | Batch) -> Summary:
    """Apply an operation or a batch to the model; the summary the store must answer with."""
    if isinstance(action, Batch):
        version = model.accounts[action.caller].version
        if action.expected_version is not None and action.expected_version != version:
            model.batch(action)
            return "version_conflict", None
        return tuple(model.batch(action)), model.view(action.caller)
    reason = model.apply(action)
    return reason, model.view(action.caller) if reason is None else None


def audit_trail(store: LedgerStore, limit: int) -> list[Transaction]:
    """The whole audit trail, oldest first, page by page."""
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.audit_page(limit=limit, cursor=cursor)
        assert len(page.transactions) <= limit
        records.extend(page.transactions)
        if page.next_cursor is None:
            return records
        assert len(page.transactions) == limit, "only the last page may be short"
        cursor = page.next_cursor


def full_history(store: LedgerStore, name: str) -> list[Transaction]:
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.history(name, limit=SMALL_PAGE, cursor=cursor)
        records.extend(page.transactions)
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


def replayable(result: object) -> object:
    """What a replay must reproduce of an outcome (a failure: its answer and its record)."""
    if isinstance(result, LedgerError):
        return (result.status, result.code, result.message, result.transaction)
    return result


class LedgerMachine(RuleBasedStateMachine):
    #: ``memory``, or the URL of an empty-able PostgreSQL database (set by the test).
    store_url = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(START_S)
        if self.store_url == "memory":
            self.store: LedgerStore = MockDB(clock=self.clock)
        else:
            self.store = PostgresStore(
                empty_postgres(self.store_url), clock=self.clock, sweep_interval_s=None, max_connections=3
            )
        #: The store's driver: its raw state read without expiring anything ("peeking").
        self.driver = driver_for(self.store)
        # Stopped before the first hold schedules it: only this machine's steps expire holds.
        self.driver.stop_sweeper()
        self.model = Model(now_s=START_S)
        #: (caller, key) -> the operation first sent with it and the outcome it got.
        self.keys: dict[tuple[str, str], tuple[Op, Outcome]] = {}
        #: name -> the digest of the token it was opened with.
        self.tokens: dict[str, bytes] = {}

    # -- helpers --------------------------------------------------------------

    def resolve_version(self, caller: str, offset: int | None) -> int | None:
        if offset is None:
            return None
        current = self.model.accounts[caller].version if caller in self.model.accounts else 0
        expected = current + offset
        return expected if expected >= 0 else current + 1

    def last_record(self) -> Transaction:
        records = audit_trail(self.store, 500)
        assert records
        return records[-1]

    def check_success(self, op: Op, result: OperationResult) -> None:
        assert isinstance(result, OperationResult)
        assert result.transaction == self.last_record()
        assert result.account == self.model.view(op.caller)

    def check_failure(self, reason: str, error: LedgerError, *, audited: bool = True) -> None:
        """``audited``: whether the model has the refusal reach the ledger (and so the trail)."""
        assert error.code == reason, f"expected {reason}, the store said {error.code}: {error.message}"
        if not audited:
            assert error.transaction is None, f"{reason}: refused before the ledger, yet audited"
            return
        assert error.transaction is not None, f"{error.code} was not audited"
        assert error.transaction == self.last_record()

    def check_outcome(self, op: Op, reason: str | None, result: OperationResult | LedgerError) -> None:
        if reason is None:
            assert not isinstance(result, LedgerError), f"{op} failed: {result}"
            self.check_success(op, result)
        else:
            assert isinstance(result, LedgerError), f"{op} should have failed with {reason}"
            self.check_failure(reason, result, audited=reason != "invalid_amount")

    def attempt(self, op: Op) -> None:
        reason = self.model.apply(op)
        try:
            result: OperationResult | LedgerError = run_op(self.store, op)
        except LedgerError as error:
            result = error
        self.check_outcome(op, reason, result)

    def check_hold_outcome(
        self, caller: str, reason: str | None, result: HoldResult | LedgerError, records_before: int
    ) -> None:
        if reason is None:
            assert isinstance(result, HoldResult), f"{caller}: should have succeeded, got {result}"
            assert result.transaction == self.last_record()
            assert result.account == self.model.view(caller)
            assert result.hold == self.model.holds[result.hold.id].view()
        else:
            assert isinstance(result, LedgerError), f"{caller}: should have failed with {reason}"
            self.check_failure(reason, result, audited=len(self.model.records) > records_before)

    def hold_parties(self, hold_id: str) -> tuple[str, ...]:
        hold = self.model.holds.get(hold_id)
        return () if hold is None else (hold.source, hold.target)

    def pick_hold(self, data: st.DataObject) -> str:
        """A hold of any status (creation order, so the draw is reproducible), or an unknown id."""
        return data.draw(st.sampled_from([*self.model.holds, UNKNOWN_HOLD]), label="hold")

    def pick_caller(self, data: st.DataObject, hold_id: str, role: str) -> str:
        """The hold's payer or payee, or a third party (an account of neither side, or none)."""
        parties = self.hold_parties(hold_id)
        if role == "third" or not parties:
            return data.draw(st.sampled_from([name for name in PARTIES if name not in parties]))
        return parties[0] if role == "payer" else parties[1]

    def read_account(self, name: str) -> None:
        """A balance read through the store: it expires the name's due holds, as the model does."""
        if name in self.model.accounts:
            self.model.touch(name)
            assert self.store.account(name, deadline=deadline()) == self.model.view(name)
        else:
            with pytest.raises(AccountNotFound):
                self.store.account(name, deadline=deadline())

    def make_op(
        self, kind: OperationType, caller: str, amount: int, offset: int | None, target: str | None = None
    ) -> Op:
        return Op(kind, caller, amount, target, self.resolve_version(caller, offset))

    def draw_amount(self, data: st.DataObject, caller: str) -> int:
        """Any amount, or one that all or half of the caller's money (as it stands) just covers:
        two of those at once cannot both succeed."""
        available = min(MAX_AMOUNT, max(1, self.model.available_after_expiry(caller)))
        return data.draw(st.one_of(amounts, st.sampled_from([available, available // 2 + 1])), label="amount")

    def draw_op(self, data: st.DataObject, caller: str, *, alone: bool) -> Op:
        """A deposit, withdrawal or transfer of ``caller``'s; ``alone``: with an If-Match of its own
        (not a batch item)."""
        kind = data.draw(st.sampled_from(MONEY_KINDS), label="kind")
        target = data.draw(recipients, label="recipient") if kind is OperationType.TRANSFER else None
        offset = data.draw(version_offsets, label="offset") if alone else None
        return self.make_op(kind, caller, self.draw_amount(data, caller), offset, target)

    def draw_batch(self, data: st.DataObject, caller: str) -> Batch:
        """A batch of one to four items (transfers to anyone: the caller, nobody), atomic or not."""
        size = data.draw(st.integers(1, 4), label="items")
        ops = tuple(self.draw_op(data, caller, alone=False) for _ in range(size))
        atomic = data.draw(st.booleans(), label="atomic")
        return Batch(
            caller, ops, atomic, self.resolve_version(caller, data.draw(version_offsets, label="offset"))
        )

    def linearize(self, actions: list[Op | Batch], observed: list[Summary]) -> Model:
        """The model after ``actions`` in the one sequential order that explains what the store
        did: each action's summary, the audit trail and every account as stored."""
        trail = [Expected.of(record) for record in audit_trail(self.store, 500)]
        stored = {name: self.driver.peek_account(name) for name in self.model.accounts}
        tried = []
        for order in itertools.permutations(range(len(actions))):
            candidate = copy.deepcopy(self.model)
            predicted: list[Summary | None] = [None] * len(actions)
            for index in order:
                predicted[index] = predict(candidate, actions[index])
            views = {name: candidate.view(name) for name in candidate.accounts}
            if predicted == observed and candidate.records == trail and views == stored:
                return candidate
            tried.append((order, predicted))
        raise AssertionError(
            f"no sequential order explains {actions}: the store answered {observed} "
            f"and stores {stored}; the orders predicted {tried}"
        )

    # -- rules ----------------------------------------------------------------

    @precondition(lambda self: bool(self.model.accounts))
    @rule(data=st.data())
    def batch(self, data: st.DataObject) -> None:
        """A batch of an account holder's, atomic or not, now and then with an If-Match."""
        caller = data.draw(st.sampled_from(sorted(self.model.accounts)), label="caller")
        action = self.draw_batch(data, caller)
        expected = predict(self.model, action)
        summary, result = perform(self.store, action)
        assert summary == expected, f"{action}: the store answered {summary}, the model {expected}"
        records = audit_trail(self.store, 500)[-len(action.ops) :]
        if isinstance(result, VersionConflict):
            assert result.transaction == records[0]
            return
        assert isinstance(result, BatchResult)
        assert [item.transaction for item in result.items] == records
        assert result.atomic is action.atomic
        refusing = [
            index for index, item in enumerate(result.items) if item.code not in (None, "batch_failed")
        ]
        assert result.failed_index == (refusing[0] if action.atomic and refusing else None)

    @initialize(
        data=st.data(),
        balances=st.lists(opening_balances, min_size=3, max_size=len(NAMES)),
        holds=st.integers(0, 4),
    )
    def open_some_accounts(self, data: st.DataObject, balances: list[int], holds: int) -> None:
        """Open accounts, and start with a few holds that fit."""
        for name, balance in zip(NAMES, balances, strict=False):
            self.open_account(name, balance)
        for _ in range(holds):
            if self.funded_payers():
                self.create_a_hold_that_fits(data)

    @rule(name=st.sampled_from(NAMES), balance=opening_balances)
    def open_account(self, name: str, balance: int) -> None:
        before = self.model.accounts.get(name)
        before_view = None if before is None else self.model.view(name)
        reason = self.model.open(name, balance)
        try:
            view = self.store.create_account(
                name, token_digest(f"{name}-{balance}"), balance, deadline=deadline()
            )
        except AccountExists as error:
            assert reason == "account_exists"
            self.check_failure(reason, error)
            # Nothing changed: not the balance, not the version, not the token.
            assert before_view is not None
            assert self.driver.peek_account(name) == before_view
            assert self.store.token_digest(name) == self.tokens[name]
            return
        assert reason is None, f"re-opening {name} succeeded"
        assert view == AccountView(name, balance, 0, 0)
        assert self.last_record().status == Status.SUCCESS
        self.tokens[name] = token_digest(f"{name}-{balance}")

    @rule(caller=callers, amount=amounts, offset=version_offsets)
    def deposit(self, caller: str, amount: int, offset: int | None) -> None:
        self.attempt(self.make_op(OperationType.DEPOSIT, caller, amount, offset))

    @rule(caller=callers, amount=amounts, offset=version_offsets)
    def withdraw(self, caller: str, amount: int, offset: int | None) -> None:
        self.attempt(self.make_op(OperationType.WITHDRAWAL, caller, amount, offset))

    @rule(data=st.data(), caller=st.sampled_from(NAMES), recipient=recipients)
    def withdraw_everything_or_a_coin_more(self, data: st.DataObject, caller: str, recipient: str) -> None:
        """Amounts right at what is available, where an off-by-one in the funds check shows.

        Available as the operation will find it: after it has expired the caller's due holds.
        """
        available = self.model.available_after_expiry(caller)
        amount = data.draw(st.sampled_from([available, available + 1]).filter(lambda value: value >= 1))
        kind = data.draw(st.sampled_from([OperationType.WITHDRAWAL, OperationType.TRANSFER]))
        offset = data.draw(version_offsets)
        self.attempt(
            self.make_op(kind, caller, amount, offset, recipient if kind is OperationType.TRANSFER else None)
        )

    @rule(
        caller=callers,
        recipient=recipients,
        amount=amounts,
        offset=version_offsets,
    )
    def transfer(self, caller: str, recipient: str, amount: int, offset: int | None) -> None:
        self.attempt(self.make_op(OperationType.TRANSFER, caller, amount, offset, recipient))

    @rule(
        caller=st.sampled_from(NAMES),
        key=st.sampled_from(KEYS),
        kind=st.sampled_from([OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER]),
        recipient=recipients,
        amount=amounts,
        offset=version_offsets,
    )
    def keyed(
        self, caller: str, key: str, kind: OperationType, recipient: str, amount: int, offset: int | None
    ) -> None:
        """A call with an Idempotency-Key: new, a replay, or a reuse, as the model has it."""
        transfer_target = recipient if kind is OperationType.TRANSFER else None
        self.send_keyed(caller, key, self.make_op(kind, caller, amount, offset, transfer_target))

    @precondition(lambda self: bool(self.keys))
    @rule(data=st.data())
    def retry_keyed(self, data: st.DataObject) -> None:
        """Retry a key with exactly its first parameters: must replay, whatever happened since."""
        caller, key = data.draw(st.sampled_from(sorted(self.keys)))
        first_op, _ = self.keys[(caller, key)]
        self.send_keyed(caller, key, first_op)

    @precondition(lambda self: bool(self.keys))
    @rule(data=st.data(), change=st.sampled_from(["amount", "version", "kind"]))
    def reuse_keyed(self, data: st.DataObject, change: str) -> None:
        """Reuse a key with other parameters: must be refused, running nothing."""
        caller, key = data.draw(st.sampled_from(sorted(self.keys)))
        first_op, _ = self.keys[(caller, key)]
        if change == "amount":
            op = Op(
                first_op.kind,
                caller,
                first_op.amount % MAX_AMOUNT + 1,
                first_op.target,
                first_op.expected_version,
            )
        elif change == "version":
            version = None if first_op.expected_version is not None else 0
            op = Op(first_op.kind, caller, first_op.amount, first_op.target, version)
        else:
            kind = (
                OperationType.DEPOSIT
                if first_op.kind is not OperationType.DEPOSIT
                else OperationType.WITHDRAWAL
            )
            op = Op(kind, caller, first_op.amount, None, first_op.expected_version)
        self.send_keyed(caller, key, op)

    def send_keyed(self, caller: str, key: str, op: Op) -> None:
        calls: list[Op] = []

        def operation() -> OperationResult:
            calls.append(op)
            return run_op(self.store, op)

        records_before = len(self.model.records)
        known = self.keys.get((caller, key))
        if known is not None and known[0].fingerprint != op.fingerprint:
            with pytest.raises(IdempotencyKeyReused) as refused:
                self.store.idempotent(caller, key, op.fingerprint, deadline(), operation)
            assert refused.value.status == 409
            assert refused.value.transaction is None
            assert not calls
            assert len(audit_trail(self.store, 500)) == records_before
            return
        outcome = self.store.idempotent(caller, key, op.fingerprint, deadline(), operation)
        if known is not None:
            # A replay: the same result (or failure), and nothing ran. MockDB hands back the
            # very object; PostgreSQL, which may replay on another worker, an equal copy.
            assert outcome.replayed
            if self.driver.replays_the_kept_object:
                assert outcome.result is known[1].result
            else:
                assert replayable(outcome.result) == replayable(known[1].result)
            assert not calls
            assert len(audit_trail(self.store, 500)) == records_before
            return
        assert not outcome.replayed
        assert calls == [op]
        reason = self.model.apply(op)
        self.check_outcome(op, reason, outcome.result)
        self.keys[(caller, key)] = (op, outcome)

    # -- holds ----------------------------------------------------------------

    @rule(
        data=st.data(),
        payer=callers,
        payee=recipients,
        timeout_s=timeouts,
        offset=version_offsets,
    )
    def create_hold(
        self, data: st.DataObject, payer: str, payee: str, timeout_s: int, offset: int | None
    ) -> None:
        """A hold at, a coin over, under or well within what the payer has available, or anything."""
        available = self.model.available_after_expiry(payer)
        near = [value for value in (available, available + 1, available - 1, available // 2, 1) if value >= 1]
        amount = data.draw(st.one_of(st.sampled_from(near), amounts), label="amount")
        self.hold_money(payer, payee, amount, timeout_s, self.resolve_version(payer, offset))

    def funded_payers(self) -> list[str]:
        """Accounts that can hold a coin for another account (after expiring their due holds)."""
        if len(self.model.accounts) < 2:
            return []
        return [name for name in sorted(self.model.accounts) if self.model.available_after_expiry(name) >= 1]

    @precondition(lambda self: bool(self.funded_payers()))
    @rule(data=st.data())
    def create_a_hold_that_fits(self, data: st.DataObject) -> None:
        """Between two accounts, within what the payer will have available: holds to resolve."""
        payer = data.draw(st.sampled_from(self.funded_payers()), label="payer")
        payee = data.draw(st.sampled_from(sorted(set(self.model.accounts) - {payer})), label="payee")
        available = self.model.available_after_expiry(payer)
        amount = data.draw(st.one_of(st.integers(1, available), st.just(available)), label="amount")
        self.hold_money(payer, payee, amount, data.draw(valid_timeouts, label="timeout_s"), None)

    def hold_money(
        self, payer: str, payee: str, amount: int, timeout_s: int, expected_version: int | None
    ) -> None:
        try:
            result: HoldResult | LedgerError = self.store.create_hold(
                payer,
                payee,
                amount,
                timeout_s=timeout_s,
                deadline=deadline(),
                expected_version=expected_version,
            )
        except LedgerError as error:
            result = error
        issued = (
            (result.hold.id, result.hold.created_at) if isinstance(result, HoldResult) else (UNKNOWN_HOLD, "")
        )
        records_before = len(self.model.records)
        reason = self.model.create_hold(payer, payee, amount, timeout_s, expected_version, issued)
        self.check_hold_outcome(payer, reason, result, records_before)

    @precondition(lambda self: bool(self.model.holds))
    @rule(
        data=st.data(),
        action=st.sampled_from(["capture", "capture", "void"]),
        role=st.sampled_from(["payer", "payee", "payer", "payee", "third"]),
        offset=version_offsets,
    )
    def resolve_hold(self, data: st.DataObject, action: str, role: str, offset: int | None) -> None:
        """Capture (all, part, exactly all, or a coin more) or void any hold, pending or resolved,
        or an unknown one, as either party or a third."""
        hold_id = self.pick_hold(data)
        caller = self.pick_caller(data, hold_id, role)
        expected_version = self.resolve_version(caller, offset)
        if action == "void":
            self.void(caller, hold_id, expected_version)
            return
        held = self.model.holds[hold_id].amount if hold_id in self.model.holds else 1_000
        amount = data.draw(
            st.one_of(st.sampled_from([None, held, held + 1, 1]), st.integers(1, held + 1)), label="amount"
        )
        self.capture(caller, hold_id, amount, expected_version)

    @precondition(lambda self: bool(self.model.pending()))
    @rule(
        data=st.data(),
        role=st.sampled_from(["payer", "payee"]),
        action=st.sampled_from(["capture all", "capture part", "void"]),
    )
    def settle_a_pending_hold(self, data: st.DataObject, role: str, action: str) -> None:
        """A pending hold (due or not) settled by one of its parties: the common case."""
        hold = data.draw(st.sampled_from(self.model.pending()), label="hold")
        caller = hold.source if role == "payer" else hold.target
        if action == "void":
            self.void(caller, hold.id, None)
        else:
            amount = (
                None if action == "capture all" else data.draw(st.integers(1, hold.amount), label="amount")
            )
            self.capture(caller, hold.id, amount, None)

    def capture(self, caller: str, hold_id: str, amount: int | None, expected_version: int | None) -> None:
        try:
            result: HoldResult | LedgerError = self.store.capture_hold(
                caller, hold_id, amount, deadline=deadline(), expected_version=expected_version
            )
        except LedgerError as error:
            result = error
        records_before = len(self.model.records)
        reason = self.model.capture(caller, hold_id, amount, expected_version)
        self.check_hold_outcome(caller, reason, result, records_before)

    def void(self, caller: str, hold_id: str, expected_version: int | None) -> None:
        try:
            result: HoldResult | LedgerError = self.store.void_hold(
                caller, hold_id, deadline=deadline(), expected_version=expected_version
            )
        except LedgerError as error:
            result = error
        records_before = len(self.model.records)
        reason = self.model.void(caller, hold_id, expected_version)
        self.check_hold_outcome(caller, reason, result, records_before)

    @precondition(lambda self: bool(self.model.holds))
    @rule(data=st.data(), role=st.sampled_from(["payer", "payee", "third"]))
    def read_hold(self, data: st.DataObject, role: str) -> None:
        """A hold read: to either party only, and it expires the reader's due holds first."""
        hold_id = self.pick_hold(data)
        self.read_hold_as(self.pick_caller(data, hold_id, role), hold_id)

    def read_hold_as(self, caller: str, hold_id: str) -> None:
        records_before = len(self.model.records)
        expected = self.model.read_hold(caller, hold_id)
        if expected is None:
            with pytest.raises(HoldNotFound) as refused:
                self.store.get_hold(caller, hold_id, deadline=deadline())
            assert refused.value.transaction is None, "a refused read is not audited"
        else:
            assert self.store.get_hold(caller, hold_id, deadline=deadline()) == expected.view()
        # Only expiries, if anything, reached the trail.
        assert all(record.type == OperationType.EXPIRE for record in self.model.records[records_before:])

    @rule(
        data=st.data(),
        # The first choice is the one hypothesis draws most: a due hold, then a touch of it.
        how=st.sampled_from(["to a deadline", "tick", "just before a deadline", "to a deadline", "tick"]),
        then=st.sampled_from(
            [
                "touch the payer",
                "capture the hold",
                "read the hold",
                "an outsider pays the payee",
                "nothing",
                "sweep",
                "void the hold",
                "an outsider holds money for the payer",
                "touch the payee",
                "touch anyone",
                "nothing",
            ]
        ),
    )
    def let_time_pass(self, data: st.DataObject, how: str, then: str) -> None:
        """The clock moves by a tick, to a pending hold's ``expires_at`` exactly (due: ``<=``) or to
        half a second before it (not yet due). Then nothing (due holds wait for a later step to
        touch them), or a sweep, or something that touches one side of that hold (or of any hold):
        a balance read, a hold read, a transfer or a hold from an outsider to that side alone, or
        the hold's own capture or void by one of its parties (at its deadline: too late).
        """
        upcoming = [hold for hold in self.model.pending() if hold.expires_at_s > self.model.now_s]
        if how == "tick" or not upcoming:
            now_s = self.model.now_s + data.draw(clock_steps, label="tick")
            hold = None
        else:
            hold = data.draw(st.sampled_from(upcoming), label="hold")
            now_s = hold.expires_at_s - (0.5 if how == "just before a deadline" else 0.0)
        assert now_s >= self.model.now_s
        self.clock.now_s = now_s
        self.model.now_s = now_s
        if then == "nothing":
            return
        if then == "sweep":
            self.sweep()
            return
        if hold is None and self.model.holds:
            hold = data.draw(st.sampled_from(list(self.model.holds.values())), label="hold")
        if hold is None or then == "touch anyone":
            self.read_account(data.draw(st.sampled_from(PARTIES), label="name"))
            return
        outsiders = [name for name in PARTIES if name not in (hold.source, hold.target)]
        outsider = data.draw(st.sampled_from(outsiders), label="outsider")
        if then == "touch the payer":
            self.read_account(hold.source)
        elif then == "touch the payee":
            self.read_account(hold.target)
        elif then == "read the hold":
            self.read_hold_as(data.draw(st.sampled_from([hold.source, hold.target, outsider])), hold.id)
        elif then == "capture the hold":
            self.capture(data.draw(st.sampled_from([hold.source, hold.target])), hold.id, None, None)
        elif then == "void the hold":
            self.void(data.draw(st.sampled_from([hold.source, hold.target])), hold.id, None)
        elif then == "an outsider pays the payee":
            self.attempt(Op(OperationType.TRANSFER, outsider, 1, hold.target))
        else:
            self.hold_money(outsider, hold.source, 1, 10, None)

    def sweep(self) -> None:
        expected = self.model.sweep()
        assert self.store.sweep_expired(deadline=deadline()) == expected

    def teardown(self) -> None:
        self.driver.close()
        self.store.close()
        assert not self.driver.sweeper_running(), "the sweeper ran: holds may have expired behind the model"

    # -- invariants -----------------------------------------------------------

    @invariant()
    def accounts_match_the_model(self) -> None:
        for name in PARTIES:
            if name in self.model.accounts:
                # A balance read would expire a due hold: read those without one (and so
                # check that the read expires nothing), peek at the others.
                if self.model.due((name,)):
                    view = self.driver.peek_account(name)
                else:
                    view = self.store.account(name, deadline=deadline())
                assert view == self.model.view(name), f"{name}: store {view}, model {self.model.view(name)}"
                assert view.balance >= 0
                assert view.held >= 0
                assert view.available == view.balance - view.held >= 0
                pending = sum(hold.amount for hold in self.model.pending() if hold.source == name)
                assert view.held == pending, (
                    f"{name} holds {view.held}, its pending holds add up to {pending}"
                )
            else:
                try:
                    self.store.account(name, deadline=deadline())
                except AccountNotFound:
                    pass
                else:
                    raise AssertionError(f"{name} was never opened but has an account")

    @invariant()
    def holds_match_the_model(self) -> None:
        assert self.driver.peek_hold_count() == len(self.model.holds)
        for hold_id, hold in self.model.holds.items():
            assert self.driver.peek_hold(hold_id) == hold.view(), hold_id
            assert hold.status is not HoldStatus.PENDING or hold.captured == 0
            assert 0 <= hold.captured <= hold.amount

    @invariant()
    def the_audit_trail_is_the_models(self) -> None:
        records = audit_trail(self.store, 500)
        assert [record.sequence for record in records] == list(range(1, len(records) + 1)), "gaps"
        assert [Expected.of(record) for record in records] == self.model.records
        assert audit_trail(self.store, SMALL_PAGE) == records
        assert len({record.id for record in records}) == len(records)
        previous = "0" * 64
        for record in records:
            assert record.previous_hash == previous
            previous = record.hash

    @invariant()
    def histories_match_the_model(self) -> None:
        for name in PARTIES:
            sequences = [record.sequence for record in full_history(self.store, name)]
            assert sequences == list(reversed(self.model.histories.get(name, []))), name

    @invariant()
    def the_ledger_verifies_and_money_is_conserved(self) -> None:
        report = self.store.verify()
        assert report.ok, report.problems
        assert report.problems == []
        assert report.records == len(self.model.records)
        assert report.accounts == len(self.model.accounts)
        assert report.total_deposited == self.model.deposited
        assert report.total_withdrawn == self.model.withdrawn
        balances = [self.driver.peek_account(name).balance for name in self.model.accounts]
        assert sum(balances) == report.total_balance == self.model.deposited - self.model.withdrawn


class HoldsMachine(LedgerMachine):
    """The same machine without its idempotency rules, so that holds, the clock
    and the operations that expire holds get a larger share of its steps."""

    keyed = retry_keyed = reuse_keyed = None  # type: ignore[assignment]


class ConcurrentMachine(LedgerMachine):
    """The machine with a step of two or three operations at once, checked for linearizability.

    Which order the store chose may change balances, so every later draw must keep its
    shape (bounds, list lengths, which rules may run) whatever the order, or hypothesis
    would see a different test on replay: so no rule here draws from a set of accounts or
    a range that depends on balances (holds are only created at the opening step), and the
    idempotency rules leave the concurrent step a larger share.
    """

    keyed = retry_keyed = reuse_keyed = withdraw_everything_or_a_coin_more = None  # type: ignore[assignment]

    def create_a_hold_that_fits(self, data: st.DataObject) -> None:
        """Not a rule here: the opening step's holds only."""
        super().create_a_hold_that_fits(data)

    @precondition(lambda self: bool(self.model.accounts))
    @rule(data=st.data(), count=st.integers(2, 3))
    def concurrently(self, data: st.DataObject, count: int) -> None:
        """Two or three operations or batches released together on a barrier: the store must end
        as the model does after them in some sequential order, each answered as in that order."""
        actions: list[Op | Batch] = []
        for _ in range(count):
            caller = data.draw(contenders, label="caller")
            if caller in self.model.accounts and data.draw(st.booleans(), label="a batch"):
                actions.append(self.draw_batch(data, caller))
            else:
                actions.append(self.draw_op(data, caller, alone=True))
        with switching_often():
            observed = run_together([functools.partial(summarize, self.store, action) for action in actions])
        self.model = self.linearize(actions, observed)


#: Fewer, shorter examples on PostgreSQL (each step costs round trips, not microseconds).
POSTGRES_SETTINGS = settings(SETTINGS, max_examples=20, stateful_step_count=30)


@pytest.mark.parametrize(
    "machine", [LedgerMachine, HoldsMachine, ConcurrentMachine], ids=["ledger", "holds", "concurrent"]
)
def test_the_store_agrees_with_the_model(store_url: str, machine: type[LedgerMachine]) -> None:
    bound = type(f"{machine.__name__}On{store_url[:8].title()}", (machine,), {"store_url": store_url})
    run_state_machine_as_test(bound, settings=SETTINGS if store_url == "memory" else POSTGRES_SETTINGS)


def test_the_model_itself_holds_expires_and_captures() -> None:
    """Fixed predictions for holds, so that a model bug cannot hide a store bug."""
    model = Model()
    model.open("ann", 100)
    model.open("bob", 0)
    assert model.create_hold("ann", "bob", 60, 10, None, ("hold_a", "t")) is None
    assert model.create_hold("ann", "bob", 41, 10, None, ("hold_x", "t")) == "insufficient_funds"
    assert model.apply(Op(OperationType.WITHDRAWAL, "ann", 41)) == "insufficient_funds"
    assert model.create_hold("ann", "bob", 40, 20, None, ("hold_b", "t")) is None
    assert model.view("ann") == AccountView("ann", 100, 2, 100)
    assert model.capture("cyd", "hold_a", None, None) == "hold_not_found"
    assert model.capture("bob", "hold_a", 61, None) == "invalid_amount"
    model.now_s += 10  # hold_a is due (expires_at <= now), hold_b is not
    assert model.available_after_expiry("ann") == 60
    assert model.capture("bob", "hold_a", 10, None) == "hold_not_pending"  # expired first
    assert model.void("ann", "hold_b", None) is None
    assert model.void("bob", "hold_b", None) == "hold_not_pending"
    assert model.view("ann") == AccountView("ann", 100, 4, 0)
    assert [(r.type, r.source, r.target, r.amount, r.reason) for r in model.records[2:]] == [
        (OperationType.HOLD, "ann", "bob", 60, None),
        (OperationType.HOLD, "ann", "bob", 41, "insufficient_funds"),
        (OperationType.WITHDRAWAL, "ann", None, 41, "insufficient_funds"),
        (OperationType.HOLD, "ann", "bob", 40, None),
        (OperationType.CAPTURE, "cyd", None, 0, "hold_not_found"),
        (OperationType.CAPTURE, "ann", "bob", 61, "invalid_amount"),
        (OperationType.EXPIRE, "ann", "bob", 60, None),
        (OperationType.CAPTURE, "ann", "bob", 60, "hold_not_pending"),
        (OperationType.VOID, "ann", "bob", 40, None),
        (OperationType.VOID, "ann", "bob", 40, "hold_not_pending"),
    ]
    assert model.histories["bob"] == [2, 3, 6, 8, 9, 10, 11, 12]


def test_the_model_itself_checks_funds_versions_and_recipients() -> None:
    """A few fixed predictions, so that a model bug cannot hide a store bug."""
    model = Model()
    assert model.open("ann", 10) is None
    assert model.open("ann", 5) == "account_exists"
    assert model.apply(Op(OperationType.WITHDRAWAL, "ann", 11)) == "insufficient_funds"
    assert model.apply(Op(OperationType.WITHDRAWAL, "ann", 10, None, 1)) == "version_conflict"
    assert model.apply(Op(OperationType.WITHDRAWAL, "ann", 10, None, 0)) is None
    assert model.apply(Op(OperationType.TRANSFER, "ann", 1, GHOST)) == "account_not_found"
    assert model.apply(Op(OperationType.TRANSFER, "ann", 1, "ann")) == "same_account"
    assert model.apply(Op(OperationType.DEPOSIT, GHOST, 1)) == "account_not_found"
    assert model.accounts["ann"] == ModelAccount(0, 1)
    assert (model.deposited, model.withdrawn) == (10, 10)
    assert [record.reason for record in model.records] == [
        None,
        "account_exists",
        "insufficient_funds",
        "version_conflict",
        None,
        "account_not_found",
        "same_account",
        "account_not_found",
    ]
    assert model.histories == {"ann": [1, 3, 4, 5, 6, 7], GHOST: [8]}


def test_the_model_itself_applies_batches_alone_or_all_or_nothing() -> None:
    """Fixed predictions for batches, so that a model bug cannot hide a store bug."""
    model = Model()
    model.open("ann", 100)
    model.open("bob", 0)
    pay_bob, overdraw = Op(OperationType.TRANSFER, "ann", 60, "bob"), Op(OperationType.WITHDRAWAL, "ann", 50)
    to_self = Op(OperationType.TRANSFER, "ann", 1, "ann")
    assert model.batch(Batch("ann", (pay_bob, overdraw, to_self), atomic=True)) == [
        "batch_failed",
        "insufficient_funds",
        "batch_failed",
    ]
    assert (model.view("ann"), model.view("bob")) == (AccountView("ann", 100, 0), AccountView("bob", 0, 0))
    assert model.batch(Batch("ann", (pay_bob, overdraw, to_self), atomic=False)) == [
        None,
        "insufficient_funds",
        "same_account",
    ]
    assert (model.view("ann"), model.view("bob")) == (AccountView("ann", 40, 1), AccountView("bob", 60, 1))
    assert model.batch(Batch("ann", (pay_bob,), atomic=False, expected_version=0)) == ["version_conflict"]
    deposit = Op(OperationType.DEPOSIT, "ann", 5)
    assert model.batch(Batch("ann", (deposit, Op(OperationType.WITHDRAWAL, "ann", 45)), atomic=True)) == [
        None,
        None,
    ]
    assert model.view("ann") == AccountView("ann", 0, 3)
    assert (model.deposited, model.withdrawn) == (105, 45)
    assert [(record.reason, record.status) for record in model.records[2:5]] == [
        ("batch_failed", Status.FAILED),
        ("insufficient_funds", Status.FAILED),
        ("batch_failed", Status.FAILED),
    ]
    assert model.histories["bob"] == [2, 6]
