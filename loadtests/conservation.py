"""Money conservation for the load test: the client's tally and the final check.

Deliberately free of locust (and so of gevent's monkey-patching), so that the
check can be imported and unit-tested from an ordinary pytest process.

The idea: every coin in the load test's account pool either was there at the
start (the opening balances) or came in through an acknowledged deposit, and
every coin that left went out through an acknowledged withdrawal. Transfers move
coins inside the pool and change nothing. So, once the load has stopped::

    sum(balances) == opening_total + acked deposits - acked withdrawals

and no balance is negative. An operation whose outcome the client never learned
(the connection dropped, the client timed out) may or may not have been applied;
such amounts are tracked apart and widen the check into a range.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Outcome(enum.Enum):
    """What a money operation did to the ledger, as far as the client can tell."""

    #: ``200``: the server acknowledged it; the money moved.
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
    if status_code == 200:
        return Outcome.APPLIED
    if 400 <= status_code < 500 or status_code in (500, 503):
        return Outcome.NOT_APPLIED
    return Outcome.UNKNOWN


@dataclass
class Tally:
    """Coins the clients saw move into and out of the pool.

    Plain counters: locust runs every simulated user as a greenlet of one process in a
    local run, and greenlets only switch at I/O, so ``+=`` here is never interleaved.
    """

    deposits: int = 0
    withdrawals: int = 0
    deposit_count: int = 0
    withdrawal_count: int = 0
    transfer_count: int = 0
    insufficient_funds: int = 0
    uncertain_deposits: int = 0
    uncertain_withdrawals: int = 0
    uncertain_count: int = 0

    def record(self, kind: str, amount: int, outcome: Outcome) -> None:
        """Count one money operation (``kind``: ``deposit``, ``withdrawal`` or ``transfer``)."""
        if kind not in ("deposit", "withdrawal", "transfer"):
            raise ValueError(f"unknown operation kind {kind!r}")
        if outcome is Outcome.NOT_APPLIED:
            return
        if outcome is Outcome.UNKNOWN:
            self.uncertain_count += 1
            if kind == "deposit":
                self.uncertain_deposits += amount
            elif kind == "withdrawal":
                self.uncertain_withdrawals += amount
            return
        if kind == "deposit":
            self.deposits += amount
            self.deposit_count += 1
        elif kind == "withdrawal":
            self.withdrawals += amount
            self.withdrawal_count += 1
        else:
            self.transfer_count += 1

    def reset(self) -> None:
        """Back to zero, in place (a new test in the same process starts afresh)."""
        for name, value in vars(Tally()).items():
            setattr(self, name, value)


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
    problems = [
        f"account {username} has a negative balance: {balance}"
        for username, balance in sorted(balances.items())
        if balance < 0
    ]
    total = sum(balances.values())
    expected = opening_total + deposits - withdrawals
    low = expected - uncertain_withdrawals
    high = expected + uncertain_deposits
    if not low <= total <= high:
        wanted = f"{expected:,}" if low == high else f"between {low:,} and {high:,}"
        problems.append(
            f"sum of {len(balances)} balances is {total:,}, expected {wanted} "
            f"(opening {opening_total:,} + acked deposits {deposits:,} - acked withdrawals "
            f"{withdrawals:,}); off by {total - expected:+,}"
        )
    return problems
