"""Requests/s and latency of transfers and balance reads over gunicorn, against a bare Flask app.

Two servers run side by side on CPU 0 with the project's own ``gunicorn.conf.py``:

* the candidate, the service (``wsgi:app``), with ``LEDGER_LOG_LEVEL=WARNING`` so
  that the one-JSON-line-per-request log does not dominate, and a pool of accounts
  opened through ``POST /admin/accounts``;
* the baseline, ``benchmarks/bare_app.py``: the same gunicorn settings, a Flask app
  that answers every request with a small constant JSON body.

wrk (one thread on CPU 1, ``benchmarks/wrk_ledger.lua``) sends 1-coin transfers
between random pool users (``POST /account/coins/transfer``) or balance reads
(``GET /account/coins``) for a bounded time; candidate and baseline runs alternate.
The same script is sent to the bare app, which ignores it.

Latency at half of peak: wrk has no open-loop pacing (that is wrk2, which Debian
does not ship), so each of many connections pauses an exponentially distributed
"think time" between requests (wrk's ``delay()``, not counted in the latency),
calibrated in one short run so that the achieved rate is about half of the
measured peak. The bare app gets the same offered rate. This is a closed loop: if
the server stalls, fewer requests are sent (coordinated omission), so p99 here is
a lower bound; the achieved rate is reported beside it. A short locust run (fixed
users, ``constant_throughput``) at the same rate is shown for comparison.

Run: ``.venv/bin/python benchmarks/http_bench.py [--quick]``.
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
    Server,
    Spread,
    WrkResult,
    create_pool,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    fmt_spread,
    markdown_table,
    paired_ratios,
    pin_to_cpu,
    progress,
    run_locust,
    run_wrk,
    servers,
    verify_ledger,
    wait_idle,
    write_pool_file,
)

MODES = ("transfer", "balance")
ENDPOINTS = {"transfer": "`POST /account/coins/transfer`", "balance": "`GET /account/coins`"}


@dataclass
class Pair:
    """Alternated wrk runs of the candidate and the baseline."""

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


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    connections: int
    paced_connections: int
    pool_size: int
    locust_seconds: float
    locust_users: int

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        if quick:
            return cls(3, 1, 16, 32, 200, 3, 16)
        return cls(3, 5, 16, 32, 1000, 8, 16)


def calibrate_delay(server: Server, pool: Path, mode: str, target_rps: float, settings: Settings) -> float:
    """The mean think time (ms) that makes ``paced_connections`` offer about ``target_rps``.

    A closed loop of N connections with think time Z and response time R sends
    N / (Z + R) requests/s: one run at Z0 = N / target gives R, then Z = N / target - R.
    """
    connections = settings.paced_connections
    first_guess_ms = connections / target_rps * 1000
    trial = run_wrk(
        server.base_url,
        pool,
        mode=mode,
        connections=connections,
        duration_s=max(2, settings.seconds / 2),
        mean_delay_ms=first_guess_ms,
    )
    response_ms = max(0.0, connections / max(trial.rps, 1.0) * 1000 - first_guess_ms)
    return max(0.5, connections / target_rps * 1000 - response_ms)


def benchmark(settings: Settings) -> str:
    peak = {mode: Pair() for mode in MODES}
    paced = {mode: Pair() for mode in MODES}
    targets: dict[str, float] = {}
    locust_peak: dict[str, list[LocustResult]] = {"candidate": [], "baseline": []}
    locust_half: list[LocustResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="goledger-http-") as directory,
        servers(Server("wsgi:app"), Server("benchmarks.bare_app:app")) as (service, bare),
    ):
        progress(f"http: opening {settings.pool_size} accounts")
        users = create_pool(service, settings.pool_size)
        pool = write_pool_file(users, Path(directory))
        sides = (("candidate", service), ("baseline", bare))
        idle_user = {"candidate": users[0], "baseline": None}
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
                    getattr(peak[mode], side).append(result)
                    wait_idle(server, idle_user[side])

        for mode in MODES:
            targets[mode] = peak[mode].rps("candidate").median / 2
            progress(f"http: calibrating {mode} at half of peak, {targets[mode]:.0f} req/s")
            delay_ms = calibrate_delay(service, pool, mode, targets[mode], settings)
            for round_number in range(settings.rounds):
                progress(f"http: half-peak {mode} round {round_number + 1}/{settings.rounds}")
                for side, server in sides:
                    result = run_wrk(
                        server.base_url,
                        pool,
                        mode=mode,
                        connections=settings.paced_connections,
                        duration_s=settings.seconds,
                        mean_delay_ms=delay_ms,
                    )
                    getattr(paced[mode], side).append(result)
                    wait_idle(server, idle_user[side])

        progress("http: locust comparison (transfers)")
        for side, server in sides:
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
                service.base_url,
                pool,
                mode="transfer",
                users=locust_users,
                duration_s=settings.locust_seconds,
                user_rate=targets["transfer"] / locust_users,
            )
        )
        progress("http: verifying the ledger")
        verified = verify_ledger(service)
    return render(settings, peak, paced, targets, locust_peak, locust_half, verified)


def render(
    settings: Settings,
    peak: dict[str, Pair],
    paced: dict[str, Pair],
    targets: dict[str, float],
    locust_peak: dict[str, list[LocustResult]],
    locust_half: list[LocustResult],
    verified: str,
) -> str:
    peak_table = markdown_table(
        [
            "endpoint",
            "service req/s",
            "bare Flask req/s",
            "service / bare",
            "service p50 ms",
            "service p99 ms",
            "bare p50 ms",
            "bare p99 ms",
        ],
        [
            [
                ENDPOINTS[mode],
                fmt_spread(pair.rps("candidate")),
                fmt_spread(pair.rps("baseline")),
                fmt_spread(pair.ratio(), fmt_ratio),
                fmt_spread(pair.p50("candidate"), fmt_ms),
                fmt_spread(pair.p99("candidate"), fmt_ms),
                fmt_spread(pair.p50("baseline"), fmt_ms),
                fmt_spread(pair.p99("baseline"), fmt_ms),
            ]
            for mode, pair in peak.items()
        ],
    )
    half_table = markdown_table(
        [
            "endpoint",
            "target req/s (half of peak)",
            "service achieved req/s",
            "service p50 ms",
            "service p99 ms",
            "bare achieved req/s",
            "bare p50 ms",
            "bare p99 ms",
        ],
        [
            [
                ENDPOINTS[mode],
                fmt_int(targets[mode]),
                fmt_spread(pair.rps("candidate")),
                fmt_spread(pair.p50("candidate"), fmt_ms),
                fmt_spread(pair.p99("candidate"), fmt_ms),
                fmt_spread(pair.rps("baseline")),
                fmt_spread(pair.p50("baseline"), fmt_ms),
                fmt_spread(pair.p99("baseline"), fmt_ms),
            ]
            for mode, pair in paced.items()
        ],
    )
    locust_rows = []
    for label, runs in (
        (f"service, {settings.locust_users} users, no wait", locust_peak["candidate"]),
        (f"bare Flask, {settings.locust_users} users, no wait", locust_peak["baseline"]),
        (f"service, 50 users paced to {fmt_int(targets['transfer'])} req/s in all", locust_half),
    ):
        locust_rows.append(
            [
                label,
                fmt_spread(Spread.of([run.rps for run in runs])),
                fmt_spread(Spread.of([run.p50_ms for run in runs]), fmt_ms),
                fmt_spread(Spread.of([run.p99_ms for run in runs]), fmt_ms),
                str(sum(run.failures for run in runs)),
                "yes" if any(run.client_cpu_warning for run in runs) else "no",
            ]
        )
    locust_table = markdown_table(
        ["locust run (transfers)", "req/s", "p50 ms", "p99 ms", "failures", "locust CPU warning"],
        locust_rows,
    )
    errors = sum(pair.errors() for pair in (*peak.values(), *paced.values()))
    return "\n\n".join(
        [
            "### HTTP: service against a bare Flask app",
            f"gunicorn with the project's `gunicorn.conf.py` (gthread, {DEFAULT_THREADS} threads, one "
            "worker) on CPU 0, `LEDGER_LOG_LEVEL=WARNING` (per-request log lines off); baseline: "
            "`benchmarks/bare_app.py` (constant small JSON) under the same settings. wrk, one "
            f"thread on CPU 1, {settings.connections} connections, {settings.rounds} alternated runs "
            f"of {settings.seconds:g} s per side; transfers of 1 coin between random users of a "
            f"pool of {settings.pool_size}; balance reads of random pool users.",
            peak_table,
            f"At half of the peak: {settings.paced_connections} wrk connections, each pausing an "
            "exponentially distributed time between requests (calibrated once), the same offered "
            "rate for both servers. A closed loop, so p99 is a lower bound (coordinated omission).",
            half_table,
            f"locust (FastHttpUser, one process on CPU 1), one {settings.locust_seconds:g} s run each; "
            "locust's percentiles are rounded, and a CPU warning means locust, not the server, "
            "set the pace.",
            locust_table,
            f"Socket errors, timeouts and non-2xx answers in all wrk runs: {errors}. {verified}",
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
    args = parser.parse_args(argv)
    settings = Settings.defaults(args.quick)
    overrides = {
        name: value
        for name, value in (
            ("rounds", args.rounds),
            ("seconds", args.seconds),
            ("connections", args.connections),
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
