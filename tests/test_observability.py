"""``/metrics`` (in one process and added up across gunicorn workers) and the JSON log lines."""

from __future__ import annotations

import importlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import ConfigError
from app.logs import JsonFormatter
from app.serving import prepare_metrics_dir
from tests.drivers import StoreDriver
from tests.servers import REQUEST_TIMEOUT_S, gunicorn_process, open_accounts
from tests.stores import ADMIN_TOKEN, app_config, empty_postgres, scratch_database

AARON = {"Authorization": "1"}
ADMIN = {"Authorization": ADMIN_TOKEN}
#: The fields every log line has.
LOG_FIELDS = {"timestamp", "level", "logger", "message", "request_id", "pid"}
#: How long the other workers' store counts may take to show (they publish every second).
PUBLISHED_WITHIN_S = 10.0


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return response.get_data(as_text=True)


def sample(text: str, series: str) -> float | None:
    """The value of one series (``name{labels}`` as exposed) in a scrape, ``None`` if absent."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


@contextmanager
def app_log_lines() -> Iterator[io.StringIO]:
    """What the handler ``create_app`` installed writes, captured (it stays installed)."""
    [handler] = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, JsonFormatter)
    ]
    lines = io.StringIO()
    previous = handler.setStream(lines)
    try:
        yield lines
    finally:
        handler.setStream(previous)


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` as a JSON object with the common fields (fails on any other line)."""
    entries = [json.loads(line) for line in text.splitlines()]
    for entry in entries:
        assert set(entry) >= LOG_FIELDS, entry
    return entries


def test_metrics_count_requests_operations_and_lock_waits(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=aaron&amount=5", headers=AARON)
    client.post("/account/coins/withdraw?username=aaron&amount=999999", headers=AARON)
    client.get("/account/coins?username=aaron", headers=AARON)
    client.get("/no/such/route/12345")
    text = scrape(client)
    assert 'goledger_http_requests_total{method="POST",route="/account/coins/add",status="200"} 1.0' in text
    assert (
        'goledger_http_requests_total{method="POST",route="/account/coins/withdraw",status="422"} 1.0' in text
    )
    assert 'goledger_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "/no/such/route" not in text
    assert (
        'goledger_http_request_duration_seconds_count{method="GET",route="/account/coins",status="200"} 1.0'
        in text
    )
    assert 'goledger_operations_total{operation="deposit",outcome="success"} 1.0' in text
    assert 'goledger_operations_total{operation="withdrawal",outcome="insufficient_funds"} 1.0' in text
    assert 'goledger_operations_total{operation="balance",outcome="success"} 1.0' in text
    assert 'goledger_operations_total{operation="open",outcome="success"} 2.0' in text
    assert "goledger_lock_wait_seconds_count 5.0" in text
    assert 'goledger_lock_wait_seconds_bucket{le="+Inf"} 5.0' in text
    assert "goledger_audit_records 4.0" in text


@pytest.mark.memory_only
def test_sizes_are_exact_in_memory(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=aaron&amount=5", headers={**AARON, "Idempotency-Key": "k1"})
    text = scrape(client)
    assert "goledger_audit_records 3.0" in text
    assert "goledger_accounts 2.0" in text
    assert "goledger_idempotency_keys 1.0" in text


def test_postgres_sizes_are_cheap_estimates_that_follow_the_commits(postgres_url: str) -> None:
    # A database of its own: on the shared one, tables emptied before every test are
    # analysed now and then, and an ANALYZE racing a DELETE leaves the estimate off
    # for a while (it is an estimate, and the help text says so).
    with scratch_database(postgres_url) as url:
        app = create_app(app_config(url))
        try:
            client = app.test_client()
            client.post(
                "/account/coins/add?username=aaron&amount=5", headers={**AARON, "Idempotency-Key": "k1"}
            )
            text = scrape(client)
            assert "goledger_audit_records 3.0" in text  # the chain head's sequence: exact
            assert "live-row estimate" in text
            # PostgreSQL's statistics catch up with the commits within about a second.
            deadline = time.monotonic() + PUBLISHED_WITHIN_S
            while not ("goledger_accounts 2.0" in text and "goledger_idempotency_keys 1.0" in text):
                assert time.monotonic() < deadline, text
                time.sleep(0.2)
                text = scrape(client)
        finally:
            app.extensions["ledger"].close()


@pytest.mark.parametrize("method", ["AAAB", "PROPFIND", "BREW"])
def test_an_unknown_method_is_labelled_other(client: FlaskClient, method: str) -> None:
    response = client.open("/account/coins", method=method, headers=AARON)
    assert response.status_code == 405
    client.open("/no/such/route", method=method)
    text = scrape(client)
    assert 'goledger_http_requests_total{method="other",route="unmatched",status="405"} 1.0' in text
    assert 'goledger_http_requests_total{method="other",route="unmatched",status="404"} 1.0' in text
    assert method not in text


def test_known_methods_keep_their_name(client: FlaskClient) -> None:
    client.options("/account/coins", headers=AARON)
    client.head("/account/coins?username=aaron", headers=AARON)
    text = scrape(client)
    assert 'goledger_http_requests_total{method="OPTIONS",route="unmatched",status="405"} 1.0' in text
    assert 'goledger_http_requests_total{method="HEAD",route="/account/coins",status="200"} 1.0' in text


def test_process_and_gc_metrics_are_exported(client: FlaskClient) -> None:
    text = scrape(client)
    assert (sample(text, "process_cpu_seconds_total") or 0) > 0
    assert (sample(text, "process_resident_memory_bytes") or 0) > 0
    assert sample(text, "process_open_fds") is not None
    assert sample(text, 'python_gc_collections_total{generation="0"}') is not None


def test_postgres_pool_waits_and_commits_are_histograms(postgres_url: str) -> None:
    app = create_app(app_config(empty_postgres(postgres_url)))
    try:
        client = app.test_client()
        before = scrape(client)
        client.post("/account/coins/add?username=aaron&amount=5", headers=AARON)
        after = scrape(client)
    finally:
        app.extensions["ledger"].close()
    commits = "goledger_pg_commit_seconds_count"
    assert sample(after, commits) == (sample(before, commits) or 0) + 1  # the deposit's
    assert sample(after, 'goledger_pg_commit_seconds_bucket{le="+Inf"}') == sample(after, commits)
    waits = "goledger_pg_pool_wait_seconds_count"
    assert (sample(after, waits) or 0) >= (sample(before, waits) or 0) + 2  # authentication, deposit
    assert "goledger_journal_sync_seconds" not in after


def test_journal_syncs_are_timed_one_observation_each(tmp_path: Path) -> None:
    app = create_app(app_config("memory", data_dir=str(tmp_path)))
    try:
        client = app.test_client()
        for amount in (1, 2, 3):
            client.post(f"/account/coins/add?username=aaron&amount={amount}", headers=AARON)
        text = scrape(client)
    finally:
        app.extensions["ledger"].close()
    syncs = sample(text, "goledger_journal_syncs_total")
    assert syncs is not None
    assert syncs >= 3
    assert sample(text, "goledger_journal_sync_seconds_count") == syncs
    assert (sample(text, "goledger_journal_sync_seconds_sum") or 0) > 0
    assert sample(text, "goledger_journal_failed") == 0
    assert "goledger_pg_" not in text


def test_the_plain_registry_needs_prometheus_client_and_the_environment_to_agree(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Imported here, not only by an earlier test's app: the test must not depend on the order.
    importlib.import_module("prometheus_client")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # set after the import: too late
    with pytest.raises(RuntimeError, match="before prometheus_client is imported"):
        create_app(app_config("memory"))


def test_metrics_need_no_token(client: FlaskClient) -> None:
    assert client.get("/metrics", headers={"Authorization": "wrong"}).status_code == 200


def test_a_timeout_shows_in_the_metrics(client: FlaskClient, driver: StoreDriver) -> None:
    with driver.holding_write_lock():
        client.post("/account/coins/add?username=aaron&amount=5", headers={**AARON, "X-Timeout-Ms": "5"})
    assert 'goledger_operations_total{operation="deposit",outcome="timeout"} 1.0' in scrape(client)


def test_each_request_logs_one_json_line_without_secrets(client: FlaskClient) -> None:
    with app_log_lines() as lines:
        response = client.post(
            "/account/coins/transfer?username=aaron&to=bryan&amount=5",
            headers={"Authorization": "Bearer 1", "X-Request-Id": "req-123"},
        )
    assert response.headers["X-Request-Id"] == "req-123"
    [entry] = json_lines(lines.getvalue())
    assert entry["logger"] == "goledger.request"
    assert entry["level"] == "INFO"
    assert entry["message"] == "request"
    assert entry["method"] == "POST"
    assert entry["route"] == "/account/coins/transfer"
    assert entry["status"] == 200
    assert entry["request_id"] == "req-123"
    assert isinstance(entry["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry["timestamp"]))
    assert "Bearer" not in lines.getvalue()
    assert "amount=5" not in lines.getvalue()


def test_every_line_logged_in_a_request_is_json_with_its_id_and_a_traceback_is_one_field() -> None:
    app: Flask = create_app(app_config("memory"))

    def explode() -> str:
        logging.getLogger("goledger.test").warning("about to fail")
        logging.getLogger("some.library").warning("a library's warning")
        raise RuntimeError("secret internals")

    app.add_url_rule("/explode", view_func=explode)
    with app_log_lines() as lines:
        response = app.test_client().get(
            "/explode", headers={"X-Request-Id": "req-boom", "Authorization": "Bearer 1"}
        )
        logging.getLogger("goledger.test").warning("after the request")
    assert response.status_code == 500
    entries = json_lines(lines.getvalue())
    assert [entry["logger"] for entry in entries] == [
        "goledger.test",
        "some.library",
        "goledger.errors",
        "goledger.request",
        "goledger.test",
    ]
    assert [entry["request_id"] for entry in entries] == ["req-boom"] * 4 + [None]
    failure = entries[2]
    assert failure["level"] == "ERROR"
    assert failure["message"] == "unhandled error"
    assert str(failure["exception"]).startswith("Traceback (most recent call last):")
    assert str(failure["exception"]).endswith("RuntimeError: secret internals")
    assert "exception" not in entries[3]
    assert "Bearer" not in lines.getvalue()


@pytest.mark.parametrize("supplied", [None, "", "bad id with spaces", "x" * 200])
def test_a_request_id_is_generated_when_none_usable_is_given(
    client: FlaskClient, supplied: str | None
) -> None:
    headers = {} if supplied is None else {"X-Request-Id": supplied}
    response = client.get("/system/health", headers=headers)
    generated = response.headers["X-Request-Id"]
    assert generated != supplied
    assert len(generated) == 32


def test_request_logs_cost_nothing_when_off(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("goledger.request")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with caplog.at_level(logging.WARNING, logger="goledger.request"):
            client.get("/system/health")
        assert not [record for record in caplog.records if record.name == "goledger.request"]
    finally:
        logger.setLevel(previous)


# -- several gunicorn workers: one scrape adds them all up -------------------------------------


def deposit_until_both_workers_served(server_url: str, output: list[str], limit: int) -> int:
    """Deposit 1 coin at a time, each on a new connection, until two worker pids have logged
    one; how many deposits that took (at most ``limit``)."""
    for sent in range(1, limit + 1):
        deposited = requests.post(
            f"{server_url}/account/coins/add?username=alice&amount=1",
            headers={"Authorization": "alice-token", "Connection": "close"},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert deposited.status_code == 200, deposited.text
        if sent >= 20 and len(deposit_pids(output)) == 2:
            return sent
    raise AssertionError(f"{limit} deposits, all served by workers {deposit_pids(output)}")


def deposit_pids(output: list[str]) -> set[object]:
    entries = [json.loads(line) for line in list(output) if line.startswith("{")]
    return {entry["pid"] for entry in entries if entry.get("route") == "/account/coins/add"}


@pytest.mark.slow
def test_two_workers_on_postgres_show_the_sum_of_both_in_one_scrape(
    postgres_url: str, tmp_path: Path
) -> None:
    with gunicorn_process(
        LEDGER_STORE=empty_postgres(postgres_url),
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
        LEDGER_PG_POOL_SIZE="4",
        LEDGER_SELF_DEPOSIT="1",
        GUNICORN_WORKERS="2",
        TMPDIR=str(tmp_path),  # where the master makes its private metrics directory
    ) as server:
        [metrics_dir] = tmp_path.glob("goledger-metrics-*")
        open_accounts(server.url, {"alice": 0}, ADMIN)
        deposits = deposit_until_both_workers_served(server.url, server.output, limit=400)
        text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT_S).text
        deposits_labels = '{method="POST",route="/account/coins/add",status="200"}'
        assert sample(text, f"goledger_http_requests_total{deposits_labels}") == deposits
        assert sample(text, f"goledger_http_request_duration_seconds_count{deposits_labels}") == deposits
        # The answering worker's process metrics, labelled with its pid.
        assert re.search(r'^process_cpu_seconds_total\{pid="[0-9]+"\} ', text, re.MULTILINE), text
        # The store's counts: the other worker's within a second of its last operation.
        deposited = 'goledger_operations_total{operation="deposit",outcome="success"}'
        deadline = time.monotonic() + PUBLISHED_WITHIN_S
        while sample(text, deposited) != deposits:
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
            text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT_S).text
        assert sample(text, "goledger_pg_commit_seconds_count") == deposits + 1  # and the opening
        assert sample(text, "goledger_lock_wait_seconds_count") == deposits + 1
        assert sample(text, 'goledger_lock_wait_seconds_bucket{le="+Inf"}') == deposits + 1
        assert sample(text, "goledger_audit_records") == deposits + 1
    assert not metrics_dir.exists()  # the master removed its directory at exit
    entries = json_lines(server.stderr)  # gunicorn's lines too
    assert {"gunicorn.error", "goledger.request"} <= {entry["logger"] for entry in entries}
    assert all(entry["request_id"] for entry in entries if entry["logger"] == "goledger.request")


@pytest.mark.slow
def test_an_operators_metrics_directory_is_emptied_at_start_and_kept(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_1.db"))  # a previous run's worker
    labels = ["GET", "/system/health", "200"]
    key = mmap_key(
        "goledger_http_requests", "goledger_http_requests_total", ["method", "route", "status"], labels, ""
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    with gunicorn_process(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as server:
        # One worker, in multiprocess mode since the operator asked for it.
        assert any(metrics_dir.glob("counter_*.db"))
        text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT_S).text
    # The readiness probe of gunicorn_process, not the previous run's 1000.
    assert sample(text, 'goledger_http_requests_total{method="GET",route="/system/health",status="200"}') == 1
    assert not (metrics_dir / "counter_1.db").exists()
    assert metrics_dir.is_dir()


def test_several_workers_refuse_a_master_that_imported_prometheus_client() -> None:
    # This process has imported it, as the master of a preloaded app would have: its
    # workers would inherit the single-process mode and each count alone.
    environ: dict[str, str] = {}
    with pytest.raises(ConfigError, match="preloaded"):
        prepare_metrics_dir(2, environ)
    assert environ == {}


# -- the request line without the logging module's record (app.logs.log_request) ---------------


@contextmanager
def only_the_app_handler() -> Iterator[None]:
    """The root logger with the handler ``create_app`` installed alone (pytest's own removed)."""
    root = logging.getLogger()
    kept = list(root.handlers)
    root.handlers = [
        handler
        for handler in kept
        if type(handler) is logging.StreamHandler and isinstance(handler.formatter, JsonFormatter)
    ]
    try:
        yield
    finally:
        root.handlers = kept


def transfer_line(client: FlaskClient) -> dict[str, object]:
    with app_log_lines() as lines:
        client.post(
            "/account/coins/transfer?username=aaron&to=bryan&amount=5",
            headers={"Authorization": "1", "X-Request-Id": "req-same"},
        )
    [entry] = json_lines(lines.getvalue())
    return entry


def test_the_request_line_is_the_same_with_or_without_the_logging_modules_record(
    client: FlaskClient,
) -> None:
    other = logging.NullHandler()  # any other handler: the line goes through the logging module
    logging.getLogger().addHandler(other)
    try:
        through_logging = transfer_line(client)
    finally:
        logging.getLogger().removeHandler(other)
    with only_the_app_handler(), pytest.MonkeyPatch.context() as patch:
        # The direct path indeed: a line through the logging module would raise here.
        patch.setattr(logging.getLogger("goledger.request"), "handle", _no_logging_record)
        written_directly = transfer_line(client)
    assert list(written_directly) == list(through_logging)  # the same fields in the same order
    for entry in (written_directly, through_logging):
        assert isinstance(entry.pop("duration_ms"), float)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry.pop("timestamp")))
    assert written_directly == through_logging
    assert written_directly["request_id"] == "req-same"


def _no_logging_record(record: logging.LogRecord) -> None:
    raise AssertionError("the request line went through the logging module")


def refuse_everything(logger: logging.Logger) -> Callable[[], None]:
    refuse = logging.Filter("nothing.matches")
    logger.addFilter(refuse)
    return lambda: logger.removeFilter(refuse)


def raise_the_level(logger: logging.Logger) -> Callable[[], None]:
    previous = logger.level
    logger.setLevel(logging.WARNING)
    return lambda: logger.setLevel(previous)


@pytest.mark.parametrize("silence", [refuse_everything, raise_the_level])
def test_the_request_line_written_directly_honours_the_loggers_filters_and_level(
    client: FlaskClient, silence: Callable[[logging.Logger], Callable[[], None]]
) -> None:
    undo = silence(logging.getLogger("goledger.request"))
    try:
        with only_the_app_handler(), app_log_lines() as lines:
            client.get("/system/health")
    finally:
        undo()
    assert lines.getvalue() == ""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/no/such/route", 404), ("DELETE", "/account/coins", 405), ("GET", "/system/health", 200)],
)
def test_every_answer_carries_its_request_id(
    client: FlaskClient, method: str, path: str, status: int
) -> None:
    response = client.open(path, method=method, headers={"X-Request-Id": "req-every"})
    assert response.status_code == status
    assert response.headers.getlist("X-Request-Id") == ["req-every"]
