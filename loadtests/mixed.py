"""``--scenario mixed``: a realistic traffic mix over a pool of accounts.

About half reads (balance, history), the rest deposits, withdrawals, transfers and
payments through a hold (``POST /account/holds``, then the payee captures all or part
of it, or the payer voids it). ``422 insufficient_funds`` is an expected business
outcome; any other error, ``503 timeout`` included, is a request failure.
"""

from __future__ import annotations

import random

from locust import task

from loadtests.common import Account, Scenario, ScenarioUser, current, fail, shielded

#: A payment's hold outlives the run, so only its capture or void resolves it.
HOLD_TIMEOUT_S = 600


class MixedUser(ScenarioUser):
    """A client of the ledger acting on random accounts of the pool."""

    def _pick(self) -> Account:
        return random.choice(current(Mixed).pool)

    # Reads: 10 of 22.

    @task(8)
    def read_balance_of_anyone(self) -> None:
        self.read_balance(self._pick())

    @task(2)
    def read_history(self) -> None:
        account = self._pick()
        with self.read("/account/transactions", account, limit=20) as response:
            if response.status_code != 200:
                fail(response)
            elif not isinstance(response.json().get("transactions"), list):
                response.failure("history response lacks a transactions list")
            else:
                response.success()

    # Money: 12 of 22. Deposits and withdrawals use the query string, transfers a JSON body.

    @task(4)
    @shielded
    def deposit(self) -> None:
        self.move(current(Mixed).book, "deposit", self._pick(), random.randint(1, 1_000))

    @task(3)
    @shielded
    def withdraw(self) -> None:
        # About as much out as deposits bring in.
        self.move(current(Mixed).book, "withdrawal", self._pick(), random.randint(1, 1_200))

    @task(3)
    @shielded
    def transfer(self) -> None:
        mixed = current(Mixed)
        source, target = random.sample(mixed.pool, 2)
        self.move(mixed.book, "transfer", source, random.randint(1, 2_000), to=target)

    @task(2)
    @shielded
    def pay_with_hold(self) -> None:
        """A hold from payer to payee; the payee captures all or part of it, or the payer voids it."""
        mixed = current(Mixed)
        payer, payee = random.sample(mixed.pool, 2)
        amount = random.randint(1, 2_000)
        hold_id = self.create_hold(mixed.book, payer, payee, amount, HOLD_TIMEOUT_S)
        if hold_id is None:
            return
        if random.random() < 0.7:
            captured = random.choice([amount, random.randint(1, amount)])
            self.settle_hold(mixed.book, hold_id, "capture", payee, captured)
        else:
            self.settle_hold(mixed.book, hold_id, "void", payer)


class Mixed(Scenario):
    user_class = MixedUser
    name = "mixed"
    description = "reads, deposits, withdrawals, transfers and hold payments over a pool of accounts"
    default_pool_size = 50
    default_opening_balance = 10_000

    def open(self) -> None:
        self.pool = self.open_accounts("pool", self.pool_size, self.opening_balance)
