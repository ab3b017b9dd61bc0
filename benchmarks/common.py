"""What the benchmark scripts share: servers, account pools, wrk and locust runs, statistics.

Rules every script follows (the machine has 2 shared cores and is noisy):

* the server under test runs on CPU 0 (``taskset -c 0``), the load generator on
  CPU 1 (``taskset -c 1``);
* candidate and baseline runs alternate (A B A B ...): each ratio is taken within
  a pair, and the report gives the median of those ratios plus the median, min and
  max of each side;
* every run is bounded in time, targets only 127.0.0.1 on a free port (never
  3000), and every server is started and stopped by its own PID.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
WRK_SCRIPT = BENCH_DIR / "wrk_ledger.lua"
LOCUSTFILE = BENCH_DIR / "locustfile.py"

SERVER_CPU = "0"
CLIENT_CPU = "1"
#: The shipped default (gunicorn.conf.py via app/serving.py).
DEFAULT_THREADS = 8  # the shipped default (app/serving.py), chosen from thread_sweep
#: Enough coins that random transfers of 1 coin never run out during a benchmark.
POOL_BALANCE = 10**15
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: The port the service uses by default; benchmarks never touch it.
_RESERVED_PORT = 3000
EN_DASH = "\u2013"


# -- statistics -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spread:
    """Median, minimum and maximum of a set of runs."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))


def paired_ratios(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """candidate[i] / baseline[i] for each alternated pair."""
    return [c / b for c, b in zip(candidate, baseline, strict=True) if b > 0]


def fmt_int(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"  # NaN != NaN


def fmt_ms(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def fmt_spread(spread: Spread, fmt: Callable[[float], str] = fmt_int) -> str:
    """``median (min–max)``, with an en dash; just the value for a single run."""  # noqa: RUF002
    if spread.runs == 1:
        return fmt(spread.median)
    return f"{fmt(spread.median)} ({fmt(spread.low)}{EN_DASH}{fmt(spread.high)})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the machine ----------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_markdown(command: str) -> str:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return "\n".join(
        [
            f"- Command: `{command}`",
            f"- Machine: `nproc` = {nproc}, CPU {cpu_model()}, {platform.system()} {platform.release()}",
            f"- Python {platform.python_version()} ({sys.implementation.name}); load average at start {load}",
            f"- Server pinned to CPU {SERVER_CPU}, load generator to CPU {CLIENT_CPU}; "
            f"candidate and baseline alternated; figures are median (min{EN_DASH}max) of the runs",
        ]
    )


def pin_to_cpu(cpu: str) -> None:
    """Run this process (and the threads it starts) on one CPU, when the OS allows it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})


def require_tool(name: str) -> str:
    """The path of a command-line tool; ``wrk`` is installed from Debian when missing."""
    found = shutil.which(name)
    if found:
        return found
    if name == "wrk" and shutil.which("apt-get"):
        print("wrk is missing: installing it with apt-get (Debian package 'wrk')", file=sys.stderr)
        installed = subprocess.run(
            ["apt-get", "install", "-y", "wrk"], capture_output=True, text=True, timeout=300, check=False
        )
        if installed.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, check=False)
            subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, timeout=300, check=False)
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(f"{name} is required for this benchmark and was not found on PATH")


# -- servers --------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != _RESERVED_PORT:
            return port


class Server:
    """gunicorn with the project's own ``gunicorn.conf.py``, pinned to one CPU.

    ``app_spec`` is ``wsgi:app`` (the service) or ``benchmarks.bare_app:app`` (the
    baseline); both get exactly the same gunicorn settings.
    """

    def __init__(
        self,
        app_spec: str = "wsgi:app",
        *,
        threads: int = DEFAULT_THREADS,
        cpu: str = SERVER_CPU,
        log_level: str = "WARNING",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.app_spec = app_spec
        self.threads = threads
        self.cpu = cpu
        self.admin_token = secrets.token_hex(16)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log_level = log_level
        self._extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="goledger-bench-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "GUNICORN_"))}
        env.update(
            {
                "GUNICORN_BIND": f"127.0.0.1:{self.port}",
                "GUNICORN_THREADS": str(self.threads),
                "LEDGER_ADMIN_TOKEN": self.admin_token,
                # WARNING (the default here) turns the request lines off; the HTTP
                # benchmark runs its candidate at the shipped INFO (lines written to the log file).
                "LEDGER_LOG_LEVEL": self._log_level,
                "LEDGER_DEMO": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self._extra_env)
        return env

    def start(self) -> Server:
        command = [
            "taskset",
            "-c",
            self.cpu,
            str(VENV_BIN / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            self.app_spec,
        ]
        self._process = subprocess.Popen(
            command, cwd=ROOT, env=self._env(), stdout=subprocess.DEVNULL, stderr=self._log
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        give_up_at = time.monotonic() + START_TIMEOUT_S
        while "Listening at" not in self.log_text():
            if self._process.poll() is not None:
                raise RuntimeError(f"gunicorn exited before listening:\n{self.log_text()}")
            if time.monotonic() > give_up_at:
                raise RuntimeError(f"gunicorn did not listen within {START_TIMEOUT_S} s")
            time.sleep(0.05)
        # The worker imports the app after the master binds: a first request waits for it.
        status, _ = request_json(self.base_url, "GET", "/system/health", timeout_s=START_TIMEOUT_S)
        if status != 200:
            raise RuntimeError(f"{self.app_spec} answered /system/health with {status}:\n{self.log_text()}")

    def worker_pid(self) -> int:
        """The gthread worker's PID (the process that runs the app)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        if not children:
            raise RuntimeError("gunicorn has no worker")
        return int(children[0])

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextmanager
def servers(*specs: Server) -> Iterator[tuple[Server, ...]]:
    """Start several servers (all pinned to the server CPU), stop every one at the end."""
    started: list[Server] = []
    try:
        for server in specs:
            started.append(server.start())
        yield tuple(started)
    finally:
        for server in reversed(started):
            server.stop()


# -- HTTP and account pools -----------------------------------------------------


def request_json(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    timeout_s: float = 30.0,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, Any]:
    """One request; the status and the decoded JSON body (``None`` when not JSON)."""
    own = connection is None
    if connection is None:
        host, port = base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    payload = None if body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json"} if payload is not None else {}
    all_headers.update(headers or {})
    try:
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        if own:
            connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None


@dataclass(frozen=True, slots=True)
class PoolUser:
    username: str
    token: str


def create_pool(server: Server, size: int, *, balance: int = POOL_BALANCE) -> list[PoolUser]:
    """Open ``size`` accounts through ``POST /admin/accounts`` (one kept-alive connection)."""
    prefix = f"bench-{secrets.token_hex(3)}-"
    users = [PoolUser(f"{prefix}{index:05d}", secrets.token_hex(16)) for index in range(size)]
    open_accounts(server, users, balance=balance)
    return users


def open_accounts(server: Server, users: Sequence[PoolUser], *, balance: int = POOL_BALANCE) -> None:
    """Open the accounts of ``users`` (their names and tokens) on ``server``, one kept-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for user in users:
            status, body = request_json(
                server.base_url,
                "POST",
                "/admin/accounts",
                headers={"Authorization": server.admin_token},
                body={"username": user.username, "token": user.token, "balance": balance},
                connection=connection,
            )
            if status != 201:
                raise RuntimeError(f"could not open {user.username}: {status} {body}")
    finally:
        connection.close()


def write_pool_file(users: Sequence[PoolUser], directory: Path) -> Path:
    """``username token`` per line: what the wrk script and the locustfile read."""
    path = directory / "pool.txt"
    path.write_text("".join(f"{user.username} {user.token}\n" for user in users))
    return path


def write_dummy_pool_file(size: int, directory: Path) -> Path:
    """A pool for the bare baseline app, which checks no token."""
    return write_pool_file([PoolUser(f"bare-{i:05d}", "x") for i in range(size)], directory)


def wait_idle(server: Server, user: PoolUser | None = None, *, timeout_s: float = 60.0) -> float:
    """Wait until requests left over from the last run have finished; the seconds waited.

    wrk stops sending at the end of a run, but requests already queued on the server
    (big batches above all) go on running and would eat into the next run. A balance
    read waits for the write lock's queue (the lock is fair), so two quick answers in
    a row mean the server is idle.
    """
    path = "/system/health" if user is None else f"/account/coins?username={user.username}"
    headers = {} if user is None else {"Authorization": user.token}
    began = time.monotonic()
    quick_in_a_row = 0
    while quick_in_a_row < 2:
        if time.monotonic() - began > timeout_s:
            raise RuntimeError(f"{server.app_spec} did not become idle within {timeout_s} s")
        sent = time.monotonic()
        request_json(server.base_url, "GET", path, headers=headers, timeout_s=timeout_s)
        quick_in_a_row = quick_in_a_row + 1 if time.monotonic() - sent < 0.02 else 0
    return time.monotonic() - began


def verify_ledger(server: Server, *, timeout_s: float = 300.0) -> str:
    """``GET /admin/verify`` after a benchmark: money conserved, balances = replay, chain intact."""
    began = time.monotonic()
    status, body = request_json(
        server.base_url,
        "GET",
        "/admin/verify",
        headers={"Authorization": server.admin_token},
        timeout_s=timeout_s,
    )
    took_s = time.monotonic() - began
    if status == 200 and isinstance(body, dict) and body.get("ok") is True:
        records = body.get("records", 0)
        return f"`GET /admin/verify` after the runs: ok, {records:,} audit records checked in {took_s:.1f} s."
    return f"`GET /admin/verify` after the runs: **FAILED** ({status}): {str(body)[:500]}"


# -- wrk ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx: int
    timeouts: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx + self.timeouts


def run_wrk(
    base_url: str,
    pool_file: Path,
    *,
    mode: str,
    connections: int,
    duration_s: float,
    batch_size: int = 1,
    mean_delay_ms: float = 0.0,
    timeout_s: float = 10.0,
    cpu: str = CLIENT_CPU,
) -> WrkResult:
    """One bounded wrk run with ``wrk_ledger.lua`` on the client CPU (one wrk thread).

    ``mode`` is ``transfer``, ``balance`` or ``batch``; ``mean_delay_ms`` > 0 makes
    each connection pause an exponentially distributed time between requests
    (wrk's ``delay()``: the pause is not counted in the latency).
    """
    wrk = require_tool("wrk")
    env = dict(os.environ)
    env.update(
        {
            "WRK_POOL": str(pool_file),
            "WRK_MODE": mode,
            "WRK_BATCH": str(batch_size),
            "WRK_MEAN_DELAY_MS": f"{mean_delay_ms:.3f}",
        }
    )
    seconds = max(1, round(duration_s))
    command = [
        "taskset",
        "-c",
        cpu,
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(WRK_SCRIPT),
        base_url,
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        socket_errors=data["connect"] + data["read"] + data["write"],
        non_2xx=data["status"],
        timeouts=data["timeout"],
    )


# -- open loop (benchmarks/open_loop.py) ---------------------------------------


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    """One open-loop run: latencies from each request's intended send time."""

    offered_rps: float
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float
    errors: int


def run_open_loop(
    base_url: str,
    pool_file: Path,
    *,
    mode: str,
    rate: float,
    duration_s: float,
    connections: int = 32,
    cpu: str = CLIENT_CPU,
) -> OpenLoopResult:
    """One bounded run of ``benchmarks/open_loop.py`` on the client CPU, offering ``rate`` req/s."""
    command = [
        "taskset",
        "-c",
        cpu,
        sys.executable,
        "-m",
        "benchmarks.open_loop",
        base_url,
        str(pool_file),
        "--mode",
        mode,
        "--rate",
        f"{rate:.1f}",
        "--seconds",
        f"{duration_s:g}",
        "--connections",
        str(connections),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("OPEN_LOOP_JSON "):
            data = json.loads(line.removeprefix("OPEN_LOOP_JSON "))
            break
    else:
        raise RuntimeError(f"open_loop gave no result (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return OpenLoopResult(
        offered_rps=data["offered_rps"],
        rps=data["achieved_rps"],
        requests=data["requests"],
        p50_ms=data["p50_ms"],
        p90_ms=data["p90_ms"],
        p99_ms=data["p99_ms"],
        max_ms=data["max_ms"],
        send_lag_p99_ms=data["send_lag_p99_ms"],
        errors=data["errors"] + data["non_2xx"] + data["unfinished"],
    )


# -- locust ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocustResult:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_warning: bool


def run_locust(
    base_url: str,
    pool_file: Path,
    *,
    mode: str,
    users: int,
    duration_s: float,
    user_rate: float = 0.0,
    cpu: str = CLIENT_CPU,
) -> LocustResult:
    """A headless locust run of ``benchmarks/locustfile.py`` (FastHttpUser) on the client CPU.

    ``user_rate`` > 0 paces each user to that many requests per second
    (``constant_throughput``); 0 sends as fast as the answers come back.
    """
    with tempfile.TemporaryDirectory(prefix="goledger-locust-") as directory:
        prefix = Path(directory) / "run"
        env = dict(os.environ)
        env.update({"BENCH_POOL": str(pool_file), "BENCH_MODE": mode, "BENCH_USER_RATE": str(user_rate)})
        seconds = max(1, round(duration_s))
        command = [
            "taskset",
            "-c",
            cpu,
            str(VENV_BIN / "locust"),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--stop-timeout",
            "2",
            "--host",
            base_url,
            "--csv",
            str(prefix),
            "--only-summary",
            "--exit-code-on-error",
            "0",
            "--loglevel",
            "WARNING",
        ]
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        stats_file = Path(f"{prefix}_stats.csv")
        if not stats_file.exists():
            raise RuntimeError(f"locust wrote no stats (exit {done.returncode}):\n{done.stderr[-3000:]}")
        aggregated = _locust_aggregated_row(stats_file.read_text())
    return LocustResult(
        requests=int(aggregated["Request Count"]),
        failures=int(aggregated["Failure Count"]),
        rps=float(aggregated["Requests/s"]),
        p50_ms=float(aggregated["50%"]),
        p99_ms=float(aggregated["99%"]),
        client_cpu_warning="CPU usage" in done.stderr,
    )


def _locust_aggregated_row(csv_text: str) -> dict[str, str]:
    import csv
    import io

    for row in csv.DictReader(io.StringIO(csv_text)):
        if row.get("Name") == "Aggregated":
            return row
    raise RuntimeError("locust stats have no Aggregated row")


# -- output ---------------------------------------------------------------------


def progress(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wsgi_environ(method: str, path: str, query: str, token: str) -> dict[str, object]:
    """A WSGI environ like the one gunicorn builds (no test-client machinery in the profile)."""
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_AUTHORIZATION": token,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # gunicorn sets it; a body-less request has no Content-Length
    }
