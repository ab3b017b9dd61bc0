"""How ``MockDB``'s state is written into journal entries and snapshots, and read back.

A journal entry is one JSON object per state change, written under the store's
audit lock in audit order (keys are short: there is one entry per operation):

``r``
    the audit records it appends: ``[sequence, id, type, from, to, amount, status,
    reason, created_at, previous_hash, hash, [parties whose history shows it], [for
    each party, the sequence of its record before this one, or 0]]``, then the record's
    extension, if it has one (``app.ledger.records.extension``: its reference and metadata
    object, and for records since balances, both balances and the id it reverses)
``a``
    each touched account's state afterwards: ``{name: [balance, held, version]}``
``c``
    the token digest of an account it opened: ``{name: hex}``
``h``
    each touched hold's state afterwards (``HOLD_FIELDS``)
``i``
    the idempotency key it ran under and its outcome:
    ``[username, key, fingerprint, created_at_s, outcome]``
``s``
    where each row of ``r`` and then of ``h`` sits in the entry's bytes: offset,
    length, offset, length...

Entries hold states, not commands: replay sets what the operation left behind and
never re-runs business rules, so a later change of those rules cannot change
history. Outcomes refer to their audit records by sequence number.

An entry is laid out as ``{"r":[row,row,...],"h":[row,...],...}`` with each row
encoded on its own (``entry_payload``), so that the index files
(``app.ledger.memory.archive``) can point at one record's or one hold's bytes inside
the journal; the segments are the ledger's permanent record.

A snapshot holds the state, never the history: a header object (the journal frame
and audit record it covers, the chain's head, its checkpoint), then chunks
``["accounts"|"latest"|"holds"|"reversed"|"keys", [...]]`` (``accounts``: name, balance,
held, version, token digest, latest record; ``latest``: the latest record of names that
have no account; pending holds only; ``reversed``: ``[id, amount reversed]`` of each
transaction reversed at all, written only when there is one), then a trailer object
with the counts, so that a snapshot cut short is noticed. Its size follows the
accounts, the pending holds and the live idempotency keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from app.ledger.model import OperationType, Status, Transaction
from app.ledger.outcomes import Row as Row
from app.ledger.records import metadata_text, record_extension

SNAPSHOT_FORMAT = 3
#: Rows per snapshot chunk: big enough to amortise framing, small enough to stream.
CHUNK_ROWS = 20_000

#: The fields of a hold row: id, from, to, amount, captured, status, expires_at_s, created_at.
HOLD_FIELDS = 8


def _content(record: Transaction) -> Row:
    """The fields the chain hashes, in its order (``app.ledger.audit.canonical_encoding``)."""
    return [
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


def record_row(record: Transaction, parties: Sequence[str], links: Sequence[int]) -> Row:
    return [
        *_content(record), record.previous_hash, record.hash, list(parties), list(links),
        *record_extension(record),
    ]  # fmt: skip


def encoded_record_row(
    encoding: bytes, record: Transaction, parties: Sequence[str], links: Sequence[int]
) -> bytes:
    """``orjson.dumps(record_row(...))`` from the record's canonical encoding: the row is that
    encoding with the hashes, parties and links after its first nine fields (and its
    extension after them), so the bytes hashed are written once and never re-encoded."""
    # The ninth field, the creation time, is the first place its text appears: the fields
    # before it (numbers, ids, type and status names, usernames, reason codes) cannot hold it.
    created_at = b'"%s"' % record.created_at.encode("ascii")
    head_end = encoding.find(created_at) + len(created_at)
    return b'%s,"%s","%s",%s%s' % (
        encoding[:head_end],
        record.previous_hash.encode("ascii"),
        record.hash.encode("ascii"),
        orjson.dumps((parties, links))[1:-1],
        encoding[head_end:],
    )


#: A record's type and status as stored, checked and shared: every record read back holds
#: the same string objects, not a copy each (a replay reads millions).
_TYPES = {kind.value: kind.value for kind in OperationType}
_STATUSES = {status.value: status.value for status in Status}


def record_from_row(row: Row) -> tuple[Transaction, list[str]]:
    """The record a journal row holds, and the accounts whose history shows it."""
    return _record(row, row[9], row[10]), row[11]


def _record(row: Row, previous_hash: str, record_hash: str) -> Transaction:
    # ``_make`` takes the fields in order, without the keyword-accepting ``__new__``:
    # a replay builds millions of records.
    more = row[EXTENDED_ROW:]
    if len(more) == _FULL_EXTENSION:
        reference, metadata, from_balance, to_balance, reverses = more
        metadata = metadata_text(metadata)
    elif more:  # a tag alone: written before records carried balances
        (reference, metadata), from_balance, to_balance, reverses = more, None, None, None
        metadata = metadata_text(metadata)
    else:
        reference = metadata = from_balance = to_balance = reverses = None
    return Transaction._make(
        (row[1], row[0], _TYPES[row[2]], row[3], row[4], row[5], _STATUSES[row[6]], row[7], row[8],
         previous_hash, record_hash, reference, metadata, from_balance, to_balance, reverses),
    )  # fmt: skip


#: Where a journal row's extension (``app.ledger.records.extension``) starts, if it has one.
EXTENDED_ROW = 13
_FULL_EXTENSION = 5


def entry_payload(
    records: Sequence[bytes], holds: Sequence[bytes], rest: dict[str, Any]
) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]]]:
    """A journal entry from its encoded record and hold rows and its other keys; and where
    (offset, length) each record row and each hold row sits in it.

    The entry ends with those places too (``"s"``: offset, length, offset, length... of
    the records, then of the holds), so that a start re-indexes it without re-encoding
    a row.
    """
    parts = [b'{"r":[']
    record_spans: list[tuple[int, int]] = []
    hold_spans: list[tuple[int, int]] = []
    position = _place(parts, records, 6, record_spans)
    if holds:
        parts.append(b'],"h":[')
        _place(parts, holds, position + 7, hold_spans)
    parts.append(b"]")
    places = [number for span in (*record_spans, *hold_spans) for number in span]
    tail = encode({**rest, "s": places})
    parts.append(b"," + tail[1:])
    return b"".join(parts), record_spans, hold_spans


def _place(parts: list[bytes], rows: Sequence[bytes], position: int, spans: list[tuple[int, int]]) -> int:
    for index, row in enumerate(rows):
        if index:
            parts.append(b",")
            position += 1
        spans.append((position, len(row)))
        parts.append(row)
        position += len(row)
    return position


def entry_spans(payload: bytes, entry: dict[str, Any]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where ``entry_payload`` put the rows of ``entry`` (read back from ``payload``).

    Each place is checked to hold a JSON array of the right length; one that does not
    means the entry was not written by ``entry_payload``: ``ValueError``.
    """
    records, holds = len(entry.get("r", ())), len(entry.get("h", ()))
    places = entry["s"]
    if len(places) != 2 * (records + holds):
        raise ValueError("the entry's row places do not match its rows")
    spans = list(zip(places[0::2], places[1::2], strict=True))
    for offset, length in spans:
        if payload[offset : offset + 1] != b"[" or payload[offset + length - 1 : offset + length] != b"]":
            raise ValueError(f"no row at offset {offset} of the entry")
    return spans[:records], spans[records:]


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
