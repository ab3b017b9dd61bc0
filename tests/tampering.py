"""Changing a store's data behind its back, as an attacker with memory or disk access would.

Each helper works on both stores: MockDB's structures in place, PostgreSQL's rows
through a connection of its own (never through the store).
"""

from __future__ import annotations

import dataclasses

import psycopg
from psycopg import sql

from app.ledger.audit import chain_hash
from app.ledger.memory import MockDB
from app.ledger.model import Transaction
from app.ledger.postgres import PostgresStore
from app.ledger.store import LedgerStore

_RECORD_COLUMNS = {"amount", "target", "status", "created_at", "hash"}


def record(ledger: LedgerStore, sequence: int) -> Transaction:
    return ledger.audit_page(limit=sequence, cursor=None).transactions[sequence - 1]


def tamper(ledger: LedgerStore, sequence: int, **changes: object) -> None:
    """Rewrite fields of one stored audit record."""
    if isinstance(ledger, MockDB):
        index = sequence - 1
        ledger._trail._records[index] = dataclasses.replace(ledger._trail._records[index], **changes)  # type: ignore[arg-type]
        return
    assert isinstance(ledger, PostgresStore)
    with psycopg.connect(ledger.url, autocommit=True) as connection:
        for column, value in changes.items():
            assert column in _RECORD_COLUMNS, column
            statement = sql.SQL("UPDATE audit SET {} = %s WHERE sequence = %s").format(sql.Identifier(column))
            connection.execute(statement, (value, sequence))


def rehash(ledger: LedgerStore, sequence: int, amount: int) -> None:
    """Change a record's amount and give it the hash that matches (the next link still breaks)."""
    forged = dataclasses.replace(record(ledger, sequence), amount=amount)
    tamper(ledger, sequence, amount=amount, hash=chain_hash(forged.previous_hash, forged))


def remove(ledger: LedgerStore, sequence: int) -> None:
    if isinstance(ledger, MockDB):
        del ledger._trail._records[sequence - 1]
        return
    assert isinstance(ledger, PostgresStore)
    with psycopg.connect(ledger.url, autocommit=True) as connection:
        connection.execute("DELETE FROM audit_parties WHERE sequence = %s", (sequence,))
        connection.execute("DELETE FROM audit WHERE sequence = %s", (sequence,))


def adjust(ledger: LedgerStore, username: str, *, balance: int = 0, held: int = 0) -> None:
    """Add to an account's stored balance and held money."""
    if isinstance(ledger, MockDB):
        ledger._accounts[username].balance += balance
        ledger._accounts[username].held += held
        return
    assert isinstance(ledger, PostgresStore)
    with psycopg.connect(ledger.url, autocommit=True) as connection:
        connection.execute(
            "UPDATE accounts SET balance = balance + %s, held = held + %s WHERE username = %s",
            (balance, held, username),
        )
