"""GoLedger load test: a realistic traffic mix, then a money-conservation check.

Run it against a server started with ``LEDGER_ADMIN_TOKEN`` set, giving the same token::

    LEDGER_ADMIN_TOKEN=... locust -f loadtests/locustfile.py --headless -u 50 -r 50 -t 30s \\
        --host http://127.0.0.1:3000

What it does:

* At test start it opens a fresh pool of accounts through ``POST /admin/accounts``:
  ``LOCUST_POOL_SIZE`` accounts (default 50) named ``lt-<random run id>-NNN``, each
  with ``LOCUST_OPENING_BALANCE`` coins (default 10000), so it can be rerun against
  the same server.
* Every simulated user then picks random pool accounts for each request: about half
  reads (balance, history), the rest deposits, withdrawals, transfers and payments
  through a hold (``POST /account/holds``, then the payee captures all or part of it,
  or the payer voids it). A capture moves coins between pool accounts like a transfer,
  and held coins still count in the balance, so payments leave the check's figures alone.
  ``422 insufficient_funds`` is an expected business outcome and counts as a success;
  any other error status, including ``503 timeout`` and every other 5xx, is a failure.
* At test stop, once every user has finished, it reads every pool balance and checks
  that ``sum(balances) == pool_size * opening + acked deposits - acked withdrawals``
  and that no balance is negative (see ``loadtests/conservation.py``). It logs
  ``conservation OK: ...`` or ``conservation VIOLATED: ...``; a violation makes the
  locust process exit with status 1. Request failures keep locust's own exit code
  (``--exit-code-on-error``, 1 by default).

Only local runs are supported: the check needs every request's outcome in this one
process, so ``--master``/``--worker``/``--processes`` are refused at start-up.

When the test stops, locust kills its users, possibly in the middle of a request (even
with ``--stop-timeout``: a user it finds waiting can wake up and start a request
before the kill lands). A money request killed after it was sent would leave its
outcome unknown, so each one runs in a greenlet of its own that the kill does not
reach; the check waits for those to finish before it reads the balances.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import requests
from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

try:
    from loadtests.conservation import Outcome, Tally, check_conservation, outcome_of
except ModuleNotFoundError:  # locust started outside the repository root: it puts this directory on sys.path
    from conservation import Outcome, Tally, check_conservation, outcome_of  # type: ignore[import-not-found,no-redef]

_log = logging.getLogger("goledger.loadtest")

#: Client-side deadline of every request (the server's own default is 2 s).
REQUEST_TIMEOUT_S = 10.0
#: A payment's hold outlives the run, so only its capture or void resolves it.
HOLD_TIMEOUT_S = 600
#: How long the final check waits for money requests still in flight.
INFLIGHT_GRACE_S = REQUEST_TIMEOUT_S + 5.0
MAX_AMOUNT = 10**15


class SetupError(Exception):
    """The load test cannot run: bad settings, or the pool could not be opened."""


@dataclass(frozen=True)
class Settings:
    admin_token: str
    pool_size: int
    opening_balance: int

    @classmethod
    def from_env(cls) -> Settings:
        admin_token = os.environ.get("LEDGER_ADMIN_TOKEN", "").strip()
        if not admin_token:
            raise SetupError(
                "LEDGER_ADMIN_TOKEN is not set: export the admin token the server was started with "
                "(the load test opens its accounts through POST /admin/accounts)"
            )
        return cls(
            admin_token=admin_token,
            pool_size=_env_int("LOCUST_POOL_SIZE", 50, 2, 10_000),
            opening_balance=_env_int("LOCUST_OPENING_BALANCE", 10_000, 0, MAX_AMOUNT),
        )


def _env_int(name: str, default: int, low: int, high: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise SetupError(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


@dataclass(frozen=True)
class PoolAccount:
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.token}


@dataclass
class Run:
    """One test's pool and tally (a new test in the same process gets a new pool)."""

    host: str
    run_id: str
    accounts: list[PoolAccount]
    opening_balance: int
    tally: Tally = field(default_factory=Tally)

    @property
    def opening_total(self) -> int:
        return len(self.accounts) * self.opening_balance


_settings: Settings | None = None
_run: Run | None = None
#: Money requests in flight, each in its own greenlet so that stopping a user cannot
#: interrupt one between sending it and counting its answer.
_inflight = gevent.pool.Group()


# -- simulated users --------------------------------------------------------------


class LedgerUser(HttpUser):
    """A client of the ledger acting on random accounts of the pool."""

    wait_time = between(0.05, 0.25)

    @property
    def pool_run(self) -> Run:
        """The current test's pool (not ``run``: that is ``User``'s main loop)."""
        if _run is None:  # the pool could not be opened and the test is being stopped
            raise StopUser()
        return _run

    def _pick(self) -> PoolAccount:
        return random.choice(self.pool_run.accounts)

    # Reads: 10 of 22.

    @task(8)
    def read_balance(self) -> None:
        account = self._pick()
        with self.client.get(
            "/account/coins",
            params={"username": account.username},
            headers=account.headers,
            name="/account/coins",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                _fail(response)
                return
            body = _json(response)
            balance, held, available = body.get("balance"), body.get("held"), body.get("available")
            if not (isinstance(balance, int) and isinstance(held, int) and isinstance(available, int)):
                response.failure(f"balance response lacks balance/held/available: {body}")
            elif balance < 0 or available != balance - held:
                response.failure(f"inconsistent balance: {body}")
            else:
                response.success()

    @task(2)
    def read_history(self) -> None:
        account = self._pick()
        with self.client.get(
            "/account/transactions",
            params={"username": account.username, "limit": "20"},
            headers=account.headers,
            name="/account/transactions",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                _fail(response)
            elif not isinstance(_json(response).get("transactions"), list):
                response.failure("history response lacks a transactions list")
            else:
                response.success()

    # Money: 12 of 22. Deposits and withdrawals use the query string (the original
    # style), transfers a JSON body, so both parameter paths see load.

    @task(4)
    def deposit(self) -> None:
        account = self._pick()
        amount = random.randint(1, 1_000)
        self._money("deposit", "/account/coins/add", account, amount, query={"amount": str(amount)})

    @task(3)
    def withdraw(self) -> None:
        account = self._pick()
        amount = random.randint(1, 1_200)  # about as much out as deposits bring in
        self._money("withdrawal", "/account/coins/withdraw", account, amount, query={"amount": str(amount)})

    @task(3)
    def transfer(self) -> None:
        source, target = random.sample(self.pool_run.accounts, 2)
        amount = random.randint(1, 2_000)
        self._money(
            "transfer",
            "/account/coins/transfer",
            source,
            amount,
            body={"username": source.username, "to": target.username, "amount": amount},
        )

    @task(2)
    def pay_with_hold(self) -> None:
        payer, payee = random.sample(self.pool_run.accounts, 2)
        amount = random.randint(1, 2_000)
        if random.random() < 0.7:
            settle, captured = "capture", random.choice([amount, random.randint(1, amount)])
        else:
            settle, captured = "void", 0
        # Like every money request, in a greenlet that stopping this user cannot kill: a
        # capture in flight while the final check reads the balances would skew the sum.
        _inflight.spawn(self._send_payment, self.pool_run.tally, payer, payee, amount, settle, captured).get()

    def _money(
        self,
        kind: str,
        path: str,
        account: PoolAccount,
        amount: int,
        *,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """One money operation, sent and counted by a greenlet that stopping this user cannot kill."""
        request = _inflight.spawn(
            self._send_money, self.pool_run.tally, kind, path, account, amount, query, body
        )
        request.get()  # re-raises a bug in _send_money; a kill of this user leaves `request` running

    def _send_money(
        self,
        tally: Tally,
        kind: str,
        path: str,
        account: PoolAccount,
        amount: int,
        query: dict[str, str] | None,
        body: dict[str, Any] | None,
    ) -> None:
        outcome = Outcome.UNKNOWN  # stays so if the request dies without an answer
        try:
            with self.client.post(
                path,
                params={"username": account.username, **(query or {})} if body is None else query,
                json=body,
                headers=account.headers,
                name=path,
                timeout=REQUEST_TIMEOUT_S,
                catch_response=True,
            ) as response:
                outcome = outcome_of(response.status_code)
                if response.status_code == 200:
                    problem = _money_body_problem(_json(response), amount)
                    if problem:
                        response.failure(problem)
                    else:
                        response.success()
                elif response.status_code == 422 and _json(response).get("error") == "insufficient_funds":
                    tally.insufficient_funds += 1
                    response.success()  # a business outcome, not a failure of the service
                else:
                    _fail(response)
        finally:
            tally.record(kind, amount, outcome)

    def _send_payment(
        self, tally: Tally, payer: PoolAccount, payee: PoolAccount, amount: int, settle: str, captured: int
    ) -> None:
        """A hold of ``amount`` from payer to payee, then its capture (``captured`` coins) or void."""
        hold_id: str | None = None
        with self.client.post(
            "/account/holds",
            json={
                "username": payer.username,
                "to": payee.username,
                "amount": amount,
                "timeout_s": HOLD_TIMEOUT_S,
            },
            headers=payer.headers,
            name="/account/holds",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code == 201:
                body = _json(response)
                problem = _hold_body_problem(body, "PENDING", amount, 0, amount)
                if problem:
                    response.failure(problem)
                else:
                    hold_id = body["hold"]["id"]
                    response.success()
            elif response.status_code == 422 and _json(response).get("error") == "insufficient_funds":
                tally.insufficient_funds += 1
                response.success()  # the payer's available money fell short: a business outcome
            else:
                _fail(response)
        if hold_id is None:
            return
        # The payee captures, the payer voids (either party may do either).
        account, query = (payee, {"amount": captured}) if settle == "capture" else (payer, {})
        with self.client.post(
            f"/account/holds/{hold_id}/{settle}",
            json={"username": account.username, **query},
            headers=account.headers,
            name=f"/account/holds/[id]/{settle}",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                _fail(response)  # 409 hold_not_pending included: nothing else knows this hold
                return
            status = "CAPTURED" if settle == "capture" else "VOIDED"
            recorded = captured if settle == "capture" else amount
            problem = _hold_body_problem(_json(response), status, amount, captured, recorded)
            if problem:
                response.failure(problem)
            else:
                response.success()


def _json(response: ResponseContextManager) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _fail(response: ResponseContextManager) -> None:
    if response.status_code == 0:
        response.failure(f"no response: {response.error}")  # type: ignore[no-untyped-call]
        return
    body = _json(response)
    response.failure(f"HTTP {response.status_code} {body.get('error', '(no error code)')}")  # type: ignore[no-untyped-call]


def _money_body_problem(body: dict[str, Any], amount: int) -> str | None:
    transaction = body.get("transaction")
    if not isinstance(transaction, dict) or transaction.get("status") != "SUCCESS":
        return f"200 without a SUCCESS transaction: {body}"
    if transaction.get("amount") != amount:
        return f"transaction amount {transaction.get('amount')} != requested {amount}"
    balance = body.get("balance")
    if not isinstance(balance, int) or balance < 0:
        return f"bad balance after the operation: {balance!r}"
    return None


def _hold_body_problem(
    body: dict[str, Any], status: str, amount: int, captured: int, recorded: int
) -> str | None:
    """What is wrong with a hold operation's answer (``recorded``: the amount its audit record carries)."""
    hold = body.get("hold")
    if not isinstance(hold, dict) or not isinstance(hold.get("id"), str):
        return f"hold answer without a hold: {body}"
    if (hold.get("status"), hold.get("amount"), hold.get("captured")) != (status, amount, captured):
        seen = f"{hold.get('status')} {hold.get('captured')}/{hold.get('amount')}"
        return f"hold is {seen}, expected {status} {captured}/{amount}"
    transaction = body.get("transaction")
    if not isinstance(transaction, dict) or transaction.get("status") != "SUCCESS":
        return f"hold answer without a SUCCESS transaction: {body}"
    if transaction.get("amount") != recorded:
        return f"transaction amount {transaction.get('amount')} != {recorded}"
    balance, held, available = body.get("balance"), body.get("held"), body.get("available")
    if not (isinstance(balance, int) and isinstance(held, int) and isinstance(available, int)):
        return f"hold answer lacks balance/held/available: {body}"
    if balance < 0 or not 0 <= held <= balance or available != balance - held:
        return f"inconsistent money after a hold operation: {body}"
    return None


# -- test lifecycle ---------------------------------------------------------------


def _on_init(environment: Environment, **_: Any) -> None:
    global _settings
    if isinstance(environment.runner, MasterRunner | WorkerRunner):
        _log.error(
            "distributed runs (--master/--worker/--processes) are not supported: the money "
            "conservation check needs every request's outcome in one process; run locust locally"
        )
        raise SystemExit(1)
    try:
        _settings = Settings.from_env()
        headless = bool(getattr(environment.parsed_options, "headless", False))
        if headless and not environment.host:  # the web UI asks for the host later
            raise SetupError("no host: pass --host http://127.0.0.1:3000")
    except SetupError as error:
        _log.error("%s", error)
        raise SystemExit(1) from None


def _on_test_start(environment: Environment, **_: Any) -> None:
    global _run
    _run = None
    try:
        if _settings is None:
            raise SetupError("the init event did not run")
        if not environment.host:
            raise SetupError("no host: pass --host http://127.0.0.1:3000")
        _run = _open_pool(environment.host.rstrip("/"), _settings)
    except (SetupError, requests.RequestException) as error:
        _log.error("cannot start the load test: %s", error)
        environment.process_exit_code = 1
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)
        return
    _log.info(
        "opened %d pool accounts lt-%s-* with %s coins each",
        len(_run.accounts),
        _run.run_id,
        f"{_run.opening_balance:,}",
    )


def _on_test_stop(environment: Environment, **_: Any) -> None:
    global _run
    run, _run = _run, None
    if run is None:
        return
    if not _inflight.join(timeout=INFLIGHT_GRACE_S):
        _inflight.kill(block=True)  # their outcomes become "unknown" and widen the check
    try:
        problems, summary = _verify(run)
    except Exception as error:
        problems, summary = [f"the check itself failed: {error!r}"], ""
    if problems:
        for problem in problems:
            _log.error("conservation VIOLATED: %s", problem)
        # Only ever set on failure: a set exit code overrides locust's own, which is
        # what reports request failures (--exit-code-on-error).
        environment.process_exit_code = 1
    else:
        _log.info("conservation OK: %s", summary)


def _open_pool(host: str, settings: Settings) -> Run:
    run_id = secrets.token_hex(4)
    accounts: list[PoolAccount] = []
    with requests.Session() as session:
        for number in range(settings.pool_size):
            account = PoolAccount(f"lt-{run_id}-{number:03d}", secrets.token_urlsafe(24))
            response = session.post(
                f"{host}/admin/accounts",
                json={
                    "username": account.username,
                    "token": account.token,
                    "balance": settings.opening_balance,
                },
                headers={"Authorization": settings.admin_token},
                timeout=REQUEST_TIMEOUT_S,
            )
            if response.status_code != 201 or response.json().get("balance") != settings.opening_balance:
                hint = (
                    " (is the server running with the same LEDGER_ADMIN_TOKEN?)"
                    if response.status_code == 401
                    else ""
                )
                raise SetupError(
                    f"POST /admin/accounts for {account.username} answered "
                    f"{response.status_code} {response.text[:200]!r}{hint}"
                )
            accounts.append(account)
    return Run(host, run_id, accounts, settings.opening_balance)


def _verify(run: Run) -> tuple[list[str], str]:
    """Read every pool balance and check conservation; (problems, one-line summary)."""
    balances: dict[str, int] = {}
    problems: list[str] = []
    with requests.Session() as session:
        for account in run.accounts:
            response = session.get(
                f"{run.host}/account/coins",
                params={"username": account.username},
                headers=account.headers,
                timeout=REQUEST_TIMEOUT_S,
            )
            balance = response.json().get("balance") if response.status_code == 200 else None
            if isinstance(balance, int):
                balances[account.username] = balance
            else:
                problems.append(
                    f"cannot read the balance of {account.username}: "
                    f"{response.status_code} {response.text[:200]!r}"
                )
    if problems:  # a partial sum would only add a misleading mismatch
        return problems, ""
    tally = run.tally
    problems = check_conservation(
        balances,
        run.opening_total,
        tally.deposits,
        tally.withdrawals,
        uncertain_deposits=tally.uncertain_deposits,
        uncertain_withdrawals=tally.uncertain_withdrawals,
    )
    relation = "==" if not tally.uncertain_count else "~="
    summary = (
        f"{len(balances)} accounts, sum {sum(balances.values()):,} {relation} opening {run.opening_total:,} "
        f"+ deposits {tally.deposits:,} - withdrawals {tally.withdrawals:,}; none negative; "
        f"acked {tally.deposit_count} deposits, {tally.withdrawal_count} withdrawals, "
        f"{tally.transfer_count} transfers; {tally.insufficient_funds} insufficient_funds; "
        f"{tally.uncertain_count} with unknown outcome"
    )
    if tally.uncertain_count:
        summary += (
            f" (up to +{tally.uncertain_deposits:,}/-{tally.uncertain_withdrawals:,}: checked as a range)"
        )
    return problems, summary


events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]
