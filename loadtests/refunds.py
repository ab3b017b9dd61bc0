"""``--scenario refunds``: payers pay merchants, merchants refund, and keep spending.

Payers transfer to merchants (each payment tagged with the run's id); merchants send
payments back with ``POST /account/transactions/{id}/reverse``: in full or in part,
some twice under one ``Idempotency-Key`` (the retry must be a replay), some with two
refunds of one payment racing each other; meanwhile they keep paying their supplier
out of the same balance, so a refund can find the money gone (``422
insufficient_funds``), and a payment can be refunded in full already (``409
already_reversed``) or have less left than asked (``400 invalid_amount``): all three
are expected business outcomes.

Its own invariant, ``refunds``: every payment the run made, read back through
``GET /admin/transactions?metadata.run=...&type=transfer``, shows a
``reversed_amount`` no larger than its amount and equal to the sum of its
acknowledged refunds (a refund whose answer never came may add to it: it is
counted as a doubt); and the ``reversal`` records of the run add up, per payment, to
that same ``reversed_amount``.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import task

from loadtests.common import (
    REQUEST_TIMEOUT_S,
    Account,
    Answer,
    Check,
    FinalState,
    Scenario,
    ScenarioUser,
    _answer,
    admin_transactions,
    current,
    fail,
    shielded,
    with_query,
)
from loadtests.conservation import Book, Outcome, outcome_of

#: What a refund may be refused with, as a business outcome (status, error).
_REFUSALS = {(422, "insufficient_funds"), (409, "already_reversed"), (400, "invalid_amount")}
_REVERSE_PATH = "/account/transactions/[id]/reverse"


@dataclass
class Payment:
    id: str
    payer: Account
    merchant: Account
    amount: int
    #: What the merchant's acknowledged refunds sent back, and what unanswered ones may have.
    refunded: int = 0
    doubt: int = 0


class RefundsUser(ScenarioUser):
    """A payer paying, or a merchant refunding and spending."""

    @task(5)
    @shielded
    def pay(self) -> None:
        refunds = current(Refunds)
        payer, merchant = random.choice(refunds.payers), random.choice(refunds.merchants)
        answer = self.move(
            refunds.book, "transfer", payer, random.randint(1, 500), to=merchant,
            reference=f"{refunds.run_id}-{next(refunds.numbers)}", metadata={"run": refunds.run_id},
        )  # fmt: skip
        transaction = answer.body.get("transaction")
        if answer.status == 200 and isinstance(transaction, dict) and not answer.replayed:
            payment = Payment(str(transaction["id"]), payer, merchant, int(transaction["amount"]))
            refunds.payments[payment.id] = payment

    @task(3)
    @shielded
    def refund(self) -> None:
        refunds = current(Refunds)
        payment = refunds.refundable()
        if payment is None:
            return
        left = payment.amount - payment.refunded
        amount = None if random.random() < 0.4 else random.randint(1, max(1, left))
        if random.random() < 0.2:  # a client that retries with its key: the retry must replay
            key = f"{refunds.run_id}-refund-{next(refunds.numbers)}"
            first = self.reverse(payment, amount, key)
            again = self.reverse(payment, amount, key, retry_of=first)
            refunds.retries[again.replayed and again.status == first.status] += 1
        else:
            self.reverse(payment, amount)

    @task(1)
    @shielded
    def race_refunds(self) -> None:
        """Two refunds of one payment at once: what they send back never adds up past it."""
        refunds = current(Refunds)
        payment = refunds.refundable()
        if payment is None:
            return
        racers = [gevent.spawn(self.reverse, payment, amount) for amount in (None, payment.amount)]
        gevent.joinall(racers, timeout=2 * REQUEST_TIMEOUT_S)
        refunds.races += 1

    @task(3)
    @shielded
    def spend(self) -> None:
        refunds = current(Refunds)
        merchant = random.choice(refunds.merchants)
        self.move(refunds.book, "transfer", merchant, random.randint(1, 400), to=refunds.supplier)

    def reverse(
        self, payment: Payment, amount: int | None, key: str | None = None, retry_of: Answer | None = None
    ) -> Answer:
        """The merchant refunds ``amount`` of ``payment`` (``None``: all that is left)."""
        refunds = current(Refunds)
        merchant = payment.merchant
        fields: dict[str, Any] = {"username": merchant.username}
        if amount is not None:
            fields["amount"] = amount
        headers = {**merchant.headers, **({"Idempotency-Key": key} if key else {})}
        answer, outcome = Answer(0, {}), Outcome.UNKNOWN
        try:
            with self.client.post(
                with_query(f"/account/transactions/{payment.id}/reverse", fields),
                json={"metadata": {"run": refunds.run_id}},
                headers=headers,
                name=_REVERSE_PATH,
                catch_response=True,
            ) as response:
                answer = _answer(response)
                outcome = Outcome.NOT_APPLIED if answer.replayed else outcome_of(response.status_code)
                problem = _reversal_problem(answer, payment, amount, retry_of)
                if problem is not None:
                    response.failure(problem)
                elif answer.status == 200 or (answer.status, answer.error) in _REFUSALS:
                    refunds.outcomes[answer.error or "refunded"] += 0 if answer.replayed else 1
                    response.success()
                else:
                    fail(response)
        finally:
            refunds.note_refund(payment, amount, answer, outcome)
        return answer


def _reversal_problem(
    answer: Answer, payment: Payment, amount: int | None, retry_of: Answer | None
) -> str | None:
    answered = answer.status != 0 and retry_of is not None and 0 < retry_of.status < 500
    if answered and retry_of is not None and (not answer.replayed or answer.body != retry_of.body):
        return f"a retry under the same key was not a replay of {retry_of.status}: {answer.status}"
    if answer.status != 200:
        return None
    record = answer.body.get("transaction")
    if (
        not isinstance(record, dict)
        or record.get("type") != "reversal"
        or record.get("reverses") != payment.id
    ):
        return f"a refund answered without its reversal record: {answer.body}"
    if amount is not None and record.get("amount") != amount:
        return f"refunded {record.get('amount')}, asked {amount}"
    if not isinstance(answer.body.get("balance"), int) or answer.body["balance"] < 0:
        return f"bad balance after a refund: {answer.body.get('balance')!r}"
    return None


class Refunds(Scenario):
    user_class = RefundsUser
    name = "refunds"
    description = "payers pay merchants; merchants refund (in part, in full, retried, racing) and spend"
    default_pool_size = 40
    default_opening_balance = 20_000

    def open(self) -> None:
        self.payers = self.open_accounts("payer", self.pool_size, self.opening_balance)
        self.merchants = self.open_accounts("merchant", max(2, self.pool_size // 8), 0)
        [self.supplier] = self.open_accounts("supplier", 1, 0)
        self.numbers = itertools.count(1)
        self.payments: dict[str, Payment] = {}
        self.outcomes: Counter[str] = Counter()
        self.retries: Counter[bool] = Counter()
        self.races = 0

    def refundable(self) -> Payment | None:
        """A payment with something left to refund, as far as the clients know."""
        candidates = random.sample(list(self.payments.values()), min(8, len(self.payments)))
        return next((payment for payment in candidates if payment.refunded < payment.amount), None)

    def note_refund(self, payment: Payment, amount: int | None, answer: Answer, outcome: Outcome) -> None:
        """Count a refund in the book (a transfer from the merchant back to the payer) and
        in its payment."""
        book: Book = self.book
        record = answer.body.get("transaction")
        if outcome is Outcome.APPLIED and isinstance(record, dict):
            moved = int(record["amount"])
            payment.refunded += moved
            book.record("transfer", payment.merchant.username, moved, outcome, to=payment.payer.username)
        elif outcome is Outcome.UNKNOWN:
            at_most = payment.amount - payment.refunded if amount is None else amount
            payment.doubt += at_most
            book.record("transfer", payment.merchant.username, at_most, outcome, to=payment.payer.username)

    def checks(self, final: FinalState) -> list[Check]:
        problems: list[str] = []
        payments = self._read_back("transfer", problems)
        reversals = self._read_back("reversal", problems)
        summed: Counter[str] = Counter()
        for reversal in reversals:
            if reversal.get("status") == "SUCCESS":
                summed[str(reversal.get("reverses"))] += int(reversal.get("amount") or 0)
        shown = {str(record["id"]): record for record in payments}
        for payment in self.payments.values():
            record = shown.get(payment.id)
            if record is None:
                problems.append(f"payment {payment.id} not found")
                continue
            reversed_amount = int(record.get("reversed_amount", -1))
            if not 0 <= reversed_amount <= payment.amount:
                problems.append(f"payment {payment.id} of {payment.amount} shows {reversed_amount} reversed")
            if not payment.refunded <= reversed_amount <= payment.refunded + payment.doubt:
                problems.append(
                    f"payment {payment.id} shows {reversed_amount} reversed; its acknowledged refunds "
                    f"add up to {payment.refunded} (+{payment.doubt} unanswered)"
                )
            if summed[payment.id] != reversed_amount:
                problems.append(
                    f"payment {payment.id}: its reversal records add up to {summed[payment.id]}, "
                    f"it shows {reversed_amount}"
                )
        outcomes = ", ".join(f"{count:,} {name}" for name, count in sorted(self.outcomes.items()))
        return [
            Check(
                "refunds",
                problems[:20],
                f"{len(self.payments):,} payments, {sum(summed.values()):,} coins refunded ({outcomes}); "
                f"{self.retries[True]:,} keyed retries replayed, {self.retries[False]:,} not; "
                f"{self.races:,} racing pairs; every reversed_amount equals its acknowledged refunds",
            )
        ]

    def _read_back(self, kind: str, problems: list[str]) -> list[dict[str, Any]]:
        """Every record of the run of this type, through the admin's filtered listing."""
        found, trouble = admin_transactions(
            self.host, self.admin_token, {"metadata.run": self.run_id, "type": kind}
        )
        problems += trouble
        return found
