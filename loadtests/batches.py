"""``--scenario batches``: ``POST /account/coins/batch``, each item alone or all or nothing.

Users send batches of 1 to 100 random items (deposits, withdrawals and transfers to
other pool accounts) for a random pool account; half of them atomic. A third of the
atomic batches end with a withdrawal no account can cover, so they must be refused
whole (``422 insufficient_funds``: an expected outcome) with nothing applied, not even
the deposits before that item. Items of non-atomic batches stand alone: some are
refused for insufficient funds while the others apply.

Invariant, besides the common ones: every atomic batch was answered all-or-nothing
(all items SUCCESS, or the failing item with its error and every other one
``batch_failed``). That nothing of a refused batch reached the ledger is what the
common ``accounts`` check proves: each account's balance equals its opening plus
exactly the acknowledged items, so a rolled-back deposit that had landed would show.
"""

from __future__ import annotations

import random
from typing import Any

from locust import task

from loadtests.common import MAX_AMOUNT, Account, Check, FinalState, Scenario, ScenarioUser, current, shielded
from loadtests.conservation import capped

SIZES = (1, 5, 20, 100)
LARGEST_ITEM = 1_000


class BatchUser(ScenarioUser):
    """A payout system sending batches for one account at a time."""

    @task
    @shielded
    def batch(self) -> None:
        run = current(Batches)
        caller = random.choice(run.pool)
        items = [_item(run.pool, caller) for _ in range(random.choice(SIZES))]
        atomic = random.random() < 0.5
        if atomic and random.random() < 1 / 3:
            items.append({"type": "withdraw", "amount": MAX_AMOUNT})  # more than any account ever holds
        answer, problem = self.send_batch(run.book, caller, items, atomic=atomic)
        if problem and atomic:
            run.problems.append(problem)
        elif not atomic:
            run.items_alone += len(items)
        elif answer.status == 200:
            run.applied_whole += 1
        elif answer.status != 0:
            run.refused_whole += 1
            run.rolled_back += len(items) - 1


def _item(pool: list[Account], caller: Account) -> dict[str, Any]:
    kind = random.choice(("add", "withdraw", "transfer"))
    item: dict[str, Any] = {"type": kind, "amount": random.randint(1, LARGEST_ITEM)}
    if kind == "transfer":
        item["to"] = random.choice([account for account in pool if account != caller]).username
    return item


class Batches(Scenario):
    user_class = BatchUser
    name = "batches"
    description = "batches of 1-100 items, half atomic, some atomic ones doomed to be refused whole"
    default_pool_size = 50
    default_opening_balance = 10_000

    def open(self) -> None:
        self.pool = self.open_accounts("pool", self.pool_size, self.opening_balance)
        self.applied_whole = 0
        self.refused_whole = 0
        self.rolled_back = 0
        self.items_alone = 0
        #: What was wrong with atomic batches' answers: items partly applied, or malformed.
        self.problems: list[str] = []

    def checks(self, final: FinalState) -> list[Check]:
        alone = self.book.acked
        return [
            Check(
                "atomic batches",
                capped(self.problems),
                f"{self.applied_whole:,} atomic batches applied whole, {self.refused_whole:,} refused whole "
                f"({self.rolled_back:,} items rolled back); {self.items_alone:,} items in batches "
                f"each alone; {sum(alone.values()):,} items acked in all",
            )
        ]
