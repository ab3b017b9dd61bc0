"""gunicorn settings for GoLedger: ``gunicorn -c gunicorn.conf.py wsgi:app``.

gthread workers: one process, a pool of threads sharing the embedded ledger.
Every setting can be changed from the environment without editing this file.
"""

import os

from app.config import Config
from app.serving import check_worker_count

_config = Config.from_env(os.environ)

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{_config.port}")
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Graceful shutdown: on SIGTERM, workers finish their in-flight requests first.
graceful_timeout = 30
timeout = 30
keepalive = 5
# Never recycle workers: with the memory store a restart would drop the ledger.
max_requests = 0
# Bounded request lines and headers (the body limit is the app's: 1 MiB).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn 25+ opens a control socket at a fixed path in $HOME: two instances would
# collide on it, and the service needs no remote-control surface.
control_socket_disable = True


def on_starting(server):  # type: ignore[no-untyped-def]
    """Refuse to start several processes on the memory store, before forking any."""
    check_worker_count(server.cfg.workers, Config.from_env(os.environ))
