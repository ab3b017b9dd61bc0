"""What only the PostgreSQL store's tags and filters have: the columns and indexes of
migration 0004 (on a ledger written before it), tags written and read back through
every path (records, holds and what settles them, batch items, failed records,
idempotent replays), verification of tagged records, and every combination of
filters held to ``RecordFilter.matches`` over all records, paged to the end, on a
ledger whose records are stamped out of order (``created_at`` going back now and then,
as when a record stamped earlier takes the chain head after one stamped later).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from unittest import mock

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from app.ledger.errors import HoldNotPending, InsufficientFunds, InvalidInput, LedgerError
from app.ledger.filters import NO_FILTER, RecordFilter
from app.ledger.model import BatchItem, Deadline, HoldStatus, OperationType, Tag, Transaction
from app.ledger.postgres import PostgresStore
from app.ledger.postgres.schema import migrate
from app.ledger.records import metadata_text, record_tag
from tests.clocks import FakeClock
from tests.stores import TEST_POOL_SIZE, empty_postgres, ledger_before_tags, open_account, scratch_database

#: Pages a test may read before it must have reached the end (far more than any needs).
MAX_PAGES = 1_000


def patient() -> Deadline:
    return Deadline.after_ms(10_000)


def tag(reference: str | None = None, **metadata: object) -> Tag:
    return Tag(reference, metadata_text(metadata))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(postgres_url: str, clock: FakeClock) -> Iterator[PostgresStore]:
    """A store on the emptied session database, on a fake clock, with no background sweeper."""
    built = PostgresStore(
        empty_postgres(postgres_url), max_connections=TEST_POOL_SIZE, clock=clock, sweep_interval_s=None
    )
    yield built
    built.close()


def everything(read: Callable[[str | None], tuple[tuple[Transaction, ...], str | None]]) -> list[Transaction]:
    """Every record of a paged listing, read page after page to the end."""
    found: list[Transaction] = []
    cursor = None
    for _ in range(MAX_PAGES):
        page, cursor = read(cursor)
        found.extend(page)
        if cursor is None:
            return found
    raise AssertionError(f"still more pages after {MAX_PAGES}")


def history(
    store: PostgresStore, username: str, where: RecordFilter = NO_FILTER, limit: int = 500
) -> list[Transaction]:
    def read(cursor: str | None) -> tuple[tuple[Transaction, ...], str | None]:
        page = store.history(username, limit=limit, cursor=cursor, where=where)
        return page.transactions, page.next_cursor

    return everything(read)


def transactions(
    store: PostgresStore, where: RecordFilter = NO_FILTER, limit: int = 500
) -> list[Transaction]:
    def read(cursor: str | None) -> tuple[tuple[Transaction, ...], str | None]:
        page = store.transactions(limit=limit, cursor=cursor, where=where)
        return page.transactions, page.next_cursor

    return everything(read)


def execute(store: PostgresStore, statement: str, parameters: tuple[object, ...]) -> None:
    """Change the database behind the store's back, as an attacker with access to it would."""
    with psycopg.connect(store.url, autocommit=True) as connection:
        connection.execute(statement.encode(), parameters)


def stamp(second: float) -> str:
    """A record's ``created_at`` ``second`` seconds after the fake clock's start."""
    return datetime.fromtimestamp(FakeClock()() + second, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def stamped_by(seconds: list[float]) -> Iterator[None]:
    """Records appended meanwhile are stamped ``stamp(second)`` for each second in turn."""
    turn = iter(seconds)
    with mock.patch("app.ledger.postgres.unit.utc_now_iso", side_effect=lambda: stamp(next(turn))):
        yield


def late_records(store: PostgresStore) -> list[tuple[int, str]]:
    """The late records' sequences and the newest ``created_at`` before each."""
    with psycopg.connect(store.url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT sequence, latest_at FROM audit WHERE latest_at IS NOT NULL ORDER BY sequence"
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


# -- tags written and read back ---------------------------------------------------------------


def test_every_operation_keeps_its_tag_and_a_hold_gives_its_own_to_what_settles_it(
    store: PostgresStore, clock: FakeClock
) -> None:
    open_account(store, "alice", 100)
    open_account(store, "bob", 0)
    deposit = tag("dep-1", channel="web", round=7)
    assert store.deposit("alice", 5, deadline=patient(), tag=deposit).transaction.metadata == (
        '{"channel":"web","round":7}'
    )
    store.transfer("alice", "bob", 10, deadline=patient(), tag=tag("order-1"))
    refused = tag(None, why="too much")
    with pytest.raises(InsufficientFunds) as raised:
        store.withdraw("alice", 10_000, deadline=patient(), tag=refused)
    assert raised.value.transaction is not None
    assert raised.value.transaction.metadata == refused.metadata
    items = [
        BatchItem(OperationType.TRANSFER, 1, "bob", tag("item-0")),
        BatchItem(OperationType.WITHDRAWAL, 10_000, None, tag("item-1", n=1)),
        BatchItem(OperationType.DEPOSIT, 2),
    ]
    batch = store.batch("alice", items, atomic=False, deadline=patient())
    captured, voided, expiring = tag("h-1", kind="capture"), tag("h-2"), tag(None, kind="expire")
    first = store.create_hold("alice", "bob", 3, timeout_s=60, deadline=patient(), tag=captured).hold
    second = store.create_hold("alice", "bob", 4, timeout_s=60, deadline=patient(), tag=voided).hold
    third = store.create_hold("alice", "bob", 5, timeout_s=30, deadline=patient(), tag=expiring).hold
    assert store.get_hold("alice", first.id, deadline=patient()).tag == captured
    store.capture_hold("bob", first.id, 2, deadline=patient())
    store.void_hold("alice", second.id, deadline=patient())
    with pytest.raises(HoldNotPending) as twice:
        store.void_hold("alice", second.id, deadline=patient())
    clock.advance(31)
    assert store.sweep_expired(deadline=patient()) == 1
    assert store.get_hold("bob", third.id, deadline=patient()).status is HoldStatus.EXPIRED

    tags = [(record.type, record.status, record_tag(record)) for record in transactions(store)]
    assert tags == [
        ("open", "SUCCESS", None),
        ("open", "SUCCESS", None),
        ("deposit", "SUCCESS", deposit),
        ("transfer", "SUCCESS", tag("order-1")),
        ("withdrawal", "FAILED", refused),
        ("transfer", "SUCCESS", tag("item-0")),
        ("withdrawal", "FAILED", tag("item-1", n=1)),
        ("deposit", "SUCCESS", None),
        ("hold", "SUCCESS", captured),
        ("hold", "SUCCESS", voided),
        ("hold", "SUCCESS", expiring),
        ("capture", "SUCCESS", captured),
        ("void", "SUCCESS", voided),
        ("void", "FAILED", voided),
        ("expire", "SUCCESS", expiring),
    ]
    assert [record_tag(item.transaction) for item in batch.items] == [item.tag for item in items]
    assert twice.value.transaction is not None
    assert twice.value.transaction.reference == "h-2"
    assert history(store, "bob") == [record for record in reversed(transactions(store)) if "bob" in (
        record.source, record.target) and record.status == "SUCCESS"]  # fmt: skip
    assert store.verify().ok


def test_a_replayed_outcome_carries_its_records_tags(store: PostgresStore) -> None:
    open_account(store, "alice", 100)
    open_account(store, "bob", 0)

    def transfer() -> object:
        return store.transfer("alice", "bob", 1, deadline=patient(), tag=tag("once", n=1))

    first = store.idempotent("alice", "key-1", "fingerprint", patient(), transfer)  # type: ignore[arg-type]
    again = store.idempotent("alice", "key-1", "fingerprint", patient(), transfer)  # type: ignore[arg-type]
    assert again.replayed
    assert again.result == first.result
    assert record_tag(again.result.transaction) == tag("once", n=1)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("given", "code"),
    [
        (Tag("a\x00b", None), "invalid_reference"),
        (Tag(None, metadata_text({"key": "a\x00b"})), "invalid_metadata"),
        (Tag(None, metadata_text({"k\x00": "v"})), "invalid_metadata"),
    ],
)
def test_a_nul_character_is_refused_as_invalid_and_nothing_is_written(
    store: PostgresStore, given: Tag, code: str
) -> None:
    open_account(store, "alice", 100)
    open_account(store, "bob", 0)
    attempts: list[Callable[[], object]] = [
        lambda: store.deposit("alice", 1, deadline=patient(), tag=given),
        lambda: store.batch(
            "alice", [BatchItem(OperationType.DEPOSIT, 1, None, given)], atomic=True, deadline=patient()
        ),
        lambda: store.create_hold("alice", "bob", 1, timeout_s=60, deadline=patient(), tag=given),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidInput) as raised:
            attempt()
        assert raised.value.code == code
    assert len(transactions(store)) == 2
    assert store.account("alice", deadline=patient()).balance == 100


def test_the_literal_text_of_an_escape_is_not_a_nul(store: PostgresStore) -> None:
    open_account(store, "alice", 0)
    literal = tag(None, path="C:\\u0000")
    assert store.deposit("alice", 1, deadline=patient(), tag=literal).transaction.metadata == literal.metadata
    assert record_tag(transactions(store)[-1]) == literal


# -- verification --------------------------------------------------------------------------


def test_verify_passes_on_tagged_records_whose_keys_jsonb_reorders(store: PostgresStore) -> None:
    open_account(store, "alice", 0)
    # jsonb keeps shorter keys first ("b" before "aa"); the hash covers them sorted.
    store.deposit("alice", 1, deadline=patient(), tag=tag("r", b="1", aa=2))
    [record] = history(store, "alice", RecordFilter(reference="r"))
    assert record.metadata == '{"aa":2,"b":"1"}'
    assert store.verify().ok


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("reference", "forged"),
        ("reference", None),
        ("metadata", Jsonb({"n": 8})),
        ("metadata", Jsonb({"n": "7"})),
        ("metadata", None),
    ],
)
def test_verify_reports_a_tampered_reference_or_metadata(
    store: PostgresStore, column: str, value: object
) -> None:
    open_account(store, "alice", 0)
    sequence = store.deposit("alice", 1, deadline=patient(), tag=tag("real", n=7)).transaction.sequence
    store.deposit("alice", 1, deadline=patient())
    assert store.verify().ok
    execute(store, f"UPDATE audit SET {column} = %s WHERE sequence = %s", (value, sequence))
    verification = store.verify()
    assert not verification.ok
    assert any(str(sequence) in problem for problem in verification.problems), verification.problems


# -- the migration ----------------------------------------------------------------------------


def test_the_tags_migration_applies_to_a_ledger_written_before_it(postgres_url: str) -> None:
    with scratch_database(postgres_url) as fresh:
        migrate(fresh, up_to=3)
        ledger_before_tags(fresh)
        assert migrate(fresh) == ["0004_tags_and_filters.sql", "0005_balances_and_reversals.sql"]
        store = PostgresStore(fresh, max_connections=TEST_POOL_SIZE, sweep_interval_s=None)
        try:
            assert store.verify().ok
            old = transactions(store)
            assert [record_tag(record) for record in old] == [None, None, None]
            new = store.transfer("bob", "alice", 5, deadline=patient(), tag=tag("after", n=1)).transaction
            assert store.verify().ok
            # The party rows written before were backfilled: old records pass the new filters.
            by_bob = RecordFilter(
                counterparty="bob", types=frozenset({"transfer"}), created_before=new.created_at
            )
            assert history(store, "alice", by_bob) == [old[2]]
            assert history(store, "alice", RecordFilter(counterparty="bob")) == [new, old[2]]
            assert transactions(store, RecordFilter(metadata=(("n", "1"),))) == [new]
        finally:
            store.close()


def test_the_migration_flags_records_stamped_out_of_order_and_time_filters_find_them(
    postgres_url: str,
) -> None:
    stamps = [stamp(10), stamp(5), stamp(10)]  # the second older than the first: late
    with scratch_database(postgres_url) as fresh:
        migrate(fresh, up_to=3)
        ledger_before_tags(fresh, stamps)
        migrate(fresh)
        store = PostgresStore(fresh, max_connections=TEST_POOL_SIZE, sweep_interval_s=None)
        try:
            assert late_records(store) == [(2, stamp(10))]
            # Written after it: the running maximum (10 s) came through the migration.
            with stamped_by([7, 12, 11]):
                for _ in range(3):
                    store.deposit("bob", 1, deadline=patient())
            assert late_records(store) == [(2, stamp(10)), (4, stamp(10)), (6, stamp(12))]
            whole = transactions(store)
            assert [record.created_at for record in whole] == [*stamps, stamp(7), stamp(12), stamp(11)]
            for second in range(4, 14):
                for where in (
                    RecordFilter(created_after=stamp(second)),
                    RecordFilter(created_before=stamp(second)),
                ):
                    assert transactions(store, where, limit=2) == [r for r in whole if where.matches(r)]
                    for name in ("alice", "bob"):
                        expected = [r for r in history(store, name) if where.matches(r, name)]
                        assert history(store, name, where, limit=2) == expected
            assert store.verify().ok
        finally:
            store.close()


def test_a_record_stamped_as_the_newest_before_it_is_not_late(store: PostgresStore) -> None:
    open_account(store, "alice", 0)
    with stamped_by([20, 20, 19, 20, 21]):
        for _ in range(5):
            store.deposit("alice", 1, deadline=patient())
    # Sequence 1 is the opening, stamped now (far before 2030): every deposit is later.
    assert late_records(store) == [(4, stamp(20))]
    whole = transactions(store)
    for where in (RecordFilter(created_after=stamp(19)), RecordFilter(created_before=stamp(20))):
        assert transactions(store, where) == [r for r in whole if where.matches(r)]
        assert history(store, "alice", where) == [r for r in reversed(whole) if where.matches(r, "alice")]


# -- every filter against its definition --------------------------------------------------------

ACCOUNTS = ("alice", "bob", "carol", "dave")
REFERENCES = ("order-1", "order-2", "round-9")
METADATA = ({"game": "poker"}, {"game": "chess", "round": 7}, {"round": "7"}, {"round": "007"}, {"seat": -3})


def _tag_for(step: int) -> Tag | None:
    """A varied, repeatable tag (or none) for the ``step``-th operation of the filtered ledger."""
    reference = REFERENCES[step % 3] if step % 4 else None
    metadata = METADATA[step % 5] if step % 3 else {}
    if reference is None and not metadata:
        return None
    return Tag(reference, metadata_text(metadata))


def _second_of_step(step: int) -> int:
    """When the filtered ledger's ``step``-th operation is stamped: 3 s a step, now and then
    back before the newest stamp so far (late records), or back to exactly it (a tie)."""
    return 3 * step - (8 if step % 7 == 3 else 0) - (3 if step % 11 == 5 else 0)


@pytest.fixture(scope="module")
def filtered_ledger(postgres_url: str) -> Iterator[PostgresStore]:
    """A ledger of every record type and status, some tagged, some stamped out of order, on a
    database of its own (the hypothesis tests below read it many times and never change it)."""
    clock = FakeClock()
    with scratch_database(postgres_url) as fresh:
        store = PostgresStore(fresh, max_connections=TEST_POOL_SIZE, clock=clock, sweep_interval_s=None)
        now = [0]
        with mock.patch("app.ledger.postgres.unit.utc_now_iso", side_effect=lambda: stamp(now[0])):
            _fill(store, clock, now)
        try:
            yield store
        finally:
            store.close()


def _fill(store: PostgresStore, clock: FakeClock, now: list[int]) -> None:
    """Every kind of record, each step stamped ``_second_of_step`` (through ``now``)."""
    for name in ACCOUNTS:
        open_account(store, name, 50)
    refusals: list[LedgerError] = []
    for step in range(60):
        now[0] = _second_of_step(step)
        caller, other = ACCOUNTS[step % 4], ACCOUNTS[(step * 7 + 1) % 4]
        amount = 1 + (step * 13) % 40
        kind = step % 6
        try:
            if kind == 0:
                store.deposit(caller, amount, deadline=patient(), tag=_tag_for(step))
            elif kind == 1:
                store.withdraw(caller, amount, deadline=patient(), tag=_tag_for(step))
            elif kind in (2, 3):
                store.transfer(caller, other, amount, deadline=patient(), tag=_tag_for(step))
            elif kind == 4:
                hold = store.create_hold(
                    caller, other, amount, timeout_s=10, deadline=patient(), tag=_tag_for(step)
                )
                if (step // 6) % 3 == 0:
                    store.capture_hold(other, hold.hold.id, None, deadline=patient())
                elif (step // 6) % 3 == 1:
                    store.void_hold(caller, hold.hold.id, deadline=patient())
            else:
                items = [
                    BatchItem(OperationType.TRANSFER, amount, other, _tag_for(step + 1)),
                    BatchItem(OperationType.WITHDRAWAL, amount * 3, None, _tag_for(step + 2)),
                ]
                store.batch(caller, items, atomic=False, deadline=patient())
        except LedgerError as error:
            refusals.append(error)
        clock.advance(3)
    store.sweep_expired(deadline=patient())
    # Every refusal left its FAILED record.
    assert all(refusal.transaction is not None for refusal in refusals), refusals


def _filters(records: list[Transaction]) -> st.SearchStrategy[RecordFilter]:
    times = sorted({record.created_at for record in records})
    amounts = sorted({record.amount for record in records})
    types = sorted({record.type for record in records} | {"reversal"})
    pairs = st.tuples(st.sampled_from(["game", "round", "seat", "none"]),
                      st.sampled_from(["poker", "chess", "7", "007", "-3", "x"]))  # fmt: skip
    return st.builds(
        RecordFilter,
        types=st.none() | st.frozensets(st.sampled_from(types), max_size=3),
        status=st.none() | st.sampled_from(["SUCCESS", "FAILED"]),
        counterparty=st.none() | st.sampled_from([*ACCOUNTS, "nobody"]),
        created_after=st.none() | st.sampled_from(times),
        created_before=st.none() | st.sampled_from(times),
        min_amount=st.none() | st.sampled_from(amounts),
        max_amount=st.none() | st.sampled_from(amounts),
        reference=st.none() | st.sampled_from([*REFERENCES, "unknown"]),
        metadata=st.lists(pairs, max_size=2, unique_by=lambda pair: pair[0]).map(tuple),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_filter_of_a_history_means_what_record_filter_matches_says(
    filtered_ledger: PostgresStore, data: st.DataObject
) -> None:
    account = data.draw(st.sampled_from(ACCOUNTS))
    whole = history(filtered_ledger, account)
    where = data.draw(_filters(whole))
    limit = data.draw(st.integers(1, 7))
    assert history(filtered_ledger, account, where, limit) == [r for r in whole if where.matches(r, account)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_filter_of_the_admin_listing_means_what_record_filter_matches_says(
    filtered_ledger: PostgresStore, data: st.DataObject
) -> None:
    whole = transactions(filtered_ledger)
    where = data.draw(_filters(whole))
    limit = data.draw(st.integers(1, 7))
    assert transactions(filtered_ledger, where, limit) == [r for r in whole if where.matches(r)]


def test_the_filtered_ledger_has_every_kind_of_record(filtered_ledger: PostgresStore) -> None:
    """The hypothesis tests above mean something only if their ledger has all of these."""
    whole = transactions(filtered_ledger)
    assert {r.type for r in whole} >= {
        "open",
        "deposit",
        "withdrawal",
        "transfer",
        "hold",
        "capture",
        "void",
        "expire",
    }
    assert {r.status for r in whole} == {"SUCCESS", "FAILED"}
    assert {r.reference for r in whole} == {None, *REFERENCES}
    assert {r.metadata for r in whole} == {None, *(metadata_text(m) for m in METADATA)}
    stamps = [r.created_at for r in whole]
    newest_before = [max(stamps[:position], default="") for position in range(len(stamps))]
    assert any(s < newest for s, newest in zip(stamps, newest_before, strict=True))  # late
    assert any(s == newest for s, newest in zip(stamps, newest_before, strict=True))  # a tie


def test_pages_neither_repeat_nor_skip_a_record_while_new_ones_arrive(store: PostgresStore) -> None:
    open_account(store, "alice", 1_000)
    open_account(store, "bob", 0)
    for _ in range(5):
        store.transfer("alice", "bob", 1, deadline=patient(), tag=tag("early"))
    where = RecordFilter(reference="early")
    newest_first = store.history("alice", limit=2, cursor=None, where=where)
    oldest_first = store.transactions(limit=2, cursor=None, where=where)
    shown_history, shown_all = list(newest_first.transactions), list(oldest_first.transactions)
    for _ in range(3):
        store.transfer("alice", "bob", 1, deadline=patient(), tag=tag("early"))
        if newest_first.next_cursor is not None:
            newest_first = store.history("alice", limit=2, cursor=newest_first.next_cursor, where=where)
            shown_history.extend(newest_first.transactions)
        if oldest_first.next_cursor is not None:
            oldest_first = store.transactions(limit=2, cursor=oldest_first.next_cursor, where=where)
            shown_all.extend(oldest_first.transactions)
    whole = transactions(store, where)
    assert len(whole) == 8
    # Newest first: the records there were at the first page, each once, in order.
    assert shown_history == list(reversed(whole[:5]))
    # Oldest first: every record, those that arrived while paging included, each once, in order.
    assert shown_all == whole[: len(shown_all)]
    assert len(shown_all) >= 6
    assert newest_first.next_cursor is None


def test_the_balances_migration_replays_each_accounts_balance_after_its_older_records(
    postgres_url: str,
) -> None:
    """0005 on a ledger written before it: every party row gets the replayed balance (what a
    balance at a past point reads); the old records keep no balance of their own (nor their
    hash), and the records after it carry theirs."""
    with scratch_database(postgres_url) as fresh:
        migrate(fresh, up_to=3)
        ledger_before_tags(fresh)  # alice opens with 100, bob with 0, alice pays bob 30
        migrate(fresh)
        with psycopg.connect(fresh) as connection:
            rows = connection.execute(
                "SELECT username, sequence, balance_after FROM audit_parties ORDER BY username, sequence"
            ).fetchall()
        assert rows == [("alice", 1, 100), ("alice", 3, 70), ("bob", 2, 0), ("bob", 3, 30)]
        store = PostgresStore(fresh, max_connections=TEST_POOL_SIZE, sweep_interval_s=None)
        try:
            old = transactions(store)
            assert [(record.from_balance_after, record.to_balance_after) for record in old] == [
                (None, None)
            ] * 3
            record = store.transfer("bob", "alice", 5, deadline=patient()).transaction
            assert (record.from_balance_after, record.to_balance_after) == (25, 75)
            assert store.verify().ok
        finally:
            store.close()
