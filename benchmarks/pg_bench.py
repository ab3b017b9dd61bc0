"""Transfers/s with the PostgreSQL store at 1, 2 and 4 gunicorn workers, uniform and hot-account.

Each worker count gets a fresh gunicorn (``wsgi:app``, the project's
``gunicorn.conf.py``, ``LEDGER_STORE`` = a database this script creates and drops,
``GUNICORN_WORKERS`` = 1, 2, 4, 8 threads each); beside it, for the whole run, the
memory store with its one worker as the baseline. wrk (one thread on CPU 1) sends
1-coin transfers, alternating candidate and baseline runs:

* **uniform**: between random users of a pool;
* **hot**: every transfer pays the pool's first user (a merchant), from random
  customers — every transaction locks that one row.

Unlike the other benchmarks, the servers are not pinned to CPU 0: several worker
processes on one core would measure nothing, and PostgreSQL's own backends need a
core too. On a 2-core machine the workers, PostgreSQL and wrk all share both cores,
so the figures say how the store behaves when CPU is the limit, not how far it
scales on a real server (see the README).

Run: ``.venv/bin/python benchmarks/pg_bench.py [--quick] [--workers 1 2 4]``; needs a
PostgreSQL server at ``--server`` (default ``postgresql://postgres@127.0.0.1:5432``).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

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
    run_wrk,
    verify_ledger,
    wait_idle,
    write_pool_file,
)

WORKER_COUNTS = (1, 2, 4)
MODES = ("uniform", "hot")
#: The servers may use both cores (see the module docstring).
SERVER_CPUS = "0,1"
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432"


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    connections: int
    pool_size: int

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        return cls(3, 2, 32, 200) if quick else cls(5, 4, 32, 1000)


@dataclass
class Runs:
    candidate: dict[str, list[WrkResult]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    baseline: dict[str, list[WrkResult]] = field(default_factory=lambda: {mode: [] for mode in MODES})


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"goledger_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server_url}/{name}"
    finally:
        with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _measure(
    server: Server, pool: Path, probe: PoolUser, mode: str, connections: int, seconds: float
) -> WrkResult:
    """One wrk run of ``mode`` (uniform or hot), then wait until the server is idle again."""
    result = run_wrk(
        server.base_url,
        pool,
        mode="transfer" if mode == "uniform" else "hot",
        connections=connections,
        duration_s=seconds,
    )
    wait_idle(server, probe)
    return result


def benchmark(settings: Settings, server_url: str, worker_counts: Sequence[int]) -> str:
    results: dict[int, Runs] = {}
    checks: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="goledger-pg-") as directory,
        scratch_database(server_url) as url,
        Server("wsgi:app", threads=DEFAULT_THREADS, cpu=SERVER_CPUS) as baseline,
    ):
        progress(f"pg: opening {settings.pool_size} accounts on the memory baseline")
        baseline_users = create_pool(baseline, settings.pool_size)
        baseline_dir = Path(directory) / "memory"
        baseline_dir.mkdir()
        baseline_pool = write_pool_file(baseline_users, baseline_dir)
        for workers in worker_counts:
            env = {
                "LEDGER_STORE": url,
                "GUNICORN_WORKERS": str(workers),
                "LEDGER_PG_POOL_SIZE": str(DEFAULT_THREADS),
            }
            runs = results[workers] = Runs()
            with Server("wsgi:app", threads=DEFAULT_THREADS, cpu=SERVER_CPUS, extra_env=env) as candidate:
                users = create_pool(candidate, settings.pool_size)
                setting_dir = Path(directory) / f"workers-{workers}"
                setting_dir.mkdir()
                pool = write_pool_file(users, setting_dir)
                _measure(candidate, pool, users[0], "uniform", settings.connections, 1)  # warm-up
                for round_number in range(settings.rounds):
                    for mode in MODES:
                        progress(f"pg: {workers} workers, {mode}, round {round_number + 1}/{settings.rounds}")
                        for target, runs_of_mode in (
                            ((candidate, pool, users[0]), runs.candidate[mode]),
                            ((baseline, baseline_pool, baseline_users[0]), runs.baseline[mode]),
                        ):
                            runs_of_mode.append(
                                _measure(*target, mode, settings.connections, settings.seconds)
                            )
                checks.append(f"{workers} workers: {verify_ledger(candidate)}")
        checks.append(f"memory baseline: {verify_ledger(baseline)}")
    return render(settings, results, checks)


def render(settings: Settings, results: dict[int, Runs], checks: Sequence[str]) -> str:
    rows = []
    for workers, runs in results.items():
        for mode in MODES:
            candidate = [run.rps for run in runs.candidate[mode]]
            baseline = [run.rps for run in runs.baseline[mode]]
            rows.append(
                [
                    str(workers),
                    mode,
                    fmt_spread(Spread.of(candidate)),
                    fmt_spread(Spread.of([run.p99_ms for run in runs.candidate[mode]]), fmt_ms),
                    fmt_spread(Spread.of(baseline)),
                    fmt_spread(Spread.of(paired_ratios(candidate, baseline)), fmt_ratio),
                    str(sum(run.errors for run in runs.candidate[mode])),
                ]
            )
    table = markdown_table(
        [
            "workers",
            "load",
            "PostgreSQL transfers/s",
            "p99 ms",
            "memory store (1 worker) transfers/s",
            "PostgreSQL / memory",
            "errors",
        ],
        rows,
    )
    return "\n\n".join(
        [
            "### PostgreSQL store: transfers/s by gunicorn workers",
            f"wrk, one thread on CPU 1, {settings.connections} connections, 1-coin transfers; uniform: "
            f"between random users of a pool of {settings.pool_size}; hot: every transfer to one "
            f"merchant. {settings.rounds} alternated runs of {settings.seconds:g} s against the "
            f"PostgreSQL server and the memory-store baseline (1 worker, {DEFAULT_THREADS} threads); "
            f"servers on CPUs {SERVER_CPUS}, {DEFAULT_THREADS} threads and "
            f"{DEFAULT_THREADS} pooled connections per worker. Errors: non-2xx answers and socket "
            "errors of the PostgreSQL runs.",
            table,
            "\n".join(f"- {check}" for check in checks),
        ]
    )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs and a smaller pool")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="length of one wrk run")
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKER_COUNTS), help="worker counts")
    parser.add_argument("--server", default=LOCAL_SERVER, help="PostgreSQL server URL without a database")
    args = parser.parse_args(argv)
    settings = Settings.defaults(args.quick)
    if args.rounds:
        settings = Settings(args.rounds, settings.seconds, settings.connections, settings.pool_size)
    if args.seconds:
        settings = Settings(settings.rounds, args.seconds, settings.connections, settings.pool_size)
    pin_to_cpu(CLIENT_CPU)  # this orchestrator stays off CPU 0
    section = benchmark(settings, args.server, args.workers)
    print(section)
    return section


if __name__ == "__main__":
    main()
