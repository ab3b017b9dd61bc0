"""``MockDB`` against a model: a hypothesis state machine of opens, money and idempotent retries.

The model is deliberately naive — a dict of balances and versions, the list of audit
records it expects, and the idempotency keys it has seen — and predicts, for every
step, whether the store must succeed or fail and with which reason. After every step
the store must agree with it exactly: balances, versions, the whole audit trail
(paged), each account's history, ``verify()``, and conservation of money.

The run is derandomized and keeps no example database, so CI sees the same examples
every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
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
from app.ledger.errors import AccountExists, AccountNotFound, IdempotencyKeyReused, LedgerError
from app.ledger.idempotency import Outcome
from app.ledger.memory import MockDB
from app.ledger.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    AccountView,
    Deadline,
    OperationResult,
    OperationType,
    Status,
    Transaction,
)

#: Names accounts may be opened under; a small alphabet so that they collide often.
NAMES = ("ann", "bob", "cyd", "dee")
#: Never opened: the unknown recipient (or caller).
GHOST = "zed"
PARTIES = (*NAMES, GHOST)
#: Who calls: mostly account holders, now and then a name with no account.
callers = st.sampled_from((*NAMES, *NAMES, *NAMES, GHOST))
recipients = st.sampled_from((*NAMES, *NAMES, GHOST))
#: Idempotency keys; few, so that callers reuse them.
KEYS = ("k1", "k2", "k3")

#: Small audit pages, so that paging is exercised as well as the contract's 500.
SMALL_PAGE = 7

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

amounts = st.one_of(
    st.integers(1, 1_000),
    st.integers(1, 2_000_000),
    st.integers(MAX_AMOUNT - 1_000, MAX_AMOUNT),
)
opening_balances = st.one_of(st.just(0), st.integers(0, 10**6))
#: ``None``: no If-Match; 0: the account's current version; otherwise that far off it.
version_offsets = st.sampled_from([None, None, None, 0, 0, 1, -1, 5])


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


@dataclass(slots=True)
class ModelAccount:
    balance: int
    version: int = 0


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


@dataclass(slots=True)
class Model:
    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    records: list[Expected] = field(default_factory=list)
    #: Sequences each name's history must show, oldest first.
    histories: dict[str, list[int]] = field(default_factory=dict)
    deposited: int = 0
    withdrawn: int = 0

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
        source = None if op.kind is OperationType.DEPOSIT else op.caller
        target = op.caller if op.kind is OperationType.DEPOSIT else op.target
        if not 1 <= op.amount <= MAX_AMOUNT:
            return "invalid_amount"  # refused before the ledger: no record, nothing changes
        reason = self._refusal(op)
        if reason is not None:
            self._audit(Expected(op.kind, source, target, op.amount, Status.FAILED, reason), (op.caller,))
            return reason
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
        parties = tuple(name for name in (source, target) if name is not None)
        self._audit(Expected(op.kind, source, target, op.amount, Status.SUCCESS, None), parties)
        return None

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
        if op.amount > account.balance:
            return "insufficient_funds"
        if op.kind is OperationType.TRANSFER and recipient.balance + op.amount > MAX_BALANCE:
            return "balance_overflow"
        return None

    def view(self, name: str) -> AccountView:
        account = self.accounts[name]
        return AccountView(name, account.balance, account.version, 0)


def run_op(store: MockDB, op: Op) -> OperationResult:
    if op.kind is OperationType.DEPOSIT:
        return store.deposit(op.caller, op.amount, deadline=deadline(), expected_version=op.expected_version)
    if op.kind is OperationType.WITHDRAWAL:
        return store.withdraw(op.caller, op.amount, deadline=deadline(), expected_version=op.expected_version)
    assert op.target is not None
    return store.transfer(
        op.caller, op.target, op.amount, deadline=deadline(), expected_version=op.expected_version
    )


def audit_trail(store: MockDB, limit: int) -> list[Transaction]:
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


def full_history(store: MockDB, name: str) -> list[Transaction]:
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.history(name, limit=SMALL_PAGE, cursor=cursor)
        records.extend(page.transactions)
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MockDB()
        self.model = Model()
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

    def check_failure(self, reason: str, error: LedgerError) -> None:
        assert error.code == reason, f"expected {reason}, the store said {error.code}: {error.message}"
        if reason == "invalid_amount":
            assert error.transaction is None, "a refused amount never reaches the ledger"
            return
        assert error.transaction is not None, f"{error.code} was not audited"
        assert error.transaction == self.last_record()

    def check_outcome(self, op: Op, reason: str | None, result: OperationResult | LedgerError) -> None:
        if reason is None:
            assert not isinstance(result, LedgerError), f"{op} failed: {result}"
            self.check_success(op, result)
        else:
            assert isinstance(result, LedgerError), f"{op} should have failed with {reason}"
            self.check_failure(reason, result)

    def attempt(self, op: Op) -> None:
        reason = self.model.apply(op)
        try:
            result: OperationResult | LedgerError = run_op(self.store, op)
        except LedgerError as error:
            result = error
        self.check_outcome(op, reason, result)

    def make_op(
        self, kind: OperationType, caller: str, amount: int, offset: int | None, target: str | None = None
    ) -> Op:
        return Op(kind, caller, amount, target, self.resolve_version(caller, offset))

    # -- rules ----------------------------------------------------------------

    @initialize(balances=st.lists(opening_balances, min_size=3, max_size=len(NAMES)))
    def open_some_accounts(self, balances: list[int]) -> None:
        for name, balance in zip(NAMES, balances, strict=False):
            self.open_account(name, balance)

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
            assert self.store.account(name, deadline=deadline()) == before_view
            assert self.store.token_digest(name) == self.tokens[name]
            return
        assert reason is None, f"re-opening {name} succeeded"
        assert view == AccountView(name, balance, 0, 0)
        assert self.last_record().status is Status.SUCCESS
        self.tokens[name] = token_digest(f"{name}-{balance}")

    @rule(caller=callers, amount=amounts, offset=version_offsets)
    def deposit(self, caller: str, amount: int, offset: int | None) -> None:
        self.attempt(self.make_op(OperationType.DEPOSIT, caller, amount, offset))

    @rule(caller=callers, amount=amounts, offset=version_offsets)
    def withdraw(self, caller: str, amount: int, offset: int | None) -> None:
        self.attempt(self.make_op(OperationType.WITHDRAWAL, caller, amount, offset))

    @rule(data=st.data(), caller=st.sampled_from(NAMES), recipient=recipients)
    def withdraw_everything_or_a_coin_more(self, data: st.DataObject, caller: str, recipient: str) -> None:
        """Amounts right at the balance, where an off-by-one in the funds check shows."""
        balance = self.model.accounts[caller].balance if caller in self.model.accounts else 0
        amount = data.draw(st.sampled_from([balance, balance + 1]).filter(lambda value: value >= 1))
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
            # A replay: the very same result (or failure) object, and nothing ran.
            assert outcome.replayed
            assert outcome.result is known[1].result
            assert not calls
            assert len(audit_trail(self.store, 500)) == records_before
            return
        assert not outcome.replayed
        assert calls == [op]
        reason = self.model.apply(op)
        self.check_outcome(op, reason, outcome.result)
        self.keys[(caller, key)] = (op, outcome)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def accounts_match_the_model(self) -> None:
        for name in PARTIES:
            if name in self.model.accounts:
                view = self.store.account(name, deadline=deadline())
                assert view == self.model.view(name), f"{name}: store {view}, model {self.model.view(name)}"
                assert view.balance >= 0
            else:
                try:
                    self.store.account(name, deadline=deadline())
                except AccountNotFound:
                    pass
                else:
                    raise AssertionError(f"{name} was never opened but has an account")

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
        balances = [self.store.account(name, deadline=deadline()).balance for name in self.model.accounts]
        assert sum(balances) == report.total_balance == self.model.deposited - self.model.withdrawn


def test_mockdb_agrees_with_the_model() -> None:
    run_state_machine_as_test(LedgerMachine, settings=SETTINGS)


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
