"""The tamper-evident audit trail: /admin/audit, /admin/verify, the CLI, and tampering."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.api.common import store
from app.ledger import model
from app.ledger.audit import GENESIS_HASH, canonical_encoding, chain_hash, check_chain
from app.ledger.model import OperationType, Status, Transaction
from app.ledger.store import LedgerStore
from tests.drivers import StoreDriver
from tests.stores import ADMIN_TOKEN

ADMIN = {"Authorization": ADMIN_TOKEN}
AARON = {"Authorization": "1"}


def ledger_of(app: Flask) -> LedgerStore:
    with app.app_context():
        return store()


def some_traffic(client: FlaskClient) -> None:
    client.post("/account/coins/add?username=aaron&amount=300", headers=AARON)
    client.post("/account/coins/withdraw?username=aaron&amount=50", headers=AARON)
    client.post("/account/coins/transfer?username=aaron&to=bryan&amount=70", headers=AARON)
    client.post("/account/coins/withdraw?username=aaron&amount=999999", headers=AARON)  # FAILED


def test_audit_is_oldest_first_chained_and_paginated(client: FlaskClient) -> None:
    some_traffic(client)
    records, cursor = [], None
    while True:
        query = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        response = client.get("/admin/audit", query_string=query, headers=ADMIN)
        assert response.status_code == 200
        records.extend(response.json["transactions"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            break
    assert [r["sequence"] for r in records] == list(range(1, 7))
    assert [r["type"] for r in records] == ["open", "open", "deposit", "withdrawal", "transfer", "withdrawal"]
    previous = GENESIS_HASH
    for record in records:
        assert record["previous_hash"] == previous
        previous = record["hash"]
    assert len({r["hash"] for r in records}) == len(records)


def test_audit_needs_the_admin_token(client: FlaskClient) -> None:
    assert client.get("/admin/audit", headers=AARON).status_code == 401
    assert client.get("/admin/verify").status_code == 401


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "cursor=nonsense", "cursor=aDox"])
def test_audit_rejects_bad_pages(client: FlaskClient, query: str) -> None:
    response = client.get(f"/admin/audit?{query}", headers=ADMIN)
    assert response.status_code == 400
    assert response.json["error"] in ("invalid_limit", "invalid_cursor")


def test_verify_passes_on_an_honest_ledger(client: FlaskClient) -> None:
    some_traffic(client)
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 200
    body = response.json
    assert body["ok"] is True
    assert (body["accounts"], body["records"]) == (2, 6)
    assert body["total_balance"] == 20_250
    assert body["total_deposited"] - body["total_withdrawn"] == body["total_balance"]


@pytest.mark.parametrize(
    "changes",
    [{"amount": 1}, {"target": "bryan"}, {"status": "FAILED"}, {"created_at": "2020-01-01T00:00:00.000000Z"}],
)
def test_changing_a_record_is_detected(
    driver: StoreDriver, client: FlaskClient, changes: dict[str, object]
) -> None:
    some_traffic(client)
    driver.tamper(3, **changes)
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 500
    assert response.json["ok"] is False
    assert any("record 3" in problem for problem in response.json["problems"])
    health = client.get("/system/health")
    assert health.status_code == 503
    assert health.json["status"] == "unhealthy"
    assert health.json["components"]["audit_log"] is False


def test_rehashing_a_changed_record_still_breaks_the_chain(driver: StoreDriver, client: FlaskClient) -> None:
    some_traffic(client)
    driver.rehash(3, amount=1)
    problems = client.get("/admin/verify", headers=ADMIN).json["problems"]
    assert any("record 4 does not link" in problem for problem in problems)
    assert any("aaron has" in problem for problem in problems)


def test_removing_a_record_is_detected(driver: StoreDriver, client: FlaskClient) -> None:
    some_traffic(client)
    driver.remove(4)
    response = client.get("/admin/verify", headers=ADMIN)
    assert response.status_code == 500
    assert any("sequence" in problem for problem in response.json["problems"])


def test_a_balance_that_disagrees_with_the_trail_is_detected(
    driver: StoreDriver, client: FlaskClient
) -> None:
    driver.adjust("bryan", balance=1)
    problems = client.get("/admin/verify", headers=ADMIN).json["problems"]
    assert "bryan has 10001 but its audit records add up to 10000" in problems
    assert any("money is not conserved" in problem for problem in problems)


@pytest.mark.memory_only  # PostgreSQL refuses it (test_postgres.py)
def test_a_negative_balance_is_detected(driver: StoreDriver, client: FlaskClient) -> None:
    driver.adjust("bryan", balance=-5 - driver.peek_account("bryan").balance)  # bryan has -5
    problems = client.get("/admin/verify", headers=ADMIN).json["problems"]
    assert "bryan has a negative balance: -5" in problems


def test_health_notices_tampering_with_records_it_has_not_checked_yet(
    driver: StoreDriver, client: FlaskClient
) -> None:
    assert client.get("/system/health").status_code == 200  # checks records 1 and 2
    some_traffic(client)
    driver.tamper(5, amount=71)
    health = client.get("/system/health")
    assert health.status_code == 503
    assert health.json["components"]["audit_log"] is False


def test_cli_verify_exits_zero_on_an_honest_ledger(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok accounts=2 records=2")


def test_cli_verify_exits_non_zero_and_lists_problems(
    app: Flask, driver: StoreDriver, client: FlaskClient
) -> None:
    some_traffic(client)
    driver.tamper(4, amount=49)
    result = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert result.exit_code == 1
    assert "FAILED" in result.output
    assert "record 4" in result.output


def test_the_canonical_encoding_is_the_documented_compact_json_array(app: Flask, client: FlaskClient) -> None:
    import json

    from app.ledger.audit import canonical_encoding

    some_traffic(client)
    for record in ledger_of(app).audit_page(limit=500, cursor=None).transactions:
        fields = [
            record.sequence,
            record.id,
            record.type,
            record.source,
            record.target,
            record.amount,
            record.status,
            record.reason,
            record.created_at,
        ]
        if record.from_balance_after is not None or record.to_balance_after is not None:
            # Records that carry balances: the reference, the metadata, both balances, the reversed id.
            fields += [None, None, record.from_balance_after, record.to_balance_after, None]
        assert canonical_encoding(record) == json.dumps(fields, separators=(",", ":")).encode("ascii")


def test_a_records_encoding_is_its_sequence_then_its_tail(app: Flask, client: FlaskClient) -> None:
    """The split the PostgreSQL store hashes with in the database (goledger_append)."""
    from app.ledger.audit import canonical_encoding, chain_hash
    from app.ledger.records import RecordDraft

    some_traffic(client)
    for record in ledger_of(app).audit_page(limit=500, cursor=None).transactions:
        draft = RecordDraft(record.type, record.source, record.target, record.amount, record.reason)
        if record.from_balance_after is not None or record.to_balance_after is not None:
            draft.balances = (record.from_balance_after, record.to_balance_after)
        tail = draft.tail(record.id, record.created_at)
        assert b"[" + str(record.sequence).encode() + tail == canonical_encoding(record)
        assert chain_hash(record.previous_hash, record) == record.hash


# -- a known-answer vector for the chain ------------------------------------------------------

#: Two records as the hash covers them: ``[sequence, id, type, from, to, amount, status,
#: reason, created_at]`` in compact JSON (``app.ledger.records.encode``).
KNOWN_ENCODINGS = (
    b'[1,"tx_0000000000000001","open",null,"aaron",100,"SUCCESS",null,"2024-01-02T03:04:05.678Z"]',
    b'[2,"tx_0000000000000002","transfer","aaron","bryan",250,"FAILED","insufficient_funds",'
    b'"2024-01-02T03:04:06.000Z"]',
)
#: SHA-256 of the previous hash (64 ASCII hex digits, zeros before the first record) followed by
#: the encoding, computed apart from this code (``printf '%s%s' "$previous" "$encoding" | sha256sum``).
KNOWN_HASHES = (
    "c635ba801cbd2ae67ef2a7b5c5fd1e568943c911746cc05ebb4a4d365e3077c1",
    "f5205fae958e64417905e18ec3f0d8d3da6e09729ef835c2eb92134678507a35",
)


def test_the_chain_hash_matches_a_sha256_known_answer_vector() -> None:
    opening = Transaction(
        "tx_0000000000000001", 1, OperationType.OPEN, None, "aaron", 100, Status.SUCCESS, None,
        "2024-01-02T03:04:05.678Z", GENESIS_HASH, KNOWN_HASHES[0],
    )  # fmt: skip
    refused = Transaction(
        "tx_0000000000000002", 2, OperationType.TRANSFER, "aaron", "bryan", 250, Status.FAILED,
        "insufficient_funds", "2024-01-02T03:04:06.000Z", KNOWN_HASHES[0], KNOWN_HASHES[1],
    )  # fmt: skip
    assert (canonical_encoding(opening), canonical_encoding(refused)) == KNOWN_ENCODINGS
    assert chain_hash(GENESIS_HASH, opening) == KNOWN_HASHES[0]
    assert chain_hash(KNOWN_HASHES[0], refused) == KNOWN_HASHES[1]
    assert not check_chain([opening, refused], GENESIS_HASH, 1)


def test_record_timestamps_read_as_datetime_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timestamps are formatted once a second: the text must still be datetime's, to the
    microsecond, across a change of second (and back, should the clock step back)."""
    instants_ns = [1_764_720_000_999_999_000, 1_764_720_001_000_000_000, 1_764_720_000_000_001_000]
    for instant_ns in instants_ns:
        monkeypatch.setattr(model.time, "time_ns", lambda instant_ns=instant_ns: instant_ns)
        expected = datetime.fromtimestamp(instant_ns // 1000 / 1_000_000, UTC).isoformat(
            timespec="microseconds"
        )
        assert model.utc_now_iso() == expected[:-6] + "Z"


def test_record_ids_random_parts_are_fresh_hex_of_their_length() -> None:
    source = model.RandomHex(digits=20, batch=8)
    taken = [source.take() for _ in range(100)]  # several refills of the buffer
    assert len(set(taken)) == len(taken)
    assert all(len(part) == 20 and int(part, 16) >= 0 for part in taken)
