"""Fixtures: the app built from the factory with a test config, its client, a bare
store, and ``driver``, the per-store driver of the test's store.

Conformance: every test that asks for ``app``, ``client``, ``runner``, ``store`` or
``driver`` runs once on each store, the embedded ``MockDB`` and the PostgreSQL store,
unless it is marked ``memory_only`` (it looks at MockDB's own locks or data structures),
or ``stores("postgres")`` (a feature one store does not have yet: remove the mark when it does).

``driver`` (``tests/drivers.py``) is how a test does to a store what ``LedgerStore``
does not offer: tamper with its data, stall its writers, stop its hold sweeper, put it
on a fake clock, read its raw state. It drives the bare ``store`` when the test uses
that fixture, otherwise the ``app``'s store. The helpers these fixtures are built from
(``new_store``, ``app_config``, ``open_account``, ``ADMIN_TOKEN``…) are in
``tests/stores.py``.

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
from urllib.parse import urlsplit

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from psycopg import sql

from app import create_app
from app.ledger.postgres.schema import migrate
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver, driver_for
from tests.stores import app_config, empty_postgres, new_store

POSTGRES_URL_VARIABLE = "GOLEDGER_TEST_POSTGRES_URL"
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        memory_only = metafunc.definition.get_closest_marker("memory_only") is not None
        kinds = ["memory"] if memory_only else ["memory", "postgres"]
        narrowed = metafunc.definition.get_closest_marker("stores")
        metafunc.parametrize("store_kind", list(narrowed.args) if narrowed is not None else kinds)


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


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest) -> str:
    """``memory``, or the URL of the session's PostgreSQL database, emptied for this test."""
    if store_kind == "memory":
        return "memory"
    return empty_postgres(request.getfixturevalue("postgres_url"))


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """``Config`` fields the ``app`` of a test module sets besides the test config (override it)."""
    return {}


@pytest.fixture
def app(store_url: str, app_overrides: dict[str, object]) -> Iterator[Flask]:
    application = create_app(app_config(store_url, **app_overrides))
    application.config["TESTING"] = True
    yield application
    application.extensions["ledger"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def store(store_url: str) -> Iterator[LedgerStore]:
    ledger = new_store(store_url)
    yield ledger
    ledger.close()


@pytest.fixture
def driver(store_url: str, request: pytest.FixtureRequest) -> Iterator[StoreDriver]:
    """The driver of the test's store (``tests/drivers.py``): the bare ``store``'s if the
    test uses that fixture, otherwise the ``app``'s."""
    if "store" in request.fixturenames:
        ledger: LedgerStore = request.getfixturevalue("store")
    else:
        ledger = request.getfixturevalue("app").extensions["ledger"]
    with driver_for(ledger) as store_driver:
        yield store_driver
