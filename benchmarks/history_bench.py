"""A long history on the embedded store with a data directory: memory, start, pages, verification.

Builds (once; reused while ``DATA_DIR`` holds it) a ledger of ``--accounts`` accounts
and ``--records`` audit records, written as batches of 8,189 transfers through
``MockDB`` with its journal (every batch durable before the next starts), then
measures, each in a fresh process pinned to CPU 0:

* the start: ``MockDB.open`` (snapshot loaded, journal after it replayed), seconds
  (``--phase tail`` first leaves the longest journal a start can meet: the records of
  almost one checkpoint interval, written and then abandoned as a crash would);
* the resident set size after the start and after the page reads (``VmRSS``, and the
  peak ``VmHWM``);
* history pages (``limit=50``, first pages and the pages behind their cursors) of
  random accounts and audit pages at random places, whose records are all older than
  the record cache (a cold cache: read from the journal), p50 and p99 in ms;
* ``verify(from_sequence=<last checkpoint>)`` and, unless ``--no-full-verify``, a full
  verification streamed over every record. A measuring process leaves the directory
  as it found it (it is not closed, so no snapshot is taken at its end).

The build also reports the durable batch throughput (transfers a second, one batch
at a time). Run::

    .venv/bin/python -m benchmarks.history_bench DIR --phase build --accounts 100000 --records 10000000
    .venv/bin/python -m benchmarks.history_bench DIR --phase tail
    .venv/bin/python -m benchmarks.history_bench DIR --phase all --records 0 --runs 3
    .venv/bin/python -m benchmarks.history_bench DIR --phase service

Figures and the machine they were taken on are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8189


def _rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def build(directory: Path, accounts: int, records: int) -> dict[str, float]:
    from app.auth import token_digest
    from app.ledger.memory import MockDB
    from app.ledger.model import BatchItem, Deadline, OperationType

    store = MockDB.open(directory)
    try:
        names = [f"user{index:06d}" for index in range(accounts)]
        existing = store.stats().accounts
        digest = token_digest("bench")
        started = time.perf_counter()

        def open_some(chunk: list[str]) -> None:
            for name in chunk:
                store.create_account(name, digest, 10**12, deadline=Deadline.after_ms(60_000))

        if existing < accounts:  # many threads share each sync (group commit)
            todo = names[existing:]
            threads = [threading.Thread(target=open_some, args=(todo[index::32],)) for index in range(32)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(3600)
        opened_s = time.perf_counter() - started
        rng = random.Random(1)
        written = 0
        started = time.perf_counter()
        batch_seconds: list[float] = []
        while store.stats().audit_records < records:
            payer = rng.choice(names)
            items = [BatchItem(OperationType.TRANSFER, 1, rng.choice(names)) for _ in range(BATCH)]
            items = [item for item in items if item.target != payer]
            began = time.perf_counter()
            store.batch(payer, items, atomic=False, deadline=Deadline.after_ms(60_000))
            batch_seconds.append(time.perf_counter() - began)
            written += len(items)
            if len(batch_seconds) % 100 == 0:
                print(f"  {store.stats().audit_records:,} records", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - started
        thread = store.snapshot_thread
        if thread is not None:
            thread.join(3600)
        return {
            "accounts_opened_s": opened_s,
            "transfers_written": written,
            "durable_batch_transfers_per_s": written / elapsed if elapsed else 0.0,
            "median_batch_transfers_per_s": BATCH / statistics.median(batch_seconds)
            if batch_seconds
            else 0.0,
        }
    finally:
        store.close()


def leave_a_tail(directory: Path) -> dict[str, float]:
    """Write batches until the next checkpoint is one batch away, then stop as a crash would
    (no snapshot at shutdown): the next start replays the most journal it ever meets."""
    from app.ledger.memory import MockDB
    from app.ledger.model import BatchItem, Deadline, OperationType

    store = MockDB.open(directory)
    stats = store.stats()
    names = [f"user{index:06d}" for index in range(stats.accounts)]
    rng = random.Random(3)
    points = store.checkpoints(limit=1, cursor=None).checkpoints
    since = points[0].sequence if points else 0
    due = since + store._durability.checkpoint_records  # when the next snapshot would start
    while store.stats().audit_records + 2 * BATCH < due:
        payer = rng.choice(names)
        items = [BatchItem(OperationType.TRANSFER, 1, rng.choice(names)) for _ in range(BATCH)]
        store.batch(payer, [item for item in items if item.target != payer], atomic=False,
                    deadline=Deadline.after_ms(60_000))  # fmt: skip
    tail = store.stats().audit_records - since
    print(json.dumps({"tail_records": tail}), flush=True)
    os._exit(0)  # every batch is durable; no clean shutdown, so no snapshot of the tail


def measure(directory: Path, samples: int, full_verify: bool) -> dict[str, float]:
    from app.ledger.memory import MockDB

    started = time.perf_counter()
    store = MockDB.open(directory)
    start_s = time.perf_counter() - started
    try:
        rss_open, _ = _rss_mb()
        if store.chain_check is not None:
            store.chain_check.join(600)
        stats = store.stats()
        total, accounts = stats.audit_records, stats.accounts
        cached = store._trail.cached()  # how much of the history is in memory
        cold_below = total - cached
        rng = random.Random(2)
        names = [f"user{index:06d}" for index in range(accounts)]
        history_ms: list[float] = []
        for _ in range(samples):
            name = rng.choice(names)
            began = time.perf_counter()
            page = store.history(name, limit=50, cursor=None)
            history_ms.append((time.perf_counter() - began) * 1000)
            if page.next_cursor is not None:
                began = time.perf_counter()
                store.history(name, limit=50, cursor=page.next_cursor)
                history_ms.append((time.perf_counter() - began) * 1000)
        audit_ms: list[float] = []
        from app.ledger import rules

        for _ in range(samples):
            after = rng.randrange(0, max(1, cold_below - 60))
            cursor = rules.encode_cursor("a", after) if after else None
            began = time.perf_counter()
            store.audit_page(limit=50, cursor=cursor)
            audit_ms.append((time.perf_counter() - began) * 1000)
        rss_pages, _ = _rss_mb()
        # From the last checkpoint: after ``--phase tail``, almost one checkpoint interval of
        # records to check, the most a verification from the last checkpoint meets.
        points = store.checkpoints(limit=1, cursor=None).checkpoints
        verify_from_s = float("nan")
        verified_from = 0
        if points:
            began = time.perf_counter()
            report = store.verify(from_sequence=points[0].sequence)
            verify_from_s = time.perf_counter() - began
            verified_from = report.records
            assert report.ok, report.problems
        full_s = float("nan")
        if full_verify:
            began = time.perf_counter()
            report = store.verify()
            full_s = time.perf_counter() - began
            assert report.ok, report.problems[:5]
        rss_end, peak_end = _rss_mb()

        def p(values: list[float], q: float) -> float:
            return statistics.quantiles(values, n=100)[int(q) - 1]

        return {
            "records": total,
            "accounts": accounts,
            "records_in_memory": cached,
            "start_s": start_s,
            "rss_after_start_mb": rss_open,
            "rss_after_pages_mb": rss_pages,
            "rss_after_verify_mb": rss_end,
            "rss_peak_mb": peak_end,
            "history_p50_ms": p(history_ms, 50),
            "history_p99_ms": p(history_ms, 99),
            "audit_p50_ms": p(audit_ms, 50),
            "audit_p99_ms": p(audit_ms, 99),
            "verify_from_checkpoint_s": verify_from_s,
            "verify_from_checkpoint_records": verified_from,
            "full_verify_s": full_s,
            "journal_gb": sum(path.stat().st_size for path in directory.glob("journal-*.log")) / 1e9,
        }
    finally:
        # No close: a clean shutdown would snapshot the journal tail away, and the next
        # run would start from a snapshot with nothing to replay. Everything is durable.
        store.stop_sweeper()


def service(directory: Path, samples: int) -> dict[str, float]:
    """The service as it ships (gunicorn.conf.py, log level INFO) on the data directory:
    seconds until it answers, the worker's RSS, history pages over HTTP (p50/p99 ms),
    ``/admin/verify?from=`` the checkpoint before the newest."""
    import http.client

    from benchmarks.common import Server, request_json

    began = time.perf_counter()
    with Server(log_level="INFO", extra_env={"LEDGER_DATA_DIR": str(directory)}) as server:
        ready_s = time.perf_counter() - began
        pid = server.worker_pid()

        def rss() -> float:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            return float("nan")

        rss_start = rss()
        rng = random.Random(4)
        admin = {"Authorization": server.admin_token}
        status, body = request_json(server.base_url, "GET", "/admin/audit/checkpoints?limit=1", headers=admin)
        assert status == 200, body
        host, port = server.base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        latencies: list[float] = []
        for _ in range(samples):
            name = f"user{rng.randrange(100_000):06d}"
            began = time.perf_counter()
            status, page = request_json(
                server.base_url,
                "GET",
                f"/account/transactions?username={name}&limit=50",
                headers={"Authorization": "bench"},
                connection=connection,
            )
            latencies.append((time.perf_counter() - began) * 1000)
            assert status == 200, page
        point = body["checkpoints"][0]["sequence"]  # the last checkpoint
        began = time.perf_counter()
        status, report = request_json(
            server.base_url, "GET", f"/admin/verify?from={point}", headers=admin, timeout_s=600
        )
        verify_s = time.perf_counter() - began
        assert status == 200, report
        quantiles = statistics.quantiles(latencies, n=100)
        return {
            "service_ready_s": ready_s,
            "worker_rss_after_start_mb": rss_start,
            "worker_rss_after_pages_mb": rss(),
            "http_history_p50_ms": quantiles[49],
            "http_history_p99_ms": quantiles[98],
            "http_verify_from_checkpoint_s": verify_s,
            "http_verify_from_checkpoint_records": report["records"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3, help="measuring processes (median reported)")
    parser.add_argument("--no-full-verify", action="store_true")
    phases = ("all", "build", "measure", "tail", "service")
    parser.add_argument("--phase", choices=phases, default="all")
    args = parser.parse_args()
    if args.phase == "build" or (args.phase == "all" and args.records):
        built = build(args.data_dir, args.accounts, args.records)
        print(json.dumps({"build": built}), flush=True)
    if args.phase == "tail":
        leave_a_tail(args.data_dir)
    if args.phase == "service":
        print(json.dumps(service(args.data_dir, args.samples)), flush=True)
        return
    if args.phase == "measure":
        print(json.dumps(measure(args.data_dir, args.samples, not args.no_full_verify)), flush=True)
        return
    if args.phase == "all":
        runs = []
        for run in range(args.runs):
            command = [
                *(sys.executable, "-m", "benchmarks.history_bench", str(args.data_dir)),
                *("--phase", "measure", "--samples", str(args.samples)),
            ]
            if args.no_full_verify or run > 0:
                command.append("--no-full-verify")
            output = subprocess.run(
                ["taskset", "-c", "0", *command], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        medians = {
            key: statistics.median(run[key] for run in runs if run[key] == run[key])
            for key in runs[0]
            if any(run[key] == run[key] for run in runs)
        }
        print(json.dumps({"median": medians}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
