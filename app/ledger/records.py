"""The record draft: an audit record before it is numbered and chained, and its encoding.

Both stores describe every record they append as a ``RecordDraft`` (named fields,
filled in as an operation finds its parties) and seal it with ``RecordDraft.seal``
(the embedded store, under its audit lock) or with the same bytes in the database
(the PostgreSQL store sends ``RecordDraft.tail`` to ``goledger_append``). A new
record field is one field here, one in ``Transaction`` and one in ``encode``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import orjson

from app.ledger.model import OperationType, Status, Tag, Transaction


def encode(
    sequence: int,
    record_id: str,
    kind: str,
    source: str | None,
    target: str | None,
    amount: int,
    status: str,
    reason: str | None,
    created_at: str,
    tag: Tag | None = None,
) -> bytes:
    """The bytes a record's hash covers: every field but the hashes, in a fixed order.

    orjson writes exactly what ``json.dumps(separators=(",", ":"))`` would for these
    ASCII strings, integers and nulls, in a tenth of the time; it writes the two enums
    as their values. A record with a tag has two more fields, its reference and its
    metadata (the object itself, in its canonical text); one without has the nine
    fields alone, so every record written before tags existed keeps its hash.
    """
    if tag is None:
        return orjson.dumps([sequence, record_id, kind, source, target, amount, status, reason, created_at])
    reference, metadata = tag
    return orjson.dumps(
        [sequence, record_id, kind, source, target, amount, status, reason, created_at, reference,
         None if metadata is None else orjson.Fragment(metadata)]
    )  # fmt: skip


def metadata_text(metadata: Mapping[str, object]) -> str | None:
    """The canonical text of a metadata object (keys sorted, no spaces; ``None`` when empty)."""
    if not metadata:
        return None
    return orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()


def make_tag(reference: str | None, metadata: str | None) -> Tag | None:
    """The tag of an operation given ``reference`` and canonical ``metadata`` (``None``: neither)."""
    if reference is None and metadata is None:
        return None
    return Tag(reference, metadata)


def record_tag(record: Transaction) -> Tag | None:
    """The tag a record was sealed with."""
    return make_tag(record.reference, record.metadata)


def digest(previous_hash: str, encoding: bytes) -> str:
    """The chain hash of a record whose canonical encoding is ``encoding``."""
    return hashlib.sha256(previous_hash.encode("ascii") + encoding).hexdigest()


#: A record's ``type`` and ``status`` as plain strings (``Transaction``'s docstring says why).
_KIND_VALUES = {kind: kind.value for kind in OperationType}
_SUCCESS, _FAILED = Status.SUCCESS.value, Status.FAILED.value


class RecordDraft:
    """An audit record still to be sealed.

    ``reason`` is the failure code of a FAILED record (``None``: SUCCESS);
    ``parties`` are the accounts whose history shows it.
    """

    __slots__ = ("amount", "kind", "parties", "reason", "source", "tag", "target")

    def __init__(
        self,
        kind: OperationType,
        source: str | None,
        target: str | None,
        amount: int,
        reason: str | None = None,
        parties: tuple[str, ...] | None = None,
        tag: Tag | None = None,
    ) -> None:
        self.kind = kind
        self.source = source
        self.target = target
        self.amount = amount
        self.reason = reason
        #: ``None`` until decided: a success shows in both parties' histories.
        self.parties = parties
        #: The caller's reference and metadata (``None``: neither).
        self.tag = tag

    def __repr__(self) -> str:
        return (
            f"RecordDraft({self.kind.value}, {self.source!r} -> {self.target!r}, {self.amount}, "
            f"reason={self.reason!r}, parties={self.parties!r}, tag={self.tag!r})"
        )

    @property
    def status(self) -> Status:
        return Status.SUCCESS if self.reason is None else Status.FAILED

    def shown_to(self) -> tuple[str, ...]:
        """The accounts whose history shows the record (a success: both of its parties)."""
        if self.parties is not None:
            return self.parties
        source, target = self.source, self.target
        if source is None:
            return () if target is None else (target,)
        return (source,) if target is None else (source, target)

    def failed(self, reason: str, parties: tuple[str, ...]) -> RecordDraft:
        """The FAILED record of the same operation, shown to ``parties`` only."""
        return RecordDraft(self.kind, self.source, self.target, self.amount, reason, parties, self.tag)

    def encoding(self, sequence: int, record_id: str, created_at: str) -> bytes:
        return encode(
            sequence, record_id, self.kind, self.source, self.target, self.amount, self.status,
            self.reason, created_at, self.tag,
        )  # fmt: skip

    def tail(self, record_id: str, created_at: str) -> bytes:
        """The canonical encoding after the sequence number.

        ``encoding(sequence, ...) == b"[" + str(sequence).encode() + tail(...)``: what a
        store that numbers records elsewhere (PostgreSQL, under its chain lock) needs
        to seal them with exactly the bytes ``seal`` hashes.
        """
        return self.encoding(0, record_id, created_at)[2:]

    def seal(self, previous_hash: str, sequence: int, record_id: str, created_at: str) -> Transaction:
        """The record, numbered ``sequence`` and chained to ``previous_hash``."""
        return self.seal_encoded(previous_hash, sequence, record_id, created_at)[0]

    def seal_encoded(
        self, previous_hash: str, sequence: int, record_id: str, created_at: str
    ) -> tuple[Transaction, bytes]:
        """``seal``, with the canonical encoding the hash covers (which a journal row begins
        with: ``app.ledger.memory.persistence.encoded_record_row``).
        """
        source, target, amount, reason, tag = self.source, self.target, self.amount, self.reason, self.tag
        kind = _KIND_VALUES[self.kind]
        status = _SUCCESS if reason is None else _FAILED
        encoding = encode(sequence, record_id, kind, source, target, amount, status, reason, created_at, tag)
        record_hash = digest(previous_hash, encoding)
        if tag is None:
            record = Transaction(
                record_id, sequence, kind, source, target, amount, status, reason, created_at,
                previous_hash, record_hash,
            )  # fmt: skip
        else:
            record = Transaction(
                record_id, sequence, kind, source, target, amount, status, reason, created_at,
                previous_hash, record_hash, *tag,
            )  # fmt: skip
        return record, encoding

    def sealed(
        self, record_id: str, sequence: int, created_at: str, previous_hash: str, record_hash: str
    ) -> Transaction:
        """The record as sealed elsewhere (the database computed its number and hash)."""
        reference, metadata = self.tag or (None, None)
        return Transaction(
            record_id, sequence, _KIND_VALUES[self.kind], self.source, self.target, self.amount,
            self.status.value, self.reason, created_at, previous_hash, record_hash, reference, metadata,
        )  # fmt: skip


def success(
    kind: OperationType, source: str | None, target: str | None, amount: int, tag: Tag | None = None
) -> RecordDraft:
    """The SUCCESS record of an operation, shown to both of its parties."""
    return RecordDraft(kind, source, target, amount, tag=tag)
