"""What the gunicorn master does before and while it serves (see ``gunicorn.conf.py``).

The memory store lives inside the one worker process, so anything that would
replace that process (a second worker, a crashed worker respawned, a HUP reload)
would serve a fresh, empty ledger from the same address. The master stops instead,
loudly, so that the operator sees it.

With several workers the master also prepares the directory of prometheus-client's
multiprocess mode (``prepare_metrics_dir``), and gunicorn's own log lines are JSON like
the app's (``JsonGunicornLogger``).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from app.config import Config, ConfigError
from app.logs import JsonFormatter

MAX_THREADS = 1024
#: gthread worker threads by default. Chosen from benchmarks/thread_sweep.py: on two
#: cores 4 and 8 threads carried 8-14 % more transfers/s than 16 in three full runs
#: (more threads than the cores can run cost throughput under the GIL); 8 keeps room
#: for slow clients and lock waits, which tie threads up without using the CPU.
DEFAULT_THREADS = 8


@dataclass(frozen=True, slots=True)
class GunicornSettings:
    bind: str
    workers: int
    threads: int


def gunicorn_settings(environ: Mapping[str, str]) -> GunicornSettings:
    """gunicorn's settings from the environment, each checked with a message naming it."""
    config = Config.from_env(environ)
    return GunicornSettings(
        bind=environ.get("GUNICORN_BIND") or f"0.0.0.0:{config.port}",
        workers=_count("GUNICORN_WORKERS", environ.get("GUNICORN_WORKERS", "1"), 64),
        threads=_count(
            "GUNICORN_THREADS", environ.get("GUNICORN_THREADS", str(DEFAULT_THREADS)), MAX_THREADS
        ),
    )


def _count(name: str, value: str, high: int) -> int:
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,5}", text) is None or not 1 <= int(text) <= high:
        raise ConfigError(f"{name} must be a whole number from 1 to {high}, not {value!r}")
    return int(text)


def check_worker_count(workers: int, config: Config) -> None:
    """The memory store lives in one process: several workers would each hold their own ledger."""
    if config.uses_memory_store and workers > 1:
        raise ConfigError(
            f"GoLedger's memory store keeps the ledger inside one process, so it cannot run with "
            f"{workers} gunicorn workers: each would hold its own copy of every balance and they "
            f"would silently diverge. Run one worker (raise GUNICORN_THREADS for concurrency) or "
            f"use LEDGER_STORE=postgresql://... for several."
        )


def refuse_replacement(server: Any, config: Config, why: str) -> None:
    """Stop the master rather than let it start a worker with an empty memory ledger.

    ``server`` is gunicorn's arbiter. While it is shutting down it has already closed
    its listeners, and a worker exiting then is expected.
    """
    if not config.uses_memory_store or not server.LISTENERS:
        return
    from gunicorn.errors import HaltServer

    raise HaltServer(
        f"{why}: the memory store's ledger lived in that worker and is gone. GoLedger stops "
        f"instead of serving an empty ledger at the same address; restart it deliberately.",
        1,
    )


_GUNICORN_ERROR_CODES = {414: "request_line_too_large", 431: "headers_too_large"}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse, in the contract's JSON shape.

    Replaces ``gunicorn.util.write_error`` (an HTML page) for malformed request lines,
    over-long URLs or headers and bad ``Content-Length`` values, which never reach
    the app. ``mesg`` is not echoed: it may quote the client's bytes.
    """
    import json

    from gunicorn import util

    code = _GUNICORN_ERROR_CODES.get(status_int, "bad_request")
    body = json.dumps({"code": status_int, "error": code, "message": f"{reason}."}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


def install_json_errors() -> None:
    from gunicorn import util

    util.write_error = write_json_error


class JsonGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with the app's JSON lines (``app.logs``) on its error log (and its
    access log, if one is configured); gunicorn's settings for where they go still apply.

    A syslog handler keeps gunicorn's format: syslog wants its own prefix.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not isinstance(handler, logging.handlers.SysLogHandler):
                    handler.setFormatter(formatter)


#: prometheus-client's variable: where every process of multiprocess mode keeps its files.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: Set by the master to the directory it created itself (and removes at exit).
_OWN_DIR = "GOLEDGER_PRIVATE_METRICS_DIR"


def prepare_metrics_dir(workers: int, environ: MutableMapping[str, str]) -> None:
    """Before the first fork: the directory of multiprocess mode, empty, in the environment
    the workers inherit (prometheus-client reads it when a worker imports it).

    A directory the operator set is emptied of the last run's files (which would
    otherwise be added to this run's); without one, several workers get a private
    directory of their own, and one worker none: its plain registry needs no files.
    """
    given = environ.get(MULTIPROC_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    elif workers > 1:
        if "prometheus_client" in sys.modules:
            raise ConfigError(
                "prometheus_client was imported in the gunicorn master before it could set "
                f"{MULTIPROC_DIR} (is the app preloaded?): the workers would inherit its "
                f"single-process mode and each count alone. Set {MULTIPROC_DIR} in the "
                "environment, or do not preload the app."
            )
        created = tempfile.mkdtemp(prefix="goledger-metrics-")
        environ[MULTIPROC_DIR] = created
        environ[_OWN_DIR] = created


def forget_worker(pid: int, environ: Mapping[str, str]) -> None:
    """A worker exited: its live gauges' files go (its counters stay, so sums never go back)."""
    directory = environ.get(MULTIPROC_DIR)
    if directory:
        # Imported here, never before the directory is in the environment: workers forked
        # afterwards inherit the module, and with it the mode it chose at import.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def remove_metrics_dir(environ: Mapping[str, str]) -> None:
    """The master is exiting: remove the directory it created (an operator's stays)."""
    created = environ.get(_OWN_DIR)
    if created:
        shutil.rmtree(created, ignore_errors=True)
