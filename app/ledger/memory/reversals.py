"""``ReversalBook``: how much of each transaction has been reversed, in the embedded store.

Records never change, so what was reversed of one is kept beside them: one integer per
transaction that has been reversed at all (transactions never reversed take no room),
so the book grows with the reversals, not with the history. It is not journaled apart:
each successful ``reversal`` record (its ``reverses`` and ``amount``) is the journal of
its own change; a snapshot writes the book (section ``reversed``) and a start adds the
reversals it replays from the journal after it.

Locking
-------
``ReversalBook._lock`` guards the amounts. It comes after ``MockDB._rw`` (and after
``_credentials_lock``) and before the audit trail's lock. A reversal reads what is
left and adds to it under ``_rw`` held for writing, with the funds check, so two
reversals of one transaction are serialised by ``_rw``; a history page reads amounts
under this lock alone, so that it never waits behind a balance writer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class ReversalBook:
    """Reversed amounts by transaction id (only those reversed at all)."""

    def __init__(self, amounts: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._amounts: dict[str, int] = {} if amounts is None else amounts  # under _lock

    def reversed(self, transaction_id: str) -> int:
        """How much of the transaction has been reversed (0: nothing)."""
        with self._lock:
            return self._amounts.get(transaction_id, 0)

    def add(self, transaction_id: str, amount: int) -> int:
        """Note ``amount`` more reversed of the transaction (the caller holds ``_rw`` for
        writing and checked what was left); the new total."""
        with self._lock:
            total = self._amounts.get(transaction_id, 0) + amount
            self._amounts[transaction_id] = total
            return total

    def of(self, transaction_ids: Iterable[str]) -> dict[str, int]:
        """The reversed amounts of these transactions, those reversed at all."""
        with self._lock:
            amounts = self._amounts
            if not amounts:
                return {}
            return {
                transaction_id: amounts[transaction_id]
                for transaction_id in transaction_ids
                if transaction_id in amounts
            }

    def rows(self) -> list[list[object]]:
        """Every amount as a snapshot row: ``[id, reversed]``."""
        with self._lock:
            return [[transaction_id, amount] for transaction_id, amount in self._amounts.items()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._amounts)
