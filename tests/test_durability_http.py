"""Durability over HTTP: one owner per data directory, restarts, damaged journals, a failing disk.

The server tests run real gunicorn on ``LEDGER_DATA_DIR`` (see ``tests/servers.py``);
the failing-disk test builds the app in process with ``create_app`` and a journal
whose ``fdatasync`` starts failing with ENOSPC once armed.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from app import create_app
from app.ledger.memory import MockDB
from tests.servers import (
    KILL_TIMEOUT_S,
    ROOT,
    free_port,
    gunicorn_command,
    gunicorn_process,
    open_accounts,
    server_env,
)
from tests.trails import as_seen_by, fetch_audit

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "durability-admin-token"
ADMIN = {"Authorization": ADMIN_TOKEN}
TIMEOUT_S = 30
#: A start that must fail has this long to exit.
FAILED_START_TIMEOUT_S = 60
#: The frame header: payload length, crc32, lsn (see app/ledger/memory/files.py).
FRAME_HEADER = struct.Struct("<IIQ")
MAGIC_BYTES = 16


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"{name}-token"}


def server_variables(data_dir: Path) -> dict[str, str]:
    return {
        "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "LEDGER_DEMO": "0",
        "LEDGER_SELF_DEPOSIT": "1",  # the tests deposit as users
    }


def post(base_url: str, path: str, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = auth(body["username"])
    if key is not None:
        headers["Idempotency-Key"] = key
    return requests.post(f"{base_url}{path}", json=body, headers=headers, timeout=TIMEOUT_S)


def transfer(base_url: str, source: str, target: str, amount: int, key: str | None = None) -> dict[str, Any]:
    moved = post(
        base_url, "/account/coins/transfer", {"username": source, "to": target, "amount": amount}, key
    )
    assert moved.status_code == 200, moved.text
    answer: dict[str, Any] = moved.json()
    return answer


def balance(base_url: str, name: str) -> dict[str, Any]:
    read = requests.get(
        f"{base_url}/account/coins", params={"username": name}, headers=auth(name), timeout=10
    )
    assert read.status_code == 200, read.text
    body: dict[str, Any] = read.json()
    return body


def history_pages(base_url: str, name: str, limit: int) -> list[dict[str, Any]]:
    """Every page of ``name``'s history, following the cursors."""
    pages: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"username": name, "limit": limit}
    while True:
        page = requests.get(f"{base_url}/account/transactions", params=params, headers=auth(name), timeout=10)
        assert page.status_code == 200, page.text
        pages.append(page.json())
        if page.json()["next_cursor"] is None:
            return pages
        params["cursor"] = page.json()["next_cursor"]


def verified(base_url: str) -> dict[str, Any]:
    report = requests.get(f"{base_url}/admin/verify", headers=ADMIN, timeout=TIMEOUT_S)
    assert report.status_code == 200, report.text
    body: dict[str, Any] = report.json()
    assert body["ok"] is True
    return body


def state(base_url: str, names: list[str]) -> dict[str, Any]:
    """What a restart must not change: the audit trail, balances, history pages, verify's figures."""
    return {
        "audit": fetch_audit(base_url, ADMIN),
        "balances": {name: balance(base_url, name) for name in names},
        "history": {name: history_pages(base_url, name, limit=3) for name in names},
        # A clean stop adds a checkpoint, which the next full verification confirms too.
        "verify": {
            name: value for name, value in verified(base_url).items() if name != "checkpoints_checked"
        },
    }


def failed_start(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run gunicorn on ``data_dir`` expecting it to give up; bounded."""
    return subprocess.run(
        gunicorn_command(),
        cwd=ROOT,
        env=server_env(free_port(), **server_variables(data_dir)),
        capture_output=True,
        text=True,
        timeout=FAILED_START_TIMEOUT_S,
    )


def last_segment(data_dir: Path) -> Path:
    return max(data_dir.glob("journal-*.log"))


def frame_offsets(segment: Path) -> list[tuple[int, int]]:
    """(offset, payload length) of each frame in a segment, read independently of the app."""
    data = segment.read_bytes()
    frames = []
    offset = MAGIC_BYTES
    while offset < len(data):
        length, _, _ = FRAME_HEADER.unpack_from(data, offset)
        frames.append((offset, length))
        offset += FRAME_HEADER.size + length
    assert offset == len(data)
    return frames


# -- (a) one process per data directory ----------------------------------------------


def test_a_second_server_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    with gunicorn_process(**server_variables(data_dir)) as first:
        open_accounts(first.url, {"alice": 500, "bob": 0}, ADMIN)
        transfer(first.url, "alice", "bob", 100)

        second = failed_start(data_dir)

        assert second.returncode != 0
        assert (
            f"The data directory {data_dir} is in use by another process (pid {first.worker_pid})"
            in second.stderr
        ), second.stderr
        # The first server still owns the directory and keeps serving and journaling.
        assert transfer(first.url, "alice", "bob", 50)["balance"] == 350
        assert balance(first.url, "bob")["balance"] == 150
        verified(first.url)
    assert first.process.returncode == 0
    with gunicorn_process(**server_variables(data_dir)) as restarted:
        assert balance(restarted.url, "bob")["balance"] == 150


# -- (b) a clean restart -----------------------------------------------------------------


def test_state_survives_a_clean_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    names = ["alice", "bob", "carol"]
    with gunicorn_process(**server_variables(data_dir)) as server:
        open_accounts(server.url, {"alice": 10_000, "bob": 500, "carol": 0}, ADMIN)
        for amount in range(1, 8):
            transfer(server.url, "alice", "bob", amount)
        keyed = post(
            server.url, "/account/coins/transfer", {"username": "bob", "to": "carol", "amount": 40}, "k-1"
        )
        assert keyed.status_code == 200, keyed.text
        deposit = post(server.url, "/account/coins/add", {"username": "carol", "amount": 5}, "k-2")
        assert deposit.status_code == 200, deposit.text
        refused = post(server.url, "/account/coins/withdraw", {"username": "carol", "amount": 10**9}, "k-3")
        assert refused.status_code == 422, refused.text
        held = post(server.url, "/account/holds", {"username": "alice", "to": "carol", "amount": 300})
        assert held.status_code == 201, held.text
        hold = held.json()["hold"]
        before = state(server.url, names)
    assert server.process.returncode == 0  # SIGTERM: a clean stop

    with gunicorn_process(**server_variables(data_dir)) as server:
        assert state(server.url, names) == before
        for response, path, body, key in (
            (keyed, "/account/coins/transfer", {"username": "bob", "to": "carol", "amount": 40}, "k-1"),
            (deposit, "/account/coins/add", {"username": "carol", "amount": 5}, "k-2"),
            (refused, "/account/coins/withdraw", {"username": "carol", "amount": 10**9}, "k-3"),
        ):
            retry = post(server.url, path, body, key)
            assert retry.headers.get("Idempotent-Replayed") == "true"
            assert (retry.status_code, retry.json()) == (response.status_code, response.json())
        kept = requests.get(
            f"{server.url}/account/holds/{hold['id']}",
            params={"username": "carol"},
            headers=auth("carol"),
            timeout=10,
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["hold"] == hold  # still PENDING, same expires_at
        assert balance(server.url, "alice")["held"] == 300
        captured = post(server.url, f"/account/holds/{hold['id']}/capture", {"username": "carol"})
        assert captured.status_code == 200, captured.text
        assert captured.json()["hold"]["status"] == "CAPTURED"
        again = post(server.url, f"/account/holds/{hold['id']}/capture", {"username": "carol"})
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "hold_not_pending"
        after_capture = state(server.url, names)
    assert after_capture["balances"]["alice"]["held"] == 0
    assert after_capture["balances"]["alice"]["balance"] == before["balances"]["alice"]["balance"] - 300
    assert after_capture["balances"]["carol"]["balance"] == before["balances"]["carol"]["balance"] + 300

    with gunicorn_process(**server_variables(data_dir)) as server:
        assert state(server.url, names) == after_capture


# -- (c) damaged journals -------------------------------------------------------------


def write_some(base_url: str) -> None:
    open_accounts(base_url, {"alice": 1_000, "bob": 0}, ADMIN)
    for amount in (10, 20, 30, 40, 50):
        transfer(base_url, "alice", "bob", amount)


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(FRAME_HEADER.pack(400, 0x1234, 99) + b"x" * 57, id="frame-cut-short"),
        pytest.param(FRAME_HEADER.pack(3, 0, 8) + b"abc", id="whole-frame-with-bad-checksum"),
        pytest.param(b"\xff\x00garbage", id="garbage"),
    ],
)
def test_a_torn_tail_is_cut_off_logged_and_the_rest_served(tmp_path: Path, tail: bytes) -> None:
    data_dir = tmp_path / "ledger"
    names = ["alice", "bob"]
    with gunicorn_process(**server_variables(data_dir)) as server:
        write_some(server.url)
        before = state(server.url, names)
    segment = last_segment(data_dir)
    intact = segment.read_bytes()
    segment.write_bytes(intact + tail)

    with gunicorn_process(**server_variables(data_dir)) as server:
        assert state(server.url, names) == before
        transfer(server.url, "alice", "bob", 1)
        after = state(server.url, names)
    assert f"journal {segment}: torn tail cut off at byte offset {len(intact)}" in server.stderr, (
        server.stderr
    )
    assert segment.read_bytes().startswith(intact)

    # What was written after the cut follows the intact frames: the next start is clean.
    with gunicorn_process(**server_variables(data_dir)) as server:
        assert state(server.url, names) == after
    assert "torn tail" not in server.stderr


def test_damage_before_intact_frames_stops_the_start_naming_file_and_offset(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    with gunicorn_process(**server_variables(data_dir)) as server:
        write_some(server.url)
        # Killed, not stopped: a clean stop would snapshot, and a start replays only the
        # journal after the last snapshot (damage before it is found by /admin/verify).
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=KILL_TIMEOUT_S)
    segment = last_segment(data_dir)
    frames = frame_offsets(segment)
    assert len(frames) >= 7  # two accounts, five transfers
    offset, length = frames[2]
    damaged = bytearray(segment.read_bytes())
    damaged[offset + FRAME_HEADER.size + length // 2] ^= 0x01
    segment.write_bytes(bytes(damaged))

    result = failed_start(data_dir)

    assert result.returncode != 0
    expected = (
        f"{segment}: corrupt at byte offset {offset}: checksum mismatch (a valid frame follows at offset "
    )
    assert expected in result.stderr, result.stderr
    # Nothing was cut or rewritten: the operator gets the file as it was.
    assert segment.read_bytes() == bytes(damaged)


# -- (d) a failing disk --------------------------------------------------------------


class FailingDisk:
    """The journal's ``fdatasync``: the real one until armed, then ENOSPC every time."""

    def __init__(self) -> None:
        self.armed = False
        self.failures = 0

    def sync(self, fd: int) -> None:
        if self.armed:
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        os.fdatasync(fd)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FailingDisk:
    """Every ``MockDB.open`` made by ``create_app`` while this is active syncs through the disk."""
    failing = FailingDisk()
    genuine = MockDB.open

    def open_on_failing_disk(data_dir: str | Path, **options: Any) -> MockDB:
        return genuine(data_dir, sync=failing.sync, **options)

    monkeypatch.setattr(MockDB, "open", staticmethod(open_on_failing_disk))
    return failing


def build(data_dir: Path) -> FlaskClient:
    app = create_app({"admin_token": ADMIN_TOKEN, "demo": False, "data_dir": str(data_dir)})
    app.config["TESTING"] = True
    return app.test_client()


def client_transfer(
    client: FlaskClient, source: str, target: str, amount: int, key: str | None = None
) -> Any:
    headers = auth(source)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(
        "/account/coins/transfer", json={"username": source, "to": target, "amount": amount}, headers=headers
    )


def client_audit(client: FlaskClient) -> list[dict[str, Any]]:
    page = client.get("/admin/audit?limit=500", headers=ADMIN)
    assert page.status_code == 200, page.get_json()
    assert page.get_json()["next_cursor"] is None
    records: list[dict[str, Any]] = page.get_json()["transactions"]
    return records


def client_balance(client: FlaskClient, name: str) -> Any:
    return client.get(f"/account/coins?username={name}", headers=auth(name))


def assert_storage_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"] == "storage_unavailable"
    assert response.headers.get("Retry-After")


def test_a_failing_disk_refuses_writes_keeps_reads_and_loses_nothing_acknowledged(
    tmp_path: Path, disk: FailingDisk
) -> None:
    client = build(tmp_path)
    ledger = client.application.extensions["ledger"]
    try:
        for name, opening in (("alice", 1_000), ("bob", 1_000), ("carol", 1_000), ("dave", 1_000)):
            created = client.post(
                "/admin/accounts",
                json={"username": name, "token": f"{name}-token", "balance": opening},
                headers=ADMIN,
            )
            assert created.status_code == 201, created.get_json()
        acknowledged = [
            client_transfer(client, "alice", "bob", 100).get_json(),
            client_transfer(client, "bob", "alice", 30, key="before").get_json(),
        ]
        durable_audit = client_audit(client)
        carol, dave = client_balance(client, "carol").get_json(), client_balance(client, "dave").get_json()

        disk.armed = True
        failed = client_transfer(client, "alice", "bob", 7, key="during")
        assert_storage_unavailable(failed)
        assert disk.failures == 1

        health = client.get("/system/health")
        assert health.status_code == 503
        assert health.get_json()["status"] == "unhealthy"
        assert health.get_json()["components"]["database"] is False
        # Accounts the failed write did not touch still read; those it touched are not shown
        # in a state that never became durable.
        assert client_balance(client, "carol").get_json() == carol
        assert client_balance(client, "dave").get_json() == dave
        assert_storage_unavailable(client_balance(client, "alice"))

        later = [
            client_transfer(client, "carol", "dave", 5),
            client_transfer(client, "alice", "bob", 7, key="during"),
            client.post("/account/coins/add", json={"username": "dave", "amount": 5}, headers=auth("dave")),
            client.post(
                "/account/coins/withdraw", json={"username": "carol", "amount": 5}, headers=auth("carol")
            ),
            client.post(
                "/account/holds", json={"username": "carol", "to": "dave", "amount": 5}, headers=auth("carol")
            ),
            client.post("/admin/accounts", json={"username": "erin", "balance": 5}, headers=ADMIN),
        ]
        for response in later:
            assert_storage_unavailable(response)
        # Refused before anything was applied (no sync was even tried).
        assert disk.failures == 1
        assert client_balance(client, "carol").get_json() == carol
        assert client_balance(client, "dave").get_json() == dave
        assert client_audit(client) == durable_audit
    finally:
        ledger.close()

    disk.armed = False
    reopened = build(tmp_path)
    try:
        audit = client_audit(reopened)
        by_id = {record["id"]: record for record in audit}
        for answer in acknowledged:
            kept = by_id[answer["transaction"]["id"]]
            assert as_seen_by(kept, answer["username"]) == answer["transaction"]
        assert audit[: len(durable_audit)] == durable_audit
        verify = reopened.get("/admin/verify", headers=ADMIN)
        assert verify.status_code == 200, verify.get_json()
        assert verify.get_json()["ok"] is True
        assert reopened.get("/system/health").status_code == 200
        assert client_balance(reopened, "carol").get_json() == carol
        assert client_balance(reopened, "dave").get_json() == dave
        # The write whose sync failed was never acknowledged: retried under its key it takes
        # effect exactly once, whether or not its entry reached the disk before the failure.
        retried = client_transfer(reopened, "alice", "bob", 7, key="during")
        assert retried.status_code == 200, retried.get_json()
        sevens = [record for record in client_audit(reopened) if record["amount"] == 7]
        assert [record["id"] for record in sevens] == [retried.get_json()["transaction"]["id"]]
        replay = client_transfer(reopened, "bob", "alice", 30, key="before")
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.get_json() == acknowledged[1]
        # The refused account creation left nothing behind either.
        erin = reopened.post("/admin/accounts", json={"username": "erin", "balance": 5}, headers=ADMIN)
        assert erin.status_code == 201, erin.get_json()
    finally:
        reopened.application.extensions["ledger"].close()


# -- (e) an online backup ----------------------------------------------------------------


def _ledger_command(data_dir: Path | None, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``flask --app app ledger ...`` with the service's environment (``None``: no
    ``LEDGER_DATA_DIR``); bounded."""
    variables = server_variables(data_dir or Path())
    if data_dir is None:
        del variables["LEDGER_DATA_DIR"]
    return subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "ledger", *arguments],
        cwd=ROOT,
        env=server_env(free_port(), **variables),
        capture_output=True,
        text=True,
        timeout=FAILED_START_TIMEOUT_S,
        check=False,
    )


def test_a_backup_taken_while_the_service_runs_restores_what_it_had_acknowledged(tmp_path: Path) -> None:
    data_dir, copy = tmp_path / "ledger", tmp_path / "backup"
    names = ["alice", "bob"]
    with gunicorn_process(**server_variables(data_dir)) as server:
        write_some(server.url)
        before = state(server.url, names)
        taken = _ledger_command(data_dir, "backup", str(copy))
        assert taken.returncode == 0, taken.stderr
        assert taken.stdout.startswith(f"backup {copy}: "), taken.stdout
        # A command that needs the ledger itself says why it cannot run beside the service.
        refused = _ledger_command(data_dir, "verify")
        assert refused.returncode != 0
        assert "in use by another process" in refused.stderr, refused.stderr
        assert "ledger backup" in refused.stderr, refused.stderr
        transfer(server.url, "alice", "bob", 1)  # after the backup: not in the copy
    assert oct(copy.stat().st_mode & 0o777) == oct(0o700)
    assert all(oct(path.stat().st_mode & 0o777) == oct(0o600) for path in copy.iterdir())
    checked = _ledger_command(None, "verify", "--data-dir", str(copy))
    assert checked.returncode == 0, checked.stderr
    with gunicorn_process(**server_variables(copy)) as restored:
        assert state(restored.url, names) == before
