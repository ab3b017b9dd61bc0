"""Hold writes of the PostgreSQL store: reserve (create), capture and void.

Each is one transaction of the runner. A hold row is never locked itself: it is
only changed by a transaction that holds both of its parties' account rows (see
``unit.py``), so capture and void first find the hold, then lock its parties and
read it again under those locks. The rules are ``app.ledger.rules``'.
"""

from __future__ import annotations

from collections.abc import Callable

from app.ledger import rules
from app.ledger.accounts import HoldState
from app.ledger.errors import HoldNotFound, LedgerError, OperationTimeout, StoreInvariantBroken
from app.ledger.model import Deadline, HoldResult, HoldStatus, OperationType, Tag, new_id, utc_now_iso
from app.ledger.postgres import sql
from app.ledger.postgres.runner import Runner
from app.ledger.postgres.unit import Connection, Unit, failed
from app.ledger.records import success
from app.ledger.rules import check_amount, check_hold_timeout


class Holds:
    """Creates and settles holds through the runner (``PostgresStore``'s hold operations).

    ``version``: the account version the caller expects (``None``: any).
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def create(
        self,
        username: str,
        target: str,
        amount: int,
        timeout_s: int,
        deadline: Deadline,
        version: int | None,
        tag: Tag | None,
    ) -> HoldResult:
        """Reserve ``amount`` of the caller's available money for ``target``; the hold keeps ``tag``
        for the records of its capture, void or expiry."""
        check_amount(amount)
        check_hold_timeout(timeout_s)
        sql.tag_columns(tag)
        hold_id = new_id("hold_")
        kind = OperationType.HOLD

        def work(unit: Unit) -> HoldResult:
            unit.begin(deadline, (username, target))
            try:
                caller = rules.reserve(unit.accounts.get, username, target, amount, version)
            except LedgerError as error:
                raise unit.fail(
                    kind.value, error, failed(kind, username, target, amount, error.code, (username,), tag)
                ) from None
            expires_at_s = unit.now_s + timeout_s
            hold = HoldState(hold_id, username, target, amount, expires_at_s, utc_now_iso(), tag=tag)
            unit.new_holds.append(hold)
            [record] = unit.append([success(kind, username, target, amount, tag)])
            unit.outcomes.append((kind.value, "success"))
            return HoldResult(hold.view(), caller.view(), record)

        timeout = failed(kind, username, target, amount, OperationTimeout.code, (username,), tag)
        return self._runner.write(kind.value, deadline, work, [timeout])

    def capture(
        self, username: str, hold_id: str, amount: int | None, deadline: Deadline, version: int | None
    ) -> HoldResult:
        if amount is not None:
            check_amount(amount)

        return self._resolve(
            OperationType.CAPTURE, username, hold_id, amount, deadline, version, Unit.capture
        )

    def void(self, username: str, hold_id: str, deadline: Deadline, version: int | None) -> HoldResult:
        def settle(unit: Unit, hold: HoldState, _: int | None) -> int:
            unit.release(hold, HoldStatus.VOIDED)
            return hold.amount

        return self._resolve(OperationType.VOID, username, hold_id, None, deadline, version, settle)

    def _resolve(
        self,
        kind: OperationType,
        username: str,
        hold_id: str,
        amount: int | None,
        deadline: Deadline,
        version: int | None,
        settle: Callable[[Unit, HoldState, int | None], int],
    ) -> HoldResult:
        """Capture or void: find the hold, lock both parties, check it is still pending, ``settle`` it.

        ``settle`` (given ``amount``) returns the amount the record carries; the record's
        ``from``/``to`` are the hold's parties once it is found (the caller and nobody before),
        and its tag the hold's.
        """
        label = kind.value

        def work(unit: Unit) -> HoldResult:
            try:
                found = rules.check_hold_of(_find_hold(unit.connection, hold_id), username, hold_id)
            except HoldNotFound as error:
                unit.begin(deadline, ())
                spec = failed(kind, username, None, amount or 0, error.code, (username,))
                raise unit.fail(label, error, spec) from None
            unit.begin(deadline, (found.source, found.target))
            hold = unit.settled.get(hold_id) or _find_hold(unit.connection, hold_id)
            if hold is None:
                raise StoreInvariantBroken(f"hold {hold_id} vanished")
            recorded = hold.amount
            try:
                rules.check_pending(unit.accounts.get, hold, username, version)
                recorded = hold.amount if amount is None else amount  # what a refused capture shows
                recorded = settle(unit, hold, amount)
            except LedgerError as error:
                spec = failed(kind, hold.source, hold.target, recorded, error.code, (username,), hold.tag)
                raise unit.fail(label, error, spec) from None
            [record] = unit.append([success(kind, hold.source, hold.target, recorded, hold.tag)])
            unit.outcomes.append((label, "success"))
            return HoldResult(hold.view(), unit.accounts[username].view(), record)

        timeout = failed(kind, username, None, amount or 0, OperationTimeout.code, (username,))
        return self._runner.write(label, deadline, work, [timeout])


def _find_hold(connection: Connection, hold_id: str) -> HoldState | None:
    row = connection.execute(sql.FIND_HOLD, (hold_id,)).fetchone()
    return None if row is None else sql.hold(row)
