"""Reversals in ``MockDB``: a transaction sent back, in whole or in parts, at most once in all.

The original is found before any lock is taken (records never change: the record
index names its sequence, the trail reads it from memory or disk); then, under the
write lock, ``rules.reverse`` checks what is left of it (``ReversalBook``) together
with the funds, and the reversal is audited like every operation, FAILED too.
"""

from __future__ import annotations

from app.ledger import rules
from app.ledger.errors import StoreInvariantBroken, TransactionNotFound
from app.ledger.memory.core import LedgerCore, durable
from app.ledger.model import AccountView, Deadline, OperationResult, OperationType, Tag, Transaction
from app.ledger.records import RecordDraft


class ReversalOperations(LedgerCore):
    """``reverse`` on top of the core: it takes the core's locks in its order."""

    @durable
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
        if amount is not None:
            rules.check_amount(amount)
        original = self._find_record(transaction_id)  # disk I/O: before any lock
        draft = RecordDraft(OperationType.REVERSAL, username, None, amount or 0, tag=tag)
        draft.reverses = transaction_id
        # A failure shows in the caller's history (the operator's: the account it concerns);
        # the original's parties are named only to someone who may reverse it.
        failed_for: tuple[str, ...] = () if username is None else (username,)
        try:
            found = rules.reversible(original, transaction_id, username)
        except TransactionNotFound:
            pass
        else:
            draft.source, draft.target = rules.reversal_roles(found)
            failed_for = (rules.reversal_account(found),)

        def apply(draft: RecordDraft) -> AccountView:
            found = rules.reversible(original, transaction_id, username)
            self._expire_due((found.source, found.target))
            already = self._reversals.reversed(found.id)
            moved = rules.reverse(self._accounts.get, found, already, amount, expected_version)
            draft.amount = moved
            if self._reversals.add(found.id, moved) > found.amount:  # paired with rules.reverse's check
                raise StoreInvariantBroken(f"transaction {found.id} reversed beyond its amount")
            return self._accounts[rules.reversal_account(found)].view()

        return self._write(username or "", draft, deadline, apply, OperationResult, failed_for=failed_for)

    def _find_record(self, transaction_id: str) -> Transaction | None:
        """The durable record whose id is ``transaction_id`` (``None``: none), read with no
        lock of the store's held (the index's own lock only)."""
        sequence = self._index.sequence_of(transaction_id, self._indexable())
        if sequence is None:
            return None
        entry = self._trail.entry(sequence)
        if entry is None or entry[0].id != transaction_id:
            return None
        return entry[0]
