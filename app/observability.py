"""Per-request observability: request ids, the request log line, Prometheus metrics.

All of it happens in one WSGI middleware around Flask (``ObservedApp``, installed as
``app.wsgi_app``), not in Flask's request hooks: it reads the request id from the
environ and sets ``REQUEST_ID`` before Flask sees the request (so every line logged
while serving it carries the id), adds ``X-Request-Id`` and the headers every answer
carries (``app.headers``) to the header list as the response starts, and, once Flask
has answered, counts the request, observes its latency and writes the request line.
The route label is the rule Flask matched, which the request context records in the
environ as it matches (``RoutedRequestContext``).

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

import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask
from flask.ctx import RequestContext
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

from app.headers import security_headers
from app.ledger.store import Durations, LedgerStore
from app.logs import REQUEST_ID, log_request
from app.multiprocess import Publisher, ThisProcess, multiprocess_directory

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: The environ key under which the request context records the matched rule's template.
_ROUTE = "goledger.route"
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
        app.wsgi_app = ObservedApp(app.wsgi_app, self)  # type: ignore[method-assign]

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (this worker's store counts published first)."""
        if self._publisher is not None:
            self._publisher.publish()
        return generate_latest(self.registry)

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Count one answered request and its latency."""
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series_for(method, route, status)
        series[0].inc()
        series[1].observe(duration_s)

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


_StartResponse = Callable[..., Any]
_WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


class ObservedApp:
    """The WSGI middleware around Flask: request id, headers, metrics, the request line."""

    def __init__(self, wsgi_app: _WsgiApp, observability: Observability) -> None:
        self._wsgi_app = wsgi_app
        self._observability = observability

    def __call__(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        started_s = time.perf_counter()
        supplied = environ.get("HTTP_X_REQUEST_ID")
        if supplied is not None and _REQUEST_ID.fullmatch(supplied) is not None:
            request_id = supplied
        else:
            request_id = secrets.token_hex(16)
        added = (("X-Request-Id", request_id), *security_headers(environ.get("PATH_INFO", "")))
        statuses: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            headers.extend(added)
            return start_response(status, headers, exc_info)

        token = REQUEST_ID.set(request_id)
        try:
            body = self._wsgi_app(environ, start)
            duration_s = time.perf_counter() - started_s
            method = environ.get("REQUEST_METHOD", "GET").upper()
            if method not in _METHODS:
                method = "other"
            # Unmatched paths share one label, so that scanners cannot explode the series.
            route = environ.get(_ROUTE, "unmatched")
            status = int(statuses[-1][:3]) if statuses else 500
            self._observability.observe(method, route, status, duration_s)
            # Never headers or the query string: they carry tokens and names.
            duration_ms = round(duration_s * 1000, 3)
            log_request({"method": method, "route": route, "status": status, "duration_ms": duration_ms})
            return body
        finally:
            # The request is over: log lines from here on belong to no request.
            REQUEST_ID.reset(token)


class RoutedRequestContext(RequestContext):
    """Flask's request context, recording the matched rule's template in the environ.

    ``match_request`` is Flask's documented place to hook into matching; the route
    label (``ObservedApp``) is read from the environ after Flask has answered, when the
    request object is gone. A path no rule matches (404) or a method the rule does not
    allow (405) records nothing: ``unmatched``.
    """

    def match_request(self) -> None:
        super().match_request()
        rule = self.request.url_rule
        if rule is not None:
            self.request.environ[_ROUTE] = rule.rule
