"""``--scenario hft``: high-frequency trading, 50+ traders against one exchange account.

Every trade is a transfer between a trader and the exchange (a buy: trader to
exchange, sent by the trader; a sell: exchange to trader, sent by the exchange) with
a short deadline (``X-Timeout-Ms`` of 1 to 100 ms) and its own ``Idempotency-Key``.
Users send trades back to back. Under that contention some trades run out of time:
``503 timeout`` is an expected outcome here, counted per deadline, not a failure.

The contract says a timed-out operation applied nothing, and the idempotency table
does not keep a timed-out key. So each timed-out trade is sent once more with the same
key and the default deadline: the retry must run afresh (a replay would mean the first
attempt had applied), and the final check holds every trader's balance to exactly its
opening plus its acknowledged sells minus its acknowledged buys.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter

from locust import constant, task

from loadtests.common import Check, FinalState, Scenario, ScenarioUser, current, shielded

#: The deadlines of trades, in milliseconds: short, so that some run out under contention.
DEADLINES_MS = (1, 2, 5, 20, 100)
LARGEST_TRADE = 100


class HftUser(ScenarioUser):
    """A trading client: trades back to back for random traders."""

    wait_time = constant(0)

    @task
    @shielded
    def trade(self) -> None:
        hft = current(Hft)
        trader = random.choice(hft.traders)
        source, target = (trader, hft.exchange) if random.random() < 0.5 else (hft.exchange, trader)
        amount = random.randint(1, LARGEST_TRADE)
        deadline_ms = random.choice(DEADLINES_MS)
        key = f"{hft.run_id}-{secrets.token_hex(8)}"
        refusals = ("insufficient_funds", "timeout")
        answer = self.move(
            hft.book,
            "transfer",
            source,
            amount,
            to=target,
            headers={"Idempotency-Key": key, "X-Timeout-Ms": str(deadline_ms)},
            refusals=refusals,
        )
        hft.trades[deadline_ms] += 1
        if answer.error != "timeout":
            return
        hft.timeouts[deadline_ms] += 1
        retry = self.move(
            hft.book,
            "transfer",
            source,
            amount,
            to=target,
            headers={"Idempotency-Key": key},
            refusals=refusals,
            name="/account/coins/transfer (retry after timeout)",
        )
        hft.retries += 1
        if retry.replayed:
            hft.replayed.append(key)


class Hft(Scenario):
    user_class = HftUser
    name = "hft"
    description = "50+ traders trading with one exchange account under 1-100 ms deadlines"
    default_pool_size = 60
    min_pool_size = 50
    default_opening_balance = 10_000

    def open(self) -> None:
        [self.exchange] = self.open_accounts("exchange", 1, self.pool_size * self.opening_balance)
        self.traders = self.open_accounts("trader", self.pool_size, self.opening_balance)
        self.trades: Counter[int] = Counter()
        self.timeouts: Counter[int] = Counter()
        self.retries = 0
        #: Keys whose retry after a timeout was replayed: the timed-out attempt had applied.
        self.replayed: list[str] = []

    def checks(self, final: FinalState) -> list[Check]:
        sent = sum(self.trades.values())
        timed_out = sum(self.timeouts.values())
        by_deadline = ", ".join(
            f"{deadline_ms} ms: {self.timeouts[deadline_ms]:,}/{self.trades[deadline_ms]:,}"
            for deadline_ms in DEADLINES_MS
        )
        problems = [
            f"the retry of timed-out trade {key} was replayed: the timed-out attempt had applied"
            for key in self.replayed
        ]
        share = f"{timed_out / sent:.1%}" if sent else "-"
        summary = (
            f"{timed_out:,} of {sent:,} trades timed out ({share}; by deadline {by_deadline}); "
            f"{self.retries:,} retried with the same Idempotency-Key, {len(self.replayed)} replayed"
        )
        return [Check("timeouts applied nothing", problems, summary)]
