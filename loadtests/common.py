"""What every load-test scenario shares: accounts, requests that are counted, and the final check.

A scenario (``Scenario`` subclass) opens its accounts through ``POST /admin/accounts`` at
test start, its users (a ``ScenarioUser`` subclass) send requests through the helpers
below, which write every outcome into the scenario's :class:`~loadtests.conservation.Book`,
and at test stop the final check reads every account back and runs the common
invariants (``/admin/verify``, conservation, each account's balance and ``held``)
and the scenario's own.

When a test stops, locust kills its users, possibly in the middle of a request (even
with ``--stop-timeout``: a user it finds waiting can wake up and start a request
before the kill lands). A money request killed after it was sent would leave its
outcome unknown, so every task that moves money runs in a greenlet of its own that
the kill does not reach (:func:`shielded`); the check waits for those to finish
before it reads the balances.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlencode

import gevent  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import requests
from locust import FastHttpUser, between
from locust.contrib.fasthttp import ResponseContextManager
from locust.exception import StopUser

from loadtests.conservation import Book, HoldNote, Outcome, outcome_of

#: Client-side deadline of every request (the server's own default is 2 s).
REQUEST_TIMEOUT_S = 10.0
#: How long the final check waits for money requests still in flight.
INFLIGHT_GRACE_S = REQUEST_TIMEOUT_S + 5.0
#: Concurrent connections used to open accounts and to read them back at the end.
SETUP_CONNECTIONS = 8
#: A hold whose expiry is this much in the past must no longer be pending (clock slack
#: between this machine and the server's).
EXPIRY_GRACE_S = 1.0
MAX_AMOUNT = 10**15
#: The batch endpoint's names of the book's kinds.
BATCH_KINDS = {"add": "deposit", "withdraw": "withdrawal", "transfer": "transfer"}


class SetupError(Exception):
    """The load test cannot run: bad settings, or its accounts could not be opened."""


@dataclass(frozen=True)
class Account:
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.token}


@dataclass(frozen=True)
class Answer:
    """A request's answer, as the scenario code needs it (``status`` 0: no answer)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False

    @property
    def error(self) -> str | None:
        error = self.body.get("error")
        return error if isinstance(error, str) else None


@dataclass
class Check:
    """One invariant's verdict: no problems means it holds."""

    name: str
    problems: list[str]
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class FinalState:
    """Every account of the scenario read back after the load stopped."""

    balances: dict[str, int]
    held: dict[str, int]


class Scenario:
    """One run of a scenario: its accounts, its book, its own invariants.

    Subclasses set the class attributes and implement :meth:`open` (which accounts,
    with which balances) and :meth:`checks` (the scenario's invariants).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: The locust user class that drives this scenario.
    user_class: ClassVar[type[FastHttpUser]]
    #: ``--pool-size``: the number of accounts of the scenario's main group, and its bounds.
    default_pool_size: ClassVar[int]
    min_pool_size: ClassVar[int] = 2
    max_pool_size: ClassVar[int] = 10_000
    #: ``--opening-balance``: what each account of the main group starts with.
    default_opening_balance: ClassVar[int]

    def __init__(self, host: str, admin_token: str, pool_size: int, opening_balance: int) -> None:
        self.host = host
        self.admin_token = admin_token
        self.pool_size = pool_size
        self.opening_balance = opening_balance
        self.run_id = secrets.token_hex(4)
        self.book = Book()
        self.accounts: dict[str, Account] = {}

    def open(self) -> None:
        raise NotImplementedError

    def all_spawned(self) -> None:
        """Every user has spawned (locust's ``spawning_complete``)."""

    def checks(self, final: FinalState) -> list[Check]:
        """The scenario's own invariants (the common ones run for every scenario)."""
        return []

    def open_accounts(self, role: str, count: int, balance: int) -> list[Account]:
        """Open ``count`` accounts named ``<scenario>-<run id>-<role>-NNNN`` with ``balance`` each."""
        names = [f"{self.name}-{self.run_id}-{role}-{number:04d}" for number in range(count)]
        accounts = [Account(username, secrets.token_urlsafe(24)) for username in names]
        in_parallel(self._open_each, [(account, balance) for account in accounts])
        for account in accounts:
            self.accounts[account.username] = account
            self.book.open_account(account.username, balance)
        return accounts

    def _open_each(self, session: requests.Session, item: tuple[Account, int]) -> None:
        account, balance = item
        response = session.post(
            f"{self.host}/admin/accounts",
            json={"username": account.username, "token": account.token, "balance": balance},
            headers={"Authorization": self.admin_token},
            timeout=REQUEST_TIMEOUT_S,
        )
        if response.status_code != 201 or response.json().get("balance") != balance:
            hint = (
                " (is the server running with the same LEDGER_ADMIN_TOKEN?)"
                if response.status_code == 401
                else ""
            )
            raise SetupError(
                f"POST /admin/accounts for {account.username} answered "
                f"{response.status_code} {response.text[:200]!r}{hint}"
            )

    # -- the final check ----------------------------------------------------------

    def verify(self) -> list[Check]:
        """Read everything back and run every invariant, the common ones first."""
        checks = [self._verify_endpoint()]
        # Holds before accounts: a hold can expire while the accounts are read, and
        # ``check_held`` allows for that, never for the other way round.
        before_s = time.time()
        hold_problems = self._look_up_holds()
        reads = in_parallel(self._read_account, list(self.accounts.values()))
        after_s = time.time()
        unreadable = [problem for _, _, problem in reads if problem]
        if unreadable:  # a partial sum would only add misleading mismatches
            return [*checks, Check("accounts readable", unreadable)]
        final = FinalState(
            {username: balance for username, (balance, _), _ in reads},
            {username: held for username, (_, held), _ in reads},
        )
        book = self.book
        checks.append(Check("conservation", book.check_sum(final.balances), book.summary(final.balances)))
        hold_problems += book.check_held(final.held, before_s - EXPIRY_GRACE_S, after_s + EXPIRY_GRACE_S)
        statuses = Counter(note.status for note in book.holds.values())
        listed = ", ".join(f"{count:,} {status}" for status, count in sorted(statuses.items()))
        checks.append(
            Check(
                "holds",
                hold_problems,
                f"{len(book.holds):,} holds ({listed or 'none'}); every held equals its pending holds, "
                "none pending past expiry",
            )
        )
        checks.append(
            Check(
                "accounts",
                book.check_accounts(final.balances),
                f"each of {len(final.balances):,} balances equals its opening plus its acked moves",
            )
        )
        return checks + self.checks(final)

    def _verify_endpoint(self) -> Check:
        response = requests.get(
            f"{self.host}/admin/verify", headers={"Authorization": self.admin_token}, timeout=60
        )
        body = _body(response)
        if response.status_code == 200 and body.get("ok") is True:
            return Check(
                "verify",
                [],
                f"/admin/verify ok: {body.get('accounts')} accounts, {body.get('records')} audit records",
            )
        problems = body.get("problems")
        listed = [str(problem) for problem in problems] if isinstance(problems, list) else []
        return Check("verify", [f"/admin/verify answered {response.status_code}", *listed])

    def _read_account(
        self, session: requests.Session, account: Account
    ) -> tuple[str, tuple[int, int], str | None]:
        response = session.get(
            f"{self.host}/account/coins",
            params={"username": account.username},
            headers=account.headers,
            timeout=REQUEST_TIMEOUT_S,
        )
        body = _body(response)
        balance, held = body.get("balance"), body.get("held")
        if response.status_code == 200 and isinstance(balance, int) and isinstance(held, int):
            return account.username, (balance, held), None
        problem = f"cannot read {account.username}: {response.status_code} {response.text[:200]!r}"
        return account.username, (0, 0), problem

    def _look_up_holds(self) -> list[str]:
        """Reconcile every hold the clients left unresolved with the server's view of it."""
        problems = []
        for hold_id, status, captured, problem in in_parallel(self._read_hold, self.book.unresolved_holds()):
            problems += [problem] if problem else self.book.hold_observed(hold_id, status, captured)
        return problems

    def _read_hold(self, session: requests.Session, hold_id: str) -> tuple[str, str, int, str | None]:
        note = self.book.holds[hold_id]
        payer = self.accounts[note.payer]
        response = session.get(
            f"{self.host}/account/holds/{hold_id}",
            params={"username": payer.username},
            headers=payer.headers,
            timeout=REQUEST_TIMEOUT_S,
        )
        hold = _body(response).get("hold")
        if response.status_code == 200 and isinstance(hold, dict):
            return hold_id, str(hold.get("status")), int(hold.get("captured") or 0), None
        return hold_id, "", 0, f"cannot read hold {hold_id}: {response.status_code} {response.text[:200]!r}"


def admin_transactions(
    host: str, admin_token: str, query: dict[str, str | int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record ``GET /admin/transactions`` lists for ``query`` (its filters), page after
    page; and what went wrong reading them."""
    query = {**query, "limit": 500}
    found: list[dict[str, Any]] = []
    with requests.Session() as session:
        while True:
            response = session.get(
                f"{host}/admin/transactions",
                params=query,
                headers={"Authorization": admin_token},
                timeout=REQUEST_TIMEOUT_S,
            )
            body = _body(response) if response.status_code == 200 else {}
            if not isinstance(body.get("transactions"), list):
                return found, [f"GET /admin/transactions answered {response.status_code}"]
            found += body["transactions"]
            if body.get("next_cursor") is None:
                return found, []
            query["cursor"] = body["next_cursor"]


Item = TypeVar("Item")
Result = TypeVar("Result")


def in_parallel(work: Callable[[requests.Session, Item], Result], items: Sequence[Item]) -> list[Result]:
    """``work`` on every item over :data:`SETUP_CONNECTIONS` keep-alive connections, in order."""
    lanes = [list(range(start, len(items), SETUP_CONNECTIONS)) for start in range(SETUP_CONNECTIONS)]
    results: dict[int, Result] = {}

    def lane(indexes: list[int]) -> None:
        with requests.Session() as session:
            for index in indexes:
                results[index] = work(session, items[index])

    greenlets = [gevent.spawn(lane, indexes) for indexes in lanes if indexes]
    gevent.joinall(greenlets, raise_error=True)
    return [results[index] for index in range(len(items))]


# -- the running scenario -----------------------------------------------------------

_current: Scenario | None = None
#: Money requests in flight, each in its own greenlet so that stopping a user cannot
#: interrupt one between sending it and counting its answer.
inflight = gevent.pool.Group()

S = TypeVar("S", bound=Scenario)


def current(kind: type[S]) -> S:
    """The running scenario; stops the calling user when there is none (set-up failed, test stopping)."""
    if not isinstance(_current, kind):
        raise StopUser()
    return _current


def running() -> Scenario | None:
    return _current


def set_current(scenario: Scenario | None) -> Scenario | None:
    """Make ``scenario`` the running one; returns the one it replaces."""
    global _current
    previous, _current = _current, scenario
    return previous


Method = TypeVar("Method", bound=Callable[..., None])


def shielded(method: Method) -> Method:
    """Run a task in a greenlet that stopping its user cannot kill (see the module docstring)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        inflight.spawn(method, *args, **kwargs).get()  # re-raises a bug, or StopUser

    return wrapper  # type: ignore[return-value]


# -- counted requests -----------------------------------------------------------------


class ScenarioUser(FastHttpUser):
    """A client of the ledger; every money request it sends is counted in the scenario's book.

    ``FastHttpUser`` (geventhttpclient) keeps the load generator's own cost per request
    low, so that its latencies are mostly the server's.
    """

    abstract = True
    wait_time = between(0.05, 0.25)
    network_timeout = REQUEST_TIMEOUT_S
    connection_timeout = REQUEST_TIMEOUT_S

    def read(self, path: str, account: Account, **query: Any) -> ResponseContextManager:
        """``GET path`` as ``account`` (``with`` it: its outcome is the caller's to judge)."""
        return self.client.get(
            with_query(path, {"username": account.username, **query}),
            headers=account.headers,
            name=path,
            catch_response=True,
        )

    def read_balance(self, account: Account) -> int | None:
        """``GET /account/coins``: the balance, checked for consistency with ``held``/``available``."""
        with self.read("/account/coins", account) as response:
            if response.status_code != 200:
                fail(response)
                return None
            body = _body(response)
            balance, held, available = body.get("balance"), body.get("held"), body.get("available")
            if not (isinstance(balance, int) and isinstance(held, int) and isinstance(available, int)):
                _judge(response, f"balance response lacks balance/held/available: {body}")
                return None
            consistent = balance >= 0 and 0 <= held <= balance and available == balance - held
            _judge(response, None if consistent else f"inconsistent balance: {body}")
            return balance

    def move(
        self,
        book: Book,
        kind: str,
        caller: Account,
        amount: int,
        *,
        to: Account | None = None,
        headers: dict[str, str] | None = None,
        refusals: Sequence[str] = ("insufficient_funds",),
        in_body: bool = False,
        name: str | None = None,
        reference: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Answer:
        """A deposit, withdrawal or transfer by ``caller``; ``refusals``: the expected error codes.

        Parameters go in the query string (the original style) unless ``in_body``, or a
        transfer, which sends a JSON body: both parameter paths see load. ``reference`` and
        ``metadata`` tag the operation (in the query string as ``metadata.<key>`` pairs).
        """
        path = {"deposit": "/account/coins/add", "withdrawal": "/account/coins/withdraw"}.get(
            kind, "/account/coins/transfer"
        )
        fields: dict[str, Any] = {"username": caller.username, "amount": amount}
        if to is not None:
            fields["to"] = to.username
        json_body = in_body or to is not None
        if reference is not None:
            fields["reference"] = reference
        if metadata:
            if json_body:
                fields["metadata"] = metadata
            else:
                fields.update({f"metadata.{key}": value for key, value in metadata.items()})
        outcome, answer = Outcome.UNKNOWN, Answer(0, {})  # stay so if the request dies unanswered
        try:
            with self.client.post(
                path if json_body else with_query(path, fields),
                json=fields if json_body else None,
                headers={**caller.headers, **(headers or {})},
                name=name or path,
                catch_response=True,
            ) as response:
                answer = _answer(response)
                # A replay (same Idempotency-Key) applies nothing a second time.
                outcome = Outcome.NOT_APPLIED if answer.replayed else outcome_of(response.status_code)
                if response.status_code == 200:
                    _judge(response, money_body_problem(answer.body, amount))
                else:
                    _refuse_or_fail(response, book, answer, refusals)
        finally:
            book.record(kind, caller.username, amount, outcome, to=to.username if to else None)
        return answer

    def create_hold(
        self, book: Book, payer: Account, payee: Account, amount: int, timeout_s: int
    ) -> str | None:
        """A hold of ``amount`` from payer to payee; its id, or None if refused or failed."""
        answered = False
        try:
            with self.client.post(
                "/account/holds",
                json={
                    "username": payer.username,
                    "to": payee.username,
                    "amount": amount,
                    "timeout_s": timeout_s,
                },
                headers=payer.headers,
                name="/account/holds",
                catch_response=True,
            ) as response:
                answer = _answer(response)
                answered = outcome_of(response.status_code) is not Outcome.UNKNOWN
                if response.status_code != 201:
                    _refuse_or_fail(response, book, answer, ("insufficient_funds",))
                    return None
                problem = hold_body_problem(answer.body, "PENDING", amount, 0, amount)
                _judge(response, problem)
                if problem:
                    return None
                hold = answer.body["hold"]
                book.hold_created(
                    hold["id"], HoldNote(payer.username, payee.username, amount, hold["expires_at"])
                )
                return str(hold["id"])
        finally:
            if not answered:
                book.hold_doubt[payer.username] += 1

    def settle_hold(
        self, book: Book, hold_id: str, action: str, caller: Account, captured: int | None = None
    ) -> bool:
        """Capture (all of it, or ``captured`` coins) or void a hold; whether it was acknowledged."""
        note = book.holds[hold_id]
        status, moved = (
            ("CAPTURED", note.amount if captured is None else captured)
            if action == "capture"
            else ("VOIDED", 0)
        )
        outcome = Outcome.UNKNOWN
        try:
            with self.client.post(
                f"/account/holds/{hold_id}/{action}",
                json={"username": caller.username, **({} if captured is None else {"amount": captured})},
                headers=caller.headers,
                name=f"/account/holds/[id]/{action}",
                catch_response=True,
            ) as response:
                outcome = outcome_of(response.status_code)
                if response.status_code != 200:
                    fail(response)  # 409 hold_not_pending included: nobody else settles this hold
                    return False
                recorded = moved if action == "capture" else note.amount
                problem = hold_body_problem(_answer(response).body, status, note.amount, moved, recorded)
                _judge(response, problem)
                return problem is None
        finally:
            # Not applied: the hold is unchanged, and the final check looks it up.
            if outcome is Outcome.APPLIED:
                book.hold_settled(hold_id, status, moved)
            elif outcome is Outcome.UNKNOWN:
                book.hold_settled(hold_id, "UNKNOWN")

    def send_batch(
        self, book: Book, caller: Account, items: list[dict[str, Any]], *, atomic: bool
    ) -> tuple[Answer, str | None]:
        """``POST /account/coins/batch``; the answer and what is wrong with it (None: nothing)."""
        problem: str | None = None
        answer = Answer(0, {})
        try:
            with self.client.post(
                "/account/coins/batch",
                json={"username": caller.username, "atomic": atomic, "operations": items},
                headers=caller.headers,
                name=f"/account/coins/batch ({'atomic' if atomic else 'each alone'})",
                catch_response=True,
            ) as response:
                answer = _answer(response)
                if response.status_code == 200 or (atomic and answer.error == "insufficient_funds"):
                    problem = batch_body_problem(answer, items, atomic=atomic)
                    _judge(response, problem)
                    if problem is None and response.status_code != 200:
                        book.refused(f"atomic batch: {answer.error}")
                else:
                    fail(response)
        finally:
            _record_batch(book, caller, items, answer)
        return answer, problem


def _record_batch(book: Book, caller: Account, items: list[dict[str, Any]], answer: Answer) -> None:
    """Every item of a batch into the book: each as answered, or all as unknown without an answer."""
    results = answer.body.get("results") if answer.status == 200 else None
    for index, item in enumerate(items):
        if answer.status == 0:
            outcome = Outcome.UNKNOWN
        elif isinstance(results, list) and index < len(results) and isinstance(results[index], dict):
            outcome = Outcome.APPLIED if results[index].get("status") == "SUCCESS" else Outcome.NOT_APPLIED
            error = results[index].get("error")
            if outcome is Outcome.NOT_APPLIED and isinstance(error, dict):
                book.refused(f"batch item: {error.get('error')}")
        else:
            outcome = Outcome.NOT_APPLIED
        book.record(
            BATCH_KINDS[item["type"]], caller.username, int(item["amount"]), outcome, to=item.get("to")
        )


# -- answers --------------------------------------------------------------------------


def _answer(response: ResponseContextManager) -> Answer:
    replayed = response.headers is not None and response.headers.get("Idempotent-Replayed") == "true"
    return Answer(response.status_code, _body(response), replayed)


def with_query(path: str, fields: dict[str, Any]) -> str:
    return f"{path}?{urlencode({key: str(value) for key, value in fields.items()})}"


def _body(response: Any) -> dict[str, Any]:
    """A JSON object answer as a dict; anything else as an empty one."""
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _judge(response: ResponseContextManager, problem: str | None) -> None:
    if problem:
        response.failure(problem)  # type: ignore[no-untyped-call]
    else:
        response.success()  # type: ignore[no-untyped-call]


def _refuse_or_fail(
    response: ResponseContextManager, book: Book, answer: Answer, refusals: Sequence[str]
) -> None:
    """An expected business refusal counts as a success of the service; anything else fails."""
    if answer.status in (422, 503) and answer.error in refusals:
        book.refused(answer.error or "")
        response.success()  # type: ignore[no-untyped-call]
    else:
        fail(response)


def fail(response: ResponseContextManager) -> None:
    if response.status_code == 0:
        response.failure(f"no response: {getattr(response, 'error', None)}")  # type: ignore[no-untyped-call]
        return
    error = _body(response).get("error", "(no error code)")
    response.failure(f"HTTP {response.status_code} {error}")  # type: ignore[no-untyped-call]


def money_body_problem(body: dict[str, Any], amount: int) -> str | None:
    transaction = body.get("transaction")
    if not isinstance(transaction, dict) or transaction.get("status") != "SUCCESS":
        return f"200 without a SUCCESS transaction: {body}"
    if transaction.get("amount") != amount:
        return f"transaction amount {transaction.get('amount')} != requested {amount}"
    balance = body.get("balance")
    if not isinstance(balance, int) or balance < 0:
        return f"bad balance after the operation: {balance!r}"
    return None


def hold_body_problem(
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


def batch_body_problem(answer: Answer, items: list[dict[str, Any]], *, atomic: bool) -> str | None:
    """What is wrong with a batch's answer: an atomic batch must apply all of its items or none."""
    results = answer.body.get("results")
    if not isinstance(results, list) or len(results) != len(items):
        return f"batch answer without one result per item: {str(answer.body)[:300]}"
    statuses = [result.get("status") if isinstance(result, dict) else None for result in results]
    applied = statuses.count("SUCCESS")
    if applied + statuses.count("FAILED") != len(items):
        return f"batch results with unknown statuses: {sorted(set(map(str, statuses)))}"
    if answer.status == 200:
        if (answer.body.get("succeeded"), answer.body.get("failed")) != (applied, len(items) - applied):
            return "batch counts do not match its results"
        if atomic and applied != len(items):
            return f"atomic batch answered 200 with {applied} of {len(items)} items applied"
        for item, result in zip(items, results, strict=True):
            transaction = result.get("transaction") if result.get("status") == "SUCCESS" else None
            if transaction is not None and transaction.get("amount") != item["amount"]:
                return f"batch item amount {transaction.get('amount')} != requested {item['amount']}"
        return None
    if applied:
        return f"refused atomic batch with {applied} of {len(items)} items applied"
    index = answer.body.get("index")
    if not isinstance(index, int) or not 0 <= index < len(items):
        return f"refused atomic batch without the failing item's index: {str(answer.body)[:300]}"
    others = [result.get("error") for position, result in enumerate(results) if position != index]
    if any(not isinstance(error, dict) or error.get("error") != "batch_failed" for error in others):
        return "refused atomic batch: the items that did not fail are not all batch_failed"
    return None
