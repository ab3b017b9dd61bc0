"""Full garbage collections while the memory store grows: how many, and how long each pauses.

Every thread of the worker stops while CPython's collector runs; a full
(generation 2) collection walks every object the collector tracks. A ledger in
memory keeps every audit record, so what a record is made of decides how long those
pauses grow. This sends ``--requests`` transfers through the WSGI app in-process
(``create_app``, the memory store, request log to ``/dev/null``) and records every
generation-2 collection with ``gc.callbacks``: their number, total and longest pause,
and how many objects the collector still tracks at the end.

``--freeze`` calls ``gc.freeze()`` once the app and its accounts are built, as a
gunicorn worker does (``post_worker_init`` in ``gunicorn.conf.py``).

``--tree PATH`` imports the app from another checkout of the project (e.g. a
``git worktree`` of an older revision), so that two revisions are measured the same
way, one after the other:

    .venv/bin/python benchmarks/gc_pauses.py --requests 100000
    .venv/bin/python benchmarks/gc_pauses.py --requests 100000 --tree /tmp/older

Run pinned to one CPU (``taskset -c 0``) on a quiet machine; a pause is wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import wsgi_environ

_ACCOUNTS = 1000


def measure(requests: int, *, freeze: bool = False) -> dict[str, Any]:
    from app import create_app
    from app.auth import token_digest
    from app.extensions import store
    from app.ledger.model import Deadline

    app = create_app({"demo": False})
    ledger = store(app)
    names = [f"user{index:04d}" for index in range(_ACCOUNTS)]
    for name in names:
        ledger.create_account(name, token_digest(f"t-{name}"), 10**12, deadline=Deadline.after_ms(5000))
    pauses: list[float] = []
    started: list[float] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append(time.perf_counter() - started.pop())

    gc.collect()
    if freeze:  # what a gunicorn worker does once it has built the app (post_worker_init)
        gc.freeze()
    gc.callbacks.append(watch)
    began = time.perf_counter()
    try:
        for index in range(requests):
            source, target = names[index % _ACCOUNTS], names[(index * 7 + 1) % _ACCOUNTS]
            if source == target:
                target = names[(index + 1) % _ACCOUNTS]
            _transfer(app, source, target)
    finally:
        gc.callbacks.remove(watch)
    elapsed_s = time.perf_counter() - began
    return {
        "requests": requests,
        "seconds": round(elapsed_s, 2),
        "full_collections": len(pauses),
        "pause_total_ms": round(sum(pauses) * 1000, 1),
        "pause_max_ms": round(max(pauses, default=0.0) * 1000, 1),
        "tracked_objects": len(gc.get_objects()),
    }


def _transfer(app: Any, source: str, target: str) -> None:
    environ = wsgi_environ(
        "POST", "/account/coins/transfer", f"username={source}&to={target}&amount=1", f"t-{source}"
    )
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(body)
    if not statuses or not statuses[0].startswith("200"):
        raise RuntimeError(f"a transfer answered {statuses}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000, help="transfers to send (default 100000)")
    parser.add_argument(
        "--freeze", action="store_true", help="gc.freeze() once the app is built, as a gunicorn worker does"
    )
    parser.add_argument("--tree", type=Path, default=None, help="a checkout to import the app from")
    args = parser.parse_args(argv)
    tree = (args.tree or Path(__file__).resolve().parent.parent).resolve()
    sys.path.insert(0, str(tree))
    # The request lines are written as shipped, to nowhere.
    os.environ["LEDGER_LOG_LEVEL"] = "INFO"
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the whole run)
    import app

    result = {"app": str(Path(app.__file__).parent), "freeze": args.freeze}
    result.update(measure(args.requests, freeze=args.freeze))
    print(json.dumps(result), file=sys.__stdout__)
    return result


if __name__ == "__main__":
    main()
