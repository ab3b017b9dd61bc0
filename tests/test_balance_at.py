"""``GET /account/coins?at=`` and ``?sequence=``: the balance right after the account's last
record at or before a point, against a replay of the whole audit trail.

"The last record at or before ``at``" is the one with the largest sequence among the
account's records (its history) with ``created_at <= at``: records may be stamped out of
order, and the stepped-back clocks here make sure they are. Random ledgers (failed
operations, batches, holds) are asked about random points on both stores; the embedded
store again after a restart and after its index file is deleted; then the refusals.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth import token_digest
from app.ledger.errors import AccountNotFound, InvalidInput, LedgerError, StoreInvariantBroken
from app.ledger.memory import MockDB, index
from app.ledger.memory.index import INDEX_FILE
from app.ledger.model import BalanceAt, BatchItem, Deadline, OperationType, Transaction
from tests.drivers import driver_for
from tests.stores import ADMIN_TOKEN
from tests.trails import audit, replayed

ADMIN = {"Authorization": ADMIN_TOKEN}
AARON = {"Authorization": "1"}
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Fresh account names for each example (a store fixture lives across a test's examples).
_prefixes = itertools.count()
#: Where each store's records are stamped (both call ``utc_now_iso`` as they seal).
_STAMPERS = ("app.ledger.memory.trail.utc_now_iso", "app.ledger.postgres.unit.utc_now_iso")


def _stamp(second: int) -> str:
    return f"2030-01-01T00:00:{second:02d}.000000Z"


@contextmanager
def stamped_by(seconds: list[int] | None) -> Iterator[None]:
    """Records sealed meanwhile are stamped with ``seconds`` in turn, cycling (``None``: the clock)."""
    if seconds is None:
        yield
        return
    turn = itertools.cycle(seconds)
    with (
        mock.patch(_STAMPERS[0], side_effect=lambda: _stamp(next(turn))),
        mock.patch(_STAMPERS[1], side_effect=lambda: _stamp(next(turn))),
    ):
        yield


# -- the definition: a replay of /admin/audit --------------------------------------


def expected_at(
    history: list[tuple[int, str]], after: dict[tuple[int, str], int], name: str, point: int | str
) -> dict[str, Any] | None:
    """The answer for ``point`` (a sequence, or a time): among the account's records
    (``history``: sequence, created_at) at or before it, the one with the largest sequence."""
    if isinstance(point, int):
        found = [(sequence, at) for sequence, at in history if sequence <= point]
    else:
        found = [(sequence, at) for sequence, at in history if at <= point]
    if not found:
        return None
    sequence, created_at = max(found)
    as_of = {"sequence": sequence, "created_at": created_at}
    return {"username": name, "balance": after[(sequence, name)], "as_of": as_of}


def near(stamp: str, microseconds: int) -> str:
    moment = datetime.fromisoformat(stamp.removesuffix("Z")) + timedelta(microseconds=microseconds)
    return moment.isoformat(timespec="microseconds") + "Z"


def candidate_points(history: list[tuple[int, str]], last_sequence: int) -> list[int | str]:
    """Sequences and times on, between, before and after the account's records."""
    points: list[int | str] = [0, 1, last_sequence, last_sequence + 7, "1970-01-01T00:00:00.000000Z"]
    points.append("2999-12-31T23:59:59.999999Z")
    for sequence, created_at in history:
        points += [
            sequence - 1,
            sequence,
            sequence + 1,
            created_at,
            near(created_at, -1),
            near(created_at, 1),
        ]
    return points


# -- random ledgers over HTTP --------------------------------------------------------

amounts = st.integers(1, 1_500)  # a withdrawal, transfer or hold past the balance fails
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2), amounts),
        st.tuples(st.just("withdraw"), st.integers(0, 2), amounts),
        st.tuples(st.just("transfer"), st.integers(0, 2), amounts, st.integers(0, 3)),  # 3: nobody
        st.tuples(
            st.just("batch"),
            st.integers(0, 2),
            st.lists(
                st.tuples(st.sampled_from(("add", "withdraw", "transfer")), amounts), min_size=1, max_size=4
            ),
            st.booleans(),
        ),
        st.tuples(st.just("hold"), st.integers(0, 2), amounts, st.integers(0, 2)),
        st.tuples(st.just("capture"), st.integers(0, 5), st.none() | amounts),
        st.tuples(st.just("void"), st.integers(0, 5)),
    ),
    min_size=5,
    max_size=25,
)
#: The clock's seconds, one per sealing, stepping back now and then (``None``: the real clock).
clocks = st.none() | st.lists(st.integers(0, 40), min_size=3, max_size=30)


class Ledger:
    """One example's three accounts, driven over HTTP."""

    def __init__(self, client: FlaskClient) -> None:
        prefix = f"t{next(_prefixes)}"
        self.client = client
        self.names = [f"{prefix}a", f"{prefix}b", f"{prefix}c"]
        self.holds: list[tuple[str, str]] = []  # (hold id, payer)
        for name in self.names:
            answer = client.post(
                "/admin/accounts", json={"username": name, "balance": 1_000, "token": name}, headers=ADMIN
            )
            assert answer.status_code == 201, answer.json

    def post(self, name: str, path: str, **options: Any) -> Any:
        answer = self.client.post(path, headers={"Authorization": name}, **options)
        assert answer.status_code < 500, answer.json
        return answer.json

    def run(self, step: tuple[Any, ...]) -> None:
        kind, who = step[0], step[1]
        if kind in ("capture", "void"):
            if not self.holds:
                return
            hold_id, payer = self.holds[who % len(self.holds)]
            payee_or_payer = payer if kind == "void" else self.names[(self.names.index(payer) + 1) % 3]
            query = "" if kind == "void" or step[2] is None else f"&amount={step[2]}"
            self.post(payee_or_payer, f"/account/holds/{hold_id}/{kind}?username={payee_or_payer}{query}")
            return
        name = self.names[who]
        other = self.names[(who + 1) % 3]
        if kind in ("add", "withdraw"):
            self.post(name, f"/account/coins/{kind}?username={name}&amount={step[2]}")
        elif kind == "transfer":
            to = "nobody" if step[3] == 3 else self.names[step[3]]
            self.post(name, f"/account/coins/transfer?username={name}&to={to}&amount={step[2]}")
        elif kind == "batch":
            operations = [
                {"type": item, "amount": amount, **({"to": other} if item == "transfer" else {})}
                for item, amount in step[2]
            ]
            self.post(
                name,
                f"/account/coins/batch?username={name}",
                json={"atomic": step[3], "operations": operations},
            )
        else:  # a hold, for the next account
            answer = self.post(name, f"/account/holds?username={name}&to={other}&amount={step[2]}")
            if answer is not None and "hold" in answer:
                self.holds.append((answer["hold"]["id"], name))

    def history(self, name: str) -> list[tuple[int, str]]:
        """The account's records (sequence, created_at), oldest first."""
        found: list[tuple[int, str]] = []
        cursor: str | None = None
        while True:
            query = f"/account/transactions?username={name}&limit=500" + (
                "" if cursor is None else f"&cursor={cursor}"
            )
            page = self.client.get(query, headers={"Authorization": name}).json
            found += [(record["sequence"], record["created_at"]) for record in page["transactions"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return sorted(found)

    def ask(self, name: str, point: int | str) -> Any:
        key = "sequence" if isinstance(point, int) else "at"
        answer = self.client.get(
            "/account/coins", query_string={"username": name, key: point}, headers={"Authorization": name}
        )
        assert "ETag" not in answer.headers
        if answer.status_code == 404:
            assert answer.json["error"] == "account_not_found"
            return None
        assert answer.status_code == 200, answer.json
        return answer.json


@SETTINGS
@given(plan=steps, seconds=clocks, data=st.data())
def test_balances_at_points_are_the_replays(
    client: FlaskClient, plan: list[tuple[Any, ...]], seconds: list[int] | None, data: st.DataObject
) -> None:
    ledger = Ledger(client)
    with stamped_by(seconds):
        for step in plan:
            ledger.run(step)
    records = audit(client)
    after = replayed(records)
    for name in ledger.names:
        history = ledger.history(name)
        points = data.draw(st.lists(st.sampled_from(candidate_points(history, len(records))), max_size=30))
        for point in [0, history[-1][1], *points]:
            assert ledger.ask(name, point) == expected_at(history, after, name, point), (name, point)


def test_a_record_stamped_out_of_order_counts_by_its_own_time(client: FlaskClient) -> None:
    """Stamps 10, 20, then 15 (late), then 25: at 16 the last of aaron's records at or
    before it is the late one, after a record stamped later."""
    with stamped_by([10, 20, 15, 25]):
        sequences = [
            client.post(f"/account/coins/add?username=aaron&amount={amount}", headers=AARON).json[
                "transaction"
            ]["sequence"]
            for amount in (1, 2, 4, 8)
        ]
    opened = client.get("/account/coins?username=aaron&sequence=1", headers=AARON).json["balance"]

    def at(second: int, micro: str = "000000") -> Any:
        return client.get(
            f"/account/coins?username=aaron&at=2030-01-01T00:00:{second:02d}.{micro}Z", headers=AARON
        ).json

    assert at(16) == {
        "username": "aaron",
        "balance": opened + 7,
        "as_of": {"sequence": sequences[2], "created_at": _stamp(15)},
    }
    assert at(15)["as_of"]["sequence"] == sequences[2]
    assert at(14, "999999")["as_of"]["sequence"] == sequences[0]
    assert at(20)["as_of"]["sequence"] == sequences[2]  # 15 is at or before 20, and comes after it
    assert at(25)["balance"] == opened + 15
    assert client.get(
        "/account/coins?username=aaron&at=2030-01-01T01:00:15%2B01:00", headers=AARON
    ).json == at(15)


# -- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "at=2030-01-01T00:00:00Z&sequence=3",
        "at=yesterday",
        "at=2030-01-01",
        "at=2030-01-01T00:00:00",  # no offset
        "at=2030-13-01T00:00:00Z",
        "at=",
        "sequence=-1",
        "sequence=1.5",
        "sequence=x",
        "sequence=",
        f"sequence={2**63}",
    ],
)
def test_both_points_or_a_malformed_one_is_invalid_parameter(client: FlaskClient, query: str) -> None:
    answer = client.get(f"/account/coins?username=aaron&{query}", headers=AARON)
    assert answer.status_code == 400, answer.json
    assert answer.json["error"] == "invalid_parameter"
    named = query.split("=")[0] if "&" not in query else "sequence"
    assert named in answer.json["message"]


def test_a_point_before_the_account_existed_is_account_not_found(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=aaron&amount=5", headers=AARON)
    created = client.post("/admin/accounts", json={"username": "late", "token": "late"}, headers=ADMIN).json
    assert created["balance"] == 0
    first = client.get("/account/transactions?username=late", headers={"Authorization": "late"}).json
    (opening,) = first["transactions"]
    for query in (f"sequence={opening['sequence'] - 1}", "sequence=0", "at=1970-01-01T00:00:00Z"):
        answer = client.get(f"/account/coins?username=late&{query}", headers={"Authorization": "late"})
        assert answer.status_code == 404, (query, answer.json)
        assert answer.json["error"] == "account_not_found"
    answer = client.get(
        f"/account/coins?username=late&sequence={opening['sequence']}", headers={"Authorization": "late"}
    )
    assert answer.json == {
        "username": "late",
        "balance": 0,
        "as_of": {"sequence": opening["sequence"], "created_at": opening["created_at"]},
    }


def test_the_plain_balance_keeps_its_etag_and_ignores_unknown_parameters(client: FlaskClient) -> None:
    answer = client.get("/account/coins?username=aaron&colour=blue", headers=AARON)
    assert answer.status_code == 200
    assert answer.headers["ETag"] == f'"{answer.json["version"]}"'
    at = client.get("/account/coins?username=aaron&sequence=999999&colour=blue", headers=AARON)
    assert at.status_code == 200
    assert "ETag" not in at.headers
    assert "version" not in at.json
    assert at.json["balance"] == answer.json["balance"]


def test_a_store_refuses_both_points_or_neither(store: Any) -> None:
    for points in ({}, {"sequence": 1, "at": _stamp(0)}, {"sequence": -1}):
        with pytest.raises(InvalidInput) as refused:
            store.balance_at("nobody", **points)
        assert refused.value.code == "invalid_parameter"
    with pytest.raises(AccountNotFound):
        store.balance_at("nobody", sequence=10)


# -- the embedded store: restarts, a lost index, records without balances --------------


def _deadline() -> Deadline:
    return Deadline.after_ms(10_000)


store_steps = st.lists(
    st.tuples(
        st.sampled_from((OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER)),
        st.integers(0, 2),
        st.integers(1, 1_500),
        st.booleans(),  # in a batch of two (the same operation twice)
    ),
    min_size=5,
    max_size=40,
)
NAMES = ("alice", "bob", "carol")


def fill(store: MockDB, plan: list[tuple[OperationType, int, int, bool]]) -> None:
    if store.is_empty():
        for name in NAMES:
            store.create_account(name, token_digest(name), 1_000, deadline=_deadline())
    for kind, who, amount, twice in plan:
        name, other = NAMES[who], NAMES[(who + 1) % 3]
        item = BatchItem(kind, amount, other if kind is OperationType.TRANSFER else None)
        try:
            if twice:
                store.batch(name, [item, item], atomic=False, deadline=_deadline())
            elif kind is OperationType.DEPOSIT:
                store.deposit(name, amount, deadline=_deadline())
            elif kind is OperationType.WITHDRAWAL:
                store.withdraw(name, amount, deadline=_deadline())
            else:
                store.transfer(name, other, amount, deadline=_deadline())
        except LedgerError:
            pass  # refused: audited as FAILED


def _as_json(record: Transaction) -> dict[str, Any]:
    return {"sequence": record.sequence, "type": record.type, "from": record.source, "to": record.target,
            "amount": record.amount, "status": record.status}  # fmt: skip


def assert_points_hold(store: MockDB) -> None:
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.audit_page(limit=500, cursor=cursor)
        records += page.transactions
        if (cursor := page.next_cursor) is None:
            break
    after = replayed([_as_json(record) for record in records])
    for name in NAMES:
        history = sorted(
            (record.sequence, record.created_at)
            for record in store.history(name, limit=500, cursor=None).transactions
        )
        for point in candidate_points(history, len(records)):
            expected = expected_at(history, after, name, point)
            asked = {"sequence": point} if isinstance(point, int) else {"at": point}
            try:
                found: BalanceAt | None = store.balance_at(name, **asked)  # type: ignore[arg-type]
            except AccountNotFound:
                found = None
            shown = None if found is None else {
                "username": found.username, "balance": found.balance,
                "as_of": {"sequence": found.sequence, "created_at": found.created_at},
            }  # fmt: skip
            assert shown == expected, (name, point)


@settings(SETTINGS, max_examples=10)
@given(plan=store_steps, more=store_steps, seconds=clocks)
def test_points_hold_across_restarts_and_a_lost_index(
    plan: list[tuple[OperationType, int, int, bool]],
    more: list[tuple[OperationType, int, int, bool]],
    seconds: list[int] | None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="goledger-balance-at-") as name:
        directory = Path(name)
        store = MockDB.open(directory, record_cache=8)
        try:
            with stamped_by(seconds):
                fill(store, plan)
            assert_points_hold(store)
        finally:
            store.close()
        for remove_the_index in (False, True):  # reopened: the index as it was, then none
            if remove_the_index:
                (directory / INDEX_FILE).unlink()
            store = MockDB.open(directory, record_cache=8)
            try:
                with stamped_by(seconds):
                    fill(store, more)  # the replay continues from the balances it kept
                assert_points_hold(store)
            finally:
                store.close()


def test_records_without_balances_get_theirs_from_the_index() -> None:
    """Records written before records carried balances (``None``) are answered all the same."""
    store = MockDB()
    try:
        with mock.patch("app.ledger.memory.trail.settle_balances"):
            fill(store, [(OperationType.TRANSFER, 0, 300, False), (OperationType.DEPOSIT, 1, 5, True)])
        assert store.audit_page(limit=1, cursor=None).transactions[0].to_balance_after is None
        assert store.balance_at("bob", sequence=10**6).balance == 1_310
        assert store.balance_at("alice", sequence=10**6).balance == 700
        assert_points_hold(store)
    finally:
        store.close()


def test_a_record_whose_balance_disagrees_with_the_replay_breaks_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(index, "CATCH_UP_INTERVAL_S", 3_600.0)  # only the query indexes
    store = MockDB()
    try:
        fill(store, [(OperationType.DEPOSIT, 0, 5, False)])
        with driver_for(store) as driver:
            driver.rehash(store._trail.sequence, to_balance_after=999)  # MockDB._trail: its AuditTrail
        with pytest.raises(StoreInvariantBroken, match="999"):
            store.balance_at("alice", sequence=10)
    finally:
        store.close()
