"""The mutable state of one account while a store works on it.

``MockDB`` keeps one per account, touched only under its write lock; the PostgreSQL
store copies locked rows into them for the length of one transaction. Either way
the rules in ``app.ledger.rules`` change them.
"""

from __future__ import annotations

from app.ledger.model import AccountView


class AccountState:
    """One account's balance, held money and version."""

    __slots__ = ("balance", "held", "lsn", "username", "version")

    def __init__(self, username: str, balance: int, held: int = 0, version: int = 0) -> None:
        self.username = username
        self.balance = balance
        self.held = held
        self.version = version
        #: ``MockDB`` with a journal: the frame that last changed this account (0: durable).
        self.lsn = 0

    def view(self) -> AccountView:
        return AccountView(self.username, self.balance, self.version, self.held)

    def copy(self) -> AccountState:
        return AccountState(self.username, self.balance, self.held, self.version)

    def take(self, other: AccountState) -> None:
        """Adopt another copy's state (an atomic batch writing back its result)."""
        self.balance = other.balance
        self.held = other.held
        self.version = other.version

    def key(self) -> tuple[int, int, int]:
        return self.balance, self.held, self.version

    def row(self) -> list[int]:
        """The state as a journal entry keeps it: ``[balance, held, version]``."""
        return [self.balance, self.held, self.version]
