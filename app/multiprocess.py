"""Metrics across gunicorn's worker processes (prometheus-client's multiprocess mode).

With several workers each process counts its own requests and operations, and a
scrape reaches one worker at random. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
set before prometheus-client is imported, which the gunicorn master does: see
``app.serving.prepare_metrics_dir``) every process writes its metric values to files of
its own in that directory, and the worker that answers a scrape adds up every
process's files (``MultiProcessCollector``), those of workers that have exited
included, so that counters never go back.

- The HTTP metrics (``prometheus_client`` ``Counter``/``Histogram``) write their files
  themselves, on every request.
- The store counts into its own counters (``LedgerStore.counts``, no metric library
  on its hot path); ``Publisher`` copies them into this process's files every
  ``PUBLISH_INTERVAL_S``, before this worker answers a scrape, and at exit. A scrape
  therefore shows the other workers' store counts as of at most that long ago.
- No gauge goes through the files: the ledger's sizes are the database's, read at
  scrape time by whichever worker answers (adding them up would multiply them by the
  worker count), so no gauge needs a multiprocess mode.
- Process and GC metrics (``ThisProcess``) cannot be added up across processes and
  the library has no per-process form of them: they describe the worker that
  answered, with its ``pid`` as a label.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, values
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from app.serving import MULTIPROC_DIR

#: How often every worker copies its store counts into its metric files.
PUBLISH_INTERVAL_S = 1.0

_log = logging.getLogger("goledger.metrics")


def multiprocess_directory() -> str | None:
    """The directory of multiprocess mode, or ``None`` for one process's plain registry.

    prometheus-client chose its mode when it was imported, from the environment then;
    a directory set later (or removed) would leave the two disagreeing, and the
    workers silently each with counts of their own: refuse to start instead.
    """
    directory = os.environ.get(MULTIPROC_DIR) or None
    in_files = bool(getattr(values.ValueClass, "_multiprocess", False))
    if in_files != (directory is not None):
        raise RuntimeError(
            f"{MULTIPROC_DIR} must be set (to a directory) before prometheus_client is imported and "
            f"stay set: it is {directory!r}, but prometheus_client "
            f"{'writes' if in_files else 'does not write'} its values to files"
        )
    return directory


class Publisher:
    """Copies what a collector reports (this process's store counts: counters and
    histograms) into this process's metric files, as the absolute values they are;
    every ``PUBLISH_INTERVAL_S`` on a thread of its own, on ``publish()`` and at exit."""

    def __init__(self, source: Collector) -> None:
        self._source = source
        self._lock = threading.Lock()  # one publication at a time: the values are absolute
        #: (sample name, labels) -> (its value in this process's file, the last value written).
        self._written: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Any, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="goledger-metrics", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def publish(self) -> None:
        with self._lock:
            for metric in self._source.collect():
                if metric.type not in ("counter", "histogram"):
                    raise TypeError(f"{metric.name}: only counters and histograms add up across workers")
                below: dict[tuple[tuple[str, str], ...], float] = {}
                for sample in metric.samples:
                    value = sample.value
                    if metric.type == "histogram":
                        if not sample.name.endswith(("_bucket", "_sum")):
                            continue  # _count: the collector adds up the buckets
                        if sample.name.endswith("_bucket"):
                            # The files hold each bucket's own count; the collector accumulates.
                            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                            value, below[series] = value - below.get(series, 0.0), value
                    self._write(metric, sample.name, sample.labels, value)

    def _write(self, metric: Metric, name: str, labels: dict[str, str], value: float) -> None:
        key = (name, tuple(sorted(labels.items())))
        found = self._written.get(key)
        if found is None:
            file_value = values.ValueClass(
                metric.type, metric.name, name, tuple(labels), tuple(labels.values()), metric.documentation
            )
        elif found[1] == value:
            return
        else:
            file_value = found[0]
        file_value.set(value)
        self._written[key] = (file_value, value)

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL_S):
            try:
                self.publish()
            except Exception:
                _log.exception("could not publish this worker's store counts to the metric files")

    def close(self) -> None:
        """Stop the thread and publish a last time (the process is exiting)."""
        self._stop.set()
        self._thread.join(timeout=PUBLISH_INTERVAL_S * 2)
        self.publish()


class ThisProcess(Collector):
    """This process's process and GC metrics, each sample labelled with its ``pid``."""

    def __init__(self) -> None:
        self._inner = CollectorRegistry()
        ProcessCollector(registry=self._inner)
        GCCollector(registry=self._inner)

    def collect(self) -> Iterator[Metric]:
        pid = str(os.getpid())
        for metric in self._inner.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, "pid": pid}) for sample in metric.samples
            ]
            yield labelled
