"""Charts of a load-test run from locust's ``--csv`` files: ``python -m loadtests.plot PREFIX``.

``PREFIX`` is what was given to ``--csv`` (e.g. ``loadtests/results/mixed/locust``).
Three PNG files go into ``--out`` (default: the prefix's folder):

* ``throughput.png``: requests/s and failures/s over time (every endpoint's own
  requests/s too when the run had ``--csv-full-history``);
* ``latency.png``: p50/p95/p99 response times over time. locust computes these
  over a sliding window of the last 10 seconds, so they lag the load a little;
* ``failures.png``: failures by kind (``PREFIX_failures.csv``) beside the refusals
  the scenario expects, by kind (``PREFIX_outcomes.csv``, written by
  ``loadtests/locustfile.py``), which are not failures.

Needs matplotlib (in the ``test`` and ``loadtest`` extras); imports no locust.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

PERCENTILES = ("50%", "95%", "99%")
AGGREGATED = "Aggregated"
FIGURE_SIZE = (8.0, 4.0)
DPI = 100


@dataclass
class Series:
    """One name's rows of ``_stats_history.csv``: seconds since the start, and columns."""

    seconds: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, second: float, row: dict[str, str], columns: tuple[str, ...]) -> None:
        self.seconds.append(second)
        for column in columns:
            text = row.get(column, "")
            self.values.setdefault(column, []).append(float(text) if _is_number(text) else float("nan"))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


COLUMNS = ("Requests/s", "Failures/s", "User Count", *PERCENTILES)


def read_history(path: Path) -> dict[str, Series]:
    """Every name's series (``Aggregated`` always; endpoints with ``--csv-full-history``)."""
    if not path.exists():
        raise ValueError(f"{path} is missing: was the run started with --csv?")
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows: did the run last at least a second?")
    start = min(float(row["Timestamp"]) for row in rows)
    series: dict[str, Series] = {}
    for row in rows:
        name = row["Name"] if row["Name"] == AGGREGATED else f"{row['Type']} {row['Name']}"
        series.setdefault(name, Series()).add(float(row["Timestamp"]) - start, row, COLUMNS)
    if AGGREGATED not in series:
        raise ValueError(f"{path} has no {AGGREGATED} rows: is it a locust _stats_history.csv?")
    return series


def _rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows; none if the file is missing (a run without failures, or without outcomes)."""
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def read_failures(path: Path) -> Counter[str]:
    """Failures by kind, from locust's ``_failures.csv``: ``METHOD name: error`` -> occurrences."""
    failures: Counter[str] = Counter()
    for row in _rows(path):
        failures[f"{row['Method']} {row['Name']}: {row['Error']}"] += int(row["Occurrences"])
    return failures


def read_refusals(path: Path) -> Counter[str]:
    """Expected refusals by error code, from the scenario's ``_outcomes.csv``."""
    refusals: Counter[str] = Counter()
    for row in _rows(path):
        if row["outcome"] == "refused":
            refusals[row["kind"]] += int(row["count"])
    return refusals


def _figure(title: str) -> tuple[Figure, Axes]:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=DPI)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_throughput(series: dict[str, Series], title: str, path: Path) -> Path:
    figure, axes = _figure(f"{title}: throughput")
    total = series[AGGREGATED]
    axes.plot(
        total.seconds, total.values["Requests/s"], label="all requests/s", linewidth=2, color="tab:blue"
    )
    axes.plot(total.seconds, total.values["Failures/s"], label="failures/s", linewidth=2, color="tab:red")
    for name, endpoint in sorted(series.items()):
        if name != AGGREGATED:
            axes.plot(endpoint.seconds, endpoint.values["Requests/s"], label=name, linewidth=0.8, alpha=0.8)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("requests per second")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=7, loc="best")
    return _save(figure, path)


def plot_latency(series: dict[str, Series], title: str, path: Path) -> Path:
    figure, axes = _figure(f"{title}: response time (last 10 s window)")
    total = series[AGGREGATED]
    for percentile, color in zip(PERCENTILES, ("tab:green", "tab:orange", "tab:red"), strict=True):
        axes.plot(total.seconds, total.values[percentile], label=f"p{percentile.rstrip('%')}", color=color)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("milliseconds")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_failures(failures: Counter[str], refusals: Counter[str], title: str, path: Path) -> Path:
    figure, axes = _figure(
        f"{title}: {failures.total():,} failures, {refusals.total():,} expected refusals, by kind"
    )
    bars = [(f"failure: {kind}", count, "tab:red") for kind, count in failures.most_common()]
    bars += [(f"expected: {kind}", count, "tab:gray") for kind, count in refusals.most_common()]
    if not bars:
        axes.text(0.5, 0.5, "no failures, no refusals", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)
    labels = [label if len(label) <= 60 else label[:57] + "..." for label, _, _ in bars]
    positions = range(len(bars))
    axes.barh(
        list(positions), [count for _, count, _ in bars], height=0.6, color=[color for _, _, color in bars]
    )
    axes.set_yticks(list(positions), labels, fontsize=7)
    axes.set_ylim(max(len(bars), 4) - 0.5, -0.5)  # top down, and no single bar filling the chart
    axes.set_xlabel("count")
    for position, (_, count, _) in zip(positions, bars, strict=True):
        axes.annotate(f" {count:,}", (count, position), va="center", fontsize=7)
    return _save(figure, path)


def plot_run(prefix: str, out: Path | None = None, title: str | None = None) -> list[Path]:
    """The three charts of the run written with ``--csv PREFIX``; the files written."""
    base = Path(prefix)
    out = out or base.parent
    out.mkdir(parents=True, exist_ok=True)
    title = title or base.parent.name or base.name
    series = read_history(Path(f"{prefix}_stats_history.csv"))
    failures = read_failures(Path(f"{prefix}_failures.csv"))
    refusals = read_refusals(Path(f"{prefix}_outcomes.csv"))
    return [
        plot_throughput(series, title, out / "throughput.png"),
        plot_latency(series, title, out / "latency.png"),
        plot_failures(failures, refusals, title, out / "failures.png"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("prefix", help="the --csv prefix of the run, e.g. loadtests/results/mixed/locust")
    parser.add_argument("--out", type=Path, help="folder for the PNG files (default: the prefix's folder)")
    parser.add_argument("--title", help="chart title (default: the prefix's folder name)")
    options = parser.parse_args(argv)
    try:
        paths = plot_run(options.prefix, options.out, options.title)
    except (OSError, ValueError, KeyError) as error:
        parser.exit(1, f"cannot plot {options.prefix}: {error!r}\n")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
