"""Which records a history or ``/admin/transactions`` page shows: the filters, as one value.

``RecordFilter.matches`` is the meaning of every filter, written once and plainly: the
stores answer with indexes (SQLite beside the embedded store's journal, PostgreSQL's
own), and the tests hold each of them to this brute-force definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from app.ledger.model import Transaction

#: The most ``metadata.<key>`` filters one request may give.
MAX_METADATA_FILTERS = 4


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Conditions on a record, all of which must hold (``None``/empty: no condition).

    ``created_after``/``created_before`` are timestamps in the records' own form
    (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, which sorts as text), both exclusive;
    ``min_amount``/``max_amount`` are inclusive. ``metadata`` pairs match a record whose
    metadata has that key with that value (an integer value matches its decimal text).
    ``counterparty``: in an account's history, the other party of the record; across
    all accounts, either party.
    """

    types: frozenset[str] | None = None
    status: str | None = None
    counterparty: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    min_amount: int | None = None
    max_amount: int | None = None
    reference: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def is_empty(self) -> bool:
        return self == NO_FILTER

    def matches(self, record: Transaction, account: str | None = None) -> bool:
        """Whether ``record`` passes, as seen in ``account``'s history (``None``: the admin's)."""
        if self.types is not None and record.type not in self.types:
            return False
        if self.status is not None and record.status != self.status:
            return False
        if self.counterparty is not None and self.counterparty not in counterparties(record, account):
            return False
        if self.created_after is not None and not record.created_at > self.created_after:
            return False
        if self.created_before is not None and not record.created_at < self.created_before:
            return False
        if self.min_amount is not None and record.amount < self.min_amount:
            return False
        if self.max_amount is not None and record.amount > self.max_amount:
            return False
        if self.reference is not None and record.reference != self.reference:
            return False
        if self.metadata:
            values = metadata_values(record.metadata)
            return all(values.get(key) == value for key, value in self.metadata)
        return True


NO_FILTER = RecordFilter()


def counterparties(record: Transaction, account: str | None) -> tuple[str, ...]:
    """The names a ``counterparty`` filter compares: the other party of ``account``'s record,
    or, for the admin (``account`` ``None``), both parties."""
    source, target = record.source, record.target
    if account is None:
        return tuple(name for name in (source, target) if name is not None)
    if source == account:
        return () if target is None else (target,)
    if target == account:
        return () if source is None else (source,)
    return tuple(name for name in (source, target) if name is not None)


def metadata_values(metadata: str | None) -> dict[str, str]:
    """A record's metadata with every value as the text a filter compares (integers in decimal)."""
    if metadata is None:
        return {}
    return {
        key: value if isinstance(value, str) else str(value) for key, value in orjson.loads(metadata).items()
    }
