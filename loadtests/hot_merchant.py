"""``--scenario hot_merchant``: thousands of customers paying one merchant.

``--pool-size`` customers (default 2,000, each with ``--opening-balance`` coins,
default 10,000) pay one merchant 1 to 500 coins each by transfer; now and then the
merchant reads its balance. Every payment lands on the same account.

Invariant, besides the common ones: the merchant's balance equals the sum of the
payments acknowledged to it (a range if some answers never came).
"""

from __future__ import annotations

import random

from locust import between, task

from loadtests.common import Check, FinalState, Scenario, ScenarioUser, current, shielded
from loadtests.conservation import Outcome, check_received, outcome_of

LARGEST_PAYMENT = 500


class HotMerchantUser(ScenarioUser):
    """A checkout: a random customer pays the merchant."""

    wait_time = between(0.0, 0.05)

    @task(9)
    @shielded
    def pay(self) -> None:
        run = current(HotMerchant)
        amount = random.randint(1, LARGEST_PAYMENT)
        answer = self.move(run.book, "transfer", random.choice(run.customers), amount, to=run.merchant)
        if answer.status == 200:
            run.received += amount
        elif outcome_of(answer.status) is Outcome.UNKNOWN:
            run.doubt += amount

    @task(1)
    def merchant_checks_balance(self) -> None:
        self.read_balance(current(HotMerchant).merchant)


class HotMerchant(Scenario):
    user_class = HotMerchantUser
    name = "hot_merchant"
    description = "thousands of customers paying one merchant"
    default_pool_size = 2_000
    default_opening_balance = 10_000

    def open(self) -> None:
        [self.merchant] = self.open_accounts("merchant", 1, 0)
        self.customers = self.open_accounts("customer", self.pool_size, self.opening_balance)
        self.received = 0
        #: Payments whose answer never came: they may or may not have landed.
        self.doubt = 0

    def checks(self, final: FinalState) -> list[Check]:
        payments = self.book.acked["transfer"]
        return [
            Check(
                "merchant",
                check_received(
                    "merchant", final.balances, {self.merchant.username: self.received}, self.doubt
                ),
                f"the merchant holds the {payments:,} payments acknowledged to it: {self.received:,} coins "
                f"from {len(self.customers):,} customers",
            )
        ]
