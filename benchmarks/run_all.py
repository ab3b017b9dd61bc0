"""Run every GoLedger benchmark with modest defaults and print the README's Markdown.

``.venv/bin/python -m benchmarks`` (about 9 minutes) or ``... -m benchmarks --quick``
(about 3 minutes). Each part runs in its own process (the store benchmark pins
itself to the server CPU; the others pin their servers to CPU 0 and their load
generators to CPU 1); its tables go to stdout, progress to stderr.

Parts: ``store`` (MockDB in-process), ``http`` (service against a bare Flask app,
peak and half of peak, wrk and locust), ``batch`` (the batch endpoint against
single transfers), ``sweep`` (gunicorn thread counts), ``profile`` (top costs of a
transfer and a balance read: py-spy when installed, else cProfile).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, machine_markdown, progress, require_tool

PARTS = ("store", "http", "batch", "sweep", "durability", "profile", "postgres")
_MODULES = {
    "store": "benchmarks.store_bench",
    "http": "benchmarks.http_bench",
    "batch": "benchmarks.batch_bench",
    "sweep": "benchmarks.thread_sweep",
    "durability": "benchmarks.durability_bench",
    "profile": "benchmarks.profile_hot_path",
    "postgres": "benchmarks.pg_bench",
}
#: Extra arguments of each part in --quick mode.
_QUICK = {
    "store": ["--quick"],
    "http": ["--quick"],
    "batch": ["--quick"],
    "sweep": ["--quick", "--threads", "1", "4", "16", "32"],
    "durability": ["--quick"],
    "profile": ["--seconds", "3", "--requests", "2000"],
    "postgres": ["--quick"],
}
#: Bounds on each part, far above their normal length: a hung part fails the run.
_PART_TIMEOUT_S = {
    "store": 300,
    "http": 900,
    "batch": 900,
    "sweep": 900,
    "durability": 1200,
    "profile": 300,
    "postgres": 900,
}


def run_part(part: str, quick: bool) -> str:
    command = [sys.executable, "-m", _MODULES[part], *(_QUICK[part] if quick else [])]
    progress(f"running {shlex.join(command[1:])}")
    done = subprocess.run(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=None,  # progress lines go straight through
        text=True,
        timeout=_PART_TIMEOUT_S[part],
        check=False,
    )
    if done.returncode != 0:
        return (
            f"### {part}\n\nFAILED (exit {done.returncode}); its output:\n\n```\n{done.stdout[-3000:]}\n```"
        )
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 3 minutes in all)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    parser.add_argument("--output", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    require_tool("wrk")  # install it up front rather than in the middle of a part
    shown = ".venv/bin/python -m benchmarks" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    began = time.monotonic()
    sections = ["## Benchmarks", machine_markdown(shown)]
    for part in args.only:
        sections.append(run_part(part, args.quick))
    minutes = (time.monotonic() - began) / 60
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    sections.append(f"Total time of this run: {minutes:.1f} min; load average at the end {load}.")
    markdown = "\n\n".join(sections) + "\n"
    print(markdown)
    if args.output:
        args.output.write_text(markdown)
    return 0 if all("FAILED (exit" not in section for section in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
