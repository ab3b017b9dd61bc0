"""Filtered pages of records in SQL: an account's history and ``/admin/transactions``.

``RecordFilter.matches`` is the meaning; this module says the same in a ``WHERE``
clause made of the fixed fragments below and bound parameters (never input pasted
into the text). A history page reads an account's ``audit_parties`` rows, which
carry copies of the filtered columns as that account sees them (``counterparty``:
the other party), so that each filter has an index in sequence order within the
account; the tags (reference, metadata) are read from ``audit``'s own indexes.

Pages ask for ``limit + 1`` rows (the extra one says whether there is a next page),
and continue from the last sequence shown. A record's sequence is taken under the
chain head's lock, held until its transaction commits, so records become visible in
sequence order: a page never skips a record that commits later, nor repeats one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from app.ledger.filters import RecordFilter
from app.ledger.model import Transaction
from app.ledger.postgres import sql
from app.ledger.postgres.runner import Runner

#: A history page: one account's rows, newest first (parameters: username, before).
_HISTORY = (
    f"SELECT {sql.RECORD} FROM audit_parties p JOIN audit a ON a.sequence = p.sequence "  # noqa: S608
    "WHERE p.username = %s AND p.sequence < %s"
)
#: The same when every condition is on the account's own rows: the page's sequences are
#: found first, then only their records read. (Joined, the planner likes a merge join that
#: walks the whole trail back to the account's matching rows, however far back they are.)
_HISTORY_ROWS = (
    f"SELECT {sql.RECORD} FROM audit a WHERE a.sequence IN ("  # noqa: S608
    "SELECT p.sequence FROM audit_parties p WHERE p.username = %s AND p.sequence < %s"
)
#: Every account's records, oldest first (parameter: after).
_TRANSACTIONS = f"SELECT {sql.RECORD} FROM audit a WHERE a.sequence > %s"  # noqa: S608

#: Conditions on the columns of a record as its account's history sees them (alias ``p``)
#: and as the audit trail keeps it (alias ``a``); each takes one parameter.
_HISTORY_CONDITIONS = {
    "types": "p.type = ANY(%s)",
    "status": "p.status = %s",
    "counterparty": "p.counterparty = %s",
    "created_after": "p.created_at > %s",
    "created_before": "p.created_at < %s",
    "min_amount": "p.amount >= %s",
    "max_amount": "p.amount <= %s",
    "reference": "a.reference = %s",
}
_TRANSACTIONS_CONDITIONS = {
    field: condition.replace("p.", "a.")
    for field, condition in _HISTORY_CONDITIONS.items()
    if field != "counterparty"
}
#: The admin's counterparty: either party (the second branch leaves out what the first shows).
_EITHER_PARTY = ("a.source = %s", "a.target = %s AND a.source IS DISTINCT FROM %s")
#: A metadata pair: a containment the GIN index answers, twice when the value's text is
#: also an integer's (an integer value matches its decimal text).
_METADATA = "a.metadata @> %s"
_METADATA_OR_INTEGER = "(a.metadata @> %s OR a.metadata @> %s)"
#: What an integer's decimal text may look like (64 bits at most: metadata's integers).
_INTEGER = re.compile(r"-?[0-9]{1,20}")


def history(runner: Runner, username: str, before: int, limit: int, where: RecordFilter) -> list[Transaction]:
    """Up to ``limit`` of ``username``'s records older than sequence ``before`` passing ``where``,
    newest first."""
    conditions, parameters = _conditions(where, _HISTORY_CONDITIONS)
    newest_first = " ORDER BY p.sequence DESC LIMIT %s"
    if any("a." in condition for condition in conditions):
        query = " AND ".join([_HISTORY, *conditions]) + newest_first
    else:
        query = " AND ".join([_HISTORY_ROWS, *conditions]) + newest_first + ") ORDER BY a.sequence DESC"
    return _read(runner, query, [username, before, *parameters, limit])


def transactions(runner: Runner, after: int, limit: int, where: RecordFilter) -> list[Transaction]:
    """Up to ``limit`` records of every account after sequence ``after`` passing ``where``, oldest first."""
    conditions, parameters = _conditions(where, _TRANSACTIONS_CONDITIONS)
    oldest_first = " ORDER BY a.sequence LIMIT %s"
    if where.counterparty is None:
        query = " AND ".join([_TRANSACTIONS, *conditions]) + oldest_first
        return _read(runner, query, [after, *parameters, limit])
    # Either party: each party's index in sequence order, merged (an OR of the two would
    # make the planner walk the whole trail for a name it guesses is common).
    branches = [" AND ".join([_TRANSACTIONS, party, *conditions]) for party in _EITHER_PARTY]
    merged = " ORDER BY sequence LIMIT %s"
    query = f"({branches[0]}{oldest_first}) UNION ALL ({branches[1]}{oldest_first}){merged}"
    name = where.counterparty
    first, second = [after, name, *parameters, limit], [after, name, name, *parameters, limit]
    return _read(runner, query, [*first, *second, limit])


def _read(runner: Runner, query: str, parameters: Sequence[object]) -> list[Transaction]:
    # Never prepared: a generic plan cannot tell a rare value from a common one, and the
    # best plan of a filtered page depends on exactly that.
    rows = runner.read(
        lambda connection: connection.execute(query.encode(), parameters, prepare=False).fetchall()
    )
    return [sql.record(row) for row in rows]


def _conditions(where: RecordFilter, fragments: dict[str, str]) -> tuple[list[str], list[object]]:
    """The ``WHERE`` fragments of ``where``'s conditions (from ``fragments`` only) and their parameters."""
    values: dict[str, object] = {
        "types": None if where.types is None else sorted(where.types),
        "status": where.status,
        "counterparty": where.counterparty,
        "created_after": where.created_after,
        "created_before": where.created_before,
        "min_amount": where.min_amount,
        "max_amount": where.max_amount,
        "reference": where.reference,
    }
    conditions: list[str] = []
    parameters: list[object] = []
    for field, value in values.items():
        if value is None:
            continue
        if field in fragments:
            conditions.append(fragments[field])
            parameters.append(value)
    for key, text in where.metadata:
        integer = _integer(text)
        if integer is None:
            conditions.append(_METADATA)
            parameters.append(Jsonb({key: text}))
        else:
            conditions.append(_METADATA_OR_INTEGER)
            parameters.extend([Jsonb({key: text}), Jsonb({key: integer})])
    return conditions, parameters


def _integer(text: str) -> int | None:
    """The integer whose decimal text ``text`` is (``None``: none is; "007" and "-0" are not)."""
    if _INTEGER.fullmatch(text) is None:
        return None
    integer = int(text)
    return integer if str(integer) == text else None
