"""The mutable state of one account inside a store (``MockDB``, and its recovery)."""

from __future__ import annotations

from app.ledger.model import AccountView


class AccountState:
    """Balance, held money and version of one account; only ever touched under the
    owning store's write lock (or before the store is shared, while it is restored)."""

    __slots__ = ("balance", "held", "lsn", "version")

    def __init__(self, balance: int, held: int = 0, version: int = 0) -> None:
        self.balance = balance
        self.held = held
        self.version = version
        #: The journal frame that last changed this account (0: durable from the start).
        self.lsn = 0

    def view(self, username: str) -> AccountView:
        return AccountView(username, self.balance, self.version, self.held)

    def copy(self) -> AccountState:
        return AccountState(self.balance, self.held, self.version)

    def take(self, other: AccountState) -> None:
        """Adopt another copy's state (an atomic batch writing back its result)."""
        self.balance = other.balance
        self.held = other.held
        self.version = other.version

    def row(self) -> list[int]:
        """The state as a journal entry keeps it: ``[balance, held, version]``."""
        return [self.balance, self.held, self.version]
