"""What the journal costs, and how long a start takes after many operations.

Two parts:

* **Throughput.** Two servers side by side on CPU 0, the same ``gunicorn.conf.py``:
  the candidate with ``LEDGER_DATA_DIR`` (every transfer fsync'ed before its answer,
  group commit), the baseline without (memory only). wrk on CPU 1 sends 1-coin
  transfers between random pool users; runs alternate candidate, baseline. Reported:
  req/s and p50/p99 of each, the median of the paired ratios, and how many
  transfers shared each sync (from the candidate's ``/metrics``).
* **Restart.** In-process: a data directory is filled with N single transfers
  (the journal's syncs switched off while filling: the files are the same), then
  opened (snapshot + journal replay, chain check) twice: once with the whole
  journal to replay, once after ``snapshot()``. Reported: seconds to open, file sizes.

Run: ``.venv/bin/python -m benchmarks.durability_bench [--quick]``.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    Server,
    create_pool,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    fmt_spread,
    machine_markdown,
    markdown_table,
    pin_to_cpu,
    progress,
    run_wrk,
    servers,
    verify_ledger,
    wait_idle,
    write_pool_file,
)
from benchmarks.http_bench import Pair


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    connections: int
    pool_size: int
    restart_operations: tuple[int, ...]

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        if quick:
            return cls(3, 2, 16, 200, (100_000,))
        return cls(5, 5, 16, 1000, (100_000, 1_000_000))


def _journal_counters(server: Server) -> tuple[float, float]:
    """(syncs, frames) from the server's ``/metrics``."""
    host, port = server.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    values = {"goledger_journal_syncs_total": 0.0, "goledger_journal_frames_total": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values["goledger_journal_syncs_total"], values["goledger_journal_frames_total"]


def throughput(settings: Settings) -> tuple[Pair, float, str]:
    pair = Pair()
    with (
        tempfile.TemporaryDirectory(prefix="goledger-durability-") as directory,
        servers(
            Server("wsgi:app", extra_env={"LEDGER_DATA_DIR": str(Path(directory) / "data")}),
            Server("wsgi:app"),
        ) as (journaled, memory),
    ):
        pools = {}
        for name, server in (("journaled", journaled), ("memory", memory)):
            progress(f"durability: opening {settings.pool_size} accounts ({name})")
            users = create_pool(server, settings.pool_size)
            (Path(directory) / name).mkdir()
            pools[name] = (users, write_pool_file(users, Path(directory) / name))
        sides = (("candidate", journaled, "journaled"), ("baseline", memory, "memory"))
        for _, server, name in sides:  # warm-up, not reported
            run_wrk(
                server.base_url,
                pools[name][1],
                mode="transfer",
                connections=settings.connections,
                duration_s=2,
            )
        syncs_before, frames_before = _journal_counters(journaled)
        for round_number in range(settings.rounds):
            progress(f"durability: round {round_number + 1}/{settings.rounds}")
            for side, server, name in sides:
                users, pool = pools[name]
                result = run_wrk(
                    server.base_url,
                    pool,
                    mode="transfer",
                    connections=settings.connections,
                    duration_s=settings.seconds,
                )
                getattr(pair, side).append(result)
                wait_idle(server, users[0])
        syncs, frames = _journal_counters(journaled)
        per_sync = (frames - frames_before) / max(syncs - syncs_before, 1.0)
        verified = verify_ledger(journaled)
    return pair, per_sync, verified


@dataclass(frozen=True)
class RestartResult:
    operations: int
    fill_s: float
    journal_bytes: int
    replay_s: float
    snapshot_s: float
    snapshot_bytes: int
    snapshot_open_s: float


def _directory_bytes(path: Path, prefix: str) -> int:
    return sum(entry.stat().st_size for entry in path.iterdir() if entry.name.startswith(prefix))


def restart(operations: int) -> RestartResult:
    from app.auth import token_digest
    from app.ledger.memory import MockDB
    from app.ledger.model import Deadline

    names = [f"user{index}" for index in range(1000)]
    with tempfile.TemporaryDirectory(prefix="goledger-restart-") as directory:
        path = Path(directory)
        progress(f"restart: filling a journal with {operations:,} transfers")
        started = time.perf_counter()
        store = MockDB.open(path, snapshot_bytes=0, sync=lambda fd: None)
        for name in names:
            store.create_account(name, token_digest(name), 10**12, deadline=Deadline.after_ms(5000))
        for index in range(operations):
            source, target = names[index % 1000], names[(index * 7 + 1) % 1000]
            store.transfer(source, target, 1, deadline=Deadline.after_ms(5000))
        store.close()
        fill_s = time.perf_counter() - started
        journal_bytes = _directory_bytes(path, "journal-")

        progress("restart: opening with the whole journal to replay")
        started = time.perf_counter()
        store = MockDB.open(path, snapshot_bytes=0)
        replay_s = time.perf_counter() - started
        started = time.perf_counter()
        store.snapshot()
        snapshot_s = time.perf_counter() - started
        store.close()
        snapshot_bytes = _directory_bytes(path, "snapshot-")

        progress("restart: opening from the snapshot")
        started = time.perf_counter()
        MockDB.open(path, snapshot_bytes=0).close()
        snapshot_open_s = time.perf_counter() - started
    return RestartResult(
        operations, fill_s, journal_bytes, replay_s, snapshot_s, snapshot_bytes, snapshot_open_s
    )


def render(
    settings: Settings,
    pair: Pair,
    per_sync: float,
    verified: str,
    restarts: Sequence[RestartResult],
    command: str,
) -> str:
    throughput_table = markdown_table(
        [
            "transfers",
            "req/s",
            "p50 ms",
            "p99 ms",
        ],
        [
            [
                "with journal (`LEDGER_DATA_DIR`)",
                fmt_spread(pair.rps("candidate")),
                fmt_spread(pair.p50("candidate"), fmt_ms),
                fmt_spread(pair.p99("candidate"), fmt_ms),
            ],
            [
                "memory only",
                fmt_spread(pair.rps("baseline")),
                fmt_spread(pair.p50("baseline"), fmt_ms),
                fmt_spread(pair.p99("baseline"), fmt_ms),
            ],
        ],
    )
    ratio = pair.ratio()
    restart_table = markdown_table(
        [
            "operations",
            "journal MB",
            "open: replay the journal s",
            "snapshot s",
            "snapshot MB",
            "open: from the snapshot s",
        ],
        [
            [
                f"{result.operations:,}",
                f"{result.journal_bytes / 1e6:.0f}",
                f"{result.replay_s:.2f}",
                f"{result.snapshot_s:.2f}",
                f"{result.snapshot_bytes / 1e6:.0f}",
                f"{result.snapshot_open_s:.2f}",
            ]
            for result in restarts
        ],
    )
    return "\n\n".join(
        [
            "### Durability: the journal's cost",
            machine_markdown(command),
            f"{settings.rounds} alternated rounds of {settings.seconds:g} s, wrk with {settings.connections} "
            f"connections, 1-coin transfers between {settings.pool_size} accounts.",
            throughput_table,
            f"With the journal / without (median of the paired ratios): **{fmt_spread(ratio, fmt_ratio)}**; "
            f"transfers per sync (group commit): {per_sync:.1f}; errors: {fmt_int(pair.errors())}; "
            f"ledger after the runs: {verified}.",
            "Restart (in-process, CPU 0): open = lock, read, replay, check the whole hash chain.",
            restart_table,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.defaults(args.quick)
    command = ".venv/bin/python -m benchmarks.durability_bench" + (" --quick" if args.quick else "")
    pair, per_sync, verified = throughput(settings)
    restarts: list[RestartResult] = []
    if not args.skip_restart:
        pin_to_cpu("0")
        restarts = [restart(operations) for operations in settings.restart_operations]
    print(render(settings, pair, per_sync, verified, restarts, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
