"""Where a transfer and a balance read spend their time: the top costs of the hot path.

Two tools (``--tool auto``, the default, runs both when py-spy is installed, else
cProfile alone):

* ``py-spy`` (``pip install py-spy``; not a project dependency): samples the real
  gunicorn worker (``wsgi:app`` as shipped: the default thread count, ``LEDGER_LOG_LEVEL=INFO``
  with its request lines written to the server's log file; CPU 0)
  while wrk (CPU 1) drives transfers, then balance reads. Only samples of the thread
  holding the GIL count (``--gil``): on one core that is where the CPU goes.
* ``cprofile`` (standard library): WSGI calls of the app in this process, no
  gunicorn and no sockets; cProfile's own overhead inflates small functions.

``--tool timing`` profiles nothing: it times the same WSGI calls without a profiler,
in alternated rounds, for the service with the request log on (written to
``/dev/null``, as the shipped default ``LEDGER_LOG_LEVEL=INFO`` writes it), with it
off, and for the bare Flask app (``benchmarks/bare_app.py``): microseconds per request.

For each endpoint it prints the functions with the most self time, their
inclusive time, and the share of each area (gunicorn, werkzeug, flask, the app's
API layer, the ledger, json, hashing, locks, ...), as fractions of all samples.

Run: ``.venv/bin/python benchmarks/profile_hot_path.py [--tool py-spy|cprofile|timing] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``app`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    CLIENT_CPU,
    DEFAULT_THREADS,
    ROOT,
    SERVER_CPU,
    VENV_BIN,
    WRK_SCRIPT,
    Server,
    create_pool,
    markdown_table,
    pin_to_cpu,
    progress,
    require_tool,
    write_pool_file,
    wsgi_environ,
)

MODES = ("transfer", "balance")
TITLES = {"transfer": "`POST /account/coins/transfer`", "balance": "`GET /account/coins`"}
TOP = 15
APP_TOP = 10
SAMPLE_RATE_HZ = 250

#: (area, substring of the file path), first match wins.
_AREAS = (
    ("app: ledger (MockDB, audit, model)", "/app/ledger/"),
    ("app: API layer (views, params, auth, errors)", "/app/api/"),
    ("app: observability (metrics, logs)", "/app/observability"),
    ("app: observability (metrics, logs)", "/app/logs"),
    ("app: observability (metrics, logs)", "/app/multiprocess"),
    ("app: API layer (views, params, auth, errors)", "/app/"),
    ("readerwriterlock", "readerwriterlock"),
    ("prometheus_client", "prometheus_client"),
    ("gunicorn", "gunicorn"),
    ("werkzeug", "werkzeug"),
    ("flask", "flask"),
    ("json / orjson", "json"),
    ("threading / locks", "threading.py"),
    ("logging", "logging"),
)


_STDLIB = "Python stdlib / builtins"


def area_of(filename: str) -> str:
    for area, marker in _AREAS:
        if marker in filename:
            return area
    if filename.startswith("<") or "site-packages" not in filename:
        return _STDLIB
    return "other packages"


@dataclass(frozen=True, slots=True)
class Profile:
    """Self and inclusive sample counts per function (``name (file)``) and per area."""

    total: float
    self_time: Counter[str]
    inclusive: Counter[str]
    areas: Counter[str]
    tool: str
    area_basis: str
    detail: str


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# -- py-spy ---------------------------------------------------------------------


def parse_raw(text: str) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """py-spy's raw (collapsed) output: ``frame;frame;...;leaf count`` per line."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame.strip() for frame in stack.split(";") if frame.strip()]
        names = [_frame_name(frame) for frame in frames]
        for name in set(names):
            inclusive[name] += count
        self_time[names[-1]] += count
        areas[_caller_area(frames)] += count
    return self_time, inclusive, areas, total


def _caller_area(frames: Sequence[str]) -> str:
    """The area of the innermost frame outside the standard library (who asked for the work)."""
    for frame in reversed(frames):
        area = area_of(_frame_file(frame))
        if area != _STDLIB:
            return area
    return _STDLIB


def _frame_file(frame: str) -> str:
    return frame.rpartition("(")[2].rstrip(")")


def _frame_name(frame: str) -> str:
    function, _, rest = frame.partition(" (")
    return f"{function} ({_short(rest.rstrip(')'))})"


def profile_py_spy(seconds: float) -> dict[str, Profile]:
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy, or use --tool cprofile")
    wrk = require_tool("wrk")
    profiles = {}
    shipped = Server("wsgi:app", log_level="INFO")
    with tempfile.TemporaryDirectory(prefix="goledger-profile-") as directory, shipped as server:
        pool = write_pool_file(create_pool(server, 1000), Path(directory))
        worker = server.worker_pid()
        for mode in MODES:
            progress(f"profile: py-spy on the worker for {seconds:g} s of {mode} requests")
            output = Path(directory) / f"{mode}.txt"
            env = {"WRK_POOL": str(pool), "WRK_MODE": mode, "WRK_BATCH": "1", "WRK_MEAN_DELAY_MS": "0"}
            wrk_command = ["taskset", "-c", CLIENT_CPU, wrk, "-t1", "-c16", f"-d{round(seconds) + 3}s"]
            wrk_command += ["-s", str(WRK_SCRIPT), server.base_url]
            spy_command = ["taskset", "-c", CLIENT_CPU, py_spy, "record", "-p", str(worker)]
            spy_command += ["-d", str(round(seconds)), "--gil", "--nolineno", "--full-filenames"]
            spy_command += ["-r", str(SAMPLE_RATE_HZ), "-f", "raw", "-o", str(output)]
            load = subprocess.Popen(
                wrk_command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(1)  # let the load settle before sampling
                subprocess.run(spy_command, capture_output=True, timeout=seconds + 30, check=True)
            finally:
                load.wait(timeout=seconds + 30)
            self_time, inclusive, areas, total = parse_raw(output.read_text())
            profiles[mode] = Profile(
                total,
                self_time,
                inclusive,
                areas,
                "py-spy",
                "innermost frame outside the standard library",
                f"gunicorn worker ({DEFAULT_THREADS} threads) under wrk with 16 connections, sampled at "
                f"{SAMPLE_RATE_HZ} Hz for {seconds:g} s; {total:,} samples caught a thread holding the "
                f"GIL ({100 * total / (SAMPLE_RATE_HZ * seconds):.0f} % of the attempts) and only "
                "those count",
            )
    return profiles


# -- cProfile -------------------------------------------------------------------


def _service_app(log_level: str = "WARNING") -> tuple[Any, list[str]]:
    """The service built in this process with 100 accounts (token = username), and their names."""
    from app import create_app
    from app.auth import token_digest
    from app.ledger.model import Deadline

    flask_app = create_app({"admin_token": "profile-admin", "demo": False, "log_level": log_level})
    ledger = flask_app.extensions["ledger"]
    names = [f"user{index:03d}" for index in range(100)]
    for name in names:
        ledger.create_account(name, token_digest(name), 10**15, deadline=Deadline.after_ms(5000))
    return flask_app, names


def _environs(mode: str, names: Sequence[str], requests: int, seed: int = 1) -> list[dict[str, object]]:
    """``requests`` WSGI environs of ``mode`` between random distinct users."""
    rng = random.Random(seed)
    environs = []
    for _ in range(requests):
        source, target = rng.sample(list(names), 2)
        if mode == "balance":
            environs.append(wsgi_environ("GET", "/account/coins", f"username={source}", source))
        else:
            query = f"username={source}&to={target}&amount=1"
            environs.append(wsgi_environ("POST", "/account/coins/transfer", query, source))
    return environs


class _Answers:
    """A WSGI ``start_response`` that counts the statuses it is given."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()

    def __call__(self, status: str, headers: object, exc_info: object = None) -> Callable[[bytes], object]:
        self.statuses[status] += 1
        return _discard

    def check(self) -> None:
        if set(self.statuses) != {"200 OK"}:
            raise RuntimeError(f"unexpected answers: {dict(self.statuses)}")


def _discard(_: bytes) -> None:
    return None


def _serve(wsgi_app: Callable[..., Any], environs: Sequence[dict[str, object]], answers: _Answers) -> None:
    for environ in environs:
        body = wsgi_app(environ, answers)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()


def profile_cprofile(requests: int) -> dict[str, Profile]:
    flask_app, names = _service_app()
    answers = _Answers()
    profiles = {}
    for mode in MODES:
        progress(f"profile: cProfile over {requests:,} {mode} requests, WSGI calls in this process")
        environs = _environs(mode, names, requests)
        profiler = cProfile.Profile()
        profiler.enable()
        _serve(flask_app, environs, answers)
        profiler.disable()
        answers.check()
        stats = pstats.Stats(profiler)
        self_time: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        areas: Counter[str] = Counter()
        total = 0.0
        for (filename, _, function), (_, _, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            name = f"{function} ({_short(filename)})"
            self_time[name] += tottime
            inclusive[name] = max(inclusive[name], cumtime)
            areas[area_of(filename)] += tottime
            total += tottime
        profiles[mode] = Profile(
            total,
            self_time,
            inclusive,
            areas,
            "cProfile",
            "the function's own file",
            f"{requests:,} WSGI calls of the app in this process (no gunicorn, no sockets; "
            f"cProfile's own cost inflates small functions), {total:.2f} s of profiled time",
        )
    return profiles


# -- timing ---------------------------------------------------------------------

_TIMED_SIDES = ("service, request log on", "service, request log off", "bare Flask")


def time_in_process(requests: int, rounds: int) -> str:
    """Microseconds per WSGI call, alternated rounds of each side, median (min-max) and ratios."""
    import logging

    from benchmarks.bare_app import app as bare_app
    from benchmarks.common import Spread, fmt_ratio, fmt_spread, paired_ratios

    flask_app, names = _service_app(log_level="INFO")
    from app.logs import JsonFormatter

    devnull = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter) and isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)  # the line is formatted and written, to nowhere
    request_log = logging.getLogger("goledger.request")
    answers = _Answers()
    rows = []
    for mode in MODES:
        timings: dict[str, list[float]] = {side: [] for side in _TIMED_SIDES}
        for round_number in range(rounds + 1):  # the first round warms up, not reported
            for side in _TIMED_SIDES:
                environs = _environs(mode, names, requests, seed=round_number)
                wsgi_app = bare_app if side == "bare Flask" else flask_app
                request_log.setLevel(logging.WARNING if side.endswith("off") else logging.NOTSET)
                began = time.perf_counter()
                _serve(wsgi_app, environs, answers)
                took_us = (time.perf_counter() - began) * 1e6 / requests
                if round_number:
                    timings[side].append(took_us)
        answers.check()
        bare = timings["bare Flask"]
        for side in _TIMED_SIDES:
            ratio = Spread.of(paired_ratios(timings[side], bare))
            rows.append(
                [
                    TITLES[mode],
                    side,
                    fmt_spread(Spread.of(timings[side]), lambda value: f"{value:.1f}"),
                    fmt_spread(ratio, fmt_ratio),
                ]
            )
    request_log.setLevel(logging.NOTSET)
    devnull.close()
    table = markdown_table(["endpoint", "app", "µs per request", "µs / bare Flask's (median of pairs)"], rows)
    return "\n\n".join(
        [
            "### In-process cost per request",
            f"WSGI calls of each app in this process (no gunicorn, no sockets), {rounds} alternated "
            f"rounds of {requests:,} requests per side after one warm-up round; the request log "
            "written to /dev/null when on.",
            table,
        ]
    )


# -- report ---------------------------------------------------------------------


def render(profiles: Sequence[tuple[str, Profile]]) -> str:
    parts = ["### Profile of the hot path"]
    for mode, profile in profiles:
        top = markdown_table(
            ["function (file)", "self %", "inclusive %"],
            [
                [
                    f"`{name}`",
                    f"{100 * count / profile.total:.1f}",
                    f"{100 * profile.inclusive[name] / profile.total:.1f}",
                ]
                for name, count in profile.self_time.most_common(TOP)
            ],
        )
        app_rows = [
            [f"`{name}`", f"{100 * count / profile.total:.1f}"]
            for name, count in profile.inclusive.most_common()
            if "(app/" in name
        ][:APP_TOP]
        app_table = markdown_table(["app function", "inclusive %"], app_rows)
        areas = markdown_table(
            [f"area (self time, by {profile.area_basis})", "%"],
            [[area, f"{100 * count / profile.total:.1f}"] for area, count in profile.areas.most_common()],
        )
        parts += [f"{TITLES[mode]}, {profile.tool}: {profile.detail}.", top, app_table, areas]
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tool", choices=("auto", "py-spy", "cprofile", "timing"), default="auto")
    parser.add_argument("--seconds", type=float, default=10, help="py-spy sampling time per endpoint")
    parser.add_argument("--requests", type=int, default=5000, help="cProfile requests per endpoint")
    parser.add_argument("--rounds", type=int, default=7, help="timing: alternated rounds per endpoint")
    args = parser.parse_args(argv)
    if args.tool == "timing":
        pin_to_cpu(SERVER_CPU)
        section = time_in_process(args.requests, args.rounds)
        print(section)
        return section
    tools = [args.tool]
    if args.tool == "auto":  # both views when py-spy is there: the real worker, then the app alone
        found = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
        tools = ["py-spy", "cprofile"] if found else ["cprofile"]
    profiles: list[tuple[str, Profile]] = []
    if "py-spy" in tools:
        pin_to_cpu(CLIENT_CPU)  # this orchestrator stays off the server's CPU
        profiles += profile_py_spy(args.seconds).items()
    if "cprofile" in tools:
        pin_to_cpu(SERVER_CPU)  # the profiled app runs in this process
        profiles += profile_cprofile(args.requests).items()
    section = render(profiles)
    print(section)
    return section


if __name__ == "__main__":
    main()
