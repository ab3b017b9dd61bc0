"""The SQL text the PostgreSQL store's reads share, and the decoding of its rows.

Queries are built from these constants only (never from input), hence the S608
waivers. The statements of one writing transaction (locking, writes, the append)
live beside the code that builds their parameters, in ``unit.py``.
"""

from __future__ import annotations

from psycopg.rows import TupleRow

from app.ledger.model import Checkpoint, OperationType, Status, Transaction

#: The columns of an audit record (table ``audit``, aliased ``a``), in ``record``'s order.
RECORD = (
    "a.id, a.sequence, a.type, a.source, a.target, a.amount, a.status, a.reason, a.created_at, "
    "a.previous_hash, a.hash"
)
#: The columns of a hold, in ``HoldState.from_row``'s order.
HOLD = "id, source, target, amount, captured, status, expires_at_s, created_at"
#: Whether a pending hold of either party is due (parameters: now, username, username).
DUE_ANY = (
    "EXISTS (SELECT 1 FROM holds h WHERE h.status = 'PENDING' AND h.expires_at_s <= %s "
    "AND (h.source = %s OR h.target = %s))"
)
READ_ACCOUNT = f"SELECT a.balance, a.held, a.version, {DUE_ANY} FROM accounts a WHERE a.username = %s"  # noqa: S608
READ_HOLD = f"SELECT {HOLD}, {DUE_ANY} FROM holds WHERE id = %s"  # noqa: S608
FIND_HOLD = f"SELECT {HOLD} FROM holds WHERE id = %s"  # noqa: S608
PENDING_HOLDS = f"SELECT {HOLD} FROM holds WHERE status = 'PENDING'"  # noqa: S608
HISTORY = (
    f"SELECT {RECORD} FROM audit_parties p JOIN audit a ON a.sequence = p.sequence "  # noqa: S608
    "WHERE p.username = %s AND p.sequence < %s ORDER BY p.sequence DESC LIMIT %s"
)
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
    record_id, sequence, kind, source, target, amount, status, reason, created_at, previous, digest = row
    return Transaction(
        record_id, sequence, OperationType(kind).value, source, target, amount, Status(status).value, reason,
        created_at, previous, digest,
    )  # fmt: skip


def checkpoint(row: TupleRow) -> Checkpoint:
    """A checkpoint from a row of ``CHECKPOINT``'s columns."""
    sequence, chain_head, balances_digest, created_at = row
    return Checkpoint(int(sequence), str(chain_head), str(balances_digest), str(created_at))
