"""MockDB in-process, one git revision against another, in alternated short runs.

For a change that must not cost speed (a refactor): both revisions are checked out
into temporary worktrees and measured by the same snippet, one short run each in
turn (A B A B ...), pinned to one CPU, each in a fresh process. The table gives the
median ops/s of each side and the median of the paired ratios (candidate / baseline).

    .venv/bin/python -m benchmarks.compare_revisions c29859d HEAD --rounds 9 --seconds 1
    .venv/bin/python -m benchmarks.compare_revisions 2fa6f81 HEAD --operations journal-batch --seconds 8

Operations: ``transfer``, ``deposit``, ``balance`` (a store in memory),
``journal-batch`` (batches of 8,189 transfers, each durable, on a fresh data directory)
and ``pg-transfer`` (transfers from 4 threads through the PostgreSQL store, on a database
created for the run at ``GOLEDGER_BENCH_PG``, default ``postgresql://postgres@127.0.0.1:5432``,
and dropped after it; not pinned: PostgreSQL's own backends need the other core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Runs inside a revision's tree: only the store API both revisions share.
_SNIPPET = r"""
import json, sys, time
sys.path.insert(0, ".")
from app.auth import token_digest
from app.ledger.memory import MockDB
from app.ledger.model import Deadline

operation, seconds = sys.argv[1], float(sys.argv[2])
database = None
if operation == "pg-transfer":
    import os, secrets, threading, psycopg
    from app.ledger.postgres.store import PostgresStore
    server = os.environ.get("GOLEDGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    database = "goledger_compare_" + secrets.token_hex(4)
    with psycopg.connect(server + "/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    store = PostgresStore(f"{server}/{database}", sweep_interval_s=None)
elif operation == "journal-batch":  # durable batches of 8,189 transfers on a data directory
    import tempfile
    from app.ledger.model import BatchItem, OperationType
    store = MockDB.open(tempfile.mkdtemp(prefix="goledger-compare-"))
else:
    store = MockDB()
names = [f"user{index}" for index in range(100)]
for name in names:
    store.create_account(name, token_digest(name), 10**12, deadline=Deadline.after_ms(5000))
deadline = Deadline.after_ms(600_000)
count = 0
started = time.perf_counter()
stop_at = started + seconds
while operation == "journal-batch" and time.perf_counter() < stop_at:
    payer = names[count % 100]
    items = [BatchItem(OperationType.TRANSFER, 1, names[(count + 1 + i % 99) % 100]) for i in range(8189)]
    store.batch(payer, items, atomic=False, deadline=deadline)
    count += len(items)
def transfers(lane, counts):
    done = 0
    while time.perf_counter() < stop_at:
        source, target = names[(lane * 31 + done) % 100], names[(lane * 17 + done * 7 + 1) % 100]
        if target == source:
            target = names[(done + 1) % 100]
        store.transfer(source, target, 1, deadline=deadline)
        done += 1
    counts.append(done)
if operation == "pg-transfer":
    counts = []
    lanes = [threading.Thread(target=transfers, args=(lane, counts)) for lane in range(4)]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join(seconds + 60)
    count = sum(counts)
while operation not in ("journal-batch", "pg-transfer") and time.perf_counter() < stop_at:
    for index in range(200):
        source, target = names[index % 100], names[(index * 7 + 1) % 100]
        if target == source:
            target = names[(index + 1) % 100]
        if operation == "transfer":
            store.transfer(source, target, 1, deadline=deadline)
        elif operation == "deposit":
            store.deposit(source, 1, deadline=deadline)
        else:
            store.account(source, deadline=deadline)
    count += 200
elapsed = time.perf_counter() - started
store.close()
if database is not None:
    with psycopg.connect(server + "/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
print(json.dumps({"ops_per_s": count / elapsed}))
"""


def _worktree(revision: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), revision], check=True
    )
    return into


def _run(tree: Path, operation: str, seconds: float, cpu: str) -> float:
    pinned = [] if operation == "pg-transfer" else ["taskset", "-c", cpu]
    result = subprocess.run(
        [*pinned, sys.executable, "-c", _SNIPPET, operation, str(seconds)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["ops_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "baseline", help="the git revision to compare against (e.g. a commit before a refactor)"
    )
    parser.add_argument("candidate", nargs="?", default="HEAD", help="the revision measured (default HEAD)")
    parser.add_argument("--rounds", type=int, default=9, help="alternated pairs of runs per operation")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--cpu", default="0", help="the CPU both sides are pinned to")
    parser.add_argument("--operations", nargs="+", default=["transfer", "deposit", "balance"])
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="goledger-compare-") as scratch:
        trees = {
            "baseline": _worktree(arguments.baseline, Path(scratch) / "baseline"),
            "candidate": _worktree(arguments.candidate, Path(scratch) / "candidate"),
        }
        try:
            print(
                f"MockDB in-process, 1 thread, {arguments.rounds} alternated pairs of {arguments.seconds} s "
                f"runs on CPU {arguments.cpu}: {arguments.candidate} against {arguments.baseline}\n"
            )
            print("| operation | baseline ops/s | candidate ops/s | candidate / baseline |")
            print("|---|---|---|---|")
            for operation in arguments.operations:
                ratios, sides = [], {"baseline": [], "candidate": []}
                for _ in range(arguments.rounds):
                    pair = {
                        side: _run(tree, operation, arguments.seconds, arguments.cpu)
                        for side, tree in trees.items()
                    }
                    for side, value in pair.items():
                        sides[side].append(value)
                    ratios.append(pair["candidate"] / pair["baseline"])
                print(
                    f"| {operation} | {statistics.median(sides['baseline']):,.0f} | "
                    f"{statistics.median(sides['candidate']):,.0f} | {statistics.median(ratios):.3f} "
                    f"({min(ratios):.2f} to {max(ratios):.2f}) |"
                )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                )


if __name__ == "__main__":
    main()
