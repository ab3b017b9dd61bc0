"""Hold operations of ``MockDB``: reserve, capture, void, read and expire holds.

The rules are ``app.ledger.rules``' (``reserve``, ``capture``, ``release``); the holds
themselves live in the ``HoldBook`` under the balance lock, like the money they
reserve. Every change goes through ``LedgerCore._write``.
"""

from __future__ import annotations

from app.ledger import rules
from app.ledger.accounts import HoldState
from app.ledger.memory.core import LedgerCore, durable, hold_result
from app.ledger.model import (
    AccountView,
    Deadline,
    Hold,
    HoldResult,
    HoldStatus,
    OperationType,
    Tag,
    utc_now_iso,
)
from app.ledger.records import RecordDraft


class HoldOperations(LedgerCore):
    """Holds on top of the core: every method takes the core's locks in its order."""

    @durable
    def create_hold(
        self,
        username: str,
        target: str,
        amount: int,
        *,
        timeout_s: int,
        deadline: Deadline,
        expected_version: int | None = None,
        tag: Tag | None = None,
    ) -> HoldResult:
        """Reserve ``amount`` of the caller's available money for ``target``."""
        rules.check_amount(amount)
        rules.check_hold_timeout(timeout_s)

        def apply(_: RecordDraft) -> tuple[AccountView, Hold]:
            self._expire_due((username, target))
            caller = rules.reserve(self._accounts.get, username, target, amount, expected_version)
            hold_id = self._holds.new_id()
            expires_at_s = self._clock() + timeout_s
            state = HoldState(hold_id, username, target, amount, expires_at_s, utc_now_iso(), tag=tag)
            self._holds.add(state)
            return caller.view(), state.view()

        draft = RecordDraft(OperationType.HOLD, username, target, amount, tag=tag)
        result = self._write(username, draft, deadline, apply, hold_result)
        self._sweeper.schedule(self._clock() + timeout_s, result.hold.id)
        return result

    @durable
    def capture_hold(
        self,
        username: str,
        hold_id: str,
        amount: int | None,
        *,
        deadline: Deadline,
        expected_version: int | None = None,
    ) -> HoldResult:
        """Move ``amount`` (default: all) of a pending hold to its payee; release the rest."""
        if amount is not None:
            rules.check_amount(amount)

        def apply(draft: RecordDraft) -> tuple[AccountView, Hold]:
            state = self._pending_hold_of(username, hold_id, draft, expected_version)
            draft.amount = state.amount if amount is None else amount
            rules.capture(self._accounts.get, state, amount)
            self._holds.resolved(state)
            return self._accounts[username].view(), state.view()

        draft = RecordDraft(OperationType.CAPTURE, username, None, amount or 0)
        return self._write(username, draft, deadline, apply, hold_result)

    @durable
    def void_hold(
        self, username: str, hold_id: str, *, deadline: Deadline, expected_version: int | None = None
    ) -> HoldResult:
        """Release the whole of a pending hold."""

        def apply(draft: RecordDraft) -> tuple[AccountView, Hold]:
            state = self._pending_hold_of(username, hold_id, draft, expected_version)
            rules.release(self._accounts[state.source], state, HoldStatus.VOIDED)
            self._holds.resolved(state)
            return self._accounts[username].view(), state.view()

        draft = RecordDraft(OperationType.VOID, username, None, 0)
        return self._write(username, draft, deadline, apply, hold_result)

    def _pending_hold_of(
        self, username: str, hold_id: str, draft: RecordDraft, expected_version: int | None
    ) -> HoldState:
        """The caller's hold, its due holds expired first; ``rules.check_pending`` passed."""
        state = rules.check_hold_of(self._holds.get(hold_id), username, hold_id)
        draft.source, draft.target, draft.amount, draft.tag = (
            state.source,
            state.target,
            state.amount,
            state.tag,
        )
        self._expire_due((state.source, state.target))
        rules.check_pending(self._accounts.get, state, username, expected_version)
        return state

    def get_hold(self, username: str, hold_id: str, *, deadline: Deadline) -> Hold:
        def read() -> tuple[Hold, int]:
            state = rules.check_hold_of(self._holds.get(hold_id), username, hold_id)
            # Every change of a hold changes its payer's account, a capture the payee's too.
            lsn = max(self._accounts[state.source].lsn, self._accounts[state.target].lsn)
            return state.view(), lsn

        return self._read_after_expiry(username, deadline, "hold_read", read)

    @durable
    def sweep_expired(self, *, deadline: Deadline) -> int:
        """Expire every pending hold whose time is up; how many were."""
        lock = self._rw.gen_wlock()
        self._acquire(lock, deadline, OperationType.EXPIRE.value)
        try:
            self._durability.check_writable()
            return self._expire(self._holds.all_due(self._clock()))
        finally:
            lock.release()
