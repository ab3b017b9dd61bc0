"""One atomic batch of 8,189 transfers (the contract's largest) through the PostgreSQL store.

In-process (``PostgresStore.batch``), on a database of its own made for the run and
dropped after it: two warm-ups, then ``--runs`` timed batches from one account to
another, each one transaction (every record and party row, so every index insert,
under the chain head's lock). Prints each time, the median and the maximum in ms.
Runs against whatever ``app`` package is first on ``sys.path``, so an older revision
can be timed with ``PYTHONPATH=<its tree>``. Run under ``flock /tmp/goledger-bench.lock``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg

if __package__ in (None, ""):  # run as a script: make ``app`` importable
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from app.auth import token_digest
from app.ledger.model import MAX_BATCH_ITEMS, BatchItem, Deadline, OperationType
from app.ledger.postgres import PostgresStore

SERVER = "postgresql://postgres@127.0.0.1:5432"


def measure(url: str, runs: int) -> list[float]:
    store = PostgresStore(url, max_connections=2, sweep_interval_s=None, checkpoint_records=10**9)
    try:
        for name in ("payer", "payee"):
            store.create_account(name, token_digest(name), 10**12, deadline=Deadline.after_ms(5_000))
        items = [BatchItem(OperationType.TRANSFER, 1, "payee")] * MAX_BATCH_ITEMS
        times = []
        for run in range(runs + 2):
            started = time.perf_counter()
            store.batch("payer", items, atomic=True, deadline=Deadline.after_ms(60_000))
            if run >= 2:
                times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--server", default=SERVER)
    arguments = parser.parse_args()
    database = f"goledger_batch_{secrets.token_hex(4)}"
    with psycopg.connect(f"{arguments.server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        times = measure(f"{arguments.server}/{database}", arguments.runs)
    finally:
        with psycopg.connect(f"{arguments.server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
    print(" ".join(f"{value:.0f}" for value in times))
    print(f"median {statistics.median(times):.0f} ms, max {max(times):.0f} ms ({len(times)} batches)")


if __name__ == "__main__":
    main()
