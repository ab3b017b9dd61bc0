"""Crash test: SIGKILL the real server under concurrent load, restart it on the same data dir.

Each cycle starts gunicorn on ``LEDGER_DATA_DIR``, has client threads send transfers,
deposits and withdrawals (a third of them under an ``Idempotency-Key``), records every
acknowledged (200) answer, and once enough answers are in (a ``threading.Event``, no
sleep) kills master and worker with SIGKILL while requests are still in flight. The
next start must show every acknowledged operation exactly as it was answered, an
intact and consistent ledger (``/admin/verify`` and an independent replay of the
audit trail), no record that no request could have caused, and idempotent replays of
the acknowledged keyed requests. One cycle runs with a small ``LEDGER_SNAPSHOT_BYTES``
so that snapshots and compaction happen under load and the next start loads one.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from app.auth import token_digest
from app.ledger.memory import MockDB
from app.ledger.model import Deadline
from tests.servers import REQUEST_TIMEOUT_S, RunningServer, gunicorn_process, open_accounts
from tests.threads import Crew
from tests.trails import as_seen_by, fetch_audit

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "crash-admin-token"
ADMIN = {"Authorization": ADMIN_TOKEN}
ACCOUNTS = [f"crash{index}" for index in range(10)]
OPENING_BALANCE = 50_000
CLIENTS = 12
#: Acknowledgements per cycle before the kill.
ACKS_BEFORE_KILL = 300
#: A client never sends more than this many requests in a cycle (a bound if the kill failed).
MAX_REQUESTS_PER_CLIENT = 400
SNAPSHOT_BYTES = "LEDGER_SNAPSHOT_BYTES"
#: Journal size that makes the store snapshot every few dozen operations.
SMALL_SNAPSHOT_BYTES = "20000"
HOLD_AMOUNT = 1_000
#: What a request that the kill cut off raises.
CUT_OFF = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


def token(name: str) -> dict[str, str]:
    return {"Authorization": f"{name}-token"}


@dataclass(frozen=True)
class Request:
    path: str
    body: dict[str, Any]
    key: str | None

    def send(self, session: requests.Session, base_url: str) -> requests.Response:
        headers = token(self.body["username"])
        if self.key is not None:
            headers["Idempotency-Key"] = self.key
        return session.post(
            f"{base_url}{self.path}", json=self.body, headers=headers, timeout=REQUEST_TIMEOUT_S
        )


@dataclass
class ClientLog:
    acknowledged: list[tuple[Request, dict[str, Any]]] = field(default_factory=list)
    rejected: int = 0  # answered with an error and audited as FAILED (the answer shows no id)
    cut_off: list[Request] = field(default_factory=list)


class AckCounter:
    """Counts acknowledgements across clients; sets ``enough`` at the threshold."""

    def __init__(self, threshold: int) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._threshold = threshold
        self.enough = threading.Event()

    def add(self) -> None:
        with self._lock:
            self._count += 1
            if self._count >= self._threshold:
                self.enough.set()


def random_request(rng: random.Random, key: str | None) -> Request:
    name = rng.choice(ACCOUNTS)
    amount = rng.randint(1, 900)
    kind = rng.random()
    if kind < 0.6:
        target = rng.choice([other for other in ACCOUNTS if other != name])
        return Request("/account/coins/transfer", {"username": name, "to": target, "amount": amount}, key)
    if kind < 0.8:
        return Request("/account/coins/add", {"username": name, "amount": amount}, key)
    return Request("/account/coins/withdraw", {"username": name, "amount": amount}, key)


def run_client(base_url: str, cycle: int, index: int, counter: AckCounter) -> ClientLog:
    """Send requests until the server dies under us (or the bound is reached)."""
    rng = random.Random(cycle * 1000 + index)
    log = ClientLog()
    with requests.Session() as session:
        for number in range(MAX_REQUESTS_PER_CLIENT):
            key = f"crash-{cycle}-{index}-{number}" if number % 3 == 0 else None
            request = random_request(rng, key)
            try:
                response = request.send(session, base_url)
            except CUT_OFF:
                log.cut_off.append(request)
                return log
            if response.status_code == 200:
                log.acknowledged.append((request, response.json()))
                counter.add()
            else:
                # Answered and audited as FAILED: short of funds, or (on a slow machine) past
                # its deadline, which applies nothing either.
                expected = {422: "insufficient_funds", 503: "timeout"}
                assert response.json()["error"] == expected.get(response.status_code), response.text
                log.rejected += 1
    return log


def replay(records: list[dict[str, Any]]) -> tuple[dict[str, int], dict[tuple[int, str], int], int]:
    """Balances from the audit trail alone; each party's balance right after each record;
    and money put in minus money taken out (openings and deposits less withdrawals)."""
    balances: dict[str, int] = {}
    after: dict[tuple[int, str], int] = {}
    net_inflow = 0
    for record in records:
        if record["status"] != "SUCCESS":
            continue
        amount, source, target = record["amount"], record["from"], record["to"]
        if record["type"] == "hold":
            continue  # reserves money, moves none
        if record["type"] in ("open", "deposit"):
            balances[target] = balances.get(target, 0) + amount
            net_inflow += amount
        elif record["type"] == "withdrawal":
            balances[source] = balances.get(source, 0) - amount
            net_inflow -= amount
        else:
            assert record["type"] == "transfer", record
            balances[source] = balances.get(source, 0) - amount
            balances[target] = balances.get(target, 0) + amount
        for name in (source, target):
            if name is not None:
                after[(record["sequence"], name)] = balances[name]
    return balances, after, net_inflow


def check_recovered(base_url: str, logs: list[ClientLog], records_before: int) -> None:
    """Everything acknowledged before the kill is there, as answered; the ledger is whole."""
    audit = fetch_audit(base_url, ADMIN)
    assert [record["sequence"] for record in audit] == list(range(1, len(audit) + 1))
    by_id = {record["id"]: record for record in audit}
    assert len(by_id) == len(audit)
    balances, after, net_inflow = replay(audit)

    acknowledged = [ack for log in logs for ack in log.acknowledged]
    for _, answer in acknowledged:
        sent = answer["transaction"]
        kept = by_id.get(sent["id"])
        assert kept is not None, f"acknowledged {sent} is missing after the crash"
        assert as_seen_by(kept, answer["username"]) == sent
        # The caller's balance in the answer, and the record's, is the replay's right after it.
        assert after[(sent["sequence"], answer["username"])] == answer["balance"] == sent["balance_after"]

    # Nothing appears that no request could have caused: every answered request wrote
    # one record, and each request the kill cut off wrote at most one.
    added = len(audit) - records_before
    answered = len(acknowledged) + sum(log.rejected for log in logs)
    assert answered <= added <= answered + sum(len(log.cut_off) for log in logs)

    served = {}
    for name in ACCOUNTS:
        response = requests.get(
            f"{base_url}/account/coins",
            params={"username": name},
            headers=token(name),
            timeout=REQUEST_TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        served[name] = response.json()["balance"]
    assert served == balances
    assert sum(served.values()) == net_inflow

    verify = requests.get(f"{base_url}/admin/verify", headers=ADMIN, timeout=REQUEST_TIMEOUT_S)
    assert verify.status_code == 200, verify.text
    figures = verify.json()
    assert figures["ok"] is True
    assert figures["records"] == len(audit)
    assert figures["total_balance"] == net_inflow
    assert figures["last_hash"] == audit[-1]["hash"]


def check_idempotent_retries(base_url: str, logs: list[ClientLog]) -> None:
    """Keyed requests, retried after the restart: acknowledged ones replay, cut-off ones run once."""
    known = {record["id"] for record in fetch_audit(base_url, ADMIN)}
    replayed = 0
    with requests.Session() as session:
        for log in logs:
            for request, answer in log.acknowledged:
                if request.key is None:
                    continue
                retry = request.send(session, base_url)
                assert retry.status_code == 200, retry.text
                assert retry.headers.get("Idempotent-Replayed") == "true"
                assert retry.json() == answer
                replayed += 1
            for request in log.cut_off:
                if request.key is None:
                    continue
                first = request.send(session, base_url)
                assert first.status_code in (200, 422), first.text
                again = request.send(session, base_url)
                assert again.headers.get("Idempotent-Replayed") == "true"
                assert (again.status_code, again.json()) == (first.status_code, first.json())
                if first.status_code == 200:
                    # Durable before the kill: answered from the journal; otherwise it ran now.
                    was_durable = first.headers.get("Idempotent-Replayed") == "true"
                    assert (first.json()["transaction"]["id"] in known) == was_durable
    assert replayed > 0


def run_cycle(server: RunningServer, cycle: int) -> list[ClientLog]:
    """Load the server until enough acknowledgements are in, then kill it mid-flight."""
    counter = AckCounter(ACKS_BEFORE_KILL)
    crew = Crew(
        [lambda index=index: run_client(server.url, cycle, index, counter) for index in range(CLIENTS)]
    )
    crew.start()
    reached = counter.enough.wait(timeout=60)
    server.kill()
    logs = crew.join()
    assert reached, "the load never reached its acknowledgement count"
    # Every client was still sending when the server died: each lost exactly one request.
    assert [len(log.cut_off) for log in logs] == [1] * CLIENTS
    return logs


def records_in(base_url: str) -> int:
    verify = requests.get(f"{base_url}/admin/verify", headers=ADMIN, timeout=REQUEST_TIMEOUT_S)
    assert verify.status_code == 200, verify.text
    records: int = verify.json()["records"]
    return records


def numbered(directory: Path, pattern: str) -> list[int]:
    return sorted(int(path.name.split("-")[1].split(".")[0]) for path in directory.glob(pattern))


def open_hold(base_url: str) -> dict[str, Any]:
    """A pending hold (crash0 → crash1) that every crash must leave pending and unchanged."""
    created = requests.post(
        f"{base_url}/account/holds",
        json={"username": ACCOUNTS[0], "to": ACCOUNTS[1], "amount": HOLD_AMOUNT, "timeout_s": 3600},
        headers=token(ACCOUNTS[0]),
        timeout=REQUEST_TIMEOUT_S,
    )
    assert created.status_code == 201, created.text
    hold: dict[str, Any] = created.json()["hold"]
    return hold


def check_hold(base_url: str, hold: dict[str, Any]) -> None:
    kept = requests.get(
        f"{base_url}/account/holds/{hold['id']}",
        params={"username": ACCOUNTS[0]},
        headers=token(ACCOUNTS[0]),
        timeout=REQUEST_TIMEOUT_S,
    )
    assert kept.status_code == 200, kept.text
    assert kept.json()["hold"] == hold
    payer = requests.get(
        f"{base_url}/account/coins", params={"username": ACCOUNTS[0]}, headers=token(ACCOUNTS[0]), timeout=30
    )
    assert payer.json()["held"] == HOLD_AMOUNT


def crash_cycles(data_dir: Path, cycles: list[dict[str, str]], *, with_hold: bool) -> str:
    """Open the accounts, then per cycle: start, check what the last kill left, load, kill.

    A last start checks the last kill; its stderr is returned.
    """
    env = {
        "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "LEDGER_DEMO": "0",
        "LEDGER_SELF_DEPOSIT": "1",  # the clients deposit as users
    }
    logs: list[ClientLog] = []
    records_before = 0
    hold: dict[str, Any] | None = None
    for cycle, extra in enumerate([*cycles, None]):
        with gunicorn_process(**env, **(extra or {})) as server:
            if cycle == 0:
                open_accounts(server.url, dict.fromkeys(ACCOUNTS, OPENING_BALANCE), ADMIN)
                hold = open_hold(server.url) if with_hold else None
            else:
                check_recovered(server.url, logs, records_before)
                check_idempotent_retries(server.url, logs)
            if hold is not None:
                check_hold(server.url, hold)
            if extra is None:
                break
            records_before = records_in(server.url)
            logs = run_cycle(server, cycle)
        if SNAPSHOT_BYTES in extra:
            # Snapshots ran under load: older snapshots are gone, the journal before them stays
            # (it is the history), and the next start replays only the segments after the last.
            snapshots = numbered(data_dir, "snapshot-*.snap")
            assert snapshots, sorted(path.name for path in data_dir.iterdir())
            segments = numbered(data_dir, "journal-*.log")
            assert segments == list(range(1, max(segments) + 1))
            assert snapshots[-1] > 1
    return server.stderr


def test_acknowledged_operations_survive_sigkill_under_load(tmp_path: Path) -> None:
    """Three kill/restart cycles; the second snapshots under load, the later starts load a snapshot.

    The ledger holds a pending hold throughout, so that its snapshots carry every
    section; the test below covers snapshots with empty sections.
    """
    stderr = crash_cycles(
        tmp_path / "ledger", [{}, {SNAPSHOT_BYTES: SMALL_SNAPSHOT_BYTES}, {}], with_hold=True
    )
    assert "snapshot snapshot-" in stderr  # the last start loaded a snapshot


def test_a_crash_after_snapshots_of_a_ledger_without_holds(tmp_path: Path) -> None:
    """Regression: a snapshot with an empty section (no holds) must load again."""
    crash_cycles(tmp_path / "ledger", [{SNAPSHOT_BYTES: SMALL_SNAPSHOT_BYTES}], with_hold=False)


def test_a_snapshot_without_holds_or_keys_loads_again(tmp_path: Path) -> None:
    """Regression: the trailer counts only the sections that have rows."""
    store = MockDB.open(tmp_path)
    store.create_account("alice", token_digest("alice"), 100, deadline=Deadline.after_ms(5000))
    report = store.snapshot()
    store.close()
    reopened = MockDB.open(tmp_path)
    try:
        assert reopened.recovery is not None
        assert reopened.recovery.snapshot is not None
        assert Path(report.path) == reopened.recovery.snapshot.path
        assert reopened.account("alice", deadline=Deadline.after_ms(5000)).balance == 100
    finally:
        reopened.close()
