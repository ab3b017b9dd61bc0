"""Fixtures: the app built from the factory with a test config, its client, a bare store.

Conformance: every test that asks for ``app``, ``client``, ``runner`` or ``store``
runs once on each store, the embedded ``MockDB`` and the PostgreSQL store, unless it
is marked ``memory_only`` (it looks at MockDB's own locks or data structures).

PostgreSQL: ``GOLEDGER_TEST_POSTGRES_URL`` names a database the run may use and
empty (``.ci/run`` creates a fresh one per run); without it the session creates
``goledger_test_<random>`` on the local server (127.0.0.1:5432, user postgres) and
drops it at the end. Each test starts from empty tables. When PostgreSQL cannot be
reached, its half is skipped with the reason, except under ``CI=true``, where that
is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from psycopg import sql

from app import create_app
from app.auth import token_digest
from app.ledger.memory import MockDB
from app.ledger.model import Deadline
from app.ledger.postgres import PostgresStore
from app.ledger.postgres.schema import migrate
from app.ledger.store import LedgerStore

ADMIN_TOKEN = "test-admin-token"
POSTGRES_URL_VARIABLE = "GOLEDGER_TEST_POSTGRES_URL"
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432"
#: Connections each test store may open (the server allows 100, shared by everyone).
TEST_POOL_SIZE = 8

_RESET = (
    "DELETE FROM audit_parties; DELETE FROM audit; DELETE FROM holds; DELETE FROM idempotency_keys; "
    "DELETE FROM accounts; "
    "UPDATE chain_head SET sequence = 0, hash = repeat('0', 64)"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        memory_only = metafunc.definition.get_closest_marker("memory_only") is not None
        metafunc.parametrize("store_kind", ["memory"] if memory_only else ["memory", "postgres"])


def _unreachable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the PostgreSQL half of the suite, but {reason}")
    pytest.skip(f"PostgreSQL half skipped: {reason}")


def _prepare(url: str) -> None:
    """Migrate the test database and let its commits skip the wait for the disk.

    ``synchronous_commit = off`` keeps every guarantee the suite checks (atomicity,
    isolation, constraints); it only gives up durability of the last few commits if
    the server crashes, which no test exercises, and the suite runs several times faster.
    """
    migrate(url)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit TO off").format(
                sql.Identifier(urlsplit(url).path.lstrip("/"))
            )
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated database for this session (see the module docstring)."""
    given = os.environ.get(POSTGRES_URL_VARIABLE)
    if given:
        try:
            _prepare(given)
        except psycopg.OperationalError as error:
            _unreachable(f"{POSTGRES_URL_VARIABLE} names a database that cannot be reached: {error}")
        yield given
        return
    name = f"goledger_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(f"{LOCAL_SERVER}/postgres", autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        _unreachable(f"no server at {LOCAL_SERVER} ({error}); set {POSTGRES_URL_VARIABLE}")
    url = f"{LOCAL_SERVER}/{name}"
    try:
        _prepare(url)
        yield url
    finally:
        with psycopg.connect(f"{LOCAL_SERVER}/postgres", autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_url(url: str, dbname: str) -> str:
    """The URL of another database on the same server as ``url`` (a postgresql:// URL)."""
    return urlsplit(url)._replace(path=f"/{dbname}").geturl()


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A brand-new, empty database beside ``url``'s, dropped afterwards."""
    name = f"goledger_scratch_{secrets.token_hex(4)}"
    with psycopg.connect(server_url(url, "postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url(url, name)
    finally:
        with psycopg.connect(server_url(url, "postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_postgres(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(_RESET)
    return url


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest) -> str:
    """``memory``, or the URL of the session's PostgreSQL database, emptied for this test."""
    if store_kind == "memory":
        return "memory"
    return empty_postgres(request.getfixturevalue("postgres_url"))


def app_config(store_url: str, **overrides: object) -> dict[str, object]:
    """A test config for ``create_app`` on the given store."""
    return {
        "admin_token": ADMIN_TOKEN,
        "demo": True,
        "store": store_url,
        "pg_pool_size": TEST_POOL_SIZE,
        **overrides,
    }


@pytest.fixture
def app(store_url: str) -> Iterator[Flask]:
    application = create_app(app_config(store_url))
    application.config["TESTING"] = True
    yield application
    application.extensions["ledger"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def new_store(store_url: str, **options: object) -> LedgerStore:
    """A bare store of the given kind (``options`` go to its constructor)."""
    if store_url == "memory":
        return MockDB(**options)  # type: ignore[arg-type]
    return PostgresStore(store_url, max_connections=TEST_POOL_SIZE, **options)  # type: ignore[arg-type]


@pytest.fixture
def store(store_url: str) -> Iterator[LedgerStore]:
    ledger = new_store(store_url)
    yield ledger
    ledger.close()


def stop_sweeper(store: LedgerStore) -> None:
    """Stop a store's background hold sweeper, leaving the store usable."""
    if isinstance(store, PostgresStore):
        store.stop_sweeper()
    else:
        store.close()  # MockDB.close stops only its sweeper


def open_account(store: LedgerStore, username: str, balance: int, token: str | None = None) -> None:
    """Open an account directly in a store (token defaults to the username)."""
    store.create_account(username, token_digest(token or username), balance, deadline=Deadline.after_ms(5000))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": token}
