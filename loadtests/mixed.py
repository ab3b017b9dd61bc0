"""``--scenario mixed``: a realistic traffic mix over a pool of accounts.

About half reads (balance, history), the rest deposits, withdrawals, transfers and
payments through a hold (``POST /account/holds``, then the payee captures all or part
of it, or the payer voids it). ``422 insufficient_funds`` is an expected business
outcome; any other error, ``503 timeout`` included, is a request failure.

Operations are tagged as a client reconciling with its orders would: every transfer
carries a reference of its own and ``metadata.run`` (the run's id), deposits the run's
id too. At the end the ``tagged transfers`` check reads every successful transfer of
the run back through ``GET /admin/transactions`` filtered by that metadata, and finds
each acknowledged one exactly once, with its metadata, and nothing the clients did
not send.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from locust import task

from loadtests.common import (
    Account,
    Check,
    FinalState,
    Scenario,
    ScenarioUser,
    admin_transactions,
    current,
    fail,
    shielded,
)

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
        mixed = current(Mixed)
        self.move(
            mixed.book, "deposit", self._pick(), random.randint(1, 1_000), metadata={"run": mixed.run_id}
        )

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
        reference = f"{mixed.run_id}-{next(mixed.numbers)}"
        answer = self.move(
            mixed.book, "transfer", source, random.randint(1, 2_000), to=target, reference=reference,
            metadata={"run": mixed.run_id, "lane": str(len(reference) % 3)},
        )  # fmt: skip
        if answer.status == 200 and not answer.replayed:
            mixed.acknowledged.add(reference)
        elif answer.status == 0 or answer.status >= 500:
            mixed.unsure.add(reference)  # unanswered or a server error: it may have landed

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
        self.numbers = itertools.count(1)
        #: References of the transfers answered 200, and of those whose outcome is unknown.
        self.acknowledged: set[str] = set()
        self.unsure: set[str] = set()

    def checks(self, final: FinalState) -> list[Check]:
        return [self._tagged_transfers()]

    def _tagged_transfers(self) -> Check:
        """Every acknowledged transfer found once by its metadata, and nothing else."""
        records, problems = admin_transactions(
            self.host,
            self.admin_token,
            {"metadata.run": self.run_id, "type": "transfer", "status": "SUCCESS"},
        )
        found: list[Any] = []  # references as listed (a record without one: None)
        for record in records:
            found.append(record.get("reference"))
            if record.get("metadata", {}).get("run") != self.run_id:
                problems.append(f"record {record.get('id')} lacks the run's metadata")
        seen = set(found)
        problems += (
            [f"{len(found) - len(seen)} references found more than once"] if len(seen) < len(found) else []
        )
        problems += [
            f"acknowledged transfer {ref} not found" for ref in sorted(self.acknowledged - seen)[:10]
        ]
        strays = seen - self.acknowledged - self.unsure
        problems += [f"transfer {ref} found but never acknowledged" for ref in sorted(strays)[:10]]
        return Check(
            "tagged transfers",
            problems,
            f"GET /admin/transactions?metadata.run={self.run_id}&type=transfer&status=SUCCESS found "
            f"{len(found):,} transfers: every one of the {len(self.acknowledged):,} acknowledged, once",
        )
