"""Reading a data directory back into a ledger's state (``MockDB.open``).

``load`` builds a fresh ``LedgerState`` from the newest snapshot and the journal
segments after it, before any store shares it, so nothing here takes a lock. The
format is ``app.ledger.persistence``'s; the files are ``app.ledger.journal``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.ledger import persistence
from app.ledger.accounts import AccountState
from app.ledger.audit import GENESIS_HASH
from app.ledger.holds import HoldBook, HoldState
from app.ledger.idempotency import IdempotencyTable
from app.ledger.journal import FileScan, Frame, JournalCorrupt, JournalError, Recovered
from app.ledger.model import HoldStatus, Transaction


@dataclass
class LedgerState:
    """Everything ``MockDB`` keeps, as read back from disk."""

    accounts: dict[str, AccountState] = field(default_factory=dict)
    credentials: dict[str, bytes] = field(default_factory=dict)
    holds: HoldBook = field(default_factory=HoldBook)
    audit: list[Transaction] = field(default_factory=list)
    records_by_account: dict[str, list[int]] = field(default_factory=dict)
    last_hash: str = GENESIS_HASH
    #: The first record found not to match its hash (the trail was edited).
    chain_problem: str | None = None


def load(recovered: Recovered, idempotency: IdempotencyTable) -> LedgerState:
    """The state a data directory holds; kept idempotency keys go back into ``idempotency``."""
    loader = _Loader(idempotency)
    if recovered.snapshot is not None:
        loader.load_snapshot(recovered.snapshot)
    for segment in recovered.segments:
        for found in segment.frames:
            loader.replay(found, segment)
    return loader.state


def snapshot_lsn(header: Frame) -> int:
    """The journal frame a snapshot covers up to, from its header frame."""
    try:
        lsn = persistence.decode(header.payload)["lsn"]
    except (ValueError, KeyError, TypeError):
        lsn = None
    if not isinstance(lsn, int) or lsn < 0:
        raise JournalError(f"snapshot header at offset {header.offset} has no valid lsn")
    return lsn


def hold_row(state: HoldState) -> persistence.Row:
    return [
        state.id,
        state.source,
        state.target,
        state.amount,
        state.captured,
        state.status.value,
        state.expires_at_s,
        state.created_at,
    ]


def hold_state(row: persistence.Row) -> HoldState:
    hold_id, source, target, amount, captured, status, expires_at_s, created_at = row
    state = HoldState(hold_id, source, target, amount, expires_at_s, created_at)
    state.captured = captured
    state.status = HoldStatus(status)
    return state


class _Loader:
    def __init__(self, idempotency: IdempotencyTable) -> None:
        self.state = LedgerState()
        self._idempotency = idempotency

    def replay(self, found: Frame, segment: FileScan) -> None:
        """Apply one journal entry: the states it left behind, never its business rules."""
        state = self.state
        try:
            entry: dict[str, Any] = persistence.decode(found.payload)
            for row in entry.get("r", ()):
                self._record(row)
            for name, (balance, held, version) in entry.get("a", {}).items():
                account = state.accounts.get(name)
                if account is None:
                    state.accounts[name] = AccountState(balance, held, version)
                else:
                    account.balance, account.held, account.version = balance, held, version
            for name, digest in entry.get("c", {}).items():
                state.credentials[name] = bytes.fromhex(digest)
            for row in entry.get("h", ()):
                state.holds.put(hold_state(row))
            if "i" in entry:
                self._key(entry["i"])
        except (KeyError, TypeError, ValueError) as error:
            raise JournalCorrupt(
                segment.path, found.offset, f"entry {found.lsn} cannot be replayed: {error!r}"
            ) from None

    def load_snapshot(self, scan: FileScan) -> None:
        header = persistence.decode(scan.frames[0].payload)
        counts: dict[str, int] = {}
        trailer: dict[str, Any] | None = None
        for found in scan.frames[1:]:
            if trailer is not None:
                raise JournalCorrupt(scan.path, found.offset, "data after the snapshot's trailer")
            chunk = persistence.decode(found.payload)
            if isinstance(chunk, dict):
                trailer = chunk
                continue
            name, rows = chunk
            counts[name] = counts.get(name, 0) + len(rows)
            try:
                for row in rows:
                    self._section_row(name, row)
            except (KeyError, TypeError, ValueError) as error:
                raise JournalCorrupt(
                    scan.path, found.offset, f"snapshot chunk cannot be loaded: {error!r}"
                ) from None
        if trailer is None or trailer.get("counts") != counts:
            raise JournalCorrupt(scan.path, scan.size, "the snapshot is incomplete (no matching trailer)")
        if (
            header.get("format") != persistence.SNAPSHOT_FORMAT
            or header.get("last_hash") != self.state.last_hash
        ):
            raise JournalCorrupt(scan.path, 0, "the snapshot's header does not match its records")

    def _section_row(self, name: str, row: persistence.Row) -> None:
        state = self.state
        if name == "accounts":
            username, balance, held, version, digest = row
            state.accounts[username] = AccountState(balance, held, version)
            state.credentials[username] = bytes.fromhex(digest)
        elif name == "holds":
            state.holds.put(hold_state(row))
        elif name == "records":
            self._record(row, ())
        elif name == "index":
            username, sequences = row
            state.records_by_account[username] = sequences
        elif name == "keys":
            self._key(row)
        else:
            raise ValueError(f"unknown snapshot section {name!r}")

    def _record(self, row: persistence.Row, parties: tuple[str, ...] | None = None) -> None:
        """Append a record read from disk, checking its place in the chain and its hash.

        A record out of sequence, or not linked to the one before, is structural
        damage (``ValueError``: the start stops). A record whose content does not
        match its hash was edited: the trail is marked broken (health unhealthy,
        ``verify`` lists it) but the ledger starts, so that it can be examined.
        """
        state = self.state
        record, row_parties = persistence.record_from_row(row)
        if record.sequence != len(state.audit) + 1 or record.previous_hash != state.last_hash:
            raise ValueError(f"audit record {record.sequence} does not follow record {len(state.audit)}")
        if state.chain_problem is None and not persistence.row_hash_matches(row):
            state.chain_problem = f"record {record.sequence} ({record.id}) does not match its hash"
        state.audit.append(record)
        state.last_hash = record.hash
        for name in row_parties if parties is None else parties:
            state.records_by_account.setdefault(name, []).append(record.sequence)

    def _key(self, row: persistence.Row) -> None:
        username, key, fingerprint, created_at, outcome = row
        audit = self.state.audit
        result = persistence.outcome_from_row(outcome, lambda sequence: audit[sequence - 1])
        self._idempotency.restore(username, key, fingerprint, created_at, result)
