"""``--scenario bank_run``: everyone withdraws at once from a bank that cannot pay them all.

The bank's account holds ``--opening-balance`` coins (default 500,000); its customers
(``--pool-size``, default 100) start with nothing. Every user waits until the last one
has spawned, then all of them, with no pause, have the bank pay a random customer
1 to 1,000 coins (a transfer sent by the bank's teller, i.e. with the bank's token)
and cash the payout out (a withdrawal from the customer's account), until the bank
runs dry and refuses (``422 insufficient_funds``: an expected outcome).

Invariants, besides the common ones: the bank never pays out more than it had; its
final balance is its funds less every acknowledged payout; the balances the bank's
payouts answered form one exact chain in the ledger's order (each payout accounted
once); no payout was refused while the bank could still afford it; and no cash-out
of coins just paid was refused.
"""

from __future__ import annotations

import random

import gevent.event  # type: ignore[import-untyped]
from locust import constant, task

from loadtests.common import Check, FinalState, Scenario, ScenarioUser, current, shielded
from loadtests.conservation import Outcome, check_debit_chain, check_payouts, outcome_of

LARGEST_PAYOUT = 1_000


class BankRunUser(ScenarioUser):
    """A panicking customer: gets paid out, cashes out, again, as fast as the bank answers."""

    wait_time = constant(0)

    def on_start(self) -> None:
        current(BankRun).everyone_there.wait()

    @task
    @shielded
    def run_on_the_bank(self) -> None:
        run = current(BankRun)
        customer = random.choice(run.customers)
        amount = random.randint(1, LARGEST_PAYOUT)
        payout = self.move(run.book, "transfer", run.bank, amount, to=customer)
        if payout.error == "insufficient_funds":
            run.refused.append(amount)
        elif outcome_of(payout.status) is Outcome.UNKNOWN:
            run.unanswered += amount
        if payout.status != 200:
            return
        transaction = payout.body["transaction"]
        run.payouts.append((transaction["sequence"], amount, payout.body["balance"]))
        cash_out = self.move(run.book, "withdrawal", customer, amount)
        if cash_out.status != 200:
            run.failed_cash_outs += 1


class BankRun(Scenario):
    user_class = BankRunUser
    name = "bank_run"
    description = "every user at once has the bank pay customers out, until the bank runs dry"
    default_pool_size = 100
    default_opening_balance = 500_000

    def open(self) -> None:
        [self.bank] = self.open_accounts("bank", 1, self.opening_balance)
        self.customers = self.open_accounts("customer", self.pool_size, 0)
        #: Set once every user has spawned: then they all start at once.
        self.everyone_there = gevent.event.Event()
        #: Acknowledged payouts as (sequence, amount, the bank's balance after).
        self.payouts: list[tuple[int, int, int]] = []
        self.refused: list[int] = []
        #: Payouts whose answer never came: they may or may not have been paid.
        self.unanswered = 0
        self.failed_cash_outs = 0

    def all_spawned(self) -> None:
        self.everyone_there.set()

    def checks(self, final: FinalState) -> list[Check]:
        funds, paid = self.opening_balance, sum(amount for _, amount, _ in self.payouts)
        left = final.balances[self.bank.username]
        state = (
            f"ran dry: {len(self.refused):,} payouts refused, "
            f"the smallest {min(self.refused):,} > {left:,} left"
            if self.refused
            else f"still holds {left:,} (a longer run would drain it)"
        )
        cash_outs = [] if not self.failed_cash_outs else [f"{self.failed_cash_outs} cash-outs were not paid"]
        return [
            Check(
                "payouts",
                check_payouts(funds, paid, left, self.refused, self.unanswered),
                f"the bank paid {len(self.payouts):,} payouts, {paid:,} of its {funds:,} coins, and {state}",
            ),
            Check(
                "payout chain",
                check_debit_chain(funds, self.payouts, self.unanswered),
                "in the ledger's order, the bank's balance after each payout is the one before less it",
            ),
            Check(
                "cash-outs", cash_outs, f"all {len(self.payouts) - self.failed_cash_outs:,} cash-outs paid"
            ),
        ]
