"""The core races of ``test_races.py`` over real HTTP: gunicorn, two workers, PostgreSQL.

One server per module (two gthread workers of four threads, each with a pool of its
own to one freshly emptied database), so that requests released together on a barrier
reach two processes and race on the database's row locks, not on one process's
Python locks. Each test opens accounts of its own (``POST /admin/accounts``), sends
every request with a timeout from threads joined within ``JOIN_TIMEOUT_S``, and ends
with exact balances and versions read back over HTTP and ``GET /admin/verify`` ok.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.servers import gunicorn_server, open_accounts
from tests.stores import ADMIN_TOKEN, empty_postgres
from tests.threads import run_together

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": ADMIN_TOKEN}
#: The bound on each request (a healthy one takes milliseconds).
TIMEOUT_S = 10
#: Each test's accounts get a prefix of their own: the server and its ledger outlive a test.
_prefixes = itertools.count()


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    replayed: bool


class Server:
    """A live server and the requests the races send it (one ``requests.Session`` per thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def open(self, balances: dict[str, int]) -> list[str]:
        """Open accounts under a prefix of this test's; their names, in the order given."""
        prefix = f"t{next(_prefixes)}-"
        open_accounts(self.url, {prefix + name: opening for name, opening in balances.items()}, ADMIN)
        return [prefix + name for name in balances]

    def post(self, path: str, caller: str, headers: dict[str, str] | None = None, **params: object) -> Reply:
        response = self._session().post(
            f"{self.url}{path}",
            params={"username": caller, **params},
            headers={"Authorization": f"{caller}-token", **(headers or {})},
            timeout=TIMEOUT_S,
        )
        return Reply(
            response.status_code, response.json(), response.headers.get("Idempotent-Replayed") == "true"
        )

    def account(self, name: str) -> tuple[int, int]:
        """``(balance, version)`` of ``name``."""
        response = self._session().get(
            f"{self.url}/account/coins",
            params={"username": name},
            headers={"Authorization": f"{name}-token"},
            timeout=TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return body["balance"], body["version"]

    def accounts(self, names: list[str]) -> dict[str, tuple[int, int]]:
        return {name: self.account(name) for name in names}

    def assert_verifies(self) -> None:
        report = requests.get(f"{self.url}/admin/verify", headers=ADMIN, timeout=TIMEOUT_S)
        assert report.status_code == 200, report.text
        assert report.json()["ok"] is True, report.json()


@pytest.fixture(scope="module")
def server(postgres_url: str) -> Iterator[Server]:
    with gunicorn_server(
        LEDGER_STORE=empty_postgres(postgres_url),
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
        LEDGER_SELF_DEPOSIT="1",
        LEDGER_PG_POOL_SIZE="4",
        GUNICORN_WORKERS="2",
        GUNICORN_THREADS="4",
    ) as url:
        yield Server(url)


def many(worker: Callable[[], Reply], count: int) -> list[Reply]:
    """``count`` runs of ``worker``, all released together."""
    return run_together([worker] * count)


# -- transfers ------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["opposite", "ring", "random"])
def test_concurrent_transfers_conserve_money(server: Server, pattern: str) -> None:
    users, threads, transfers_per_thread, opening = 6, 12, 12, 100
    names = server.open(dict.fromkeys((f"u{index}" for index in range(users)), opening))

    def pair(thread: int, rng: random.Random) -> tuple[str, str]:
        if pattern == "opposite":  # two accounts, half the threads each way
            return (names[0], names[1]) if thread % 2 else (names[1], names[0])
        if pattern == "ring":
            return names[thread % users], names[(thread + 1) % users]
        source, target = rng.sample(names, 2)
        return source, target

    def trader(thread: int) -> Callable[[], list[tuple[str, str, int, Reply]]]:
        def run() -> list[tuple[str, str, int, Reply]]:
            rng = random.Random(thread)
            sent = []
            for _ in range(transfers_per_thread):
                source, target = pair(thread, rng)
                amount = rng.randint(1, 60)
                reply = server.post("/account/coins/transfer", source, to=target, amount=amount)
                sent.append((source, target, amount, reply))
            return sent

        return run

    sent = [item for items in run_together([trader(thread) for thread in range(threads)]) for item in items]

    statuses = Counter((reply.status, reply.body.get("error")) for *_, reply in sent)
    assert statuses.keys() <= {(200, None), (422, "insufficient_funds")}, statuses
    expected = {name: [opening, 0] for name in names}
    for source, target, amount, reply in sent:
        if reply.status == 200:
            expected[source][0] -= amount
            expected[target][0] += amount
            expected[source][1] += 1
            expected[target][1] += 1
    final = server.accounts(names)
    assert final == {name: tuple(figures) for name, figures in expected.items()}
    assert sum(balance for balance, _ in final.values()) == users * opening
    server.assert_verifies()


# -- withdrawals and deposits ---------------------------------------------------


def test_concurrent_withdrawals_never_overdraw(server: Server) -> None:
    opening, amount, contenders = 1_000, 30, 48
    (alice,) = server.open({"alice": opening})

    replies = many(lambda: server.post("/account/coins/withdraw", alice, amount=amount), contenders)

    winners = opening // amount
    statuses = Counter((reply.status, reply.body.get("error")) for reply in replies)
    assert statuses == {(200, None): winners, (422, "insufficient_funds"): contenders - winners}
    assert sorted(reply.body["version"] for reply in replies if reply.status == 200) == list(
        range(1, winners + 1)
    )
    assert server.account(alice) == (opening - winners * amount, winners)
    server.assert_verifies()


def test_concurrent_deposits_all_land(server: Server) -> None:
    threads, deposits_per_thread, amount = 12, 10, 7
    (alice,) = server.open({"alice": 5})

    def depositor() -> list[Reply]:
        return [server.post("/account/coins/add", alice, amount=amount) for _ in range(deposits_per_thread)]

    replies = [reply for replies in run_together([depositor] * threads) for reply in replies]

    deposits = threads * deposits_per_thread
    assert {reply.status for reply in replies} == {200}
    # Each deposit moved the version by one and saw the balance of its version.
    assert sorted(reply.body["version"] for reply in replies) == list(range(1, deposits + 1))
    assert all(reply.body["balance"] == 5 + reply.body["version"] * amount for reply in replies)
    assert server.account(alice) == (5 + deposits * amount, deposits)
    server.assert_verifies()


# -- one operation, many senders -------------------------------------------------

OPERATIONS = ["/account/coins/transfer", "/account/coins/withdraw", "/account/coins/add"]
OPENING = 1_000


@dataclass(frozen=True)
class Contest:
    """One operation of alice's (a transfer to bob, a withdrawal or a deposit) sent many times at once."""

    server: Server
    path: str
    amount: int
    alice: str
    bob: str

    @classmethod
    def open(cls, server: Server, path: str, amount: int) -> Contest:
        alice, bob = server.open({"alice": OPENING, "bob": OPENING})
        return cls(server, path, amount, alice, bob)

    def send(self, headers: dict[str, str]) -> Reply:
        params: dict[str, object] = {"amount": self.amount}
        if self.path.endswith("transfer"):
            params["to"] = self.bob
        return self.server.post(self.path, self.alice, headers, **params)

    def send_together(self, headers: dict[str, str], senders: int) -> list[Reply]:
        return many(lambda: self.send(headers), senders)

    def assert_applied_once(self) -> None:
        sign = 1 if self.path.endswith("add") else -1
        assert self.server.account(self.alice) == (OPENING + sign * self.amount, 1)
        paid = self.path.endswith("transfer")
        assert self.server.account(self.bob) == ((OPENING + self.amount, 1) if paid else (OPENING, 0))
        self.server.assert_verifies()


@pytest.mark.parametrize("path", OPERATIONS)
def test_concurrent_retries_with_one_key_apply_once(server: Server, path: str) -> None:
    contest = Contest.open(server, path, 25)
    key = {"Idempotency-Key": "one-purchase"}

    replies = contest.send_together(key, 16)

    originals = [reply for reply in replies if reply.status == 200 and not reply.replayed]
    assert len(originals) == 1, replies
    for reply in replies:
        if reply.status == 503:  # still in flight when this retry gave up waiting
            assert reply.body["error"] == "timeout", reply
        else:
            assert (reply.status, reply.body) == (200, originals[0].body), reply
    late = contest.send(key)
    assert (late.status, late.body, late.replayed) == (200, originals[0].body, True)
    contest.assert_applied_once()


@pytest.mark.parametrize("path", OPERATIONS)
def test_if_match_race_has_exactly_one_winner(server: Server, path: str) -> None:
    contenders = 16
    contest = Contest.open(server, path, 10)

    replies = contest.send_together({"If-Match": '"0"'}, contenders)

    statuses = Counter((reply.status, reply.body.get("error")) for reply in replies)
    assert statuses == {(200, None): 1, (412, "version_conflict"): contenders - 1}
    contest.assert_applied_once()
