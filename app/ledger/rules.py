"""The ledger's business rules on mutable account state, with no storage behind them.

Every money and hold rule lives here once. The PostgreSQL store locks the rows an
operation touches, copies them into ``AccountState``/``HoldState`` objects, applies
these rules and writes back what changed; the embedded ``MockDB`` applies them to
its own objects under its write lock. The rules raise before they change anything,
so a refused operation leaves its accounts and holds exactly as they were.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence

from app.ledger.accounts import AccountState, HoldState
from app.ledger.errors import (
    AccountNotFound,
    AlreadyReversed,
    BalanceOverflow,
    BatchFailed,
    HoldNotFound,
    HoldNotPending,
    InsufficientFunds,
    InvalidInput,
    LedgerError,
    StoreInvariantBroken,
    TransactionNotFound,
    VersionConflict,
)
from app.ledger.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_BATCH_ITEMS,
    MAX_HOLD_TIMEOUT_S,
    MIN_HOLD_TIMEOUT_S,
    BatchItem,
    Deadline,
    HoldStatus,
    OperationResult,
    OperationType,
    Status,
    Tag,
    Transaction,
)

HISTORY_CURSOR = re.compile(r"h:([1-9][0-9]{0,18})")
AUDIT_CURSOR = re.compile(r"a:([1-9][0-9]{0,18})")
CHECKPOINT_CURSOR = re.compile(r"k:([1-9][0-9]{0,18})")
TRANSACTIONS_CURSOR = re.compile(r"t:([1-9][0-9]{0,18})")


def check_version(account: AccountState, expected_version: int | None) -> None:
    if expected_version is not None and account.version != expected_version:
        raise VersionConflict(f"The account is at version {account.version}, not {expected_version}.")


def check_funds(account: AccountState, amount: int) -> None:
    available = account.balance - account.held
    if amount > available:
        raise InsufficientFunds(f"{account.username} has {available} coins, {amount} requested")


def check_credit(account: AccountState, amount: int) -> None:
    if account.balance > MAX_BALANCE - amount:
        raise BalanceOverflow(f"Crediting {amount} coins would overflow the balance of {account.username}.")


def check_account(account: AccountState) -> None:
    """The invariants every account keeps after every change."""
    if account.balance < 0 or account.held < 0 or account.held > account.balance:
        raise StoreInvariantBroken(
            f"account {account.username} broke an invariant: balance {account.balance}, held {account.held}"
        )


def check_amount(amount: int) -> None:
    """The web layer validates amounts; the core checks again rather than trust it."""
    if not 1 <= amount <= MAX_AMOUNT:
        raise InvalidInput("invalid_amount", f"The amount must be from 1 to {MAX_AMOUNT}.")


def check_hold_timeout(timeout_s: int) -> None:
    if not MIN_HOLD_TIMEOUT_S <= timeout_s <= MAX_HOLD_TIMEOUT_S:
        raise InvalidInput("invalid_timeout", "timeout_s is out of range.")


def roles(username: str, item: BatchItem) -> tuple[str | None, str | None]:
    """The contract's ``from`` and ``to`` of an item acting on ``username``'s account."""
    if item.kind is OperationType.DEPOSIT:
        return None, username
    if item.kind is OperationType.WITHDRAWAL:
        return username, None
    return username, item.target


def apply_item(lookup: Callable[[str], AccountState | None], username: str, item: BatchItem) -> None:
    """Check, then apply, one money operation; a failing check raises before any change."""
    caller = existing(lookup, username)
    if item.kind is OperationType.DEPOSIT:
        check_credit(caller, item.amount)
        caller.balance += item.amount
        caller.version += 1
        return
    if item.kind is OperationType.WITHDRAWAL:
        check_funds(caller, item.amount)
        caller.balance -= item.amount
        caller.version += 1
        check_account(caller)
        return
    if item.kind is not OperationType.TRANSFER or item.target is None:
        raise StoreInvariantBroken(f"not a money operation: {item}")
    target = existing(lookup, item.target)
    if target is caller:
        raise InvalidInput("same_account", "Cannot transfer to the same account.")
    check_funds(caller, item.amount)
    check_credit(target, item.amount)
    caller.balance -= item.amount
    caller.version += 1
    target.balance += item.amount
    target.version += 1
    check_account(caller)


def reserve(
    lookup: Callable[[str], AccountState | None],
    username: str,
    target: str,
    amount: int,
    expected_version: int | None = None,
) -> AccountState:
    """Check, then reserve ``amount`` of the caller's available money for ``target``.

    Returns the caller's account; the store records the new ``HoldState``.
    """
    caller = existing(lookup, username)
    check_version(caller, expected_version)
    if lookup(target) is None:
        raise AccountNotFound(f"Account {target} does not exist.")
    if target == username:
        raise InvalidInput("same_account", "The payer and the payee are the same account.")
    check_funds(caller, amount)
    caller.held += amount
    caller.version += 1
    check_account(caller)
    return caller


def check_hold_of(hold: HoldState | None, username: str, hold_id: str) -> HoldState:
    """The hold, if ``username`` is one of its parties (anyone else is told it does not exist)."""
    if hold is None or username not in (hold.source, hold.target):
        raise HoldNotFound(f"No hold {hold_id} of yours.")
    return hold


def check_pending(
    lookup: Callable[[str], AccountState | None],
    hold: HoldState,
    username: str,
    expected_version: int | None,
) -> None:
    """A capture or void may go ahead: the hold is still pending, the caller's version as expected."""
    if hold.status is not HoldStatus.PENDING:
        raise HoldNotPending(f"The hold is {hold.status.value}, no longer PENDING.")
    check_version(existing(lookup, username), expected_version)


def captured_amount(hold: HoldState, amount: int | None) -> int:
    """How much a capture moves: ``amount``, or the whole hold."""
    captured = hold.amount if amount is None else amount
    if captured > hold.amount:
        raise InvalidInput("invalid_amount", f"The hold is for {hold.amount} coins, {captured} requested.")
    return captured


def capture(lookup: Callable[[str], AccountState | None], hold: HoldState, amount: int | None) -> int:
    """Move ``amount`` (default: all) of a pending hold to its payee and release the rest;
    the amount moved."""
    captured = captured_amount(hold, amount)
    source, target = existing(lookup, hold.source), existing(lookup, hold.target)
    check_credit(target, captured)
    release(source, hold, HoldStatus.CAPTURED, captured)
    source.balance -= captured
    target.balance += captured
    target.version += 1
    check_account(source)
    return captured


def release(source: AccountState, hold: HoldState, status: HoldStatus, captured: int = 0) -> None:
    """Resolve a pending hold (``source`` is its payer): free its money, set its final status."""
    if hold.status is not HoldStatus.PENDING or hold.source != source.username:
        raise StoreInvariantBroken(f"hold {hold.id} released twice or against the wrong account")
    source.held -= hold.amount
    source.version += 1
    check_account(source)
    hold.status = status
    hold.captured = captured


#: What a recipient may send back (a transfer, a captured hold), and what the operator may
#: reverse (those, deposits and withdrawals). Reversals themselves are not reversible.
RECIPIENT_REVERSIBLE = frozenset({OperationType.TRANSFER.value, OperationType.CAPTURE.value})
OPERATOR_REVERSIBLE = RECIPIENT_REVERSIBLE | {OperationType.DEPOSIT.value, OperationType.WITHDRAWAL.value}


def reversible(original: Transaction | None, transaction_id: str, username: str | None) -> Transaction:
    """The transaction ``username`` may reverse (``None``: the operator, who may reverse any
    successful transfer, capture, deposit or withdrawal); a recipient may reverse only what
    they received. Anything else is answered exactly like an unknown id."""
    kinds = OPERATOR_REVERSIBLE if username is None else RECIPIENT_REVERSIBLE
    if (
        original is None
        or original.status != Status.SUCCESS.value
        or original.type not in kinds
        or (username is not None and original.target != username)
    ):
        raise TransactionNotFound(f"No transaction {transaction_id} that you may reverse.")
    return original


def reversal_roles(original: Transaction) -> tuple[str | None, str | None]:
    """A reversal's ``from`` and ``to``: its original's, swapped (a deposit's reversal has no
    ``to``: the coins leave the ledger; a withdrawal's has no ``from``: they come back)."""
    return original.target, original.source


def reversal_account(original: Transaction) -> str:
    """The account a reversal answers about: the one that sends the money back (the
    original's recipient), or, reversing a withdrawal, the one that gets it back."""
    account = original.target or original.source
    if account is None:
        raise StoreInvariantBroken(f"transaction {original.id} has no party")
    return account


def reverse(
    lookup: Callable[[str], AccountState | None],
    original: Transaction,
    reversed_amount: int,
    amount: int | None,
    expected_version: int | None,
) -> int:
    """Check, then send back ``amount`` (default: all that is left) of ``original``, of which
    ``reversed_amount`` was reversed already; the amount moved. The check of what is left
    runs under the same lock as the funds check, so partial reversals never add up to more
    than the original."""
    if not 0 <= reversed_amount <= original.amount:
        raise StoreInvariantBroken(
            f"transaction {original.id} reversed {reversed_amount} of {original.amount}"
        )
    left = original.amount - reversed_amount
    if left == 0:
        raise AlreadyReversed(
            f"Transaction {original.id} has been reversed in full ({original.amount} coins)."
        )
    moved = left if amount is None else amount
    if not 1 <= moved <= left:
        raise InvalidInput(
            "invalid_amount",
            f"{left} of the {original.amount} coins of {original.id} are left to reverse, {moved} requested.",
        )
    check_version(existing(lookup, reversal_account(original)), expected_version)
    source_name, target_name = reversal_roles(original)
    source = None if source_name is None else existing(lookup, source_name)
    target = None if target_name is None else existing(lookup, target_name)
    if source is not None:
        check_funds(source, moved)
    if target is not None:
        check_credit(target, moved)
    if source is not None:
        source.balance -= moved
        source.version += 1
        check_account(source)
    if target is not None:
        target.balance += moved
        target.version += 1
    return moved


def existing(lookup: Callable[[str], AccountState | None], username: str) -> AccountState:
    account = lookup(username)
    if account is None:
        raise AccountNotFound(f"Account {username} does not exist.")
    return account


def apply_batch(
    lookup: Callable[[str], AccountState | None], username: str, items: Sequence[BatchItem], *, atomic: bool
) -> tuple[list[LedgerError | None], int | None]:
    """Apply a batch's items in order; each item's failure (``None``: applied), and the
    index of the item that refused an atomic batch.

    Not atomic: each item stands alone. Atomic: the items are applied to copies of
    the accounts they touch, written back only if every one succeeded; otherwise
    nothing changes and every other item fails as ``batch_failed``.
    """
    if not atomic:
        return [_apply_alone(lookup, username, item) for item in items], None
    copies: dict[str, AccountState] = {}

    def copy_of(name: str) -> AccountState | None:
        if name not in copies:
            account = lookup(name)
            if account is None:
                return None
            copies[name] = account.copy()
        return copies[name]

    for index, item in enumerate(items):
        failure = _apply_alone(copy_of, username, item)
        if failure is not None:
            refused = BatchFailed(f"Not applied: item {index} of this atomic batch failed ({failure.code}).")
            failures: list[LedgerError | None] = [refused] * len(items)
            failures[index] = failure
            return failures, index
    for name, copy in copies.items():
        original = lookup(name)
        if original is None:
            raise StoreInvariantBroken(f"account {name} vanished during a batch")
        original.take(copy)
    return [None] * len(items), None


def _apply_alone(
    lookup: Callable[[str], AccountState | None], username: str, item: BatchItem
) -> LedgerError | None:
    try:
        apply_item(lookup, username, item)
    except LedgerError as error:
        return error
    return None


_MONEY_OPERATIONS = (OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER)


def check_batch(items: Sequence[BatchItem]) -> None:
    """The core checks again what the web layer validated, rather than trust it."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise InvalidInput("invalid_batch", f"A batch holds 1 to {MAX_BATCH_ITEMS} operations.")
    for index, item in enumerate(items):
        if item.kind not in _MONEY_OPERATIONS or (item.kind is OperationType.TRANSFER) != (
            item.target is not None
        ):
            raise InvalidInput(
                "invalid_batch", f"Operation {index} is not a deposit, withdrawal or transfer."
            )
        if not 1 <= item.amount <= MAX_AMOUNT:
            raise InvalidInput(
                "invalid_amount", f"Operation {index}: the amount must be from 1 to {MAX_AMOUNT}."
            )


def encode_cursor(prefix: str, sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, pattern: re.Pattern[str]) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.") from None
    match = pattern.fullmatch(text)
    if match is None:
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.")
    return int(match.group(1))


def check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidInput("invalid_limit", "The limit must be at least 1.")


def check_point(sequence: int | None, at: str | None) -> None:
    """``balance_at``'s point: a sequence (not negative) or a time, exactly one of the two."""
    if (sequence is None) == (at is None):
        raise InvalidInput("invalid_parameter", "Give exactly one of at and sequence.")
    if sequence is not None and sequence < 0:
        raise InvalidInput("invalid_parameter", "The sequence parameter must not be negative.")


def no_record_before(username: str) -> AccountNotFound:
    """``balance_at``'s refusal of a point before the account's first record."""
    return AccountNotFound(f"Account {username} has no record at or before that point.")


class SingleOperations:
    """``deposit``, ``withdraw`` and ``transfer``: each one item run by the store's ``_run_one``.

    Both stores inherit these three entry points, so that they are spelled once;
    ``_run_one`` applies ``apply_item`` under the store's own locking.
    """

    def _run_one(
        self, username: str, item: BatchItem, deadline: Deadline, expected_version: int | None
    ) -> OperationResult:
        raise NotImplementedError

    def deposit(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult:
        item = BatchItem(OperationType.DEPOSIT, amount, None, tag)
        return self._run_one(username, item, deadline, expected_version)

    def withdraw(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult:
        item = BatchItem(OperationType.WITHDRAWAL, amount, None, tag)
        return self._run_one(username, item, deadline, expected_version)

    def transfer(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> OperationResult:
        item = BatchItem(OperationType.TRANSFER, amount, target, tag)
        return self._run_one(username, item, deadline, expected_version)
