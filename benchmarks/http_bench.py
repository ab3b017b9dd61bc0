"""Requests/s and latency of transfers and balance reads over gunicorn, against a bare Flask app.

Servers run side by side on CPU 0 with the project's own ``gunicorn.conf.py``:

* the candidate, the service (``wsgi:app``) **as it ships**: ``LEDGER_LOG_LEVEL=INFO``,
  one JSON request line per request, written to the server's log file; a pool of
  accounts opened through ``POST /admin/accounts``;
* with ``--log-off``, the same service with ``LEDGER_LOG_LEVEL=WARNING`` (request
  lines off) as a second, labelled candidate;
* the baseline, ``benchmarks/bare_app.py``: the same gunicorn settings, a Flask app
  that answers every request with a small constant JSON body.

wrk (one thread on CPU 1, ``benchmarks/wrk_ledger.lua``) sends 1-coin transfers
between random pool users (``POST /account/coins/transfer``) or balance reads
(``GET /account/coins``) as fast as the answers come (the peak); the runs of the
servers alternate, and each ratio is the median of the paired ratios. The same
script is sent to the bare app, which ignores it.

Latency at half of the peak is measured **open loop** (``benchmarks/open_loop.py``,
pinned to CPU 1): requests on a fixed schedule at half of the candidate's median
peak, the same offered rate for every server, each request's latency counted from
its intended send time, so that a stall is not hidden by sending less
(coordinated omission). A short locust run (fixed users, ``constant_throughput``)
at the same rate is shown for comparison.

Run: ``.venv/bin/python benchmarks/http_bench.py [--quick] [--log-off]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    CLIENT_CPU,
    DEFAULT_THREADS,
    LocustResult,
    OpenLoopResult,
    Server,
    Spread,
    WrkResult,
    create_pool,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    fmt_spread,
    markdown_table,
    open_accounts,
    paired_ratios,
    pin_to_cpu,
    progress,
    run_locust,
    run_open_loop,
    run_wrk,
    servers,
    verify_ledger,
    wait_idle,
    write_pool_file,
)

MODES = ("transfer", "balance")
ENDPOINTS = {"transfer": "`POST /account/coins/transfer`", "balance": "`GET /account/coins`"}
#: The sides of a run: the service as shipped, optionally with its request log off, the bare app.
CANDIDATE = "service (request log on, as shipped)"
LOG_OFF = "service, request log off"
BASELINE = "bare Flask"


@dataclass
class Pair:
    """Alternated wrk runs of a candidate and a baseline (``durability_bench.py`` uses it)."""

    candidate: list[WrkResult] = field(default_factory=list)
    baseline: list[WrkResult] = field(default_factory=list)

    def rps(self, side: str) -> Spread:
        return Spread.of([run.rps for run in getattr(self, side)])

    def p50(self, side: str) -> Spread:
        return Spread.of([run.p50_ms for run in getattr(self, side)])

    def p99(self, side: str) -> Spread:
        return Spread.of([run.p99_ms for run in getattr(self, side)])

    def ratio(self) -> Spread:
        return Spread.of(
            paired_ratios([run.rps for run in self.candidate], [run.rps for run in self.baseline])
        )

    def errors(self) -> int:
        return sum(run.errors for run in self.candidate + self.baseline)


@dataclass
class Runs:
    """Alternated runs of each side (wrk or open-loop results), in the same order for every side."""

    by_side: dict[str, list[WrkResult | OpenLoopResult]] = field(default_factory=dict)

    def add(self, side: str, result: WrkResult | OpenLoopResult) -> None:
        self.by_side.setdefault(side, []).append(result)

    def sides(self) -> list[str]:
        return list(self.by_side)

    def rps(self, side: str) -> Spread:
        return Spread.of([run.rps for run in self.by_side[side]])

    def p50(self, side: str) -> Spread:
        return Spread.of([run.p50_ms for run in self.by_side[side]])

    def p99(self, side: str) -> Spread:
        return Spread.of([run.p99_ms for run in self.by_side[side]])

    def ratio(self, side: str) -> Spread:
        """``side``'s req/s over the bare app's, median of the paired ratios."""
        baseline = [run.rps for run in self.by_side[BASELINE]]
        return Spread.of(paired_ratios([run.rps for run in self.by_side[side]], baseline))

    def p99_over_p50(self, side: str) -> Spread:
        return Spread.of([run.p99_ms / run.p50_ms for run in self.by_side[side] if run.p50_ms > 0])

    def errors(self) -> int:
        return sum(run.errors for runs in self.by_side.values() for run in runs)


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    connections: int
    paced_connections: int
    pool_size: int
    locust_seconds: float
    locust_users: int
    log_off: bool = False

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        if quick:
            return cls(3, 1, 16, 32, 200, 3, 16)
        return cls(5, 3, 16, 32, 1000, 8, 16)


def benchmark(settings: Settings) -> str:
    peak = {mode: Runs() for mode in MODES}
    paced = {mode: Runs() for mode in MODES}
    targets: dict[str, float] = {}
    locust_peak: dict[str, list[LocustResult]] = {CANDIDATE: [], BASELINE: []}
    locust_half: list[LocustResult] = []
    specs = [Server("wsgi:app", log_level="INFO")]
    if settings.log_off:
        specs.append(Server("wsgi:app", log_level="WARNING"))
    specs.append(Server("benchmarks.bare_app:app"))
    with tempfile.TemporaryDirectory(prefix="goledger-http-") as directory, servers(*specs) as started:
        names = [CANDIDATE, LOG_OFF, BASELINE] if settings.log_off else [CANDIDATE, BASELINE]
        sides = list(zip(names, started, strict=True))
        progress(f"http: opening {settings.pool_size} accounts")
        users = create_pool(started[0], settings.pool_size)
        for _, server in sides[1:-1]:  # the log-off service: the same usernames and tokens
            open_accounts(server, users)
        pool = write_pool_file(users, Path(directory))
        idle_user = {name: (None if name == BASELINE else users[0]) for name in names}
        for _, server in sides:  # warm-up, not reported
            run_wrk(server.base_url, pool, mode="transfer", connections=settings.connections, duration_s=2)

        for round_number in range(settings.rounds):
            progress(f"http: peak round {round_number + 1}/{settings.rounds}")
            for mode in MODES:
                for side, server in sides:
                    result = run_wrk(
                        server.base_url,
                        pool,
                        mode=mode,
                        connections=settings.connections,
                        duration_s=settings.seconds,
                    )
                    peak[mode].add(side, result)
                    wait_idle(server, idle_user[side])

        for mode in MODES:
            targets[mode] = peak[mode].rps(CANDIDATE).median / 2
            for round_number in range(settings.rounds):
                progress(
                    f"http: open loop at half of peak, {mode} {targets[mode]:.0f} req/s, "
                    f"round {round_number + 1}/{settings.rounds}"
                )
                for side, server in sides:
                    paced[mode].add(
                        side,
                        run_open_loop(
                            server.base_url,
                            pool,
                            mode=mode,
                            rate=targets[mode],
                            duration_s=settings.seconds,
                            connections=settings.paced_connections,
                        ),
                    )
                    wait_idle(server, idle_user[side])

        progress("http: locust comparison (transfers)")
        for side, server in (sides[0], sides[-1]):
            locust_peak[side].append(
                run_locust(
                    server.base_url,
                    pool,
                    mode="transfer",
                    users=settings.locust_users,
                    duration_s=settings.locust_seconds,
                )
            )
        locust_users = 50
        locust_half.append(
            run_locust(
                started[0].base_url,
                pool,
                mode="transfer",
                users=locust_users,
                duration_s=settings.locust_seconds,
                user_rate=targets["transfer"] / locust_users,
            )
        )
        progress("http: verifying the ledger")
        verified = verify_ledger(started[0])
    return render(settings, peak, paced, targets, locust_peak, locust_half, verified)


def render(
    settings: Settings,
    peak: dict[str, Runs],
    paced: dict[str, Runs],
    targets: dict[str, float],
    locust_peak: dict[str, list[LocustResult]],
    locust_half: list[LocustResult],
    verified: str,
) -> str:
    peak_table = markdown_table(
        ["endpoint", "server", "req/s", "/ bare Flask (median of pairs)", "p50 ms", "p99 ms"],
        [
            [
                ENDPOINTS[mode],
                side,
                fmt_spread(runs.rps(side)),
                "" if side == BASELINE else fmt_spread(runs.ratio(side), fmt_ratio),
                fmt_spread(runs.p50(side), fmt_ms),
                fmt_spread(runs.p99(side), fmt_ms),
            ]
            for mode, runs in peak.items()
            for side in runs.sides()
        ],
    )
    half_table = markdown_table(
        ["endpoint", "offered req/s", "server", "achieved req/s", "p50 ms", "p99 ms", "p99 / p50"],
        [
            [
                ENDPOINTS[mode],
                fmt_int(targets[mode]),
                side,
                fmt_spread(runs.rps(side)),
                fmt_spread(runs.p50(side), fmt_ms),
                fmt_spread(runs.p99(side), fmt_ms),
                fmt_spread(runs.p99_over_p50(side), fmt_ratio),
            ]
            for mode, runs in paced.items()
            for side in runs.sides()
        ],
    )
    lags = [
        run.send_lag_p99_ms
        for runs in paced.values()
        for results in runs.by_side.values()
        for run in results
        if isinstance(run, OpenLoopResult)
    ]
    locust_rows = []
    for label, locust_runs in (
        (f"service, {settings.locust_users} users, no wait", locust_peak[CANDIDATE]),
        (f"bare Flask, {settings.locust_users} users, no wait", locust_peak[BASELINE]),
        (f"service, 50 users paced to {fmt_int(targets['transfer'])} req/s in all", locust_half),
    ):
        locust_rows.append(
            [
                label,
                fmt_spread(Spread.of([run.rps for run in locust_runs])),
                fmt_spread(Spread.of([run.p50_ms for run in locust_runs]), fmt_ms),
                fmt_spread(Spread.of([run.p99_ms for run in locust_runs]), fmt_ms),
                str(sum(run.failures for run in locust_runs)),
                "yes" if any(run.client_cpu_warning for run in locust_runs) else "no",
            ]
        )
    locust_table = markdown_table(
        ["locust run (transfers)", "req/s", "p50 ms", "p99 ms", "failures", "locust CPU warning"],
        locust_rows,
    )
    errors = sum(runs.errors() for runs in (*peak.values(), *paced.values()))
    log_off = " and, labelled, the same service with `LEDGER_LOG_LEVEL=WARNING`" if settings.log_off else ""
    return "\n\n".join(
        [
            "### HTTP: service against a bare Flask app",
            f"gunicorn with the project's `gunicorn.conf.py` (gthread, {DEFAULT_THREADS} threads, one "
            "worker) on CPU 0: the service as shipped (`LEDGER_LOG_LEVEL=INFO`, one JSON request "
            f"line per request written to the server's log file){log_off}; baseline: "
            "`benchmarks/bare_app.py` (constant small JSON) under the same settings. wrk, one "
            f"thread on CPU 1, {settings.connections} connections, {settings.rounds} alternated runs "
            f"of {settings.seconds:g} s per server; transfers of 1 coin between random users of a "
            f"pool of {settings.pool_size}; balance reads of random pool users.",
            peak_table,
            f"At half of the service's peak, open loop (`benchmarks/open_loop.py`, CPU 1): "
            f"{settings.paced_connections} keep-alive connections on a fixed schedule, the same "
            "offered rate for every server, each latency counted from the request's intended "
            f"send time (no coordinated omission); {settings.rounds} alternated runs of "
            f"{settings.seconds:g} s. The generator's own send lag, p99 over all runs: "
            f"{fmt_ms(max(lags) if lags else float('nan'))} ms at most.",
            half_table,
            f"locust (FastHttpUser, one process on CPU 1), one {settings.locust_seconds:g} s run each; "
            "locust's percentiles are rounded, and a CPU warning means locust, not the server, "
            "set the pace.",
            locust_table,
            f"Socket errors, timeouts and non-2xx answers in the wrk and open-loop runs: {errors}. "
            + verified,
        ]
    )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs and a smaller pool")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="length of one wrk run")
    parser.add_argument("--connections", type=int, default=None, help="wrk connections at peak (16)")
    parser.add_argument(
        "--log-off", action="store_true", help="also the service with its request log off (labelled)"
    )
    args = parser.parse_args(argv)
    settings = Settings.defaults(args.quick)
    overrides = {
        name: value
        for name, value in (
            ("rounds", args.rounds),
            ("seconds", args.seconds),
            ("connections", args.connections),
            ("log_off", args.log_off or None),
        )
        if value is not None
    }
    settings = dataclasses.replace(settings, **overrides)
    pin_to_cpu(CLIENT_CPU)  # this orchestrator stays off the server's CPU
    section = benchmark(settings)
    print(section)
    return section


if __name__ == "__main__":
    main()
