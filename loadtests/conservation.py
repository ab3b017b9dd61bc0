"""Money conservation for the load tests: the clients' book of what moved, and the checks.

Deliberately free of locust (and so of gevent's monkey-patching), so that the
checks can be imported and unit-tested from an ordinary pytest process.

The idea: every coin in a scenario's accounts either was there at the start (the
opening balances) or came in through an acknowledged deposit, and every coin that
left went out through an acknowledged withdrawal. Transfers and hold captures move
coins between accounts and change nothing in the sum. So, once the load has stopped::

    sum(balances) == opening_total + acked deposits - acked withdrawals

and no balance is negative. The :class:`Book` also keeps every account's own
expected balance (its opening plus every acknowledged move in or out), and every
hold the clients created, so that each account's ``held`` can be checked too.

An operation whose outcome the client never learned (the connection dropped, the
client timed out) may or may not have been applied; such amounts are tracked apart
and widen the checks into ranges. A hold whose capture or void went unanswered is
looked up on the server at the end instead.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

#: At most this many problems of one kind are listed; the rest are counted.
MAX_LISTED = 10


class Outcome(enum.Enum):
    """What a money operation did to the ledger, as far as the client can tell."""

    #: ``200`` (``201`` for a new hold): the server acknowledged it; the money moved.
    APPLIED = "applied"
    #: A contract error (4xx, ``500 internal_error``, ``503 timeout``): nothing moved.
    NOT_APPLIED = "not_applied"
    #: No answer (connection error, client timeout, user killed mid-request).
    UNKNOWN = "unknown"


def outcome_of(status_code: int) -> Outcome:
    """The outcome of a money operation from its HTTP status (0: no response at all).

    The contract says a failed operation changes no balance, so every error status
    the service itself produces counts as "not applied"; if the service broke that
    promise, the final check will catch it. Statuses the service never sends
    (502/504 from a proxy, or no response) leave the outcome unknown.
    """
    if status_code in (200, 201):
        return Outcome.APPLIED
    if 400 <= status_code < 500 or status_code in (500, 503):
        return Outcome.NOT_APPLIED
    return Outcome.UNKNOWN


#: Hold states as the contract names them, plus ``UNKNOWN``: a capture or void went unanswered.
FINAL_HOLD_STATES = ("CAPTURED", "VOIDED", "EXPIRED")


@dataclass
class HoldNote:
    """A hold one of the clients created, and what they know of it."""

    payer: str
    payee: str
    amount: int
    #: The server's ``expires_at`` (ISO 8601, UTC).
    expires_at: str
    status: str = "PENDING"
    captured: int = 0

    @property
    def expires_at_s(self) -> float:
        return datetime.fromisoformat(self.expires_at).timestamp()


@dataclass
class Book:
    """What a scenario's clients saw happen to its accounts.

    Plain counters: locust runs every simulated user as a greenlet of one process in a
    local run, and greenlets only switch at I/O, so updates here are never interleaved.
    """

    opening: dict[str, int] = field(default_factory=dict)
    #: Each account's opening balance plus every acknowledged move in, minus every one out.
    expected: dict[str, int] = field(default_factory=dict)
    #: Coins that may or may not have come into (``credit_doubt``) or left (``debit_doubt``) an account.
    credit_doubt: Counter[str] = field(default_factory=Counter)
    debit_doubt: Counter[str] = field(default_factory=Counter)
    deposits: int = 0
    withdrawals: int = 0
    uncertain_deposits: int = 0
    uncertain_withdrawals: int = 0
    #: Acknowledged operations by kind (``deposit``, ``withdrawal``, ``transfer``, ``capture``).
    acked: Counter[str] = field(default_factory=Counter)
    uncertain_count: int = 0
    #: Expected refusals by error code (``insufficient_funds``, ``timeout``...): business outcomes.
    refusals: Counter[str] = field(default_factory=Counter)
    holds: dict[str, HoldNote] = field(default_factory=dict)
    #: Hold requests of each payer that went unanswered: that payer's ``held`` is unknown.
    hold_doubt: Counter[str] = field(default_factory=Counter)

    # -- recording ------------------------------------------------------------

    def open_account(self, username: str, balance: int) -> None:
        if username in self.opening:
            raise ValueError(f"account {username} is already in the book")
        self.opening[username] = balance
        self.expected[username] = balance

    @property
    def opening_total(self) -> int:
        return sum(self.opening.values())

    def record(self, kind: str, account: str, amount: int, outcome: Outcome, to: str | None = None) -> None:
        """Count one money operation.

        ``kind`` is ``deposit`` (into ``account``), ``withdrawal`` (out of ``account``),
        or ``transfer``/``capture`` (from ``account`` to ``to``).
        """
        moves_between = kind in ("transfer", "capture")
        if kind not in ("deposit", "withdrawal") and not moves_between:
            raise ValueError(f"unknown operation kind {kind!r}")
        if moves_between != (to is not None):
            raise ValueError(f"a {kind} {'needs' if moves_between else 'takes no'} recipient")
        source = account if kind != "deposit" else None
        target = to if moves_between else (account if kind == "deposit" else None)
        if outcome is Outcome.NOT_APPLIED:
            return
        if outcome is Outcome.UNKNOWN:
            self.uncertain_count += 1
            if source is not None:
                self.debit_doubt[source] += amount
            if target is not None:
                self.credit_doubt[target] += amount
            self.uncertain_deposits += amount if kind == "deposit" else 0
            self.uncertain_withdrawals += amount if kind == "withdrawal" else 0
            return
        self.acked[kind] += 1
        if source is not None:
            self.expected[source] -= amount
        if target is not None:
            self.expected[target] += amount
        self.deposits += amount if kind == "deposit" else 0
        self.withdrawals += amount if kind == "withdrawal" else 0

    def refused(self, error: str) -> None:
        self.refusals[error] += 1

    def hold_created(self, hold_id: str, note: HoldNote) -> None:
        self.holds[hold_id] = note

    def hold_settled(self, hold_id: str, status: str, captured: int = 0) -> None:
        """A capture or void of a hold, as answered (``UNKNOWN``: no answer came)."""
        note = self.holds[hold_id]
        note.status, note.captured = status, captured
        if status == "CAPTURED":
            self.record("capture", note.payer, captured, Outcome.APPLIED, to=note.payee)

    def unresolved_holds(self) -> list[str]:
        """Holds still pending as far as the clients know, or whose settlement went unanswered."""
        return [hold_id for hold_id, note in self.holds.items() if note.status in ("PENDING", "UNKNOWN")]

    def hold_observed(self, hold_id: str, status: str, captured: int) -> list[str]:
        """Reconcile an unresolved hold with the server's view of it at the end; problems found."""
        note = self.holds[hold_id]
        if status not in ("PENDING", *FINAL_HOLD_STATES):
            return [f"hold {hold_id} has an unknown status {status!r}"]
        if note.status == "PENDING" and status in ("CAPTURED", "VOIDED"):
            return [f"hold {hold_id} is {status} though no client {status.lower()} it"]
        if status == "CAPTURED":
            self.hold_settled(hold_id, status, captured)  # the unanswered capture did land
        else:
            note.status = status
        return []

    # -- checks ---------------------------------------------------------------

    def check_sum(self, balances: Mapping[str, int]) -> list[str]:
        return check_conservation(
            balances,
            self.opening_total,
            self.deposits,
            self.withdrawals,
            uncertain_deposits=self.uncertain_deposits,
            uncertain_withdrawals=self.uncertain_withdrawals,
        )

    def check_accounts(self, balances: Mapping[str, int]) -> list[str]:
        """Each account's balance against its opening plus its acknowledged moves."""
        problems = []
        for username, expected in sorted(self.expected.items()):
            balance = balances.get(username)
            low, high = expected - self.debit_doubt[username], expected + self.credit_doubt[username]
            if balance is None:
                problems.append(f"account {username} has no final balance")
            elif not low <= balance <= high:
                problems.append(
                    f"account {username} has {balance:,}, expected {_wanted(low, high)} "
                    f"(opening {self.opening[username]:,} and its acked moves); "
                    f"off by {balance - expected:+,}"
                )
        return capped(problems)

    def check_held(self, held: Mapping[str, int], looked_up_s: float, read_s: float) -> list[str]:
        """``held`` equals the sum of each payer's pending holds; no hold is pending past its expiry.

        Call after :meth:`hold_observed` for every unresolved hold. ``looked_up_s``: a
        moment (epoch seconds) before those holds were looked up; ``read_s``: one after
        ``held`` was read. A hold still pending when looked up may have expired by the
        time ``held`` was read if it expires before ``read_s``: ``held`` may then lack it.
        """
        problems = []
        sure: Counter[str] = Counter()
        maybe: dict[str, list[int]] = {}
        for hold_id, note in sorted(self.holds.items()):
            if note.status != "PENDING":
                continue
            if note.expires_at_s < looked_up_s:
                problems.append(
                    f"hold {hold_id} of {note.payer} is still PENDING, though it expired at {note.expires_at}"
                )
            if note.expires_at_s < read_s:
                maybe.setdefault(note.payer, []).append(note.amount)
            else:
                sure[note.payer] += note.amount
        for username in sorted(self.opening):
            if self.hold_doubt[username]:
                continue  # a hold request went unanswered: its amount may or may not be held
            allowed = {sure[username] + part for part in subset_sums(maybe.get(username, []))}
            if held.get(username) not in allowed:
                wanted = " or ".join(f"{amount:,}" for amount in sorted(allowed)[:MAX_LISTED])
                problems.append(
                    f"account {username} holds {held.get(username)}, but its pending holds add up to {wanted}"
                )
        return capped(problems)

    def summary(self, balances: Mapping[str, int]) -> str:
        relation = "==" if not self.uncertain_count else "~="
        acked = ", ".join(f"{count:,} {kind}s" for kind, count in sorted(self.acked.items())) or "nothing"
        refusals = ", ".join(f"{count:,} {error}" for error, count in sorted(self.refusals.items()))
        text = (
            f"{len(balances):,} accounts, sum {sum(balances.values()):,} {relation} opening "
            f"{self.opening_total:,} + deposits {self.deposits:,} - withdrawals {self.withdrawals:,}; "
            f"acked {acked}; refused {refusals or 'none'}; {self.uncertain_count} with unknown outcome"
        )
        if self.uncertain_count:
            text += (
                f" (up to +{self.uncertain_deposits:,}/-{self.uncertain_withdrawals:,}: checked as a range)"
            )
        return text


def subset_sums(amounts: list[int]) -> set[int]:
    """Every total a subset of ``amounts`` can make (the holds of one payer that may have expired)."""
    totals = {0}
    for amount in amounts:
        totals |= {total + amount for total in totals}
    return totals


def _wanted(low: int, high: int) -> str:
    return f"{low:,}" if low == high else f"between {low:,} and {high:,}"


def capped(problems: list[str]) -> list[str]:
    """The first :data:`MAX_LISTED` problems, and a count of the rest."""
    if len(problems) <= MAX_LISTED:
        return problems
    return [*problems[:MAX_LISTED], f"... and {len(problems) - MAX_LISTED} more like these"]


def check_conservation(
    balances: Mapping[str, int],
    opening_total: int,
    deposits: int,
    withdrawals: int,
    *,
    uncertain_deposits: int = 0,
    uncertain_withdrawals: int = 0,
) -> list[str]:
    """The problems with the pool's final balances; an empty list means money was conserved.

    ``balances`` holds every pool account's final balance; ``opening_total`` is the sum
    of their opening balances; ``deposits`` and ``withdrawals`` the acknowledged amounts.
    With no uncertain amounts the sum must match exactly; otherwise it must lie within
    ``[expected - uncertain_withdrawals, expected + uncertain_deposits]``.
    """
    problems = capped(
        [
            f"account {username} has a negative balance: {balance}"
            for username, balance in sorted(balances.items())
            if balance < 0
        ]
    )
    total = sum(balances.values())
    expected = opening_total + deposits - withdrawals
    low = expected - uncertain_withdrawals
    high = expected + uncertain_deposits
    if not low <= total <= high:
        problems.append(
            f"sum of {len(balances)} balances is {total:,}, expected {_wanted(low, high)} "
            f"(opening {opening_total:,} + acked deposits {deposits:,} - acked withdrawals "
            f"{withdrawals:,}); off by {total - expected:+,}"
        )
    return problems


# -- scenario-specific invariants ---------------------------------------------------

#: The payment processor's fee, in percent of each captured payment.
FEE_PERCENT = 1


def fee_of(amount: int) -> int:
    """The processor's fee on a payment: 1 % rounded down to a whole coin (under 100 coins: none)."""
    return amount * FEE_PERCENT // 100


def check_debit_chain(opening: int, debits: Iterable[tuple[int, int, int]], unanswered: int = 0) -> list[str]:
    """The acknowledged debits of an account nothing else changed, as ``(sequence, amount, balance after)``.

    In the ledger's order (``sequence``), each answered balance must be the one before
    it less the amount: every acknowledged debit is accounted for exactly once, and no
    two saw the same balance. ``unanswered``: the sum of debits whose answer never
    came; those may have landed between two answered ones, up to that sum in all.
    """
    problems = []
    balance, previous, unexplained = opening, None, 0
    for sequence, amount, after in sorted(debits):
        if sequence == previous:
            problems.append(f"two debits carry sequence {sequence}")
        gap = balance - amount - after
        if gap < 0 or unexplained + gap > unanswered:
            problems.append(
                f"the debit of {amount:,} at sequence {sequence} left {after:,}, "
                f"expected {balance - amount:,}"
            )
        else:
            unexplained += gap
        balance, previous = after, sequence
    return capped(problems)


def check_payouts(
    funds: int, paid: int, final: int, refused: Iterable[int], unanswered: int = 0
) -> list[str]:
    """A bank run: payouts never exceed the funds, all are accounted, and none was refused while affordable.

    ``refused``: the amounts refused for ``insufficient_funds``. The funds only go down,
    so a refusal of ``amount`` means less than ``amount`` was left then, and even less at
    the end. ``unanswered``: the sum of payouts whose answer never came.
    """
    problems = []
    if paid > funds:
        problems.append(f"paid out {paid:,}, more than the {funds:,} there was")
    if not funds - paid - unanswered <= final <= funds - paid:
        wanted = _wanted(funds - paid - unanswered, funds - paid)
        problems.append(f"the bank holds {final:,}, expected {wanted} ({funds:,} less {paid:,} paid)")
    smallest = min(refused, default=None)
    if smallest is not None and final >= smallest:
        problems.append(f"a payout of {smallest:,} was refused, yet {final:,} is left")
    return problems


def check_received(role: str, final: Mapping[str, int], owed: Mapping[str, int], doubt: int = 0) -> list[str]:
    """Each account's final balance equals what it is owed (plus up to ``doubt`` coins of unknown outcome)."""
    problems = []
    for username, amount in sorted(owed.items()):
        balance = final.get(username)
        if balance is None or not amount <= balance <= amount + doubt:
            problems.append(f"{role} {username} has {balance}, expected {_wanted(amount, amount + doubt)}")
    return capped(problems)
