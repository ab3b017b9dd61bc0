"""Filtered history and ``/admin/transactions`` pages on PostgreSQL, at a million records.

``--populate`` fills a database of its own (``goledger_bench_filters``, kept between runs)
through ``PostgresStore.batch`` (8189 items a call): 1,000 accounts, a "house" account
in about a third of the records, transfers, deposits and withdrawals (some refused for
funds: FAILED), most of them tagged; then restamps them as writers racing for the chain
head would have (``_RESTAMP``: 1 ms apart, a third of them up to 5 ms early, so about a
quarter late; the hash chain no longer verifies: a benchmark's database only). Then
every single filter is timed for a page of 50
of the house's history and of every account's records (the store's method, in-process):
p50 and p99 in ms. ``--migration`` times migration 0004's backfill and index builds on
that database (in a transaction rolled back). Run under ``flock /tmp/goledger-bench.lock``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.auth import token_digest
from app.ledger.filters import RecordFilter
from app.ledger.model import MAX_BATCH_ITEMS, BatchItem, Deadline, OperationType, Tag
from app.ledger.postgres import PostgresStore, schema
from app.ledger.records import metadata_text

SERVER = "postgresql://postgres@127.0.0.1:5432"
DATABASE = "goledger_bench_filters"
ACCOUNTS = 1_000
HOUSE = "house"
PAGE = 50


def _name(number: int) -> str:
    return f"user{number:04d}"


def _items(rng: random.Random, start: int) -> list[BatchItem]:
    items = []
    for number in range(start, start + MAX_BATCH_ITEMS):
        roll = rng.random()
        tag = Tag(f"order-{number}", metadata_text({"game": f"g{number % 10}", "round": number % 1000}))
        if roll < 0.35:
            items.append(BatchItem(OperationType.TRANSFER, rng.randint(1, 1000), HOUSE, tag))
        elif roll < 0.6:
            items.append(BatchItem(OperationType.DEPOSIT, rng.randint(1, 1000), None, tag))
        elif roll < 0.8:
            items.append(BatchItem(OperationType.WITHDRAWAL, rng.randint(1, 3000), None, tag))
        else:
            target = _name(rng.randrange(ACCOUNTS))
            items.append(BatchItem(OperationType.TRANSFER, rng.randint(1, 1000), target, None))
    return items


#: One record a millisecond, a third of them stamped up to 5 ms early (late, when earlier than
#: one before them); ``latest_at`` and the party rows' copies follow, as the store writes them.
_RESTAMP = (
    "UPDATE audit SET created_at = to_char(timestamp '2030-01-01' + sequence * interval '1 ms'"
    " - CASE WHEN random() < 0.33 THEN random() * interval '5 ms' ELSE interval '0' END,"
    ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')',
    "UPDATE audit AS a SET latest_at = CASE WHEN w.created_at < w.newest_before THEN w.newest_before END"
    " FROM (SELECT sequence, created_at, max(created_at) OVER (ORDER BY sequence"
    " ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newest_before FROM audit) AS w"
    " WHERE a.sequence = w.sequence",
    "UPDATE chain_head SET latest_at = (SELECT max(created_at) FROM audit)",
    "UPDATE audit_parties AS p SET created_at = a.created_at FROM audit AS a WHERE a.sequence = p.sequence",
)


def populate(url: str, records: int) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    store = PostgresStore(url, max_connections=2, sweep_interval_s=None, checkpoint_records=10**9)
    started = time.perf_counter()
    try:
        for name in [HOUSE, *(_name(number) for number in range(ACCOUNTS))]:
            store.create_account(name, token_digest(name), 10_000, deadline=Deadline.after_ms(5_000))
        rng = random.Random(7)
        written = ACCOUNTS + 1
        while written < records:
            caller = HOUSE if rng.random() < 0.05 else _name(rng.randrange(ACCOUNTS))
            items = _items(rng, written)
            store.batch(caller, items, atomic=False, deadline=Deadline.after_ms(120_000))
            written += len(items)
            print(f"\r{written:,} records, {time.perf_counter() - started:.0f} s", end="", flush=True)
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in _RESTAMP:
            connection.execute(statement.encode())
        connection.execute("VACUUM FULL")
        connection.execute("VACUUM ANALYZE")
    print(f"\npopulated in {time.perf_counter() - started:.0f} s")


def _timed(read: Callable[[], object], runs: int) -> tuple[float, float]:
    read()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def filters(url: str) -> dict[str, RecordFilter]:
    with psycopg.connect(url) as connection:
        bounds = connection.execute("SELECT min(created_at), max(created_at) FROM audit").fetchone()
        middle = connection.execute(
            "SELECT created_at FROM audit WHERE sequence = (SELECT max(sequence) / 2 FROM audit)"
        ).fetchone()
    if bounds is None or middle is None:
        raise SystemExit("populate first")
    low, high = bounds
    return {
        "none": RecordFilter(),
        "type=transfer": RecordFilter(types=frozenset({"transfer"})),
        "type=deposit": RecordFilter(types=frozenset({"deposit"})),
        "type=open": RecordFilter(types=frozenset({"open"})),
        "status=FAILED": RecordFilter(status="FAILED"),
        "counterparty": RecordFilter(counterparty=_name(42)),
        "created_after=middle": RecordFilter(created_after=middle[0]),
        "created_before=middle": RecordFilter(created_before=middle[0]),
        "created_before=oldest+1": RecordFilter(created_before=low),
        "created_after=newest": RecordFilter(created_after=high),
        "min_amount=995": RecordFilter(min_amount=995),
        "max_amount=3": RecordFilter(max_amount=3),
        "reference": RecordFilter(reference="order-500000"),
        "metadata game=g3": RecordFilter(metadata=(("game", "g3"),)),
        "metadata round=17 (int)": RecordFilter(metadata=(("round", "17"),)),
    }


def measure(url: str, runs: int) -> None:
    store = PostgresStore(url, max_connections=2, sweep_interval_s=None, migrate=False)
    try:
        print(f"| filter (page of {PAGE}) | history of {HOUSE} p50 / p99 ms | transactions p50 / p99 ms |")
        print("|---|---|---|")
        for label, where in filters(url).items():
            history = _timed(lambda w=where: store.history(HOUSE, limit=PAGE, cursor=None, where=w), runs)
            listing = _timed(lambda w=where: store.transactions(limit=PAGE, cursor=None, where=w), runs)
            print(f"| {label} | {history[0]:.2f} / {history[1]:.2f} | {listing[0]:.2f} / {listing[1]:.2f} |")
    finally:
        store.close()


def migration_cost(url: str) -> None:
    """Migration 0004's heavy statements (backfill, index builds) timed on this database, rolled back."""
    [migration] = [m for m in schema.migrations() if m.version == 4]
    body = migration.sql.split("-- goledger_append as in 0002")[0]
    body = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
    statements = [s.strip() for s in body.split(";") if "UPDATE" in s or "CREATE INDEX" in s]
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT count(*) FROM audit").fetchone()
        print(f"{rows[0] if rows else 0:,} records")
        for statement in statements:
            name = statement.split("\n")[-1][:70]
            if "UPDATE" in statement:
                name = "backfill " + statement.split("UPDATE ")[1].split(" ")[0]
            if "CREATE INDEX" in statement:
                index = statement.split("CREATE INDEX ")[1].split(" ")[0]
                connection.execute(f"DROP INDEX {index}")
            started = time.perf_counter()
            connection.execute(statement.encode())
            print(f"{time.perf_counter() - started:7.1f} s  {name}")
        connection.rollback()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populate", type=int, metavar="RECORDS", help="(re)build the database first")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--migration", action="store_true", help="time migration 0004's heavy statements")
    arguments = parser.parse_args()
    url = f"{SERVER}/{DATABASE}"
    if arguments.populate:
        populate(url, arguments.populate)
    if arguments.migration:
        migration_cost(url)
    else:
        measure(url, arguments.runs)


if __name__ == "__main__":
    main()
