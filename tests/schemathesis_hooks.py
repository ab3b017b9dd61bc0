"""schemathesis hooks for GoLedger: who the generated requests act as.

Loaded by ``st run`` through ``SCHEMATHESIS_HOOKS=tests/schemathesis_hooks.py`` (see
``tests/test_schemathesis.py``). The accounts and the admin token come from the
environment: ``GOLEDGER_FUZZ_ACCOUNTS`` (a JSON object username -> token, created up
front) and ``GOLEDGER_FUZZ_ADMIN_TOKEN``.

Every generated request is authenticated: admin operations with the admin token,
``/account`` operations as one of the known accounts. A generated username that is
not a known account is replaced by the first one (in the query string and, if the
body names one, in the body), so that requests reach the ledger instead of stopping
at 401. Accounts that ``POST /admin/accounts`` creates during the run join the known
ones, so that the document's links (create -> balance -> history) act as the new
account with its own token.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import schemathesis

_lock = threading.Lock()
_tokens: dict[str, str] = json.loads(os.environ.get("GOLEDGER_FUZZ_ACCOUNTS", "{}"))
_default_user = next(iter(_tokens), "")
_admin_token = os.environ.get("GOLEDGER_FUZZ_ADMIN_TOKEN", "")


def _token_of(username: object) -> str | None:
    with _lock:
        return _tokens.get(username) if isinstance(username, str) else None


# Only the routes that take a token; health, metrics and the docs are called without one.
@schemathesis.auth(refresh_interval=None, retry_on=[]).apply_to(path_regex="^/(account|admin)/")
class GoLedgerAuth:
    """The caller of each request: (username or None for admin, token)."""

    def get(self, case: Any, context: Any) -> tuple[str | None, str]:
        if case.operation.path.startswith("/admin/"):
            return None, _admin_token
        username = case.query.get("username") if isinstance(case.query, dict) else None
        token = _token_of(username)
        if token is None:
            return _default_user, _token_of(_default_user) or ""
        return str(username), token

    def set(self, case: Any, data: tuple[str | None, str], context: Any) -> None:
        username, token = data
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        if username is None:
            return
        case.query = {**(case.query or {}), "username": username}
        if isinstance(case.body, dict) and "username" in case.body:
            case.body = {**case.body, "username": username}


#: The parameters each money operation requires (``to`` is filled with a real account).
_REQUIRED = {
    "/account/coins/add": {"amount": 100},
    "/account/coins/withdraw": {"amount": 100},
    "/account/coins/transfer": {"to": "", "amount": 100},
    "/account/holds": {"to": "", "amount": 100},
}


def _counterpart(username: str) -> str:
    """A known account other than ``username``: the recipient of transfers and holds."""
    with _lock:
        return next((name for name in _tokens if name != username), username)


def _aim(fields: dict[str, Any], username: str) -> dict[str, Any]:
    """``fields`` with ``from`` as the caller and ``to`` as an existing other account."""
    aimed = dict(fields)
    if "from" in aimed:
        aimed["from"] = username
    if "to" in aimed and (aimed["to"] == username or _token_of(aimed["to"]) is None):
        aimed["to"] = _counterpart(username)
    return aimed


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """Aim the request at real accounts, and give query and body the same values.

    Random senders and recipients would stop almost every transfer at 403 or 404, a
    missing one or a missing amount at 400, and a field given differently in the query
    and the body at 400 conflicting_parameters; those answers are covered by the unit
    tests. Here the requests should reach the ledger.
    """
    query = case.query if isinstance(case.query, dict) else {}
    path_parameters = case.path_parameters if isinstance(case.path_parameters, dict) else {}
    if case.operation.path.startswith("/admin/accounts/{username}/") and _tokens:
        # The operator's deposits and withdrawals: at a known account, mostly.
        named = path_parameters.get("username")
        if _token_of(named) is None and sum(map(ord, str(named))) % 4:
            case.path_parameters = {**path_parameters, "username": next(iter(_tokens))}
        return
    username = query.get("username")
    if not isinstance(username, str) or case.operation.path.startswith("/admin/"):
        return
    case.query = _aim(query, username)
    body = case.body if isinstance(case.body, dict) else None
    # A recipient and an amount are required in the query or the body, which the document
    # cannot make either one require: without them most money operations would stop at 400.
    for name, value in _REQUIRED.get(case.operation.path, {}).items():
        if name not in case.query and (body is None or name not in body):
            case.query[name] = _counterpart(username) if name == "to" else value
    if body is None:
        return
    body = _aim(body, username)
    body.update({name: value for name, value in case.query.items() if name in body})
    operations = body.get("operations")
    if isinstance(operations, list):
        body["operations"] = [_aim(item, username) if isinstance(item, dict) else item for item in operations]
    case.body = body


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Learn the token of every account the run creates, so that links can act as it."""
    if case.operation.path != "/admin/accounts" or response.status_code != 201:
        return
    created = json.loads(response.content)
    with _lock:
        _tokens[created["username"]] = created["token"]
