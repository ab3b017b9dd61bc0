"""What only the PostgreSQL store's checkpoints and verification have: the migration on a
populated ledger, the checkpoint at ``close``, workers racing to one checkpoint, one MVCC
snapshot that never waits for writers nor makes them wait, one background checkpoint at a
time, and a verification that streams the trail through a server-side cursor under its
own timeout, not the pool's.

The conformance tests of the same features (over HTTP) are in ``test_checkpoints.py``.
Background checkpoints are waited for with the driver's ``settle_checkpoints`` (a join
with a timeout), never with a sleep.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask

from app import create_app
from app.ledger.audit import balances_digest
from app.ledger.errors import OperationTimeout
from app.ledger.model import BatchItem, Checkpoint, Deadline, OperationType
from app.ledger.postgres import PostgresStore, checkpoints, monitor, sql
from app.ledger.postgres.runner import CONNECTION_SAFEGUARDS
from app.ledger.postgres.schema import migrate
from tests.drivers import PostgresDriver, driver_for
from tests.stores import (
    ADMIN_TOKEN,
    TEST_POOL_SIZE,
    app_config,
    empty_postgres,
    ledger_before_tags,
    open_account,
    scratch_database,
)
from tests.threads import JOIN_TIMEOUT_S, run_together

ADMIN = {"Authorization": ADMIN_TOKEN}
#: Larger than any test's trail: no background checkpoint unless a test asks for one.
NEVER = 10**9


def patient() -> Deadline:
    return Deadline.after_ms(10_000)


@pytest.fixture
def stores(postgres_url: str) -> Iterator[Callable[..., PostgresStore]]:
    """Build stores (worker processes, as the database sees them) on the session's database,
    emptied for the test; every one is closed at the end."""
    url = empty_postgres(postgres_url)
    built: list[PostgresStore] = []

    def build(every: int = NEVER, target: str | None = None, **options: Any) -> PostgresStore:
        store = PostgresStore(
            target or url, max_connections=TEST_POOL_SIZE, checkpoint_records=every, **options
        )
        built.append(store)
        return store

    yield build
    for store in built:
        store.close()


def pg_driver(store: PostgresStore) -> PostgresDriver:
    driver = driver_for(store)
    assert isinstance(driver, PostgresDriver)
    return driver


def sequences(store: PostgresStore) -> list[int]:
    return [point.sequence for point in store.checkpoints(limit=500, cursor=None).checkpoints]


def deposits(store: PostgresStore, count: int, username: str = "alice") -> None:
    """``count`` deposits of one coin, one at a time, each background checkpoint settled."""
    for _ in range(count):
        store.deposit(username, 1, deadline=patient())
        pg_driver(store).settle_checkpoints()


# -- the schema ------------------------------------------------------------------------------------


def test_the_checkpoints_migration_applies_to_a_populated_ledger(
    postgres_url: str, stores: Callable[..., PostgresStore]
) -> None:
    with scratch_database(postgres_url) as fresh:
        migrate(fresh, up_to=2)
        ledger_before_tags(fresh)
        assert migrate(fresh, up_to=3) == ["0003_checkpoints.sql"]
        after = stores(target=fresh)
        assert after.verify().ok
        point = pg_driver(after).take_checkpoint()
        assert point is not None
        assert point.sequence == 3
        assert point.balances_digest == balances_digest([("alice", 70), ("bob", 30)])
        assert after.verify(from_sequence=3).ok
        after.close()  # before its database goes


# -- when checkpoints are taken -------------------------------------------------------------------


def test_a_clean_close_takes_a_checkpoint_at_the_head_and_only_one(
    stores: Callable[..., PostgresStore],
) -> None:
    first = stores()
    open_account(first, "alice", 10)
    deposits(first, 3)
    assert sequences(first) == []
    first.close()
    second = stores()
    assert sequences(second) == [4]
    second.close()  # the head has its checkpoint already
    assert sequences(stores()) == [4]


def test_no_checkpoint_at_sequence_zero(stores: Callable[..., PostgresStore]) -> None:
    empty = stores(every=1)
    assert pg_driver(empty).take_checkpoint() is None
    empty.close()
    assert sequences(stores()) == []


def test_a_worker_skips_a_checkpoint_another_took_less_than_half_an_interval_ago(
    stores: Callable[..., PostgresStore],
) -> None:
    first, second = stores(every=10), stores(every=10)
    open_account(first, "alice", 10)
    open_account(first, "bob", 10)
    deposits(first, 8)  # the write of record 10 crosses 10 in the first worker
    assert sequences(first) == [10]
    deposits(second, 9, "bob")  # record 11 crosses 10 in the second: 10 is 1 behind, under 5
    assert sequences(first) == [10]
    deposits(first, 1)  # record 20 crosses 20 in the first
    deposits(second, 1, "bob")  # record 21 crosses 20 in the second: skipped again
    assert sequences(first) == [20, 10]
    assert first.verify().checkpoints == 2


def test_workers_writing_together_take_checkpoints_a_full_verification_confirms(
    stores: Callable[..., PostgresStore],
) -> None:
    workers = [stores(every=5), stores(every=5)]
    open_account(workers[0], "alice", 1_000)
    open_account(workers[0], "bob", 1_000)

    def mover(store: PostgresStore, source: str, target: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(15):
                store.transfer(source, target, 1, deadline=patient())

        return run

    run_together([mover(store, *pair) for store in workers for pair in (("alice", "bob"), ("bob", "alice"))])
    for store in workers:
        pg_driver(store).settle_checkpoints()
    taken = sequences(workers[0])
    assert taken, "no checkpoint in 62 records, one every 5"
    report = workers[1].verify()
    assert report.ok, report.problems
    # Each digest is the replay of the records up to its sequence: one snapshot each.
    assert report.checkpoints == len(taken)


def test_one_background_checkpoint_at_a_time_per_process(
    stores: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores(every=1)  # every write crosses a multiple
    open_account(store, "alice", 1_000)
    open_account(store, "bob", 1_000)
    guard = threading.Lock()
    running, peak = [0], [0]
    at_head = checkpoints._at_head

    def counted(min_gap: int, connection: Any) -> Any:
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return at_head(min_gap, connection)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(checkpoints, "_at_head", counted)

    def writer() -> None:
        for _ in range(10):
            store.transfer("alice", "bob", 1, deadline=patient())

    run_together([writer] * 6)
    pg_driver(store).settle_checkpoints()
    assert peak[0] == 1
    report = store.verify()
    assert report.ok, report.problems
    assert report.checkpoints == len(sequences(store)) >= 1


# -- one snapshot, no waiting -------------------------------------------------------------------


def commit_when_a_cursor_opens(
    monkeypatch: pytest.MonkeyPatch, cursor_name: str, write: Callable[[], object]
) -> None:
    """Have ``write`` commit, in another thread, the moment a reader opens the server-side cursor
    ``cursor_name``: inside the reader's transaction, after its first reads, before the cursor's."""
    cursor = psycopg.Connection.cursor

    def cursor_after_a_write(connection: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("name") == cursor_name:
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            writer.join(JOIN_TIMEOUT_S)
            assert not writer.is_alive(), "a writer waited for a reader's transaction"
        return cursor(connection, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "cursor", cursor_after_a_write)


@pytest.fixture
def alice_and_bob(stores: Callable[..., PostgresStore]) -> PostgresStore:
    """A store (no background checkpoints) with alice and bob opened with 100 coins each."""
    store = stores()
    open_account(store, "alice", 100)
    open_account(store, "bob", 100)
    return store


def test_a_checkpoint_reads_one_snapshot_while_a_writer_commits(
    alice_and_bob: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = alice_and_bob
    transfer = functools.partial(store.transfer, "alice", "bob", 10, deadline=patient())
    commit_when_a_cursor_opens(monkeypatch, "goledger_checkpoint_balances", transfer)
    point = pg_driver(store).take_checkpoint()
    monkeypatch.undo()
    assert point is not None
    # The head it read and the balances it streamed after the transfer committed: one snapshot.
    assert point.sequence == 2
    assert point.balances_digest == balances_digest([("alice", 100), ("bob", 100)])
    report = store.verify()
    assert (report.ok, report.records, report.checkpoints) == (True, 3, 1)


def test_a_verification_reads_one_snapshot_while_a_writer_commits(
    alice_and_bob: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = alice_and_bob
    commit_when_a_cursor_opens(
        monkeypatch,
        "goledger_verify_records",
        functools.partial(store.transfer, "alice", "bob", 10, deadline=patient()),
    )
    report = store.verify()
    monkeypatch.undo()
    # The balances it read before the transfer, and the records it streamed after: one snapshot.
    assert (report.ok, report.records, report.total_balance) == (True, 2, 200), report.problems
    assert store.verify().records == 3


def test_a_checkpoint_does_not_wait_for_a_writer_holding_its_locks(alice_and_bob: PostgresStore) -> None:
    store = alice_and_bob
    with psycopg.connect(store.url, autocommit=True) as writer, writer.transaction():
        # What a writer holds just before its COMMIT: its account rows, changed, and the head.
        writer.execute("SELECT 1 FROM accounts ORDER BY username FOR NO KEY UPDATE")
        writer.execute("UPDATE accounts SET balance = balance + 5 WHERE username = 'alice'")
        writer.execute("SELECT 1 FROM chain_head FOR NO KEY UPDATE")
        taken: list[Checkpoint | None] = []
        reader = threading.Thread(
            target=lambda: taken.append(pg_driver(store).take_checkpoint()), daemon=True
        )
        reader.start()
        reader.join(JOIN_TIMEOUT_S)
        assert not reader.is_alive(), "the checkpoint waited for a writer's locks"
    [point] = taken
    assert point is not None
    assert (point.sequence, point.balances_digest) == (2, balances_digest([("alice", 100), ("bob", 100)]))


# -- verification -------------------------------------------------------------------------------


def test_verification_streams_the_trail_through_a_server_side_cursor(
    stores: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores()
    open_account(store, "alice", 0)
    deposits(store, 30)
    monkeypatch.setattr(monitor, "VERIFY_ITERSIZE", 7)
    declared: list[tuple[str, int, str]] = []
    client_side: list[str] = []
    server_execute, client_execute = psycopg.ServerCursor.execute, psycopg.Cursor.execute

    def declare(cursor: psycopg.ServerCursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        declared.append((cursor.name, cursor.itersize, str(query)))
        return server_execute(cursor, query, *args, **kwargs)

    def execute(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        client_side.append(str(query))
        return client_execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.ServerCursor, "execute", declare)
    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    report = store.verify()
    pg_driver(store).take_checkpoint()
    monkeypatch.undo()

    assert (report.ok, report.records) == (True, 31)
    streams = {name: (itersize, query) for name, itersize, query in declared}
    assert streams["goledger_verify_records"][0] == 7
    assert "FROM audit" in streams["goledger_verify_records"][1]
    assert streams["goledger_checkpoint_balances"][0] == checkpoints.BALANCES_ITERSIZE
    assert "FROM accounts" in streams["goledger_checkpoint_balances"][1]
    # Nothing reads audit records, nor balances for the digest, into client-side results.
    assert not [query for query in client_side if "FROM audit" in query]
    assert not [query for query in client_side if 'COLLATE "C"' in query]


def test_a_full_verification_runs_under_its_own_timeout_not_the_pools(
    stores: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    filler = stores()
    open_account(filler, "alice", 0)
    filler.batch("alice", [BatchItem(OperationType.DEPOSIT, 1)] * 8_000, atomic=False, deadline=patient())
    filler.close()
    monkeypatch.setitem(CONNECTION_SAFEGUARDS, "options", "-c statement_timeout=1")
    hurried = pg_driver(stores())
    # The pool's bound (1 ms here) bites: a sleep, and one statement reading the whole trail
    # (about 10 ms for these 8,001 records), are cancelled.
    for statement in ("SELECT pg_sleep(0.05)", f"SELECT {sql.RECORD} FROM audit a ORDER BY a.sequence"):
        with pytest.raises(psycopg.errors.QueryCanceled):
            hurried.run_pooled(statement)
    report = hurried.store.verify()
    assert (report.ok, report.records, report.total_balance) == (True, 8_001, 8_000)
    # The verification's own bound does bite, checked between pages of the stream.
    monkeypatch.setattr(monitor, "VERIFY_TIMEOUT_S", 0.02)
    monkeypatch.setattr(monitor, "VERIFY_ITERSIZE", 100)
    with pytest.raises(OperationTimeout):
        hurried.store.verify()


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def pg_app(postgres_url: str) -> Iterator[Flask]:
    app = create_app(app_config(empty_postgres(postgres_url), checkpoint_records=4))
    app.config["TESTING"] = True
    yield app
    app.extensions["ledger"].close()


def test_a_passing_verification_from_a_checkpoint_does_not_clear_a_full_ones_finding(
    pg_app: Flask,
) -> None:
    client = pg_app.test_client()
    ledger = pg_app.extensions["ledger"]
    driver = pg_driver(ledger)
    for _ in range(6):  # records 3..8: checkpoints at 4 and 8
        client.post("/account/coins/add?username=aaron&amount=5", headers={"Authorization": "1"})
        driver.settle_checkpoints()
    driver.tamper(3, amount=6)
    assert client.get("/admin/verify", headers=ADMIN).status_code == 500
    assert client.get("/admin/verify?from=8", headers=ADMIN).status_code == 200
    health = client.get("/system/health")
    assert (health.status_code, health.json["components"]["audit_log"]) == (503, False)
