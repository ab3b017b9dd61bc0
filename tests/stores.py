"""Building the stores and apps the tests run on, and filling them.

``new_store`` and ``app_config`` give a bare store or an app config for a store URL
(``memory``, or a PostgreSQL database's); ``empty_postgres`` and ``scratch_database``
give a test an empty PostgreSQL database; ``open_account`` opens an account straight
in a store. ``tests/conftest.py`` builds its fixtures from these.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg

from app.auth import token_digest
from app.ledger.memory import MockDB
from app.ledger.model import Deadline, OperationType, new_id, utc_now_iso
from app.ledger.postgres import PostgresStore
from app.ledger.records import success
from app.ledger.store import LedgerStore

ADMIN_TOKEN = "test-admin-token"
#: Connections each test store may open (the server allows 100, shared by everyone).
TEST_POOL_SIZE = 8

_RESET = (
    "DELETE FROM audit_parties; DELETE FROM audit; DELETE FROM holds; DELETE FROM idempotency_keys; "
    "DELETE FROM accounts; DELETE FROM checkpoints; "
    "UPDATE chain_head SET sequence = 0, hash = repeat('0', 64), latest_at = ''"
)


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
    """Empty every table of the (migrated) database at ``url``; the URL."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(_RESET)
    return url


#: ``goledger_append`` as migrations 0002 and 0003 left it (no reference, no metadata).
_APPEND_BEFORE_TAGS = (
    "SELECT * FROM goledger_append(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
    "%s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::integer[])"
)


def ledger_before_tags(url: str, stamps: Sequence[str] | None = None) -> None:
    """Alice opened with 100, Bob with 0, and a transfer of 30 from Alice to Bob (sequences
    1 to 3), written as a worker of the schema before tags (migrated up to 3 at most) did:
    through that schema's ``goledger_append``; stamped ``stamps`` (one each; default: now)."""
    drafts = [
        success(OperationType.OPEN, None, "alice", 100),
        success(OperationType.OPEN, None, "bob", 0),
        success(OperationType.TRANSFER, "alice", "bob", 30),
    ]
    ids = [new_id("tx_") for _ in drafts]
    created_at = [utc_now_iso()] * len(drafts) if stamps is None else list(stamps)
    if len(created_at) != len(drafts):
        raise ValueError(f"one stamp per record: {len(drafts)}, not {len(created_at)}")
    with psycopg.connect(url) as connection:
        connection.execute(
            "INSERT INTO accounts (username, token_digest, balance, version) "
            "VALUES (%s, %s, 70, 1), (%s, %s, 30, 1)",
            ("alice", token_digest("alice"), "bob", token_digest("bob")),
        )
        connection.execute(
            _APPEND_BEFORE_TAGS,
            (
                ids,
                [draft.kind.value for draft in drafts],
                [draft.source for draft in drafts],
                [draft.target for draft in drafts],
                [draft.amount for draft in drafts],
                ["SUCCESS"] * len(drafts),
                [None] * len(drafts),
                created_at,
                [
                    draft.tail(record_id, stamp)
                    for record_id, draft, stamp in zip(ids, drafts, created_at, strict=True)
                ],
                ["alice", "bob", "alice", "bob"],
                [1, 2, 3, 3],
            ),
        )


def app_config(store_url: str, **overrides: object) -> dict[str, object]:
    """A test config for ``create_app`` on the given store."""
    return {
        "admin_token": ADMIN_TOKEN,
        "demo": True,
        "store": store_url,
        "pg_pool_size": TEST_POOL_SIZE,
        **overrides,
    }


def new_store(store_url: str, **options: object) -> LedgerStore:
    """A bare store of the given kind (``options`` go to its constructor)."""
    if store_url == "memory":
        return MockDB(**options)  # type: ignore[arg-type]
    return PostgresStore(store_url, max_connections=TEST_POOL_SIZE, **options)  # type: ignore[arg-type]


def open_account(store: LedgerStore, username: str, balance: int, token: str | None = None) -> None:
    """Open an account directly in a store (token defaults to the username)."""
    store.create_account(username, token_digest(token or username), balance, deadline=Deadline.after_ms(5000))


def auth(token: str) -> dict[str, str]:
    """The ``Authorization`` header of a request made with ``token``."""
    return {"Authorization": token}
