"""``GET /system/health``: the original's fields, 200 only when healthy."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.drivers import StoreDriver


def test_health_reports_the_original_fields(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=aaron&amount=1", headers={"Authorization": "1"})
    response = client.get("/system/health")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "healthy"
    assert body["components"] == {"database": True, "audit_log": True, "performance": True}
    assert body["uptime_seconds"] >= 0
    assert body["operation_count"] >= 3  # two demo openings and one deposit


def test_health_needs_no_token(client: FlaskClient) -> None:
    assert client.get("/system/health", headers={"Authorization": "wrong"}).status_code == 200


@pytest.mark.memory_only  # MockDB's balance lock; PostgreSQL: test_postgres.py
def test_health_is_unhealthy_when_the_balance_lock_is_wedged(
    client: FlaskClient, driver: StoreDriver
) -> None:
    with driver.holding_write_lock():
        response = client.get("/system/health")
    assert response.status_code == 503
    assert response.json["status"] == "unhealthy"
    assert response.json["components"]["database"] is False
