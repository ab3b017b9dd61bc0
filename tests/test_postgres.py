"""What only the PostgreSQL store has: migrations, the schema's own checks, lost
connections and outages, idempotency and locking across processes (two stores on one
database stand for two workers), the sweeper, and gunicorn with several workers.

The conformance suite (every other module) runs the API and race tests on both
stores; this module needs a PostgreSQL server and uses no memory store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import requests
from flask import Flask

from app import create_app
from app.auth import token_digest
from app.ledger.errors import OperationTimeout
from app.ledger.model import AccountView, Deadline, HoldStatus, OperationResult, OperationType, Status
from app.ledger.outcomes import Outcome
from app.ledger.postgres import PostgresStore
from app.ledger.postgres.schema import migrate, migrations, schema_version
from tests.clocks import FakeClock
from tests.drivers import driver_for
from tests.servers import gunicorn_server
from tests.stores import (
    ADMIN_TOKEN,
    TEST_POOL_SIZE,
    app_config,
    empty_postgres,
    open_account,
    scratch_database,
    server_url,
)
from tests.threads import JOIN_TIMEOUT_S, run_together

AARON = {"Authorization": "1"}
ADMIN = {"Authorization": ADMIN_TOKEN}


def patient() -> Deadline:
    return Deadline.after_ms(5_000)


@pytest.fixture
def url(postgres_url: str) -> str:
    return empty_postgres(postgres_url)


@pytest.fixture
def pg_app(url: str) -> Iterator[Flask]:
    app = create_app(app_config(url))
    app.config["TESTING"] = True
    yield app
    app.extensions["ledger"].close()


@pytest.fixture
def two_stores(url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores with pools of their own on one database: two worker processes, as the database sees them."""
    first = PostgresStore(url, max_connections=TEST_POOL_SIZE)
    second = PostgresStore(url, max_connections=TEST_POOL_SIZE)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def terminate_store_connections(url: str) -> int:
    """Cut every connection the stores hold to this database, as a failover or a restart would."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url(url, "postgres"), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'goledger'",
            (database,),
        ).fetchall()
    return len(rows)


def allow_connections(url: str, allowed: bool) -> None:
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url(url, "postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')


# -- migrations -----------------------------------------------------------------------------


def test_migrations_apply_once_in_order_and_record_their_version(postgres_url: str) -> None:
    with scratch_database(postgres_url) as fresh:
        assert schema_version(fresh) == 0
        assert migrate(fresh) == [migration.name for migration in migrations()]
        assert schema_version(fresh) == len(migrations())
        assert migrate(fresh) == []


def test_workers_starting_together_apply_each_migration_exactly_once(postgres_url: str) -> None:
    with scratch_database(postgres_url) as fresh:
        applied = run_together([lambda: migrate(fresh)] * 6)
        # Each file is applied by exactly one of them (not necessarily all by the same one:
        # the lock is per file).
        every_name = sorted(name for names in applied for name in names)
        assert every_name == sorted(migration.name for migration in migrations())
        assert schema_version(fresh) == len(migrations())


def test_the_cli_migrate_command_reports_the_version(pg_app: Flask) -> None:
    result = pg_app.test_cli_runner().invoke(args=["ledger", "migrate"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"schema version {len(migrations())}; applied now: none"


def test_a_fresh_database_gets_its_schema_when_the_app_starts(postgres_url: str) -> None:
    with scratch_database(postgres_url) as fresh:
        app = create_app(app_config(fresh))
        try:
            assert schema_version(fresh) == len(migrations())
            response = app.test_client().get("/account/coins?username=aaron", headers=AARON)
            assert response.status_code == 200
            assert response.json["balance"] == 10_000
        finally:
            app.extensions["ledger"].close()


# -- the schema's own checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE accounts SET balance = -5 WHERE username = 'aaron'",
        "UPDATE accounts SET held = balance + 1 WHERE username = 'aaron'",
        "UPDATE accounts SET held = -1 WHERE username = 'aaron'",
    ],
)
def test_the_schema_refuses_a_negative_balance_or_impossible_held_money(
    pg_app: Flask, url: str, change: str
) -> None:
    with psycopg.connect(url, autocommit=True) as connection, pytest.raises(psycopg.errors.CheckViolation):
        connection.execute(change)
    assert pg_app.test_client().get("/admin/verify", headers=ADMIN).json["ok"] is True


# -- lost connections and outages ---------------------------------------------------------------


def test_a_lost_connection_is_retried_transparently(pg_app: Flask, url: str) -> None:
    client = pg_app.test_client()
    assert client.post("/account/coins/add?username=aaron&amount=1", headers=AARON).status_code == 200
    assert terminate_store_connections(url) >= 1
    response = client.post("/account/coins/transfer?username=aaron&to=bryan&amount=5", headers=AARON)
    assert response.status_code == 200, response.json
    assert response.json["balance"] == 9_996
    assert client.get("/admin/verify", headers=ADMIN).json["ok"] is True


def test_an_outage_is_503_timeout_never_500_and_health_says_so_until_it_ends(pg_app: Flask, url: str) -> None:
    client = pg_app.test_client()
    assert client.get("/system/health").status_code == 200
    allow_connections(url, False)
    try:
        terminate_store_connections(url)
        health = client.get("/system/health")
        assert health.status_code == 503
        assert health.json["status"] == "unhealthy"
        assert health.json["components"]["database"] is False
        for path in (
            "/account/coins/add?username=aaron&amount=5",
            "/account/coins/transfer?username=aaron&to=bryan&amount=5",
        ):
            response = client.post(path, headers={**AARON, "X-Timeout-Ms": "300"})
            # Authentication reads the database too: either way a 503, never a 500.
            assert response.status_code == 503, response.json
    finally:
        allow_connections(url, True)
    pg_app.extensions["ledger"].wait_until_connected(timeout_s=30)
    recovered = client.get("/system/health")
    assert recovered.status_code == 200, recovered.json
    assert client.get("/account/coins?username=aaron", headers=AARON).json["balance"] == 10_000
    assert client.get("/admin/verify", headers=ADMIN).json["ok"] is True


# -- idempotency and locking across processes ---------------------------------------------------


def test_concurrent_retries_from_two_workers_apply_once(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    open_account(first, "aaron", 1_000)
    open_account(first, "bryan", 0)

    def retry(store: PostgresStore) -> Callable[[], Outcome]:
        def send() -> Outcome:
            return store.idempotent(
                "aaron",
                "pay-1",
                "fp",
                patient(),
                lambda: store.transfer("aaron", "bryan", 100, deadline=patient()),
            )

        return send

    outcomes = run_together([retry(first), retry(second)] * 6)
    assert sum(1 for outcome in outcomes if not outcome.replayed) == 1
    results = {outcome.result for outcome in outcomes}
    assert len(results) == 1
    (result,) = results
    assert isinstance(result, OperationResult)
    assert second.account("bryan", deadline=patient()) == AccountView("bryan", 100, 1)
    transfers = [
        r for r in first.audit_page(limit=100, cursor=None).transactions if r.type == OperationType.TRANSFER
    ]
    assert [record.id for record in transfers] == [result.transaction.id]
    assert first.verify().ok


def test_a_retry_on_another_worker_waits_for_the_first_outcome(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    open_account(first, "aaron", 1_000)
    open_account(first, "bryan", 0)
    entered = threading.Event()
    results: list[Outcome] = []

    def slow_transfer() -> OperationResult:
        entered.set()
        return first.transfer("aaron", "bryan", 100, deadline=patient())

    def run_first() -> None:
        results.append(first.idempotent("aaron", "pay-2", "fp", patient(), slow_transfer))

    with driver_for(first).holding_write_lock():
        thread = threading.Thread(target=run_first, daemon=True)
        thread.start()
        assert entered.wait(JOIN_TIMEOUT_S)
        with pytest.raises(OperationTimeout, match="in flight"):
            second.idempotent(
                "aaron",
                "pay-2",
                "fp",
                Deadline.after_ms(200),
                lambda: second.transfer("aaron", "bryan", 100, deadline=patient()),
            )
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive()
    (original,) = results
    replay = second.idempotent(
        "aaron", "pay-2", "fp", patient(), lambda: second.transfer("aaron", "bryan", 1, deadline=patient())
    )
    assert replay == Outcome(original.result, replayed=True)
    assert second.account("bryan", deadline=patient()).balance == 100


def test_opposite_transfers_from_two_workers_never_deadlock(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    for name in ("alice", "bob", "carol"):
        open_account(first, name, 10_000)
    # Every pair both ways: each account's lock is wanted first and second, by both workers.
    routes = [
        (source, target) for source in ("alice", "bob", "carol") for target in ("alice", "bob", "carol")
    ]
    routes = [(source, target) for source, target in routes if source != target]

    def mover(store: PostgresStore, source: str, target: str) -> Callable[[], int]:
        def run() -> int:
            for _ in range(25):
                store.transfer(source, target, 3, deadline=patient())
            return 25

        return run

    done = run_together([mover(store, *route) for route in routes for store in (first, second)])
    assert sum(done) == 300
    # Not one deadlock for the retries to absorb: the lock order holds.
    assert driver_for(first).deadlock_retries() + driver_for(second).deadlock_retries() == 0
    balances = {name: first.account(name, deadline=patient()).balance for name in ("alice", "bob", "carol")}
    assert balances == {"alice": 10_000, "bob": 10_000, "carol": 10_000}
    records = first.audit_page(limit=500, cursor=None).transactions
    moved = [record for record in records if record.type == OperationType.TRANSFER]
    assert [record.status for record in moved] == [Status.SUCCESS] * 300
    assert first.verify().ok


# -- the sweeper ----------------------------------------------------------------------------


def test_the_sweeper_expires_an_idle_hold_without_any_touch(url: str) -> None:
    clock = FakeClock()
    store = PostgresStore(url, max_connections=TEST_POOL_SIZE, clock=clock, sweep_interval_s=0.05)
    try:
        open_account(store, "aaron", 1_000)
        open_account(store, "bryan", 0)
        swept = threading.Event()
        sweep = store.sweep_expired

        def sweep_and_tell(*, deadline: Deadline) -> int:
            expired = sweep(deadline=deadline)
            if expired:
                swept.set()
            return expired

        store.sweep_expired = sweep_and_tell  # type: ignore[method-assign]
        due = store.create_hold("aaron", "bryan", 100, timeout_s=5, deadline=patient()).hold
        later = store.create_hold("aaron", "bryan", 200, timeout_s=50, deadline=patient()).hold
        clock.advance(5)
        assert swept.wait(JOIN_TIMEOUT_S), "the sweeper did not expire the due hold"
        expiries = [
            r for r in store.audit_page(limit=100, cursor=None).transactions if r.type == OperationType.EXPIRE
        ]
        assert [(r.source, r.target, r.amount) for r in expiries] == [("aaron", "bryan", 100)]
        assert store.get_hold("bryan", due.id, deadline=patient()).status is HoldStatus.EXPIRED
        assert store.get_hold("bryan", later.id, deadline=patient()).status is HoldStatus.PENDING
        assert store.verify().ok
    finally:
        store.close()


# -- several gunicorn workers on one database ------------------------------------------------------


@pytest.mark.slow
def test_several_gunicorn_workers_share_one_ledger(url: str) -> None:
    names = [f"user{index}" for index in range(6)]
    opening = 1_000
    with gunicorn_server(
        LEDGER_STORE=url,
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
        LEDGER_PG_POOL_SIZE="4",
        GUNICORN_WORKERS="3",
        GUNICORN_THREADS="4",
    ) as base_url:
        for name in names:
            created = requests.post(
                f"{base_url}/admin/accounts",
                json={"username": name, "token": name, "balance": opening},
                headers=ADMIN,
                timeout=10,
            )
            assert created.status_code == 201, created.text

        def client(index: int) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                session = requests.Session()
                source = names[index % len(names)]
                target = names[(index + 1) % len(names)]
                statuses: dict[str, Any] = {}
                for step in range(20):
                    response = session.post(
                        f"{base_url}/account/coins/transfer",
                        params={"username": source, "to": target, "amount": 1 + step % 7},
                        headers={"Authorization": source, "Idempotency-Key": f"{index}-{step}"},
                        timeout=10,
                    )
                    statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                return statuses

            return run

        replies = run_together([client(index) for index in range(12)])
        assert all(set(reply) == {"200"} for reply in replies), replies
        verify = requests.get(f"{base_url}/admin/verify", headers=ADMIN, timeout=30).json()
        assert verify["ok"] is True, verify
        assert verify["total_balance"] == opening * len(names)
        health = requests.get(f"{base_url}/system/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["components"]["database"] is True
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM audit WHERE type = 'transfer' AND status = 'SUCCESS'"
        ).fetchone()
    assert row == (12 * 20,)


def test_an_unanswered_commit_is_neither_retried_nor_called_a_timeout(url: str) -> None:
    """The COMMIT ran but its answer was lost and the database cannot be reached to ask:
    the caller hears that the outcome is unknown; the deposit is applied exactly once."""
    from urllib.parse import urlsplit, urlunsplit

    from app.ledger.errors import CommitOutcomeUnknown
    from tests.pgproxy import CommitCutter

    parts = urlsplit(url)
    cutter = CommitCutter((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{cutter.port}"))
    store = PostgresStore(proxied, sweep_interval_s=None, max_connections=2, migrate=False)
    try:
        store.create_account("alice", token_digest("alice"), 100, deadline=patient())
        cutter.arm(b"goledger_append")
        with pytest.raises(CommitOutcomeUnknown) as raised:
            store.deposit("alice", 7, deadline=Deadline.after_ms(5000))
        assert cutter.cut.is_set()
        assert raised.value.status == 503
        assert raised.value.transaction is None  # not audited as a timeout: it may have applied
    finally:
        cutter.outage.clear()
        store.close()
        cutter.close()
    with psycopg.connect(url, autocommit=True) as connection:
        balance = connection.execute("SELECT balance FROM accounts WHERE username = 'alice'").fetchone()
        deposits = connection.execute("SELECT count(*) FROM audit WHERE type = 'deposit'").fetchone()
    assert balance == (107,)
    assert deposits == (1,)


# -- idempotency keys past their retention ---------------------------------------------------------


def test_old_keys_are_purged_in_short_batches_however_large_the_backlog(url: str) -> None:
    store = PostgresStore(url, max_connections=2, sweep_interval_s=None)
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO idempotency_keys (username, key, fingerprint, created_at) "
                "SELECT 'aaron', 'old-' || n, 'fp', now() - interval '25 hours' - n * interval '1 second' "
                "FROM generate_series(1, 12) AS n"
            )
            connection.execute(
                "INSERT INTO idempotency_keys (username, key, fingerprint) "
                "SELECT 'aaron', 'fresh-' || n, 'fp' FROM generate_series(1, 3) AS n"
            )
            assert store.purge_keys(batch=5, max_batches=2) == 10  # two statements of five
            assert store.purge_keys(batch=5, max_batches=2) == 2
            assert store.purge_keys() == 0
            left = connection.execute("SELECT key FROM idempotency_keys ORDER BY key").fetchall()
        assert [key for (key,) in left] == ["fresh-1", "fresh-2", "fresh-3"]
    finally:
        store.close()
