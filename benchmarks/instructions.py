"""CPU instructions per store operation, counted by valgrind's callgrind: repeatable on a noisy machine.

Wall-clock rates on a shared 2-core machine swing by a third from one run to the
next; an instruction count does not (the same total twice for the same code and
inputs, whatever else the machine does). For each operation this runs a small
driver twice under ``valgrind --tool=callgrind``, once doing nothing and once doing
``--operations`` operations, and divides the difference: the instructions one
operation costs, start-up and set-up excluded. Instructions are not time (a cache
miss costs more than an addition), so the table is for comparing versions of the
code, beside the timed benchmarks, not instead of them.

Operations: ``transfer``, ``deposit`` and ``balance`` (``MockDB`` in memory, a fresh
``Deadline`` each, as the app calls them), ``batch-item`` (one item of a non-atomic
batch of 8189 transfers), ``minimal`` (``store_bench.MinimalChainedLedger``: the
reader-writer lock, a funds check, one SHA-256-chained record: the floor), and three
parts of a transfer alone: ``lock`` (the store's write lock generated, taken with
the deadline and released), ``seal`` (one record sealed: encoding, SHA-256, the
record) and ``rules`` (``rules.apply_item`` on two accounts); ``http-transfer`` is a
whole transfer request through the app (``create_app``, a WSGI environ as gunicorn
builds it, the request line logged as shipped). ``noop`` is the
driver's own work each operation (a pair of names, a ``Deadline``, the dispatch),
which every other figure includes.

``--tree PATH`` counts another checkout of the project (a ``git worktree`` of an
older revision) with the same driver::

    .venv/bin/python benchmarks/instructions.py
    .venv/bin/python benchmarks/instructions.py --tree /tmp/older --only transfer batch-item

Needs valgrind (Debian's ``valgrind``); about a minute per operation.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = (
    "noop", "transfer", "deposit", "balance", "batch-item", "minimal", "lock", "seal", "rules",
    "http-transfer",
)  # fmt: skip
_BATCH_ITEMS = 8189
_COLLECTED = re.compile(rb"Collected : (\d+)")

#: The driver, run by the venv's Python with the tree to count first on its path.
_DRIVER = """
import random, sys
tree, operation, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, tree)
sys.path.insert(0, {benchmarks!r})
from app.auth import token_digest
from app.ledger.memory import MockDB
from app.ledger import rules
from app.ledger.model import BatchItem, Deadline, OperationType
from app.ledger.records import RecordDraft
names = [f"user{{index:03d}}" for index in range(1000)]
rng = random.Random(1)
pairs = [rng.sample(names, 2) for _ in range(4096)]
if operation == "http-transfer":
    import io
    from app import create_app
    from app.extensions import store as store_of
    app = create_app({{"demo": False}})
    for name in names:
        digest = token_digest("t-" + name)
        store_of(app).create_account(name, digest, 10**12, deadline=Deadline.after_ms(5000))
    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(status)
    def run(index):
        source, target = pairs[index % 4096]
        environ = {{
            "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/account/coins/transfer",
            "QUERY_STRING": f"username={{source}}&to={{target}}&amount=1", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000", "HTTP_AUTHORIZATION": "t-" + source, "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }}
        b"".join(app(environ, start_response))
elif operation == "minimal":
    from store_bench import MinimalChainedLedger
    ledger = MinimalChainedLedger()
    for name in names:
        ledger.open(name, 10**12)
    def run(index):
        source, target = pairs[index % 4096]
        ledger.transfer(source, target, 1)
else:
    store = MockDB()
    for name in names:
        store.create_account(name, token_digest(name), 10**12, deadline=Deadline.after_ms(5000))
    targets = [pairs[index % 4096][1] for index in range({batch})]
    targets = [target if target != names[0] else names[1] for target in targets]
    items = [BatchItem(OperationType.TRANSFER, 1, target) for target in targets]
    def run(index):
        source, target = pairs[index % 4096]
        deadline = Deadline.after_ms(2000)
        if operation == "noop":  # the driver's own work: a pair, a Deadline, the dispatch
            pass
        elif operation == "transfer":
            store.transfer(source, target, 1, deadline=deadline)
        elif operation == "deposit":
            store.deposit(source, 1, deadline=deadline)
        elif operation == "balance":
            store.account(source, deadline=deadline)
        elif operation == "lock":  # the parts below reach into MockDB: a benchmark's licence
            lock = store._rw.gen_wlock()
            store._acquire(lock, deadline, "transfer")
            lock.release()
        elif operation == "seal":
            draft = RecordDraft(OperationType.TRANSFER, source, target, 1)
            draft.seal_encoded("0" * 64, index + 1, "tx_0", "t")
        elif operation == "rules":
            rules.apply_item(store._accounts.get, source, BatchItem(OperationType.TRANSFER, 1, target))
        else:
            store.batch(names[0], items, atomic=False, deadline=Deadline.after_ms(60000))
for index in range(200 if operation != "batch-item" else 1):
    run(index)  # warm: caches, the first records, the first batch
for index in range(count):
    run(index)
"""


def count_instructions(tree: Path, operation: str, operations: int) -> float:
    """Instructions per operation of ``operation`` in ``tree`` (the difference of two runs)."""
    driver = _DRIVER.format(benchmarks=str(ROOT / "benchmarks"), batch=_BATCH_ITEMS)
    totals = []
    for count in (0, operations):
        completed = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                "-c",
                driver,
                str(tree),
                operation,
                str(count),
            ],
            capture_output=True,
            check=True,
            timeout=900,
        )
        found = _COLLECTED.search(completed.stderr)
        if found is None:
            raise RuntimeError(f"callgrind printed no total: {completed.stderr[-500:]!r}")
        totals.append(int(found.group(1)))
    per = operations * (_BATCH_ITEMS if operation == "batch-item" else 1)
    return (totals[1] - totals[0]) / per


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to count (default: this one)")
    parser.add_argument("--only", nargs="+", choices=OPERATIONS, default=list(OPERATIONS))
    parser.add_argument("--operations", type=int, default=10_000, help="operations a run (batches: 2)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install -y valgrind)")
    results = {}
    for operation in args.only:
        operations = 2 if operation == "batch-item" else args.operations
        results[operation] = count_instructions(args.tree.resolve(), operation, operations)
        print(f"{operation:12s} {results[operation]:10,.0f} instructions", flush=True)
    return results


if __name__ == "__main__":
    main()
