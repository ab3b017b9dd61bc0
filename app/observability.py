"""Per-request observability: request ids, the request log line, Prometheus metrics.

One worker process: each app has its own ``CollectorRegistry`` (never the
process-global one), so apps built by tests do not share counters. Several worker
processes: prometheus-client's multiprocess mode, so that one scrape shows every
worker's sum (``app.multiprocess``).

Store figures are read from the store, not counted here: its counters (operations
by outcome, lock waits, pool waits, commits, journal syncs) at scrape time or by the
publisher, its sizes at scrape time. The hot path pays for a few additions in the
store, not for a metric library call.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.ledger.store import Durations, LedgerStore
from app.logs import REQUEST_ID
from app.multiprocess import Publisher, ThisProcess, multiprocess_directory

_request_log = logging.getLogger("goledger.request")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STARTED = "goledger.started"
_REQUEST_ID_RESET = "goledger.request_id_reset"
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Methods that keep their name as a label value; any other is ``other``, so that a
#: client inventing methods cannot add series without end.
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

_DURATIONS = {
    "pg_pool_wait": "Time a PostgreSQL operation waited for a pooled connection.",
    "pg_commit": "Time of the round trip that carried a PostgreSQL transaction's COMMIT.",
    "journal_sync": "Time of the write-ahead journal's fdatasync (one per group commit).",
}
_JOURNAL_COUNTERS = {
    "syncs": "fdatasync calls of the write-ahead journal (one per group commit).",
    "frames": "Entries made durable by the journal.",
    "bytes": "Bytes written to the journal.",
}


class _StoreCounts(Collector):
    """This process's store counters: summed across workers in multiprocess mode."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        counts = self._store.counts()
        operations = CounterMetricFamily(
            "goledger_operations", "Store operations by type and outcome.", labels=["operation", "outcome"]
        )
        for (operation, outcome), count in sorted(counts.operations.items()):
            operations.add_metric([operation, outcome], count)
        yield operations
        yield _histogram(
            "goledger_lock_wait_seconds", "Time operations waited for their locks.", counts.lock_wait
        )
        for name, durations in sorted(counts.durations.items()):
            yield _histogram(f"goledger_{name}_seconds", _DURATIONS[name], durations)
        for name, value in sorted(counts.journal.items()):
            yield CounterMetricFamily(f"goledger_journal_{name}", _JOURNAL_COUNTERS[name], value=value)


def _histogram(name: str, help_text: str, durations: Durations) -> HistogramMetricFamily:
    bounds = [str(bound) for bound in durations.bounds_s] + ["+Inf"]
    return HistogramMetricFamily(
        name,
        help_text,
        buckets=list(zip(bounds, durations.buckets, strict=True)),
        sum_value=durations.sum_s,
    )


class _StoreSizes(Collector):
    """The ledger's sizes, read when scraped (for PostgreSQL, the whole database's)."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats()
        yield GaugeMetricFamily(
            "goledger_accounts",
            "Accounts in the ledger (PostgreSQL: the database's live-row estimate).",
            value=stats.accounts,
        )
        yield GaugeMetricFamily(
            "goledger_audit_records", "Records in the audit trail.", value=stats.audit_records
        )
        yield GaugeMetricFamily(
            "goledger_idempotency_keys",
            "Idempotency keys currently kept (PostgreSQL: the database's live-row estimate).",
            value=stats.idempotency_keys,
        )
        if stats.journal_failed is not None:
            yield GaugeMetricFamily(
                "goledger_journal_failed",
                "1 once the journal has failed (writes refused until a restart).",
                value=int(stats.journal_failed),
            )


class Observability:
    """The metrics registry and request hooks of one app."""

    def __init__(self, app: Flask, store: LedgerStore) -> None:
        directory = multiprocess_directory()
        #: What ``/metrics`` exposes.
        self.registry = CollectorRegistry()
        # In multiprocess mode the HTTP metrics reach the registry through their files only.
        own = self.registry if directory is None else None
        labels = ["method", "route", "status"]
        self._requests = Counter(
            "goledger_http_requests", "HTTP requests by method, route and status.", labels, registry=own
        )
        self._latency = Histogram(
            "goledger_http_request_duration_seconds",
            "HTTP request latency by method, route and status.",
            labels,
            buckets=_LATENCY_BUCKETS_S,
            registry=own,
        )
        self.registry.register(_StoreSizes(store))
        self._publisher: Publisher | None = None
        if directory is None:
            self.registry.register(_StoreCounts(store))
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        else:
            MultiProcessCollector(self.registry, path=directory)  # type: ignore[no-untyped-call]
            self._publisher = Publisher(_StoreCounts(store))
            self.registry.register(ThisProcess())
        # A racing first request may build a label set twice: harmless, the same children.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        app.before_request(self._before)
        app.after_request(self._after)
        app.teardown_request(self._teardown)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (this worker's store counts published first)."""
        if self._publisher is not None:
            self._publisher.publish()
        return generate_latest(self.registry)

    def _before(self) -> None:
        # Per-request state lives in the WSGI environ: one dict, no context-local proxies.
        environ = request.environ
        environ[_STARTED] = time.perf_counter()
        supplied = environ.get("HTTP_X_REQUEST_ID")
        valid = supplied is not None and _REQUEST_ID.fullmatch(supplied) is not None
        environ[_REQUEST_ID_RESET] = REQUEST_ID.set(supplied if valid else uuid.uuid4().hex)

    def _after(self, response: Response) -> Response:
        current = request._get_current_object()  # type: ignore[attr-defined]
        environ = current.environ
        duration_s = time.perf_counter() - environ.get(_STARTED, time.perf_counter())
        request_id = REQUEST_ID.get() or uuid.uuid4().hex
        method = current.method
        if method not in _METHODS:
            method = "other"
        # Unmatched paths share one label, so that scanners cannot explode the series.
        rule = current.url_rule
        route = rule.rule if rule is not None else "unmatched"
        status = response.status_code
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series_for(method, route, status)
        series[0].inc()
        series[1].observe(duration_s)
        response.headers["X-Request-Id"] = request_id
        if _request_log.isEnabledFor(logging.INFO):
            # Never headers or the query string: they carry tokens and names.
            fields = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(duration_s * 1000, 3),
            }
            _request_log.info("request", extra={"fields": fields})
        return response

    def _teardown(self, _error: BaseException | None) -> None:
        """The request is over: log lines from here on belong to no request."""
        token = request.environ.pop(_REQUEST_ID_RESET, None)
        if token is not None:
            REQUEST_ID.reset(token)

    def _series_for(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency children of one label set, made once.

        ``labels()`` takes the metric's lock and builds a key on every call; the
        cache makes the hot path one dictionary lookup. Label sets are bounded
        (routes, methods and statuses), so the cache is too.
        """
        labels = (method, route, str(status))
        series = (self._requests.labels(*labels), self._latency.labels(*labels))
        self._series[(method, route, status)] = series
        return series
