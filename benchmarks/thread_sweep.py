"""gunicorn thread counts (``GUNICORN_THREADS``) for transfers: req/s and p99, to choose the default.

For each thread count, a fresh service (``wsgi:app``, the project's
``gunicorn.conf.py``, ``LEDGER_LOG_LEVEL=WARNING``) runs on CPU 0 beside a
reference service with the shipped default (8 threads) that stays up for the
whole sweep; wrk (one thread on CPU 1, more connections than most settings have
threads, so that requests queue as they would under load) sends 1-coin transfers
between random pool users to each in turn, alternating. Each setting is compared
with the reference runs it was paired with, which takes the machine's drift out of
the ratio.

Run: ``.venv/bin/python benchmarks/thread_sweep.py [--quick] [--threads 1 2 4 ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    wait_idle,
    write_pool_file,
)

THREAD_COUNTS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    connections: int
    pool_size: int

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        return cls(3, 1, 32, 200) if quick else cls(3, 3, 32, 1000)


@dataclass(frozen=True)
class Setting:
    threads: int
    candidate: list[WrkResult]
    reference: list[WrkResult]


def benchmark(settings: Settings, thread_counts: Sequence[int] = THREAD_COUNTS) -> str:
    results: list[Setting] = []
    with tempfile.TemporaryDirectory(prefix="goledger-sweep-") as directory:
        reference_dir = Path(directory) / "reference"
        reference_dir.mkdir()
        with Server("wsgi:app", threads=DEFAULT_THREADS) as reference:
            progress(f"sweep: opening {settings.pool_size} accounts on the reference")
            reference_users = create_pool(reference, settings.pool_size)
            reference_pool = write_pool_file(reference_users, reference_dir)
            run_wrk(
                reference.base_url,
                reference_pool,
                mode="transfer",
                connections=settings.connections,
                duration_s=2,
            )
            for threads in thread_counts:
                setting_dir = Path(directory) / f"threads-{threads}"
                setting_dir.mkdir()
                with Server("wsgi:app", threads=threads) as candidate:
                    users = create_pool(candidate, settings.pool_size)
                    pool = write_pool_file(users, setting_dir)
                    run_wrk(  # warm-up, not reported
                        candidate.base_url,
                        pool,
                        mode="transfer",
                        connections=settings.connections,
                        duration_s=1,
                    )
                    wait_idle(candidate, users[0])
                    candidate_runs: list[WrkResult] = []
                    reference_runs: list[WrkResult] = []
                    for round_number in range(settings.rounds):
                        progress(f"sweep: {threads} threads, round {round_number + 1}/{settings.rounds}")
                        candidate_runs.append(
                            run_wrk(
                                candidate.base_url,
                                pool,
                                mode="transfer",
                                connections=settings.connections,
                                duration_s=settings.seconds,
                            )
                        )
                        wait_idle(candidate, users[0])
                        reference_runs.append(
                            run_wrk(
                                reference.base_url,
                                reference_pool,
                                mode="transfer",
                                connections=settings.connections,
                                duration_s=settings.seconds,
                            )
                        )
                        wait_idle(reference, reference_users[0])
                    results.append(Setting(threads, candidate_runs, reference_runs))
    return render(settings, results)


def render(settings: Settings, results: Sequence[Setting]) -> str:
    rows = []
    for setting in results:
        candidate_rps = [run.rps for run in setting.candidate]
        reference_rps = [run.rps for run in setting.reference]
        errors = sum(run.errors for run in setting.candidate + setting.reference)
        rows.append(
            [
                f"**{setting.threads}**" if setting.threads == DEFAULT_THREADS else str(setting.threads),
                fmt_spread(Spread.of(candidate_rps)),
                fmt_spread(Spread.of([run.p50_ms for run in setting.candidate]), fmt_ms),
                fmt_spread(Spread.of([run.p99_ms for run in setting.candidate]), fmt_ms),
                fmt_spread(Spread.of(reference_rps)),
                fmt_spread(Spread.of([run.p99_ms for run in setting.reference]), fmt_ms),
                fmt_spread(Spread.of(paired_ratios(candidate_rps, reference_rps)), fmt_ratio),
                str(errors),
            ]
        )
    table = markdown_table(
        [
            "GUNICORN_THREADS",
            "transfers req/s",
            "p50 ms",
            "p99 ms",
            f"reference ({DEFAULT_THREADS}) req/s",
            "reference p99 ms",
            "req/s / reference",
            "errors",
        ],
        rows,
    )
    return "\n\n".join(
        [
            "### Thread sweep: `GUNICORN_THREADS` for transfers",
            f"wrk, one thread on CPU 1, {settings.connections} connections, 1-coin transfers between "
            f"random users of a pool of {settings.pool_size}; {settings.rounds} alternated runs of "
            f"{settings.seconds:g} s of each setting and of a reference server with the shipped "
            f"default ({DEFAULT_THREADS} threads) running beside it on CPU 0.",
            table,
        ]
    )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs and a smaller pool")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds per setting (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="length of one wrk run")
    parser.add_argument("--connections", type=int, default=None, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, nargs="+", default=list(THREAD_COUNTS), help="settings")
    args = parser.parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("rounds", args.rounds),
            ("seconds", args.seconds),
            ("connections", args.connections),
        )
        if value
    }
    settings = dataclasses.replace(Settings.defaults(args.quick), **overrides)
    pin_to_cpu(CLIENT_CPU)  # this orchestrator stays off the server's CPU
    section = benchmark(settings, args.threads)
    print(section)
    return section


if __name__ == "__main__":
    main()
