"""The lock-removal mutation run: take each lock out in turn and name the test that notices.

    python -m tests.lock_mutants            # every mutant; a table on stdout
    python -m tests.lock_mutants --list     # the mutants, without running anything
    python -m tests.lock_mutants --only keys.py --markdown result.md

Not part of CI (it runs pytest once per mutant, several minutes in all). It copies
the tree to a temporary directory and mutates only that copy, one mutant at a time;
the working tree is never touched. The mutants:

- ``with``: each ``with self._<lock>:`` of ``app/ledger`` becomes ``if True:``
  (the block runs without its lock or condition);
- ``rw``: each place ``MockDB`` generates a reader-writer lock handle gets a fresh
  private ``threading.RLock()`` instead (the handle excludes nobody);
- ``check``: ``AuditTrail._check_lock`` is never taken;
- ``row``: the PostgreSQL store's row locks: the accounts' ``FOR NO KEY UPDATE``
  removed or made ``FOR UPDATE``, their order made random, the ``chain_head`` row
  locked first instead of last, or not locked at all.

Each mutant runs the lock tests first (``tests/test_locks.py``,
``tests/test_postgres_locks.py``), stopping at the first failure; only a mutant they
miss runs the wider concurrency suites. A mutant is caught when a test fails (a
hang counts, after ``RUN_TIMEOUT_S``). The run starts with the unmutated copy, which
must pass the lock tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What the copy holds: everything the tests import or read.
COPIED = ("app", "tests", "setup.cfg", "pyproject.toml", "wsgi.py", "gunicorn.conf.py")
FIRST = ("tests/test_locks.py", "tests/test_postgres_locks.py")
WIDER = (
    "tests/test_idempotency_races.py",
    "tests/test_idempotency.py",
    "tests/test_races.py",
    "tests/test_scenarios.py",
    "tests/test_audit.py",
    "tests/test_holds_races.py",
    "tests/test_holds.py",
    "tests/test_batch.py",
    "tests/test_observability.py",
    "tests/test_journal.py",
    "tests/test_durability.py",
    "tests/test_properties.py",
    "tests/test_postgres.py",
)
#: A run that takes longer has hung (every test joins its threads within seconds).
RUN_TIMEOUT_S = 900

_WITH = re.compile(r"^(\s*)with self\.(_\w+):(.*)$")
_RW = re.compile(r"self\._rw\.gen_([rw])lock\(\)")
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Mutant:
    kind: str
    path: str
    line: int
    lock: str
    where: str
    #: (old, new) replacements in ``path``, each of which must occur.
    changes: tuple[tuple[str, str], ...]
    #: Replace line ``line`` alone (``with``/``rw``) instead of the first occurrence in the file.
    line_only: bool = False

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"


def _enclosing(lines: list[str], index: int) -> tuple[str, str]:
    """The class and the function around line ``index``."""
    owner = function = "?"
    depth = len(lines[index]) - len(lines[index].lstrip())
    for line in reversed(lines[:index]):
        stripped = line.strip()
        indent = len(line) - len(stripped)
        if not stripped or indent >= depth:
            continue
        depth = indent
        if function == "?" and (match := re.match(r"(?:async )?def (\w+)", stripped)):
            function = match.group(1)
        if match := re.match(r"class (\w+)", stripped):
            owner = match.group(1)
            break
    return owner, function


def mutants(root: Path = ROOT) -> list[Mutant]:
    found: list[Mutant] = []
    for path in sorted((root / "app" / "ledger").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            owner, function = _enclosing(lines, index)
            if match := _WITH.match(line):
                replaced = f"{match.group(1)}if True:{match.group(3)}"
                found.append(
                    Mutant(
                        "with", relative, index + 1, f"{owner}.{match.group(2)}", function,
                        ((line, replaced),), line_only=True,
                    )
                )  # fmt: skip
            for rw in _RW.finditer(line):
                replaced = line.replace(rw.group(0), '__import__("threading").RLock()', 1)
                lock = f"{owner}._rw ({'read' if rw.group(1) == 'r' else 'write'})"
                found.append(
                    Mutant("rw", relative, index + 1, lock, function, ((line, replaced),), line_only=True)
                )
    trail = "app/ledger/memory/trail.py"
    found.append(
        Mutant(
            "check", trail, _line(root, trail, "_check_lock.acquire"),
            "AuditTrail._check_lock", "check_new_records",
            (("self._check_lock.acquire(blocking=wait)", "True"), ("self._check_lock.release()", "pass")),
        )
    )  # fmt: skip
    unit = "app/ledger/postgres/unit.py"
    append = "app/ledger/postgres/migrations/0002_append_in_the_database.sql"
    lock_accounts = '"ORDER BY username FOR NO KEY UPDATE"'
    head = "FROM chain_head AS c FOR NO KEY UPDATE;"
    found += [
        Mutant(
            "row", unit, _line(root, unit, lock_accounts), "accounts rows: no lock", "_LOCK_ACCOUNTS",
            ((lock_accounts, '"ORDER BY username"'),),
        ),
        Mutant(
            "row", unit, _line(root, unit, lock_accounts), "accounts rows: FOR UPDATE", "_LOCK_ACCOUNTS",
            ((lock_accounts, '"ORDER BY username FOR UPDATE"'),),
        ),
        Mutant(
            "row", unit, _line(root, unit, lock_accounts), "accounts rows: random order", "_LOCK_ACCOUNTS",
            ((lock_accounts, '"ORDER BY random() FOR NO KEY UPDATE"'),),
        ),
        Mutant(
            "row", unit, _line(root, unit, "(_LOCK_ACCOUNTS, (wanted,))"), "chain_head: first", "Unit.begin",
            (("(_LOCK_ACCOUNTS, (wanted,))", '("SELECT 1 FROM chain_head FOR NO KEY UPDATE", ()), '
              "(_LOCK_ACCOUNTS, (wanted,))"),),
        ),
        Mutant(
            "row", append, _line(root, append, head), "chain_head: no lock", "goledger_append",
            ((head, "FROM chain_head AS c;"),),
        ),
    ]  # fmt: skip
    return found


def _line(root: Path, relative: str, text: str) -> int:
    for number, line in enumerate((root / relative).read_text().splitlines(), start=1):
        if text in line:
            return number
    raise LookupError(f"{text!r} is not in {relative}: the mutant needs updating")


def _apply(source: str, mutant: Mutant) -> str:
    if mutant.line_only:
        lines = source.splitlines(keepends=True)
        (old, new) = mutant.changes[0]
        current = lines[mutant.line - 1].rstrip("\n")
        if current != old:
            raise LookupError(f"{mutant.name} no longer reads {old!r}")
        lines[mutant.line - 1] = new + "\n"
        return "".join(lines)
    for old, new in mutant.changes:
        if old not in source:
            raise LookupError(f"{mutant.name}: {old!r} not found")
        source = source.replace(old, new, 1)
    return source


@dataclass(frozen=True)
class Verdict:
    mutant: Mutant
    caught_by: str | None
    stage: str
    seconds: float


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[str | None, str]:
    """Run ``tests`` in the copy, stopping at the first failure: its test id (``None``: all
    passed) and pytest's output."""
    environment = {**os.environ, "PYTHONPATH": str(copy)}
    environment.pop("GOLEDGER_TEST_POSTGRES_URL", None)  # a fresh database: the copy's migrations
    present = [test for test in tests if (copy / test).exists()]
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *present]
    try:
        run = subprocess.run(
            command,
            cwd=copy,
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"(hang: no result within {RUN_TIMEOUT_S} s)", ""
    output = run.stdout + run.stderr
    if run.returncode == 0:
        return None, output
    failed = _FAILED.search(output)
    return (failed.group(1) if failed else f"(pytest exit {run.returncode})"), output


def run(selected: list[Mutant], copy: Path, *, verbose: bool) -> Iterator[Verdict]:
    for mutant in selected:
        target = copy / mutant.path
        original = target.read_text()
        target.write_text(_apply(original, mutant))
        started = time.monotonic()
        try:
            stage = "lock tests"
            caught, output = _pytest(copy, FIRST)
            if caught is None:
                stage = "wider suites"
                caught, output = _pytest(copy, WIDER)
        finally:
            target.write_text(original)
        verdict = Verdict(mutant, caught, stage, time.monotonic() - started)
        if verbose and caught is None:
            print(output[-3000:], file=sys.stderr)
        yield verdict


def _copy_tree(into: Path) -> Path:
    copy = into / "tree"
    copy.mkdir()
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def table(verdicts: list[Verdict]) -> str:
    rows = [
        "| # | where | lock | kind | caught by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for number, verdict in enumerate(verdicts, start=1):
        mutant = verdict.mutant
        caught = f"`{verdict.caught_by}`" if verdict.caught_by else "**not caught**"
        if verdict.caught_by and verdict.stage != "lock tests":
            caught += f" ({verdict.stage})"
        rows.append(
            f"| {number} | `{mutant.name}` {mutant.where} | {mutant.lock} | {mutant.kind} | {caught} |"
        )
    caught_count = sum(verdict.caught_by is not None for verdict in verdicts)
    rows.append("")
    rows.append(f"Caught {caught_count} of {len(verdicts)} lock-removal mutants.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--only", default="", help="only mutants whose file:line or lock contains this")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--verbose", action="store_true", help="show the output of runs that catch nothing")
    arguments = parser.parse_args(argv)
    selected = [
        mutant for mutant in mutants() if arguments.only in mutant.name or arguments.only in mutant.lock
    ]
    if arguments.list:
        for mutant in selected:
            print(f"{mutant.kind:6} {mutant.name:45} {mutant.lock:40} {mutant.where}")
        print(f"{len(selected)} mutants")
        return 0
    with tempfile.TemporaryDirectory(prefix="goledger-mutants-") as scratch:
        copy = _copy_tree(Path(scratch))
        failed, output = _pytest(copy, FIRST)
        if failed is not None:
            print(f"the unmutated copy fails {failed}; nothing to measure\n{output[-3000:]}", file=sys.stderr)
            return 2
        verdicts = []
        for verdict in run(selected, copy, verbose=arguments.verbose):
            verdicts.append(verdict)
            status = verdict.caught_by or "NOT CAUGHT"
            print(
                f"{verdict.mutant.name:45} {verdict.mutant.lock:40} {status} ({verdict.seconds:.0f} s)",
                flush=True,
            )
    report = table(verdicts)
    print(report)
    if arguments.markdown is not None:
        arguments.markdown.write_text(report + "\n")
    return 0 if all(verdict.caught_by for verdict in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
