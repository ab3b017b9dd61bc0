"""The mutable state of accounts and holds while a store works on them.

``MockDB`` keeps one ``AccountState`` per account and one ``HoldState`` per hold,
touched only under its write lock; the PostgreSQL store copies locked rows into
them for the length of one transaction. Either way only the rules in
``app.ledger.rules`` change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.ledger.model import AccountView, Hold, HoldStatus, Tag, iso_from_epoch


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


class HoldState:
    """One hold: ``amount`` of ``source``'s money reserved for ``target`` until ``expires_at_s``."""

    __slots__ = (
        "amount",
        "captured",
        "created_at",
        "expires_at_s",
        "id",
        "source",
        "status",
        "tag",
        "target",
    )

    def __init__(
        self,
        hold_id: str,
        source: str,
        target: str,
        amount: int,
        expires_at_s: float,
        created_at: str,
        status: HoldStatus = HoldStatus.PENDING,
        captured: int = 0,
        tag: Tag | None = None,
    ) -> None:
        self.id = hold_id
        self.source = source
        self.target = target
        self.amount = amount
        self.expires_at_s = expires_at_s
        self.created_at = created_at
        self.status = status
        self.captured = captured
        #: The reference and metadata given with the hold: its capture, void or expiry carries them too.
        self.tag = tag

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
            self.tag,
        )

    def row(self) -> list[object]:
        """The hold as the journal and a snapshot keep it (``HOLD_FIELDS`` fields, then its
        reference and metadata if it has a tag); the database's columns, without the tag."""
        if self.tag is not None:
            return [*self.columns(), *self.tag]
        return self.columns()

    def columns(self) -> list[object]:
        """The hold's fields without its tag (the first ``HOLD_FIELDS`` of its row)."""
        return [
            self.id,
            self.source,
            self.target,
            self.amount,
            self.captured,
            self.status.value,
            self.expires_at_s,
            self.created_at,
        ]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> HoldState:
        hold_id, source, target, amount, captured, status, expires_at_s, created_at = row[:8]
        tag = Tag(row[8], row[9]) if len(row) > 8 else None
        return cls(
            hold_id, source, target, amount, expires_at_s, created_at, HoldStatus(status), captured, tag
        )
