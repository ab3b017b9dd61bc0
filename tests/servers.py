"""The real server under test: gunicorn on a free 127.0.0.1 port, always stopped."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


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


@contextmanager
def gunicorn_server(*extra: str, **variables: str) -> Iterator[str]:
    """Start gunicorn, wait until it answers, yield its base URL, stop it at the end.

    Readiness is not guessed with sleeps: gunicorn logs "Listening at" once its socket
    is bound, and from then on a request waits in the backlog until a worker serves it.
    """
    port = free_port()
    process = subprocess.Popen(
        gunicorn_command(*extra),
        cwd=ROOT,
        env=server_env(port, **variables),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
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
        while True:
            line = lines.get(timeout=START_TIMEOUT_S)
            if line is None:
                raise RuntimeError("gunicorn exited before listening:\n" + "".join(output))
            if "Listening at" in line:
                break
        requests.get(f"{base_url}/system/health", timeout=START_TIMEOUT_S)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        reader.join(timeout=10)
