"""``HoldBook``, the embedded store's index of holds: what is due is found at the cost of what
is due, never by a scan of an account's holds (an account may hold a million)."""

from __future__ import annotations

import random

from app.ledger.accounts import HoldState
from app.ledger.memory.holds import HoldBook
from app.ledger.model import HoldStatus

NOW_S = 1_000_000.0


class CountingHolds(dict[str, HoldState]):
    """The book's hold table, counting the holds it is asked for."""

    lookups = 0

    def __getitem__(self, hold_id: str) -> HoldState:
        CountingHolds.lookups += 1
        return super().__getitem__(hold_id)


def book_with(states: list[HoldState]) -> HoldBook:
    book = HoldBook()
    book._holds = CountingHolds()  # counting the book's own lookups, from outside
    for state in states:
        book.add(state)
    return book


def hold(number: int, expires_at_s: float, source: str = "payer", target: str = "shop") -> HoldState:
    return HoldState(f"hold_{number:032x}", source, target, 1, expires_at_s, "2030-01-01T00:00:00.000000Z")


def test_finding_the_due_holds_costs_what_is_due_not_what_is_held() -> None:
    far = [hold(number, NOW_S + 3600 + number) for number in range(20_000)]
    soon = [hold(20_000 + number, NOW_S - number) for number in range(3)]
    book = book_with(far + soon)
    CountingHolds.lookups = 0
    assert not book.has_due(["nobody"], NOW_S)
    assert book.has_due(["shop"], NOW_S)
    due = book.due(["shop", "payer"], NOW_S)
    assert [state.id for state in due] == [state.id for state in reversed(soon)]
    # Each due hold is looked at once per party's heap: nothing else of the 20,003.
    assert CountingHolds.lookups <= 2 * len(soon)


def test_holds_resolved_early_leave_no_growing_garbage() -> None:
    book = book_with([])
    pending = []
    for number in range(10_000):
        state = hold(number, NOW_S + 3600 + number)
        book.add(state)
        if number % 100:
            state.status = HoldStatus.CAPTURED  # as rules.capture leaves it
            book.resolved(state)
        else:
            pending.append(state)
    heaps = book._deadlines  # the per-account heaps, read from outside
    assert len(heaps["shop"]) <= 2 * len(pending) + 16
    assert book.pending_by_account == {"payer": len(pending), "shop": len(pending)}
    assert book.due(["shop"], NOW_S + 3600 + 10_000) == sorted(pending, key=lambda state: state.expires_at_s)


def test_due_holds_come_out_oldest_first_and_once() -> None:
    generator = random.Random(7)
    states = [
        hold(number, NOW_S - generator.randrange(1000), source=f"p{number % 3}", target=f"t{number % 5}")
        for number in range(200)
    ]
    book = book_with(states)
    names = {name for state in states for name in (state.source, state.target)}
    due = book.due(sorted(names), NOW_S)
    assert due == sorted(states, key=lambda state: (state.expires_at_s, state.id))
    for state in due:
        state.status = HoldStatus.EXPIRED
        book.resolved(state)
    assert book.due(sorted(names), NOW_S + 10_000) == []
    assert not book.has_due(sorted(names), NOW_S + 10_000)


def test_replay_puts_holds_back_as_the_journal_has_them() -> None:
    book = book_with([])
    first = hold(1, NOW_S - 5)
    book.put(first)
    settled = hold(1, NOW_S - 5)
    settled.status = HoldStatus.VOIDED
    book.put(settled)
    assert book.due(["payer", "shop"], NOW_S) == []
    again = hold(2, NOW_S - 1)
    book.put(again)
    assert book.due(["shop"], NOW_S) == [again]
