"""``balance_at``: an account's balance at a past point, on a ledger of a million records.

Builds (once, with ``benchmarks.filter_bench``'s builder; reused while the store holds
it) a ledger of ``--records`` audit records whose busiest account (``whale``) is in
almost all of them, then measures ``--samples`` calls of
``balance_at("whale", sequence=N)`` at random sequences and as many of
``balance_at("whale", at=T)`` at random times (a random record's ``created_at``, moved
by up to a millisecond either way: on, between and around records), and prints p50
and p99 in ms. A few answers are checked against the record they name.

``--store`` is a data directory for the embedded store (the first call waits for its
record index to catch up, which now replays every balance: ``index_catch_up_s``) or a
``postgresql://`` URL (``PostgresStore``, migrated). Run::

    flock /tmp/goledger-bench.lock .venv/bin/python -m benchmarks.balance_at_bench \\
        --store /tmp/balance-at-bench
    flock /tmp/goledger-bench.lock .venv/bin/python -m benchmarks.balance_at_bench \\
        --store postgresql://postgres@127.0.0.1:5432/goledger_bench_balance_at
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import psycopg

from app.ledger import rules
from app.ledger.model import BalanceAt
from app.ledger.store import LedgerStore
from benchmarks.common import fmt_ms, markdown_table
from benchmarks.filter_bench import WHALE, build, open_store

#: How many records' times the random times are drawn around.
STAMPS = 500


def _created_at(store: LedgerStore, sequence: int) -> str:
    cursor = rules.encode_cursor("a", sequence - 1) if sequence > 1 else None
    return store.audit_page(limit=1, cursor=cursor).transactions[0].created_at


def _moved(stamp: str, microseconds: int) -> str:
    moment = datetime.fromisoformat(stamp.removesuffix("Z")) + timedelta(microseconds=microseconds)
    return moment.isoformat(timespec="microseconds") + "Z"


def measure(call: Callable[[], BalanceAt], samples: int) -> tuple[float, float]:
    """p50 and p99 (ms) of ``samples`` calls."""
    timings = []
    for _ in range(samples):
        began = time.perf_counter()
        call()
        timings.append((time.perf_counter() - began) * 1000)
    cuts = statistics.quantiles(timings, n=100)
    return statistics.median(timings), cuts[98]


def run(store: LedgerStore, total: int, samples: int) -> list[list[str]]:
    rng = random.Random(2)
    stamps = [_created_at(store, rng.randint(1, total)) for _ in range(STAMPS)]
    sequences = iter([rng.randint(1, total) for _ in range(samples)])
    times = iter([_moved(rng.choice(stamps), rng.randint(-1000, 1000)) for _ in range(samples)])
    for _ in range(5):  # answers name the record they are as of: spot-check a few
        found = store.balance_at(WHALE, sequence=rng.randint(1, total))
        named = store.audit_page(limit=1, cursor=rules.encode_cursor("a", found.sequence - 1)).transactions[0]
        if named.balance_after(WHALE) not in (None, found.balance) or named.created_at != found.created_at:
            raise SystemExit(f"balance_at answered {found}, but record {found.sequence} is {named}")
    by_sequence = measure(lambda: store.balance_at(WHALE, sequence=next(sequences)), samples)
    by_time = measure(lambda: store.balance_at(WHALE, at=next(times)), samples)
    return [
        ["sequence=N (random)", fmt_ms(by_sequence[0]), fmt_ms(by_sequence[1])],
        ["at=T (random)", fmt_ms(by_time[0]), fmt_ms(by_time[1])],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="a data directory or a postgresql:// URL")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=5_000, help="calls per kind of point")
    args = parser.parse_args()
    store = open_store(args.store)
    try:
        print(json.dumps(build(store, args.records)), flush=True)
        if args.store.startswith("postgresql://"):
            # Fresh statistics, as autovacuum would have them: right after a bulk load the planner
            # guesses the late records' branch large and runs it in parallel (a worker: ~3 ms).
            with psycopg.connect(args.store, autocommit=True) as connection:
                connection.execute("ANALYZE")
        total = store.stats().audit_records
        began = time.perf_counter()
        store.balance_at(WHALE, sequence=total)  # the embedded store's index catches up first
        print(json.dumps({"records": total, "index_catch_up_s": time.perf_counter() - began}), flush=True)
        print(markdown_table(["balance_at(whale, ...)", "p50", "p99"], run(store, total, args.samples)))
    finally:
        store.close()


if __name__ == "__main__":
    main()
