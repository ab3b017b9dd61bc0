"""gunicorn settings for GoLedger: ``gunicorn -c gunicorn.conf.py wsgi:app``.

gthread workers: with the embedded (memory) store, one process and a pool of threads
sharing its ledger; with PostgreSQL, as many processes as GUNICORN_WORKERS says, each
with its own connection pool to the one database.
Every setting can be changed from the environment without editing this file; a bad
value stops the start with a message naming the variable.

Several workers share their metrics through prometheus-client's multiprocess mode:
the master prepares PROMETHEUS_MULTIPROC_DIR before the first fork (``on_starting``)
and forgets each exited worker's live values (``child_exit``). Every log line,
gunicorn's too, is one JSON object (``logger_class``).

Nothing here may import prometheus_client: workers are forked from the master and
inherit its modules, and prometheus_client chooses its mode when it is imported.
"""

import gc
import os

from app.config import Config
from app.serving import (
    JsonGunicornLogger,
    check_worker_count,
    forget_worker,
    gunicorn_settings,
    install_json_errors,
    prepare_metrics_dir,
    refuse_replacement,
    remove_metrics_dir,
)

_config = Config.from_env(os.environ)
_settings = gunicorn_settings(os.environ)
# Requests gunicorn itself rejects (bad request line, URL or headers too long) get
# the contract's JSON error shape instead of gunicorn's HTML page.
install_json_errors()

bind = _settings.bind
worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
# Graceful shutdown: on SIGTERM, workers finish their in-flight requests first.
graceful_timeout = 30
timeout = 30
keepalive = 5
# Never recycle workers: with the memory store a restart would drop the ledger
# (with PostgreSQL it would be harmless, but nothing needs it).
max_requests = 0
# Bounded request lines and headers (the body limit is the app's: 1 MiB).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn 25+ opens a control socket at a fixed path in $HOME: two instances would
# collide on it, and the service needs no remote-control surface.
control_socket_disable = True
# gunicorn's own lines (boot, worker exits, its errors) in the app's JSON format.
logger_class = JsonGunicornLogger


def on_starting(server):  # type: ignore[no-untyped-def]
    """Before forking any worker: refuse several on the memory store; prepare the metrics
    directory that several share."""
    check_worker_count(server.cfg.workers, Config.from_env(os.environ))
    prepare_metrics_dir(server.cfg.workers, os.environ)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker exited: its live metric values go. If it died while serving (crash, OOM
    kill) on the memory store, stop.

    With LEDGER_DATA_DIR the replacement worker replays the journal, so it may start.
    """
    forget_worker(worker.pid, os.environ)
    if _config.data_dir is None:
        refuse_replacement(server, _config, f"worker {worker.pid} exited")


def on_reload(server):  # type: ignore[no-untyped-def]
    """A HUP would replace the worker: with the memory store, stop instead."""
    refuse_replacement(server, _config, "a reload (HUP) would replace the worker")


def on_exit(server):  # type: ignore[no-untyped-def]
    """The master is exiting: the metrics directory it created goes with it."""
    remove_metrics_dir(os.environ)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """The worker has built the app: what exists now (the app, its store and the store's
    structures) lives as long as the worker. ``gc.freeze`` moves it out of the garbage
    collector's generations, so that a full collection no longer walks it: the memory
    store's list of every audit record (its records themselves are never tracked) made
    each full collection a pause of tens of milliseconds for every thread. Garbage left
    over from the start is collected first: nothing frozen is ever collected."""
    gc.collect()
    gc.freeze()
