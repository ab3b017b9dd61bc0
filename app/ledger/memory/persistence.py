"""How ``MockDB``'s state is written into journal entries and snapshots, and read back.

A journal entry is one JSON object per state change, written under the store's
audit lock in audit order (keys are short: there is one entry per operation):

``r``
    the audit records it appends: ``[sequence, id, type, from, to, amount, status,
    reason, created_at, previous_hash, hash, [parties whose history shows it]]``
``a``
    each touched account's state afterwards: ``{name: [balance, held, version]}``
``c``
    the token digest of an account it opened: ``{name: hex}``
``h``
    each touched hold's state afterwards (``HOLD_FIELDS``)
``i``
    the idempotency key it ran under and its outcome:
    ``[username, key, fingerprint, created_at_s, outcome]``

Entries hold states, not commands: replay sets what the operation left behind and
never re-runs business rules, so a later change of those rules cannot change
history. Outcomes refer to their audit records by sequence number.

A snapshot is a sequence of payloads: a header object, then chunks
``["accounts"|"holds"|"records"|"index"|"keys", [...]]`` (``index``: each account's
history, as sequence numbers), then a trailer object with the counts, so that a
snapshot cut short is noticed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from app.ledger.model import OperationType, Status, Transaction
from app.ledger.outcomes import Row as Row

SNAPSHOT_FORMAT = 2
#: Rows per snapshot chunk: big enough to amortise framing, small enough to stream.
CHUNK_ROWS = 20_000

#: The fields of a hold row: id, from, to, amount, captured, status, expires_at_s, created_at.
HOLD_FIELDS = 8


def _content(record: Transaction) -> Row:
    """The fields the chain hashes, in its order (``app.ledger.audit.canonical_encoding``)."""
    return [
        record.sequence,
        record.id,
        record.type.value,
        record.source,
        record.target,
        record.amount,
        record.status.value,
        record.reason,
        record.created_at,
    ]


def snapshot_record_row(record: Transaction) -> Row:
    """A record as a snapshot keeps it: no ``previous_hash`` (the record before has
    it) and no parties (the snapshot's ``index`` has them)."""
    return [*_content(record), record.hash]


def record_row(record: Transaction, parties: Sequence[str]) -> Row:
    return [*_content(record), record.previous_hash, record.hash, list(parties)]


#: Enum lookups by value (``OperationType(value)`` costs a microsecond; a replay does millions).
_TYPES = {kind.value: kind for kind in OperationType}
_STATUSES = {status.value: status for status in Status}


_TRANSACTION_SLOTS = tuple(
    getattr(Transaction, name).__set__
    for name in (
        "id",
        "sequence",
        "type",
        "source",
        "target",
        "amount",
        "status",
        "reason",
        "created_at",
        "previous_hash",
        "hash",
    )
)
_new_object = object.__new__


def record_from_row(row: Row) -> tuple[Transaction, list[str]]:
    """The record a journal row holds, and the accounts whose history shows it."""
    return _record(row, row[9], row[10]), row[11]


def record_from_snapshot_row(row: Row, previous_hash: str) -> Transaction:
    """The record a snapshot row holds; ``previous_hash`` is the hash of the record before."""
    return _record(row, previous_hash, row[9])


def _record(row: Row, previous_hash: str, record_hash: str) -> Transaction:
    """Replay builds millions of records: the slots are filled through their descriptors
    (what the frozen dataclass's ``__init__`` does through ``object.__setattr__``, at
    1.1 µs instead of 2.7 µs a record)."""
    record = _new_object(Transaction)
    (set_id, set_sequence, set_type, set_source, set_target, set_amount, set_status, set_reason,
     set_created_at, set_previous, set_hash) = _TRANSACTION_SLOTS  # fmt: skip
    set_id(record, row[1])
    set_sequence(record, row[0])
    set_type(record, _TYPES[row[2]])
    set_source(record, row[3])
    set_target(record, row[4])
    set_amount(record, row[5])
    set_status(record, _STATUSES[row[6]])
    set_reason(record, row[7])
    set_created_at(record, row[8])
    set_previous(record, previous_hash)
    set_hash(record, record_hash)
    return record


def encode(value: object) -> bytes:
    return orjson.dumps(value)


def decode(payload: bytes) -> Any:
    return orjson.loads(payload)


def snapshot_payloads(
    header: dict[str, Any], sections: Iterable[tuple[str, Sequence[Row]]]
) -> Iterator[bytes]:
    """A snapshot's payloads: the header, each section in chunks, and the trailer."""
    yield encode({**header, "format": SNAPSHOT_FORMAT})
    counts: dict[str, int] = {}
    for name, rows in sections:
        if rows:
            counts[name] = counts.get(name, 0) + len(rows)
        for start in range(0, len(rows), CHUNK_ROWS):
            yield encode([name, rows[start : start + CHUNK_ROWS]])
    yield encode({"end": True, "counts": counts})
