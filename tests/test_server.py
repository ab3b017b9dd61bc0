"""The real thing: gunicorn on a free 127.0.0.1 port, driven over HTTP by concurrent clients."""

from __future__ import annotations

import gc
import random
import runpy
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.ledger.memory import MockDB
from tests.servers import ROOT, free_port, gunicorn_command, gunicorn_server, server_env

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "server-test-admin"
CLIENTS = 16
TRANSFERS_PER_CLIENT = 40


def test_the_original_curl_examples_over_real_http() -> None:
    with gunicorn_server() as base_url:
        balance = requests.get(
            f"{base_url}/account/coins?username=aaron", headers={"Authorization": "1"}, timeout=10
        )
        assert balance.status_code == 200
        assert balance.json()["balance"] == 10_000
        assert balance.headers["Content-Type"] == "application/json"
        moved = requests.post(
            f"{base_url}/account/coins/transfer?username=aaron&from=aaron&to=bryan&amount=100",
            headers={"Authorization": "1"},
            timeout=10,
        )
        assert moved.status_code == 200
        assert moved.json()["balance"] == 9_900
        missing = requests.get(f"{base_url}/nowhere", timeout=10)
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


def test_concurrent_clients_conserve_money() -> None:
    with gunicorn_server(LEDGER_ADMIN_TOKEN=ADMIN_TOKEN, GUNICORN_THREADS="8") as base_url:
        names = [f"user{index}" for index in range(8)]
        for name in names:
            created = requests.post(
                f"{base_url}/admin/accounts",
                json={"username": name, "token": f"{name}-token", "balance": 1_000},
                headers={"Authorization": ADMIN_TOKEN},
                timeout=10,
            )
            assert created.status_code == 201
        start = threading.Barrier(CLIENTS, timeout=30)

        def client(seed: int) -> dict[int, int]:
            rng = random.Random(seed)
            outcomes: dict[int, int] = {}
            with requests.Session() as session:
                start.wait()
                for _ in range(TRANSFERS_PER_CLIENT):
                    source, target = rng.sample(names, 2)
                    response = session.post(
                        f"{base_url}/account/coins/transfer",
                        json={"username": source, "to": target, "amount": rng.randint(1, 400)},
                        headers={"Authorization": f"{source}-token"},
                        timeout=30,
                    )
                    outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
            return outcomes

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = [
                future.result(timeout=120)
                for future in [pool.submit(client, seed) for seed in range(CLIENTS)]
            ]
        statuses: dict[int, int] = {}
        for outcome in results:
            for status, count in outcome.items():
                statuses[status] = statuses.get(status, 0) + count
        assert set(statuses) <= {200, 422}, statuses
        assert statuses.get(200, 0) > 0
        balances = [
            requests.get(
                f"{base_url}/account/coins?username={name}",
                headers={"Authorization": f"{name}-token"},
                timeout=10,
            ).json()["balance"]
            for name in names
        ]
        assert sum(balances) == 8 * 1_000
        assert min(balances) >= 0
        successes = sum(
            1
            for name in names
            for record in requests.get(
                f"{base_url}/account/transactions?username={name}&limit=500",
                headers={"Authorization": f"{name}-token"},
                timeout=10,
            ).json()["transactions"]
            if record["type"] == "transfer" and record["status"] == "SUCCESS" and record["from"] == name
        )
        assert successes == statuses[200]


@pytest.mark.parametrize("extra", [("-w", "2"), ("--workers", "3")])
def test_the_memory_store_refuses_several_worker_processes(extra: tuple[str, ...]) -> None:
    result = subprocess.run(
        gunicorn_command(*extra),
        cwd=ROOT,
        env=server_env(free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "memory store keeps the ledger inside one process" in result.stderr


def test_a_worker_freezes_what_it_built_before_serving() -> None:
    """``post_worker_init``: the app and its store leave the collector's generations, so
    that its full passes no longer walk the store's list of every audit record."""
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    ledger = MockDB()  # built before the hook, as the worker's store is
    records = ledger._trail._records  # AuditTrail._records: the list of every record kept
    assert any(tracked is records for tracked in gc.get_objects())
    try:
        hooks["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
        assert not any(tracked is records for tracked in gc.get_objects())
    finally:
        gc.unfreeze()
