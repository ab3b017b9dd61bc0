"""Filtered history and ``/admin/transactions`` pages on a ledger of a million records.

Builds (once; reused while the store holds it) a ledger of ``--records`` audit
records whose busiest account (``whale``) is in almost all of them: batches of 8,189
items of ``whale`` (transfers to 200 other accounts, some deposits and withdrawals,
some withdrawals refused: FAILED records), amounts 1..10,000, a reference on one
item in 1,000 and metadata on about one in ten (``channel``; ``campaign`` on one in
1,000). Then, for each filter alone (some that match almost everything, some that
match little or nothing: a type, a status, a counterparty, a time bound, an amount
bound, a reference, a metadata pair), it measures ``--samples`` calls of
``history("whale", limit=50)`` and of ``transactions(limit=50)``, each from a
random place (a cursor at a random record; a first page now and then), and prints
p50 and p99 in ms.

``--store`` is a data directory for the embedded store (built with ``MockDB.open``;
the first filtered read waits for its index to catch up, reported as
``index_catch_up_s``) or a ``postgresql://`` URL (``PostgresStore``, migrated). A
store that refuses filters is reported as such. Run::

    flock /tmp/goledger-bench.lock .venv/bin/python -m benchmarks.filter_bench --store /tmp/filter-bench
    flock /tmp/goledger-bench.lock .venv/bin/python -m benchmarks.filter_bench \\
        --store postgresql://127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from app.auth import token_digest
from app.ledger import rules
from app.ledger.errors import LedgerError
from app.ledger.filters import RecordFilter
from app.ledger.model import BatchItem, Deadline, OperationType, Page, Tag
from app.ledger.records import metadata_text
from app.ledger.store import LedgerStore
from benchmarks.common import fmt_ms, markdown_table

BATCH = 8189
WHALE = "whale"
OTHERS = tuple(f"user{number:03d}" for number in range(200))
PAGE = 50


def open_store(location: str) -> LedgerStore:
    if location.startswith("postgresql://"):
        from app.ledger.postgres import PostgresStore

        return PostgresStore(location, max_connections=4)
    from app.ledger.memory import MockDB

    return MockDB.open(location)


def _deadline() -> Deadline:
    return Deadline.after_ms(120_000)


def _item(rng: random.Random, number: int) -> BatchItem:
    """One of whale's operations: mostly transfers; one in 50 a withdrawal too large (FAILED)."""
    draw = rng.random()
    amount = rng.randint(1, 10_000)
    reference = f"order-{number}" if number % 1000 == 0 else None
    metadata = None
    if number % 1000 == 1:
        metadata = metadata_text({"campaign": "spring", "channel": "web"})
    elif number % 10 == 2:
        metadata = metadata_text({"channel": rng.choice(("web", "app"))})
    tag = None if reference is None and metadata is None else Tag(reference, metadata)
    if draw < 0.90:
        return BatchItem(OperationType.TRANSFER, amount, rng.choice(OTHERS), tag)
    if draw < 0.95:
        return BatchItem(OperationType.DEPOSIT, amount, None, tag)
    if draw < 0.98:
        return BatchItem(OperationType.WITHDRAWAL, amount, None, tag)
    return BatchItem(OperationType.WITHDRAWAL, 10**15, None, tag)  # refused: a FAILED record


def build(store: LedgerStore, records: int) -> dict[str, float]:
    """Fill the store up to ``records`` audit records (what it holds already counts)."""
    started = time.perf_counter()
    if store.is_empty():
        for name in (WHALE, *OTHERS):
            store.create_account(name, token_digest("bench"), 10**14, deadline=_deadline())
    rng = random.Random(1)
    written = store.stats().audit_records
    while written < records:
        items = [_item(rng, written + number) for number in range(min(BATCH, records - written))]
        store.batch(WHALE, items, atomic=False, deadline=_deadline())
        written += len(items)
        if written // BATCH % 20 == 0:
            print(f"  {written:,} records", file=sys.stderr, flush=True)
    return {"build_s": time.perf_counter() - started, "records": written}


def filters(store: LedgerStore, total: int) -> dict[str, RecordFilter]:
    """The filters measured, each on one field; times taken from the ledger's own records."""

    def created_at(sequence: int) -> str:
        cursor = rules.encode_cursor("a", sequence - 1) if sequence > 1 else None
        return store.audit_page(limit=1, cursor=cursor).transactions[0].created_at

    median, recent = created_at(total // 2), created_at(total - 2 * BATCH)
    return {
        "type=transfer (most)": RecordFilter(types=frozenset({"transfer"})),
        "type=withdrawal,deposit": RecordFilter(types=frozenset({"withdrawal", "deposit"})),
        "type=void (none)": RecordFilter(types=frozenset({"void"})),
        "status=SUCCESS": RecordFilter(status="SUCCESS"),
        "status=FAILED (2%)": RecordFilter(status="FAILED"),
        "counterparty=user042 (0.5%)": RecordFilter(counterparty="user042"),
        "counterparty=nobody": RecordFilter(counterparty="nobody"),
        "created_after=recent": RecordFilter(created_after=recent),
        "created_after=median": RecordFilter(created_after=median),
        "created_before=median": RecordFilter(created_before=median),
        "min_amount=1 (all)": RecordFilter(min_amount=1),
        "min_amount=9990 (0.1%)": RecordFilter(min_amount=9990),
        "max_amount=10 (0.1%)": RecordFilter(max_amount=10),
        "max_amount=5000 (half)": RecordFilter(max_amount=5000),
        "reference=order-5000 (one)": RecordFilter(reference="order-5000"),
        "reference=missing": RecordFilter(reference="missing"),
        "metadata.campaign=spring (0.1%)": RecordFilter(metadata=(("campaign", "spring"),)),
        "metadata.channel=web (5%)": RecordFilter(metadata=(("channel", "web"),)),
        "metadata.channel=none": RecordFilter(metadata=(("channel", "none"),)),
    }


def measure(call: Callable[[str | None], Page], cursors: list[str | None]) -> tuple[float, float, int]:
    """p50 and p99 (ms) of ``call`` at each cursor, and the records the first page showed."""
    timings: list[float] = []
    shown = 0
    for cursor in cursors:
        began = time.perf_counter()
        page = call(cursor)
        timings.append((time.perf_counter() - began) * 1000)
        if cursor is None:
            shown = len(page.transactions)
    quantiles = statistics.quantiles(timings, n=100)
    return quantiles[49], quantiles[98], shown


def run(store: LedgerStore, total: int, samples: int) -> list[dict[str, Any]]:
    rng = random.Random(2)
    first = len(OTHERS) + 2  # the accounts' openings come first; whale is in every record after
    history_cursors = [
        None if number % 10 == 0 else rules.encode_cursor("h", rng.randint(first, total))
        for number in range(samples)
    ]
    admin_cursors = [
        None if number % 10 == 0 else rules.encode_cursor("t", rng.randint(0, total))
        for number in range(samples)
    ]
    results = []
    for name, where in filters(store, total).items():
        row: dict[str, Any] = {"filter": name}
        for view, call, cursors in (
            (
                "history",
                lambda cursor, where=where: store.history(WHALE, limit=PAGE, cursor=cursor, where=where),
                history_cursors,
            ),
            (
                "transactions",
                lambda cursor, where=where: store.transactions(limit=PAGE, cursor=cursor, where=where),
                admin_cursors,
            ),
        ):
            try:
                p50, p99, shown = measure(call, cursors)
            except LedgerError as error:
                row[view] = f"refused: {error}"
                continue
            row[view] = {"p50_ms": p50, "p99_ms": p99, "first_page": shown}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    def cells(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value, "", ""]
        return [fmt_ms(value["p50_ms"]), fmt_ms(value["p99_ms"]), str(value["first_page"])]

    rows = [[row["filter"], *cells(row["history"]), *cells(row["transactions"])] for row in results]
    headers = ["filter", "history p50", "p99", "1st page", "admin p50", "p99", "1st page"]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="a data directory or a postgresql:// URL")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=500, help="calls per filter and view")
    args = parser.parse_args()
    store = open_store(args.store)
    try:
        built = build(store, args.records)
        print(json.dumps(built), flush=True)
        total = store.stats().audit_records
        began = time.perf_counter()
        try:  # the embedded store's index catches up with the ledger on its first filtered read
            store.transactions(limit=1, cursor=None, where=RecordFilter(status="FAILED"))
            print(json.dumps({"index_catch_up_s": time.perf_counter() - began}), flush=True)
        except LedgerError as error:
            print(json.dumps({"filters_refused": str(error)}), flush=True)
        print(table(run(store, total, args.samples)))
    finally:
        store.close()


if __name__ == "__main__":
    main()
