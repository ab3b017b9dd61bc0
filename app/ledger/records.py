"""The record draft: an audit record before it is numbered and chained, and its encoding.

Both stores describe every record they append as a ``RecordDraft`` (named fields,
filled in as an operation finds its parties) and seal it with ``RecordDraft.seal``
(the embedded store, under its audit lock) or with the same bytes in the database
(the PostgreSQL store sends ``RecordDraft.tail`` to ``goledger_append``). A new
record field is one field here, one in ``Transaction`` and one in ``encode``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

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
    balances: tuple[int | None, int | None] | None = None,
    reverses: str | None = None,
) -> bytes:
    """The bytes a record's hash covers: every field but the hashes, in a fixed order.

    orjson writes exactly what ``json.dumps(separators=(",", ":"))`` would for these
    ASCII strings, integers and nulls, in a tenth of the time; it writes the two enums
    as their values. After the nine fields every record has come with, the record's
    ``extension`` (which see): nothing for a record without a tag, balances or reversal,
    so that every record written before those existed keeps its hash.
    """
    fields = [sequence, record_id, kind, source, target, amount, status, reason, created_at]
    if tag is None and balances is None and reverses is None:
        return orjson.dumps(fields)
    return orjson.dumps(fields + extension(tag, balances, reverses))


def extension(
    tag: Tag | None, balances: tuple[int | None, int | None] | None, reverses: str | None
) -> list[object]:
    """A record's fields after the nine first ones, as its encoding and its journal row end:
    ``[]``; or ``[reference, metadata]`` (records with a tag written before records carried
    balances); or ``[reference, metadata, from_balance_after, to_balance_after, reverses]``.
    The metadata is the object itself, in its canonical text."""
    reference, metadata = tag or (None, None)
    tagged: list[object] = [reference, None if metadata is None else orjson.Fragment(metadata)]
    if balances is None and reverses is None:
        return [] if tag is None else tagged
    from_balance, to_balance = balances or (None, None)
    return [*tagged, from_balance, to_balance, reverses]


def record_extension(record: Transaction) -> list[object]:
    """``extension`` of a sealed record."""
    return extension(record_tag(record), record_balances(record), record.reverses)


def record_balances(record: Transaction) -> tuple[int | None, int | None] | None:
    """The balances a record was sealed with (``None``: none, as before records carried them)."""
    from_balance, to_balance = record.from_balance_after, record.to_balance_after
    return None if from_balance is None and to_balance is None else (from_balance, to_balance)


def metadata_text(metadata: Mapping[str, object] | None) -> str | None:
    """The canonical text of a metadata object (keys sorted, no spaces; ``None`` when empty or
    absent): what a record's hash covers, however the object was read back (a journal row,
    a jsonb column, which keeps keys in an order of its own)."""
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

    __slots__ = ("amount", "balances", "kind", "parties", "reason", "reverses", "source", "tag", "target")

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
        #: The balances of ``source`` and ``target`` right after the record, set by
        #: ``settle_balances`` when it is sealed (``None``: not known).
        self.balances: tuple[int | None, int | None] | None = None
        #: The id of the transaction a reversal reverses.
        self.reverses: str | None = None

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
        failed = RecordDraft(self.kind, self.source, self.target, self.amount, reason, parties, self.tag)
        failed.reverses = self.reverses
        return failed

    def encoding(self, sequence: int, record_id: str, created_at: str) -> bytes:
        return encode(
            sequence, record_id, self.kind, self.source, self.target, self.amount, self.status,
            self.reason, created_at, self.tag, self.balances, self.reverses,
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
        balances, reverses = self.balances, self.reverses
        kind = _KIND_VALUES[self.kind]
        status = _SUCCESS if reason is None else _FAILED
        encoding = encode(
            sequence, record_id, kind, source, target, amount, status, reason, created_at, tag, balances,
            reverses,
        )  # fmt: skip
        record_hash = digest(previous_hash, encoding)
        reference, metadata = tag or (None, None)
        from_balance, to_balance = balances or (None, None)
        record = Transaction(
            record_id, sequence, kind, source, target, amount, status, reason, created_at,
            previous_hash, record_hash, reference, metadata, from_balance, to_balance, reverses,
        )  # fmt: skip
        return record, encoding

    def sealed(
        self, record_id: str, sequence: int, created_at: str, previous_hash: str, record_hash: str
    ) -> Transaction:
        """The record as sealed elsewhere (the database computed its number and hash)."""
        reference, metadata = self.tag or (None, None)
        from_balance, to_balance = self.balances or (None, None)
        return Transaction(
            record_id, sequence, _KIND_VALUES[self.kind], self.source, self.target, self.amount,
            self.status.value, self.reason, created_at, previous_hash, record_hash, reference, metadata,
            from_balance, to_balance, self.reverses,
        )  # fmt: skip


#: Record types that take ``amount`` from their source, and that give it to their target
#: (hold, void and expire only reserve or release money: no balance changes). A reversal
#: runs its original backwards: from the original's ``to`` (when there is one) to its
#: ``from`` (when there is one), so a deposit's reversal takes coins out of the ledger
#: and a withdrawal's puts them back.
_DEBITS = frozenset(
    {OperationType.WITHDRAWAL, OperationType.TRANSFER, OperationType.CAPTURE, OperationType.REVERSAL}
)
_CREDITS = frozenset(
    {
        OperationType.OPEN,
        OperationType.DEPOSIT,
        OperationType.TRANSFER,
        OperationType.CAPTURE,
        OperationType.REVERSAL,
    }
)


def balance_moves(kind: str) -> tuple[bool, bool]:
    """Whether a SUCCESS record of type ``kind`` takes its amount from its source, and whether
    it gives it to its target (the rule ``settle_balances`` applies, for a replay of records)."""
    return kind in _DEBITS, kind in _CREDITS


def settle_balances(drafts: Sequence[RecordDraft], balances: dict[str, int]) -> None:
    """Set each draft's ``balances`` to its parties' balances right after it, in order, from
    ``balances`` (every account's balance before the first draft, brought up to date in
    place): the change a record makes is its own, so the balances after it follow from it.

    A name without a balance is no account (a refused transfer's unknown recipient): ``None``.
    """
    for draft in drafts:
        source, target = draft.source, draft.target
        if draft.reason is None:
            kind = draft.kind
            if source is not None and kind in _DEBITS:
                balances[source] -= draft.amount
            if target is not None and kind in _CREDITS:
                balances[target] = balances.get(target, 0) + draft.amount
        from_balance = None if source is None else balances.get(source)
        to_balance = None if target is None else balances.get(target)
        # Neither party an account: no balances, as ``record_balances`` reads them back.
        draft.balances = None if from_balance is None and to_balance is None else (from_balance, to_balance)


def success(
    kind: OperationType, source: str | None, target: str | None, amount: int, tag: Tag | None = None
) -> RecordDraft:
    """The SUCCESS record of an operation, shown to both of its parties."""
    return RecordDraft(kind, source, target, amount, tag=tag)
