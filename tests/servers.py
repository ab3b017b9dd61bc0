"""The real server under test: gunicorn on a free 127.0.0.1 port, always stopped.

Also what tests ask of a live server before they start: ``open_accounts``.
"""

from __future__ import annotations

import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
#: How long a killed process may take to be gone (the kernel needs milliseconds).
KILL_TIMEOUT_S = 10.0
#: The bound on a test's request to a live server.
REQUEST_TIMEOUT_S = 30

_WORKER_BOOTED = re.compile(r"Booting worker with pid: ([0-9]+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gunicorn_command(*extra: str) -> list[str]:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    return [str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py"), *extra, "wsgi:app"]


def server_env(port: int, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LEDGER_", "GUNICORN_"))}
    env.update({"GUNICORN_BIND": f"127.0.0.1:{port}", "PYTHONUNBUFFERED": "1"})
    env.update(variables)
    return env


@dataclass
class RunningServer:
    """A started gunicorn: its address, its master process and what it wrote to stderr.

    The master leads a process group of its own (``start_new_session``), so that the
    whole server (master and worker) can be killed at once without touching anything
    else on the machine.
    """

    url: str
    process: subprocess.Popen[str]
    worker_pid: int
    output: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        """Everything gunicorn and the app logged so far (``stop`` or ``kill`` makes it complete)."""
        return "".join(self.output)

    def kill(self) -> None:
        """SIGKILL master and worker together (a power cut, as far as the app can tell).

        Returns once neither process is running any more: the master is reaped here; the
        worker (reparented once the master died) is waited for through a pidfd.
        """
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=KILL_TIMEOUT_S)
        wait_for_exit(self.worker_pid)
        survivors = running_in_group(self.process.pid)
        assert not survivors, f"processes of the killed server still run: {survivors}"


def wait_for_exit(pid: int, timeout_s: float = KILL_TIMEOUT_S) -> None:
    """Wait until process ``pid`` has exited (a zombie counts as exited), within a bound."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        assert readable, f"process {pid} still runs {timeout_s} s after SIGKILL"
    finally:
        os.close(pidfd)


def running_in_group(group: int) -> list[int]:
    """The pids of processes in process group ``group`` that are not zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@contextmanager
def gunicorn_process(*extra: str, **variables: str) -> Iterator[RunningServer]:
    """Start gunicorn, wait until its worker answers, yield it; stop it at the end unless killed.

    Readiness is not guessed with sleeps: gunicorn logs "Listening at" once its socket
    is bound and the worker logs "Booting worker with pid" as it starts; from then on a
    request waits in the backlog until the worker serves it.
    """
    port = free_port()
    process = subprocess.Popen(
        gunicorn_command(*extra),
        cwd=ROOT,
        env=server_env(port, **variables),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        listening = False
        worker_pid = 0
        while not (listening and worker_pid):
            line = lines.get(timeout=START_TIMEOUT_S)
            if line is None:
                raise RuntimeError("gunicorn exited before listening:\n" + "".join(output))
            listening = listening or "Listening at" in line
            booted = _WORKER_BOOTED.search(line)
            if booted is not None:
                worker_pid = int(booted.group(1))
        try:
            requests.get(f"{base_url}/system/health", timeout=START_TIMEOUT_S)
        except requests.ConnectionError as error:
            # The worker died while starting: give its log (complete once gunicorn has exited).
            process.wait(timeout=START_TIMEOUT_S)
            reader.join(timeout=10)
            raise RuntimeError(f"gunicorn did not serve ({error}):\n" + "".join(output)) from None
        yield RunningServer(base_url, process, worker_pid, output)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=KILL_TIMEOUT_S)
        reader.join(timeout=10)


@contextmanager
def gunicorn_server(*extra: str, **variables: str) -> Iterator[str]:
    """Start gunicorn, wait until it answers, yield its base URL, stop it at the end."""
    with gunicorn_process(*extra, **variables) as server:
        yield server.url


def open_accounts(base_url: str, balances: dict[str, int], admin: dict[str, str]) -> None:
    """Open each account with its opening balance; its token is ``<name>-token``.

    ``admin``: the header that carries the server's admin token.
    """
    for name, opening in balances.items():
        created = requests.post(
            f"{base_url}/admin/accounts",
            json={"username": name, "token": f"{name}-token", "balance": opening},
            headers=admin,
            timeout=REQUEST_TIMEOUT_S,
        )
        assert created.status_code == 201, created.text
