"""The PostgreSQL store's locks are load-bearing: each test fails when its lock is taken out.

Row locks: a writing transaction locks its account rows ``FOR NO KEY UPDATE`` in one
sorted statement, then the ``chain_head`` row last. A test holds ``chain_head`` from a
connection of its own, so that a writer stops just before its commit, and looks at
the rows that writer holds: taken (another writer waits), yet open to the
``FOR KEY SHARE`` lock of a foreign-key check. Opposite transfers from two stores (two
workers) must meet no deadlock at all: the store counts every deadlock the database
breaks, and the count must stay zero, not merely be absorbed by retries.

``Monitor._health_lock``: while the test holds it, whatever health, ``verify`` or a
metrics scrape does next with the chain checkpoint or the figures waits
(``tests/windows.py``'s ``assert_excluded``).

The lock-removal mutation run (``python -m tests.lock_mutants``) checks that each of
these fails without its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from app.ledger.model import Deadline
from app.ledger.postgres import PostgresStore
from tests.drivers import PostgresDriver, driver_for
from tests.stores import TEST_POOL_SIZE, empty_postgres, open_account
from tests.threads import JOIN_TIMEOUT_S, run_together
from tests.windows import Tap, assert_excluded


def patient() -> Deadline:
    return Deadline.after_ms(10_000)


@pytest.fixture
def url(postgres_url: str) -> str:
    return empty_postgres(postgres_url)


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    ledger = PostgresStore(url, max_connections=TEST_POOL_SIZE)
    yield ledger
    ledger.close()


@pytest.fixture
def driver(store: PostgresStore) -> Iterator[PostgresDriver]:
    with driver_for(store) as store_driver:
        assert isinstance(store_driver, PostgresDriver)
        yield store_driver


def _wait_for_a_lock_wait(connection: psycopg.Connection[Any]) -> None:
    """Return once some backend of this database waits for a lock (bounded; no sleeping:
    each look is a round trip to the server)."""
    give_up_at = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < give_up_at:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        if row is not None and row[0] > 0:
            return
    raise AssertionError(f"no writer waited for a lock within {JOIN_TIMEOUT_S} s")


def _try_lock(connection: psycopg.Connection[Any], strength: str) -> bool:
    """Whether this connection gets ``strength`` on both account rows at once (``NOWAIT``)."""
    try:
        with connection.transaction():
            connection.execute(
                f"SELECT username FROM accounts WHERE username IN ('alice', 'bob') FOR {strength} NOWAIT"
            )
        return True
    except pg_errors.LockNotAvailable:
        return False


# -- row locks ----------------------------------------------------------------------------------


def test_a_writer_holds_its_rows_for_no_key_update_before_it_takes_the_chain_head(
    store: PostgresStore, url: str
) -> None:
    open_account(store, "alice", 100)
    open_account(store, "bob", 100)
    with (
        psycopg.connect(url, autocommit=True) as head,
        psycopg.connect(url, autocommit=True) as probe,
    ):
        with head.transaction():
            head.execute("SELECT sequence FROM chain_head FOR NO KEY UPDATE")  # writers stop before commit

            writer = threading.Thread(
                target=lambda: store.transfer("alice", "bob", 10, deadline=patient()), daemon=True
            )
            writer.start()
            _wait_for_a_lock_wait(probe)
            taken_by_writer = not _try_lock(probe, "NO KEY UPDATE")
            key_share_open = _try_lock(probe, "KEY SHARE")
        writer.join(JOIN_TIMEOUT_S)  # the chain head is free: the transfer commits
        assert not writer.is_alive()
    assert taken_by_writer, "a writer waiting for the chain head did not hold its account rows"
    assert key_share_open, "a writer's row locks block foreign-key checks (FOR UPDATE, not FOR NO KEY UPDATE)"
    assert store.account("bob", deadline=patient()).balance == 110


def test_opposite_transfers_from_two_workers_meet_no_deadlock_at_all(url: str) -> None:
    first = PostgresStore(url, max_connections=TEST_POOL_SIZE)
    second = PostgresStore(url, max_connections=TEST_POOL_SIZE)
    try:
        open_account(first, "alice", 10_000)
        open_account(first, "bob", 10_000)

        def mover(store: PostgresStore, source: str, target: str) -> Callable[[], int]:
            def run() -> int:
                for _ in range(20):
                    store.transfer(source, target, 1, deadline=patient())
                return 20

            return run

        routes = [("alice", "bob"), ("bob", "alice")]
        done = run_together(
            [mover(store, *route) for route in routes for store in (first, second) for _ in (1, 2)]
        )
        assert sum(done) == 160
        deadlocks = driver_for(first).deadlock_retries() + driver_for(second).deadlock_retries()
        assert deadlocks == 0, f"{deadlocks} deadlocks broken by the database: the lock order regressed"
        assert first.account("alice", deadline=patient()).balance == 10_000
        assert first.verify().ok
    finally:
        first.close()
        second.close()


# -- Monitor._health_lock -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["verify", "stats"])
def test_verify_and_scrapes_note_what_they_found_under_the_health_lock(
    store: PostgresStore, driver: PostgresDriver, method: str
) -> None:
    open_account(store, "alice", 1)
    lock = driver.watch("health")
    assert_excluded(lock, _call(getattr(driver.monitor(), method)), driver.health_state)


def test_health_without_a_database_reads_the_verdict_under_the_health_lock(
    store: PostgresStore, driver: PostgresDriver
) -> None:
    lock = driver.watch("health")

    def gone() -> None:
        raise PoolTimeout("the test took the database away")

    driver.on_connection(gone)
    assert_excluded(lock, _call(driver.monitor().health), driver.health_state)


@pytest.mark.parametrize("at_connection", [1, 2], ids=["reading-the-checkpoint", "moving-it-on"])
def test_health_checks_the_chain_from_a_checkpoint_under_the_health_lock(
    store: PostgresStore, driver: PostgresDriver, at_connection: int
) -> None:
    """Health takes a connection to probe, reads the checkpoint, takes one to read the new
    records, then moves the checkpoint on: the test takes the lock at either connection."""
    open_account(store, "alice", 1)
    lock = driver.watch("health")
    connections = Tap()

    def visit(enter: Callable[[], None]) -> object:
        def count() -> None:
            connections.step()
            if connections.count == at_connection:
                enter()

        driver.on_connection(count)
        return driver.monitor().health()

    assert_excluded(lock, visit, lambda: (connections.count, driver.health_state()))


def _call(function: Callable[[], object]) -> Callable[[Callable[[], None]], object]:
    def visit(enter: Callable[[], None]) -> object:
        enter()
        return function()

    return visit
