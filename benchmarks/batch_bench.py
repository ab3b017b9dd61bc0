"""Transfers/s through ``POST /account/coins/batch`` against single-transfer requests.

One service (``wsgi:app``, the project's ``gunicorn.conf.py``, as shipped: the request
log on, its lines written to the server's log file; ``--journal``: with a fresh
``LEDGER_DATA_DIR``, so every request waits for its journal sync) on CPU 0 with a pool
of accounts; wrk (one thread on CPU 1) sends non-atomic batches
of N 1-coin transfers from a random pool user to random other pool users
(``{"atomic": false, "operations": [{"type": "transfer", "to": ..., "amount": 1}, ...]}``),
for N = 1, 10, 100, 1000 and 8189 (the contract's maximum), alternated with runs of
single ``POST /account/coins/transfer`` requests on the same server. Each batch
size is checked first with one request: 200, ``succeeded == N``, ``failed == 0``.

Batches queue behind each other on the store's one write lock, so batch requests
carry ``X-Timeout-Ms: 60000`` (the contract's maximum) and wrk waits up to 60 s.

Run: ``.venv/bin/python benchmarks/batch_bench.py [--quick] [--journal] [--sizes 8189]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    CLIENT_CPU,
    DEFAULT_THREADS,
    PoolUser,
    Server,
    Spread,
    WrkResult,
    create_pool,
    fmt_ms,
    fmt_ratio,
    fmt_spread,
    markdown_table,
    paired_ratios,
    pin_to_cpu,
    progress,
    request_json,
    run_wrk,
    verify_ledger,
    wait_idle,
    write_pool_file,
)

SIZES = (1, 10, 100, 1000, 8189)
BATCH_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    connections: int
    pool_size: int

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        return cls(3, 1, 8, 200) if quick else cls(3, 3, 8, 1000)


@dataclass(frozen=True)
class SizeResult:
    size: int
    batch: list[WrkResult]
    single: list[WrkResult]

    def batch_transfers(self) -> list[float]:
        return [run.rps * self.size for run in self.batch]

    def single_transfers(self) -> list[float]:
        return [run.rps for run in self.single]


def check_batch(server: Server, users: Sequence[PoolUser], size: int) -> str | None:
    """One batch of ``size`` transfers; ``None`` if it answered as the contract says, else why not."""
    caller = random.choice(users)
    others = [user for user in users if user != caller]
    body = {
        "atomic": False,
        "operations": [
            {"type": "transfer", "to": random.choice(others).username, "amount": 1} for _ in range(size)
        ],
    }
    status, answer = request_json(
        server.base_url,
        "POST",
        f"/account/coins/batch?username={caller.username}",
        headers={"Authorization": caller.token, "X-Timeout-Ms": "60000"},
        body=body,
        timeout_s=BATCH_TIMEOUT_S,
    )
    if status != 200 or not isinstance(answer, dict):
        return f"status {status}: {str(answer)[:200]}"
    results = answer.get("results")
    if answer.get("succeeded") != size or answer.get("failed") != 0 or len(results or []) != size:
        return f"succeeded {answer.get('succeeded')}, failed {answer.get('failed')} of {size}"
    return None


def benchmark(settings: Settings, sizes: Sequence[int] = SIZES, *, journal: bool = False) -> str:
    results: list[SizeResult] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="goledger-batch-") as directory:
        data_dir = {"LEDGER_DATA_DIR": str(Path(directory) / "data")} if journal else {}
        with Server("wsgi:app", log_level="INFO", extra_env=data_dir) as server:
            _measure(settings, sizes, server, Path(directory), results, problems)
    return render(settings, results, problems, journal=journal)


def _measure(
    settings: Settings,
    sizes: Sequence[int],
    server: Server,
    directory: Path,
    results: list[SizeResult],
    problems: list[str],
) -> None:
    progress(f"batch: opening {settings.pool_size} accounts")
    users = create_pool(server, settings.pool_size)
    pool = write_pool_file(users, directory)
    missing = check_batch(server, users, 1)
    if missing is not None:
        problems.append(f"`POST /account/coins/batch` does not work yet ({missing}).")
        return
    run_wrk(server.base_url, pool, mode="transfer", connections=settings.connections, duration_s=2)
    for size in sizes:
        problem = check_batch(server, users, size)
        if problem is not None:
            problems.append(f"Not measured: batch of {size}: {problem}")
            continue
        batch_runs: list[WrkResult] = []
        single_runs: list[WrkResult] = []
        for round_number in range(settings.rounds):
            progress(f"batch: {size} items, round {round_number + 1}/{settings.rounds}")
            batch_runs.append(
                run_wrk(
                    server.base_url,
                    pool,
                    mode="batch",
                    batch_size=size,
                    connections=settings.connections,
                    duration_s=settings.seconds,
                    timeout_s=BATCH_TIMEOUT_S,
                )
            )
            wait_idle(server, users[0])
            single_runs.append(
                run_wrk(
                    server.base_url,
                    pool,
                    mode="transfer",
                    connections=settings.connections,
                    duration_s=settings.seconds,
                )
            )
            wait_idle(server, users[0])
        results.append(SizeResult(size, batch_runs, single_runs))
    progress("batch: verifying the ledger")
    problems.append(verify_ledger(server))


def render(
    settings: Settings, results: Sequence[SizeResult], problems: Sequence[str], *, journal: bool = False
) -> str:
    rows = []
    for result in results:
        errors = sum(run.errors for run in result.batch + result.single)
        rows.append(
            [
                str(result.size),
                fmt_spread(Spread.of(result.batch_transfers())),
                fmt_spread(Spread.of(result.single_transfers())),
                fmt_spread(
                    Spread.of(paired_ratios(result.batch_transfers(), result.single_transfers())), fmt_ratio
                ),
                fmt_spread(Spread.of([run.rps for run in result.batch]), _fmt_rate),
                fmt_spread(Spread.of([run.p50_ms for run in result.batch]), fmt_ms),
                fmt_spread(Spread.of([run.p99_ms for run in result.batch]), fmt_ms),
                str(errors),
            ]
        )
    parts = [
        "### Batch: `POST /account/coins/batch` against single transfers",
        f"Non-atomic batches of N 1-coin transfers from a random user to random users of a pool "
        f"of {settings.pool_size}; wrk, one thread on CPU 1, {settings.connections} connections; "
        f"{settings.rounds} alternated runs of {settings.seconds:g} s of batches and of single "
        f"`POST /account/coins/transfer` requests on the same server (gthread, {DEFAULT_THREADS} threads, "
        "the request log on as shipped"
        + (", `LEDGER_DATA_DIR` set: every request waits for its journal sync" if journal else "")
        + "). Each size was first checked with one request: 200, "
        "`succeeded == N`, `failed == 0`.",
    ]
    if rows:
        parts.append(
            markdown_table(
                [
                    "items per request",
                    "batch transfers/s",
                    "single-request transfers/s",
                    "batch / single",
                    "batch requests/s",
                    "batch p50 ms",
                    "batch p99 ms",
                    "errors",
                ],
                rows,
            )
        )
    parts += problems
    return "\n\n".join(parts)


def _fmt_rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs and a smaller pool")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds per size (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="length of one wrk run")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="items per request")
    parser.add_argument("--journal", action="store_true", help="the service with a LEDGER_DATA_DIR")
    args = parser.parse_args(argv)
    settings = Settings.defaults(args.quick)
    overrides = {name: value for name, value in (("rounds", args.rounds), ("seconds", args.seconds)) if value}
    settings = dataclasses.replace(settings, **overrides)
    pin_to_cpu(CLIENT_CPU)  # this orchestrator stays off the server's CPU
    section = benchmark(settings, args.sizes, journal=args.journal)
    print(section)
    return section


if __name__ == "__main__":
    main()
