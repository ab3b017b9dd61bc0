"""``GET /system/health``: the original's fields, 200 only when healthy."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from app.ledger.errors import StorageUnavailable
from app.ledger.memory import MockDB
from app.ledger.model import Deadline
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


# -- /livez and /readyz ----------------------------------------------------------------


def test_liveness_and_readiness_when_all_is_well(client: FlaskClient) -> None:
    alive = client.get("/livez")
    assert (alive.status_code, alive.json) == (200, {"status": "alive"})
    ready = client.get("/readyz", headers={"Authorization": "wrong"})
    assert (ready.status_code, ready.json) == (200, {"status": "ready"})


@pytest.mark.memory_only  # a wedged writer of MockDB's balance lock; PostgreSQL: below
def test_a_wedged_writer_makes_the_instance_unready_but_still_alive(
    client: FlaskClient, driver: StoreDriver
) -> None:
    with driver.holding_write_lock():
        alive = client.get("/livez")
        ready = client.get("/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 503
    assert ready.json["status"] == "not_ready"
    assert "balance lock" in ready.json["reason"]
    assert client.get("/readyz").status_code == 200


def test_a_database_outage_makes_the_instance_unready_but_still_alive(postgres_url: str) -> None:
    """PostgreSQL that cannot be reached (here: the pool closed): /readyz 503, /livez 200."""
    from app import create_app
    from tests.stores import app_config, empty_postgres

    app = create_app(app_config(empty_postgres(postgres_url)))
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    app.extensions["ledger"].close()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["status"] == "not_ready"
    assert "database" in ready.json["reason"]
    assert client.get("/livez").status_code == 200


def test_a_failed_journal_makes_the_instance_unready(tmp_path: Path) -> None:
    from app import create_app

    disk = {"failing": False}

    def sync(fd: int) -> None:
        if disk["failing"]:
            raise OSError(errno.EIO, "simulated disk failure")
        os.fdatasync(fd)

    app = create_app({"demo": False})
    store = MockDB.open(tmp_path / "data", sync=sync)
    app.extensions["ledger"].close()
    app.extensions["ledger"] = store
    try:
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        disk["failing"] = True
        with pytest.raises(StorageUnavailable):
            store.create_account("carol", b"\0" * 32, 0, deadline=Deadline.after_ms(2000))
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "simulated disk failure" in ready.json["reason"]
        assert client.get("/livez").status_code == 200
    finally:
        store.close()
