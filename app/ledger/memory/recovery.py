"""Reading a data directory back into a ledger's state (``MockDB.open``).

``load`` builds a fresh ``LedgerState`` from the newest snapshot and the journal
segments after it, before any store shares it, so nothing here takes a lock. The
format is ``app.ledger.persistence``'s; the files are ``app.ledger.journal``'s.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.ledger.accounts import AccountState, HoldState
from app.ledger.audit import GENESIS_HASH
from app.ledger.memory import persistence
from app.ledger.memory.files import FileScan, Frame, JournalCorrupt, JournalError, Recovered
from app.ledger.memory.holds import HoldBook
from app.ledger.memory.keys import IdempotencyTable
from app.ledger.model import Transaction
from app.ledger.outcomes import outcome_from_row


@dataclass
class LedgerState:
    """Everything ``MockDB`` keeps, as read back from disk."""

    accounts: dict[str, AccountState] = field(default_factory=dict)
    credentials: dict[str, bytes] = field(default_factory=dict)
    holds: HoldBook = field(default_factory=HoldBook)
    audit: list[Transaction] = field(default_factory=list)
    records_by_account: dict[str, list[int]] = field(default_factory=dict)
    last_hash: str = GENESIS_HASH


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a data directory is read and loaded.

    A load allocates millions of frames, lists and records, none of them garbage,
    and would otherwise trigger ever longer full collections (a million records
    took 10 s instead of 4). What was loaded is then frozen out of later
    collections: the ledger keeps it for good.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
    gc.freeze()


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
                    state.accounts[name] = AccountState(name, balance, held, version)
                else:
                    account.balance, account.held, account.version = balance, held, version
            for name, digest in entry.get("c", {}).items():
                state.credentials[name] = bytes.fromhex(digest)
            for row in entry.get("h", ()):
                state.holds.put(HoldState.from_row(row))
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
                self._section(name, rows)
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

    def _section(self, name: str, rows: list[persistence.Row]) -> None:
        state = self.state
        if name == "records":
            self._records(rows)
        elif name == "accounts":
            for username, balance, held, version, digest in rows:
                state.accounts[username] = AccountState(username, balance, held, version)
                state.credentials[username] = bytes.fromhex(digest)
        elif name == "holds":
            for row in rows:
                state.holds.put(HoldState.from_row(row))
        elif name == "index":
            for username, sequences in rows:
                state.records_by_account[username] = sequences
        elif name == "keys":
            for row in rows:
                self._key(row)
        else:
            raise ValueError(f"unknown snapshot section {name!r}")

    def _records(self, rows: list[persistence.Row]) -> None:
        """A snapshot's records (its ``index`` section says whose history shows them).

        Each links to the one before by construction (its ``previous_hash`` is not
        stored); the numbering is checked here, every hash by the chain check.
        """
        state = self.state
        audit = state.audit
        expected, last_hash = len(audit) + 1, state.last_hash
        from_row = persistence.record_from_snapshot_row
        for row in rows:
            if row[0] != expected:
                raise ValueError(f"audit record {row[0]} does not follow record {expected - 1}")
            audit.append(from_row(row, last_hash))
            expected, last_hash = expected + 1, row[9]
        state.last_hash = last_hash

    def _record(self, row: persistence.Row) -> None:
        """Append a record read from disk, checking its place in the chain.

        A record out of sequence, or not linked to the one before, is structural
        damage (``ValueError``: the start stops). Whether each record matches its
        hash is checked once the store runs (``MockDB._check_chain_in_background``):
        a trail that was edited still starts, so that it can be examined.
        """
        state = self.state
        record, row_parties = persistence.record_from_row(row)
        if record.sequence != len(state.audit) + 1 or record.previous_hash != state.last_hash:
            raise ValueError(f"audit record {record.sequence} does not follow record {len(state.audit)}")
        state.audit.append(record)
        state.last_hash = record.hash
        for name in row_parties:
            state.records_by_account.setdefault(name, []).append(record.sequence)

    def _key(self, row: persistence.Row) -> None:
        username, key, fingerprint, created_at, outcome = row
        audit = self.state.audit
        result = outcome_from_row(outcome, lambda sequence: audit[sequence - 1])
        self._idempotency.restore(username, key, fingerprint, created_at, result)
