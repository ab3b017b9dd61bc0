"""``MockDB``: the embedded, in-process ledger store.

Locking
-------
Three locks, each the only owner of its data, always taken in this order:

1. ``_rw`` (a fair ``readerwriterlock``) guards ``_accounts``: balances, versions,
   holds and token digests. Reads share it; every change holds it exclusively, and
   the funds check and the mutation happen under that one write lock.
2. ``_credentials_lock`` guards ``_credentials``, the token digests. It is apart
   from ``_rw`` so that authenticating a request never waits behind a balance
   writer; an account's digest is added right after the account, under ``_rw``.
3. ``_audit_lock`` guards the audit trail (``_audit``, ``_records_by_account``).
   Records of applied operations are appended while the write lock is still held,
   so the audit order is exactly the order in which balances changed.
4. ``_counters_lock`` guards the health counters.

A path may skip a lock but never takes them out of order, and never takes one
twice (the readerwriterlock locks are not reentrant). Lock handles are generated
afresh on every use and never stored. Waits for ``_rw`` are bounded by the
operation's deadline; the other three are only ever held for a few dictionary or
list operations, never across I/O.

Durability
----------
None: everything lives in this process's memory and is lost when it exits.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
import threading
import time
from collections.abc import Callable

from readerwriterlock import rwlock

from app.ledger.errors import (
    AccountExists,
    AccountNotFound,
    BalanceOverflow,
    InsufficientFunds,
    InvalidInput,
    LedgerError,
    OperationTimeout,
    StoreInvariantBroken,
    VersionConflict,
)
from app.ledger.model import (
    MAX_BALANCE,
    AccountView,
    Deadline,
    OperationResult,
    OperationType,
    Page,
    Status,
    Transaction,
    new_id,
    utc_now_iso,
)
from app.ledger.store import Health

#: A lock wait that ran past its deadline this recently makes health "degraded".
LOCK_TROUBLE_WINDOW_S = 60.0

_CURSOR_PATTERN = re.compile(r"h:([1-9][0-9]{0,18})")


class _Account:
    """Mutable account state; only ever touched under ``MockDB._rw``."""

    __slots__ = ("balance", "held", "version")

    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.held = 0
        self.version = 0

    def view(self, username: str) -> AccountView:
        return AccountView(username, self.balance, self.version, self.held)


class MockDB:
    """The embedded store: balances in a dict under a reader-writer lock."""

    def __init__(self) -> None:
        self._rw = rwlock.RWLockFair()
        self._accounts: dict[str, _Account] = {}

        self._credentials_lock = threading.Lock()
        self._credentials: dict[str, bytes] = {}

        self._audit_lock = threading.Lock()
        self._audit: list[Transaction] = []
        self._records_by_account: dict[str, list[int]] = {}

        self._counters_lock = threading.Lock()
        self._operation_count = 0
        self._last_lock_timeout_at: float | None = None
        self._started_at = time.monotonic()

    # -- accounts -------------------------------------------------------------

    def is_empty(self) -> bool:
        with self._rw.gen_rlock():
            return not self._accounts

    def create_account(
        self, username: str, token_digest: bytes, balance: int, *, deadline: Deadline
    ) -> AccountView:
        def apply() -> AccountView:
            if username in self._accounts:
                raise AccountExists(f"Account {username} already exists.")
            if not 0 <= balance <= MAX_BALANCE:
                raise StoreInvariantBroken(f"opening balance {balance} out of range")
            account = _Account(balance)
            self._accounts[username] = account
            with self._credentials_lock:
                self._credentials[username] = token_digest
            return account.view(username)

        # The opening balance is audited like a deposit so that the audit trail alone
        # explains every coin in the ledger. A refused opening (the name is taken) is
        # audited too, but shown in nobody's history: it is not the holder's doing.
        return self._run_write(
            OperationType.OPEN, username, None, username, balance, deadline, apply, failure_parties=()
        ).account

    def token_digest(self, username: str) -> bytes | None:
        with self._credentials_lock:
            return self._credentials.get(username)

    def account(self, username: str, *, deadline: Deadline) -> AccountView:
        lock = self._rw.gen_rlock()
        self._acquire(lock, deadline)
        try:
            return self._existing(username).view(username)
        finally:
            lock.release()
            self._count_operation()

    # -- money ----------------------------------------------------------------

    def deposit(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        def apply() -> AccountView:
            account = self._existing(username)
            _check_version(account, expected_version)
            _check_credit(username, account, amount)
            account.balance += amount
            account.version += 1
            return account.view(username)

        return self._run_write(OperationType.DEPOSIT, username, None, username, amount, deadline, apply)

    def withdraw(
        self,
        username: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        def apply() -> AccountView:
            account = self._existing(username)
            _check_version(account, expected_version)
            _check_funds(username, account, amount)
            account.balance -= amount
            account.version += 1
            _check_account(username, account)
            return account.view(username)

        return self._run_write(OperationType.WITHDRAWAL, username, username, None, amount, deadline, apply)

    def transfer(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> OperationResult:
        def apply() -> AccountView:
            source_account = self._existing(username)
            _check_version(source_account, expected_version)
            target_account = self._accounts.get(target)
            if target_account is None:
                raise AccountNotFound(f"Account {target} does not exist.")
            if target_account is source_account:
                raise InvalidInput("same_account", "Cannot transfer to the same account.")
            _check_funds(username, source_account, amount)
            _check_credit(target, target_account, amount)
            source_account.balance -= amount
            source_account.version += 1
            target_account.balance += amount
            target_account.version += 1
            _check_account(username, source_account)
            return source_account.view(username)

        return self._run_write(OperationType.TRANSFER, username, username, target, amount, deadline, apply)

    # -- history --------------------------------------------------------------

    def history(self, username: str, *, limit: int, cursor: str | None) -> Page:
        if limit < 1:
            raise InvalidInput("invalid_limit", "The limit must be at least 1.")
        before = None if cursor is None else _decode_cursor(cursor)
        with self._audit_lock:
            sequences = self._records_by_account.get(username, [])
            end = len(sequences) if before is None else bisect.bisect_left(sequences, before)
            start = max(0, end - limit)
            chosen = sequences[start:end]
            records = tuple(self._audit[sequence - 1] for sequence in reversed(chosen))
        next_cursor = _encode_cursor(chosen[0]) if start > 0 else None
        return Page(records, next_cursor)

    # -- health ---------------------------------------------------------------

    def health(self) -> Health:
        # Each lock is taken alone and in the documented order.
        probe = self._rw.gen_rlock()
        database_ok = probe.acquire(blocking=True, timeout=1.0)
        if database_ok:
            probe.release()
        with self._audit_lock:
            audit_ok = not self._audit or self._audit[-1].sequence == len(self._audit)
        with self._counters_lock:
            operation_count = self._operation_count
            last_timeout = self._last_lock_timeout_at
        now = time.monotonic()
        return Health(
            uptime_seconds=now - self._started_at,
            operation_count=operation_count,
            database=database_ok,
            audit_log=audit_ok,
            performance=last_timeout is None or now - last_timeout > LOCK_TROUBLE_WINDOW_S,
        )

    # -- internals ------------------------------------------------------------

    def _existing(self, username: str) -> _Account:
        account = self._accounts.get(username)
        if account is None:
            raise AccountNotFound(f"Account {username} does not exist.")
        return account

    def _acquire(self, lock: rwlock.Lockable, deadline: Deadline) -> None:
        if lock.acquire(blocking=True, timeout=deadline.remaining_s()):
            return
        with self._counters_lock:
            self._last_lock_timeout_at = time.monotonic()
        raise OperationTimeout("The operation could not finish within its deadline.")

    def _run_write(
        self,
        kind: OperationType,
        username: str,
        source: str | None,
        target: str | None,
        amount: int,
        deadline: Deadline,
        apply: Callable[[], AccountView],
        failure_parties: tuple[str, ...] | None = None,
    ) -> OperationResult:
        """Apply ``apply`` under the write lock and audit the outcome either way.

        A failure is shown in the history of ``failure_parties`` (default: the caller
        alone, never a recipient who had no part in it).
        """
        failed_for = (username,) if failure_parties is None else failure_parties
        lock = self._rw.gen_wlock()
        try:
            self._acquire(lock, deadline)
        except OperationTimeout as error:
            # Nothing was applied; the record only needs the audit lock.
            error.transaction = self._append(kind, source, target, amount, failed_for, error.code)
            self._count_operation()
            raise
        try:
            try:
                account = apply()
            except LedgerError as error:
                error.transaction = self._append(kind, source, target, amount, failed_for, error.code)
                raise
            parties = tuple(name for name in (source, target) if name is not None)
            record = self._append(kind, source, target, amount, parties, None)
        finally:
            lock.release()
            self._count_operation()
        return OperationResult(record, account)

    def _append(
        self,
        kind: OperationType,
        source: str | None,
        target: str | None,
        amount: int,
        parties: tuple[str, ...],
        failure: str | None,
    ) -> Transaction:
        """Append one audit record; ``parties`` are the accounts whose history shows it."""
        transaction_id = new_id("tx_")
        created_at = utc_now_iso()
        status = Status.SUCCESS if failure is None else Status.FAILED
        with self._audit_lock:
            record = Transaction(
                transaction_id,
                len(self._audit) + 1,
                kind,
                source,
                target,
                amount,
                status,
                failure,
                created_at,
            )
            self._audit.append(record)
            for name in parties:
                self._records_by_account.setdefault(name, []).append(record.sequence)
        return record

    def _count_operation(self) -> None:
        with self._counters_lock:
            self._operation_count += 1


def _check_version(account: _Account, expected_version: int | None) -> None:
    if expected_version is not None and account.version != expected_version:
        raise VersionConflict(f"The account is at version {account.version}, not {expected_version}.")


def _check_funds(username: str, account: _Account, amount: int) -> None:
    available = account.balance - account.held
    if amount > available:
        raise InsufficientFunds(f"{username} has {available} coins, {amount} requested")


def _check_credit(username: str, account: _Account, amount: int) -> None:
    if account.balance > MAX_BALANCE - amount:
        raise BalanceOverflow(f"Crediting {amount} coins would overflow the balance of {username}.")


def _check_account(username: str, account: _Account) -> None:
    """The invariants every account keeps after every change."""
    if account.balance < 0 or account.held < 0 or account.held > account.balance:
        raise StoreInvariantBroken(
            f"account {username} broke an invariant: balance {account.balance}, held {account.held}"
        )


def _encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"h:{sequence}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.") from None
    match = _CURSOR_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.")
    return int(match.group(1))
