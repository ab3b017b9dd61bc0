"""Whole audit trails, read page by page: through the Flask test client or from a live server."""

from __future__ import annotations

from typing import Any

import requests
from flask.testing import FlaskClient

from tests.servers import REQUEST_TIMEOUT_S
from tests.stores import ADMIN_TOKEN

ADMIN = {"Authorization": ADMIN_TOKEN}


def audit(client: FlaskClient) -> list[dict[str, Any]]:
    """The whole audit trail through ``/admin/audit``; its sequences must be 1, 2, 3, … without gaps.

    Reading the trail touches no account: it expires no hold.
    """
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, object] = {"limit": 500} if cursor is None else {"limit": 500, "cursor": cursor}
        response = client.get("/admin/audit", query_string=query, headers=ADMIN)
        assert response.status_code == 200, response.json
        records += response.json["transactions"]
        cursor = response.json["next_cursor"]
        if cursor is None:
            break
    assert [record["sequence"] for record in records] == list(range(1, len(records) + 1))
    return records


def fetch_audit(base_url: str, admin: dict[str, str]) -> list[dict[str, Any]]:
    """The whole audit trail of the server at ``base_url``, every page (``admin``: its admin header)."""
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        page = requests.get(
            f"{base_url}/admin/audit", params=params, headers=admin, timeout=REQUEST_TIMEOUT_S
        )
        assert page.status_code == 200, page.text
        records.extend(page.json()["transactions"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return records


def as_seen_by(record: dict[str, Any], viewer: str) -> dict[str, Any]:
    """An ``/admin/audit`` record as an answer or a history shows it to ``viewer``: without the
    chain's hashes, with ``viewer``'s ``balance_after`` instead of both parties' balances."""
    hidden = ("previous_hash", "hash", "from_balance_after", "to_balance_after")
    shown = {name: value for name, value in record.items() if name not in hidden}
    side = "from_balance_after" if record["from"] == viewer else "to_balance_after"
    return {**shown, "balance_after": record[side]}


def replayed(records: list[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """Each (sequence, party)'s balance right after the record, by replaying ``/admin/audit``
    records from the first one (a name that is no account has none)."""
    balances: dict[str, int] = {}
    after: dict[tuple[int, str], int] = {}
    for record in records:
        kind, source, target, amount = record["type"], record["from"], record["to"], record["amount"]
        if record["status"] == "SUCCESS":
            if source is not None and kind in ("withdrawal", "transfer", "capture", "reversal"):
                balances[source] -= amount
            if target is not None and kind in ("open", "deposit", "transfer", "capture", "reversal"):
                balances[target] = balances.get(target, 0) + amount
        for name in (source, target):
            if name is not None and name in balances:
                after[(record["sequence"], name)] = balances[name]
    return after
