"""The embedded store's filtered reads (``RecordIndex``) against the filters' definition.

Random ledgers (deposits, withdrawals, transfers and batches, refused ones too, with
random references and metadata, stamped by a clock that now and then steps back) are
read through every kind of filter, paged to the end, and must show exactly
``[r for r in records if where.matches(r, account)]`` in page order: in memory, with a
data directory, after a restart, and after the index file is deleted. An index that
does not belong to its trail is rebuilt; a filtered history is never torn by writers.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth import token_digest
from app.ledger import rules
from app.ledger.errors import InvalidInput, LedgerError
from app.ledger.filters import NO_FILTER, RecordFilter
from app.ledger.memory import MockDB
from app.ledger.memory.index import INDEX_FILE
from app.ledger.model import BatchItem, Deadline, OperationType, Page, Tag, Transaction
from app.ledger.records import metadata_text
from tests.threads import run_together

NAMES = ("alice", "bob", "carol", "dave")
#: A name no account has: transfers to it fail, filters on it match nothing.
STRANGER = "zed"
REFERENCES = ("order-1", "order-2", "round-7")
METADATA = (
    {"game": "poker"},
    {"game": "chess", "table": 3},
    {"table": 3},
    {"table": "3"},  # the same text as the integer 3: both match table=3
    {"channel": "web", "game": "poker"},
)
TYPES = ("open", "deposit", "withdrawal", "transfer")
#: Pages are read to the end: more than this many pages is a cursor that does not advance.
MAX_PAGES = 1_000

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _deadline() -> Deadline:
    return Deadline.after_ms(10_000)


def _stamp(second: int, half: bool = False) -> str:
    return f"2030-01-01T00:00:{second:02d}.{500_000 if half else 0:06d}Z"


tags = st.one_of(
    st.none(),
    st.builds(
        lambda reference, metadata: None if reference is metadata is None else Tag(reference, metadata),
        st.none() | st.sampled_from(REFERENCES),
        st.none() | st.sampled_from(METADATA).map(metadata_text),
    ),
)
items = st.builds(
    lambda kind, amount, target, tag: BatchItem(
        kind, amount, target if kind is OperationType.TRANSFER else None, tag
    ),
    st.sampled_from((OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER)),
    st.integers(1, 2_000),  # a withdrawal or transfer past the balance fails
    st.sampled_from((*NAMES, STRANGER)),
    tags,
)
operations = st.lists(
    st.tuples(st.sampled_from(NAMES), st.lists(items, min_size=1, max_size=4), st.booleans()),
    min_size=20,  # about 50 records: pages, late records and every kind of filter meet
    max_size=40,
)
#: The clock's seconds, one per sealing: ties, and steps back (records stamped out of order).
clock_seconds = st.lists(st.integers(0, 40), min_size=5, max_size=60)
times = st.builds(_stamp, st.integers(0, 41), st.booleans())
#: Each filter field and the values it is drawn from.
FILTER_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "types": st.frozensets(st.sampled_from(TYPES), min_size=1),
    "status": st.sampled_from(("SUCCESS", "FAILED")),
    "counterparty": st.sampled_from((*NAMES, STRANGER)),
    "created_after": times,
    "created_before": times,
    "min_amount": st.integers(0, 2_000),
    "max_amount": st.integers(0, 2_000),
    "reference": st.sampled_from((*REFERENCES, "unknown")),
    "metadata": st.lists(
        st.sampled_from(
            [("game", "poker"), ("game", "chess"), ("table", "3"), ("channel", "web"), ("x", "1")]
        ),
        min_size=1,
        max_size=2,
    ).map(tuple),
}


@st.composite
def filters(draw: st.DrawFn) -> RecordFilter:
    """A filter on a random few of the fields (a few: many at once rarely match anything)."""
    fields = draw(st.lists(st.sampled_from(sorted(FILTER_FIELDS)), min_size=1, max_size=4, unique=True))
    return RecordFilter(**{field: draw(FILTER_FIELDS[field]) for field in fields})  # type: ignore[arg-type]


@contextmanager
def stamped_by(seconds: list[int]) -> Iterator[None]:
    """Records sealed meanwhile are stamped with ``seconds`` in turn (cycling)."""
    turn = iter(seconds * 1_000)
    with mock.patch("app.ledger.memory.trail.utc_now_iso", side_effect=lambda: _stamp(next(turn))):
        yield


def fill(store: MockDB, steps: list[tuple[str, list[BatchItem], bool]]) -> None:
    """Open the accounts, then run each step: one operation alone or a batch."""
    for name in NAMES:
        store.create_account(name, token_digest(name), 1_000, deadline=_deadline())
    for caller, batch, atomic in steps:
        try:
            if len(batch) > 1:
                store.batch(caller, batch, atomic=atomic, deadline=_deadline())
                continue
            item = batch[0]
            if item.kind is OperationType.DEPOSIT:
                store.deposit(caller, item.amount, deadline=_deadline(), tag=item.tag)
            elif item.kind is OperationType.WITHDRAWAL:
                store.withdraw(caller, item.amount, deadline=_deadline(), tag=item.tag)
            else:
                store.transfer(
                    caller, item.target or STRANGER, item.amount, deadline=_deadline(), tag=item.tag
                )
        except LedgerError:
            pass  # refused: audited as FAILED


def read_all(fetch: Callable[[str | None], Page]) -> list[Transaction]:
    """Every record of every page, each page full but the last."""
    found: list[Transaction] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = fetch(cursor)
        found += page.transactions
        cursor = page.next_cursor
        if cursor is None:
            return found
        assert page.transactions, "a page with a next cursor shows records"
    raise AssertionError(f"still paging after {MAX_PAGES} pages")


def assert_filters_hold(store: MockDB, wheres: list[RecordFilter], limit: int) -> None:
    """Each filter's pages, for every account and the admin, are the definition's."""
    records = read_all(lambda cursor: store.audit_page(limit=500, cursor=cursor))
    for where in wheres:
        shown = read_all(lambda cursor: store.transactions(limit=limit, cursor=cursor, where=where))
        assert shown == [record for record in records if where.matches(record)], where
        for name in (*NAMES, STRANGER):
            history = read_all(lambda cursor: store.history(name, limit=500, cursor=cursor))
            shown = read_all(lambda cursor: store.history(name, limit=limit, cursor=cursor, where=where))
            assert shown == [record for record in history if where.matches(record, name)], (name, where)


@contextmanager
def data_directory() -> Iterator[Path]:
    # Not pytest's tmp_path: one fresh directory per hypothesis example.
    directory = tempfile.mkdtemp(prefix="goledger-index-")
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


#: A ledger's steps and clock, filters, and the page size they are read with.
ledgers_and_filters = given(
    steps=operations,
    seconds=clock_seconds,
    wheres=st.lists(filters(), min_size=1, max_size=5),
    limit=st.integers(1, 5),
)


@SETTINGS
@ledgers_and_filters
def test_filtered_pages_are_the_definitions_in_memory(
    steps: list[tuple[str, list[BatchItem], bool]], seconds: list[int], wheres: list[RecordFilter], limit: int
) -> None:
    store = MockDB()
    try:
        with stamped_by(seconds):
            fill(store, steps)
        assert_filters_hold(store, [NO_FILTER, *wheres], limit)
    finally:
        store.close()


@settings(SETTINGS, max_examples=15)
@ledgers_and_filters
def test_filtered_pages_are_the_definitions_with_a_data_directory(
    steps: list[tuple[str, list[BatchItem], bool]], seconds: list[int], wheres: list[RecordFilter], limit: int
) -> None:
    with data_directory() as directory:
        # A small record cache: most records are read back from the journal.
        store = MockDB.open(directory, record_cache=8)
        try:
            with stamped_by(seconds):
                fill(store, steps)
            assert_filters_hold(store, wheres, limit)
        finally:
            store.close()
        for remove_the_index in (False, True):  # reopened: the index file as it was, then none
            if remove_the_index:
                (directory / INDEX_FILE).unlink()
            store = MockDB.open(directory, record_cache=8)
            try:
                assert_filters_hold(store, wheres, limit)
            finally:
                store.close()


# -- an index that does not belong to its trail -------------------------------------


def _ledger(directory: Path, transfers: int, amount: int = 1) -> None:
    """Open ``directory``'s ledger and add ``transfers`` tagged transfers (accounts first, once);
    read it filtered (so the index holds every record), close it."""
    store = MockDB.open(directory)
    try:
        if store.is_empty():
            for name in NAMES:
                store.create_account(name, token_digest(name), 10**6, deadline=_deadline())
        for number in range(transfers):
            store.transfer(
                "alice", "bob", amount, deadline=_deadline(), tag=Tag(REFERENCES[number % 3], None)
            )
        store.transactions(limit=1, cursor=None, where=RecordFilter(status="FAILED"))
    finally:
        store.close()


def _reference_counts(directory: Path) -> list[int]:
    store = MockDB.open(directory)
    try:
        return [
            len(read_all(lambda cursor: store.history("bob", limit=3, cursor=cursor, where=where)))
            for where in (RecordFilter(reference=reference) for reference in REFERENCES)
        ]
    finally:
        store.close()


def test_an_index_ahead_of_its_trail_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shorter, longer = tmp_path / "shorter", tmp_path / "longer"
    _ledger(shorter, 6)
    shutil.copytree(shorter, longer)
    _ledger(longer, 6)
    shutil.copy(longer / INDEX_FILE, shorter / INDEX_FILE)  # it holds 6 records more than the trail
    with caplog.at_level(logging.WARNING, logger="goledger.store"):
        assert _reference_counts(shorter) == [2, 2, 2]
    assert "rebuilding" in caplog.text


def test_an_index_of_another_ledger_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _ledger(ours, 6)
    _ledger(theirs, 6, amount=2)  # as many records, other hashes
    shutil.copy(theirs / INDEX_FILE, ours / INDEX_FILE)
    with caplog.at_level(logging.WARNING, logger="goledger.store"):
        assert _reference_counts(ours) == [2, 2, 2]
    assert "rebuilding" in caplog.text


def test_an_unreadable_index_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _ledger(tmp_path, 6)
    (tmp_path / INDEX_FILE).write_bytes(b"not an index" * 1_000)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / INDEX_FILE}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="goledger.store"):
        assert _reference_counts(tmp_path) == [2, 2, 2]
    assert "rebuilding" in caplog.text


def test_an_index_behind_its_trail_catches_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _ledger(tmp_path, 6)
    kept = (tmp_path / INDEX_FILE).read_bytes()
    _ledger(tmp_path, 3)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / INDEX_FILE}{suffix}").unlink(missing_ok=True)
    (tmp_path / INDEX_FILE).write_bytes(kept)  # as it was 3 records ago
    with caplog.at_level(logging.WARNING, logger="goledger.store"):
        assert _reference_counts(tmp_path) == [3, 3, 3]
    assert "rebuilding" not in caplog.text


# -- cursors and concurrent writers -------------------------------------------------


def test_a_filtered_history_takes_only_the_accounts_own_cursors() -> None:
    store = MockDB()
    try:
        fill(store, [("alice", [BatchItem(OperationType.TRANSFER, 5, "bob")], False)])
        fill_more = store.deposit("carol", 7, deadline=_deadline())
        foreign = rules.encode_cursor("h", fill_more.transaction.sequence)
        with pytest.raises(InvalidInput) as refused:
            store.history("alice", limit=5, cursor=foreign, where=RecordFilter(status="SUCCESS"))
        assert refused.value.code == "invalid_cursor"
    finally:
        store.close()


@pytest.mark.parametrize("with_directory", [False, True], ids=["memory", "data-dir"])
def test_a_filtered_history_neither_repeats_nor_skips_while_writers_add(
    with_directory: bool, tmp_path: Path
) -> None:
    store = MockDB.open(tmp_path) if with_directory else MockDB()
    where = RecordFilter(reference="order-1", status="SUCCESS")
    try:
        for name in NAMES:
            store.create_account(name, token_digest(name), 10**6, deadline=_deadline())
        for number in range(120):
            tag = Tag(REFERENCES[number % 2], None)
            store.transfer("alice", NAMES[1 + number % 3], 1, deadline=_deadline(), tag=tag)
        first_page = store.history("alice", limit=4, cursor=None, where=where)
        assert first_page.next_cursor is not None

        def write() -> None:
            for number in range(150):
                tag = Tag(REFERENCES[number % 2], None)
                store.transfer("alice", "bob", 1, deadline=_deadline(), tag=tag)
                if number % 10 == 0:
                    with pytest.raises(LedgerError):  # a FAILED record of the same reference
                        store.withdraw("alice", 10**9, deadline=_deadline(), tag=tag)

        def page_through() -> list[Transaction]:
            rest = read_all(
                lambda cursor: store.history(
                    "alice", limit=4, cursor=cursor or first_page.next_cursor, where=where
                )
            )
            return [*first_page.transactions, *rest]

        _, _, shown = run_together([write, write, page_through])
        top = first_page.transactions[0].sequence
        history = read_all(lambda cursor: store.history("alice", limit=500, cursor=cursor))
        expected = [record for record in history if record.sequence <= top and where.matches(record, "alice")]
        assert shown == expected  # newest first, nothing repeated, nothing skipped
        assert len(history) == 1 + 120 + 2 * (150 + 15)  # the opening, then every write
    finally:
        store.close()
