"""``/metrics`` and the per-request log line."""

from __future__ import annotations

import json
import logging

import pytest
from flask.testing import FlaskClient

from tests.drivers import StoreDriver

AARON = {"Authorization": "1"}


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return response.get_data(as_text=True)


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
    assert "goledger_accounts 2.0" in text
    assert "goledger_audit_records 4.0" in text


def test_metrics_need_no_token(client: FlaskClient) -> None:
    assert client.get("/metrics", headers={"Authorization": "wrong"}).status_code == 200


def test_a_timeout_shows_in_the_metrics(client: FlaskClient, driver: StoreDriver) -> None:
    with driver.holding_write_lock():
        client.post("/account/coins/add?username=aaron&amount=5", headers={**AARON, "X-Timeout-Ms": "5"})
    assert 'goledger_operations_total{operation="deposit",outcome="timeout"} 1.0' in scrape(client)


def test_each_request_logs_one_structured_line_without_secrets(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="goledger.request"):
        response = client.post(
            "/account/coins/transfer?username=aaron&to=bryan&amount=5",
            headers={"Authorization": "Bearer 1", "X-Request-Id": "req-123"},
        )
    assert response.headers["X-Request-Id"] == "req-123"
    lines = [record.getMessage() for record in caplog.records if record.name == "goledger.request"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["method"] == "POST"
    assert entry["route"] == "/account/coins/transfer"
    assert entry["status"] == 200
    assert entry["request_id"] == "req-123"
    assert entry["duration_ms"] >= 0
    assert "Bearer" not in caplog.text
    assert "amount=5" not in caplog.text


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
