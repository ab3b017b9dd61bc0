"""The SQL text the PostgreSQL store's reads share, and the decoding of its rows.

Queries are built from these constants only (never from input), hence the S608
waivers. The statements of one writing transaction (locking, writes, the append)
live beside the code that builds their parameters, in ``unit.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from psycopg.rows import TupleRow

from app.ledger.accounts import HoldState
from app.ledger.errors import InvalidInput
from app.ledger.model import Checkpoint, OperationType, Status, Tag, Transaction
from app.ledger.records import make_tag, metadata_text

#: The columns of an audit record (table ``audit``, aliased ``a``), in ``record``'s order.
RECORD = (
    "a.id, a.sequence, a.type, a.source, a.target, a.amount, a.status, a.reason, a.created_at, "
    "a.previous_hash, a.hash, a.reference, a.metadata, a.from_balance_after, a.to_balance_after, a.reverses"
)
#: The columns of a hold, in ``hold``'s order.
HOLD = "id, source, target, amount, captured, status, expires_at_s, created_at, reference, metadata"
#: Whether a pending hold of either party is due (parameters: now, username, username).
DUE_ANY = (
    "EXISTS (SELECT 1 FROM holds h WHERE h.status = 'PENDING' AND h.expires_at_s <= %s "
    "AND (h.source = %s OR h.target = %s))"
)
READ_ACCOUNT = f"SELECT a.balance, a.held, a.version, {DUE_ANY} FROM accounts a WHERE a.username = %s"  # noqa: S608
READ_HOLD = f"SELECT {HOLD}, {DUE_ANY} FROM holds WHERE id = %s"  # noqa: S608
FIND_HOLD = f"SELECT {HOLD} FROM holds WHERE id = %s"  # noqa: S608
PENDING_HOLDS = f"SELECT {HOLD} FROM holds WHERE status = 'PENDING'"  # noqa: S608
RECORDS_AFTER = f"SELECT {RECORD} FROM audit a WHERE a.sequence > %s ORDER BY a.sequence LIMIT %s"  # noqa: S608
RECORDS_BETWEEN = f"SELECT {RECORD} FROM audit a WHERE a.sequence BETWEEN %s AND %s ORDER BY a.sequence"  # noqa: S608
#: Every record after a sequence, oldest first, with no limit: for a server-side cursor only.
RECORDS_STREAM = f"SELECT {RECORD} FROM audit a WHERE a.sequence > %s ORDER BY a.sequence"  # noqa: S608
#: Every account's balance, names in byte order (``app.ledger.audit.balances_digest``'s order).
BALANCES_BY_NAME = 'SELECT username, balance FROM accounts ORDER BY username COLLATE "C"'
#: The columns of a checkpoint, in ``checkpoint``'s order.
CHECKPOINT = "sequence, chain_head, balances_digest, created_at"


def record(row: TupleRow) -> Transaction:
    """An audit record from a row of ``RECORD``'s columns."""
    (record_id, sequence, kind, source, target, amount, status, reason, created_at, previous, digest,
     reference, metadata, from_balance, to_balance, reverses) = row  # fmt: skip
    return Transaction(
        record_id, sequence, OperationType(kind).value, source, target, amount, Status(status).value, reason,
        created_at, previous, digest, reference, metadata_text(metadata), from_balance, to_balance, reverses,
    )  # fmt: skip


def hold(row: Sequence[Any]) -> HoldState:
    """A hold from a row of ``HOLD``'s columns (and anything after them)."""
    state = HoldState.from_row(row[:8])
    state.tag = tag(row[8], row[9])
    return state


def tag(reference: str | None, metadata: Mapping[str, object] | None) -> Tag | None:
    """The tag of a row's reference and metadata columns (``None``: both NULL)."""
    return make_tag(reference, metadata_text(metadata))


def tag_columns(tag: Tag | None) -> tuple[str | None, str | None]:
    """The reference and metadata columns of a tag, refused (``InvalidInput``) where the
    database would refuse them: a NUL character fits neither text nor jsonb."""
    if tag is None:
        return None, None
    reference, metadata = tag
    if reference is not None and "\x00" in reference:
        raise InvalidInput("invalid_reference", "The reference contains a NUL character.")
    if metadata is not None and "\\u0000" in metadata and _has_nul(orjson.loads(metadata)):
        raise InvalidInput("invalid_metadata", "The metadata contains a NUL character.")
    return reference, metadata


def _has_nul(metadata: Mapping[str, object]) -> bool:
    return any("\x00" in f"{key}{value}" for key, value in metadata.items())


def checkpoint(row: TupleRow) -> Checkpoint:
    """A checkpoint from a row of ``CHECKPOINT``'s columns."""
    sequence, chain_head, balances_digest, created_at = row
    return Checkpoint(int(sequence), str(chain_head), str(balances_digest), str(created_at))
