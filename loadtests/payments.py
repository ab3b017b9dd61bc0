"""``--scenario payments``: card-style payments through a processor that keeps a 1 % fee.

A customer authorises a payment with a hold for the processor (declined, with
``422 insufficient_funds``, when its available money falls short: the customer then
tops its account up with a deposit). The processor pays the merchant the amount less
its fee out of its own float, then captures the whole hold, keeping the fee; if the
payout fails it voids the hold. One customer in ten cancels (voids) before the
payout, and one in twenty abandons the authorisation, which then expires after 1 to
3 s, during the run.

The fee is ``amount * 1 // 100``: 1 % rounded down to a whole coin, so payments
under 100 coins carry none (see :func:`loadtests.conservation.fee_of`).

Invariants, besides the common ones (which include: every ``held`` equals the sum of
its payer's pending holds, and no hold is pending past its expiry): the processor
ends with its float plus exactly the fee of every captured payment; each merchant
with exactly the amounts less fees of its captured payments; and every payment that
was not abandoned ended captured or voided.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from locust import task

from loadtests.common import Check, FinalState, Scenario, ScenarioUser, current, shielded
from loadtests.conservation import capped, check_received, fee_of

#: An authorisation outlives the run: only its capture or void resolves it.
AUTHORISATION_S = 600
#: How long an abandoned authorisation lives (seconds, inclusive).
ABANDONED_S = (1, 3)
LARGEST_PAYMENT = 2_000
PROCESSOR_FLOAT = 10**9
MERCHANTS = 5


@dataclass(frozen=True)
class Payment:
    hold_id: str
    merchant: str
    amount: int


class PaymentsUser(ScenarioUser):
    """A shop's checkout: authorise, pay the merchant out, capture (or void)."""

    @task
    @shielded
    def pay(self) -> None:
        run = current(Payments)
        customer, merchant = random.choice(run.customers), random.choice(run.merchants)
        amount = random.randint(1, LARGEST_PAYMENT)
        abandoned = random.random() < 0.05
        timeout_s = random.randint(*ABANDONED_S) if abandoned else AUTHORISATION_S
        hold_id = self.create_hold(run.book, customer, run.processor, amount, timeout_s)
        if hold_id is None:  # declined: the customer tops up
            self.move(run.book, "deposit", customer, run.opening_balance)
            return
        if abandoned:
            run.abandoned.add(hold_id)
            return
        if random.random() < 0.1:
            self.settle_hold(run.book, hold_id, "void", customer)
            return
        payout = self.move(run.book, "transfer", run.processor, amount - fee_of(amount), to=merchant)
        if payout.status == 200:
            run.payments.append(Payment(hold_id, merchant.username, amount))
            self.settle_hold(run.book, hold_id, "capture", run.processor)
        else:
            self.settle_hold(run.book, hold_id, "void", run.processor)


class Payments(Scenario):
    user_class = PaymentsUser
    name = "payments"
    description = "hold, pay the merchant less a 1% fee, capture; some cancelled, some left to expire"
    default_pool_size = 200
    default_opening_balance = 5_000

    def open(self) -> None:
        [self.processor] = self.open_accounts("processor", 1, PROCESSOR_FLOAT)
        self.merchants = self.open_accounts("merchant", MERCHANTS, 0)
        self.customers = self.open_accounts("customer", self.pool_size, self.opening_balance)
        self.payments: list[Payment] = []
        self.abandoned: set[str] = set()

    def checks(self, final: FinalState) -> list[Check]:
        holds = self.book.holds
        captured = [payment for payment in self.payments if holds[payment.hold_id].status == "CAPTURED"]
        fees = sum(fee_of(payment.amount) for payment in captured)
        owed = {merchant.username: 0 for merchant in self.merchants}
        for payment in captured:
            owed[payment.merchant] += payment.amount - fee_of(payment.amount)
        unsettled = [
            f"payment hold {hold_id} is {note.status}, neither captured nor voided"
            for hold_id, note in sorted(holds.items())
            if hold_id not in self.abandoned and note.status not in ("CAPTURED", "VOIDED")
        ]
        expired = sum(holds[hold_id].status == "EXPIRED" for hold_id in self.abandoned)
        return [
            Check(
                "fees",
                check_received(
                    "fee account", final.balances, {self.processor.username: PROCESSOR_FLOAT + fees}
                ),
                f"the processor kept {fees:,} in fees from {len(captured):,} captured payments "
                f"(1% rounded down: the {sum(payment.amount < 100 for payment in captured):,} "
                "under 100 coins paid none)",
            ),
            Check(
                "merchants",
                check_received("merchant", final.balances, owed),
                f"{len(owed)} merchants hold exactly their captured payments less fees "
                f"({sum(owed.values()):,})",
            ),
            Check(
                "payments settled",
                capped(unsettled),
                f"every payment captured or voided; {len(self.abandoned):,} authorisations abandoned, "
                f"{expired:,} of them expired by the end",
            ),
        ]
