"""Filtered pages of records in SQL: an account's history and ``/admin/transactions``.

``RecordFilter.matches`` is the meaning; this module says the same in a ``WHERE``
clause made of the fixed fragments below and bound parameters (never input pasted
into the text). A history page reads an account's ``audit_parties`` rows, which
carry copies of the filtered columns as that account sees them (``counterparty``:
the other party), so that each filter has an index in sequence order within the
account; the tags (reference, metadata) are read from ``audit``'s own indexes.

Times: ``created_at`` is stamped before a record takes its sequence, so it only nearly
grows with the sequence, and no index gives records in sequence order by time. A
record older than some record before it is *late*, and ``goledger_append`` notes in
its ``latest_at`` the newest ``created_at`` before it (from ``chain_head``). The other
records are in time order, so a bound falls at one place among them, found in a few
index pages (``audit_in_time_order``): every record (late or not) before the first of
them not before ``created_before`` is older than it (the newest before it is one of
them), and no record up to the last of them not after ``created_after`` is newer. So
``created_after`` is a range of sequences and a check of each record's own time,
which fails only for the late records the bound falls between (few: a record is late
by about as long as it waited for the chain head); ``created_before`` is a range of
sequences, plus the late records after it that are still older, which the bound falls
between too: a second query, on ``audit_late`` (a GiST index of the late records'
``(created_at, latest_at]``), merged. The places are subqueries of the statement, so
they are found on the page's snapshot.

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
#: The sequences of one when every condition is on the account's own rows: they are found
#: first, then only their records read. (Joined, the planner likes a merge join that walks
#: the whole trail back to the account's matching rows, however far back they are.)
_HISTORY_SEQUENCES = "SELECT p.sequence FROM audit_parties p WHERE p.username = %s AND p.sequence < %s"
_RECORDS_OF = f"SELECT {sql.RECORD} FROM audit a WHERE a.sequence IN ("  # noqa: S608
#: Every account's records, oldest first (parameter: after).
_TRANSACTIONS = f"SELECT {sql.RECORD} FROM audit a WHERE a.sequence > %s"  # noqa: S608

#: Conditions on the columns of a record as its account's history sees them (alias ``p``)
#: and as the audit trail keeps it (alias ``a``); each takes one parameter. (The times are
#: ``_time_branches``'.)
_HISTORY_CONDITIONS = {
    "types": "p.type = ANY(%s)",
    "status": "p.status = %s",
    "counterparty": "p.counterparty = %s",
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
_EITHER_PARTY = (("a.source = %s", 1), ("a.target = %s AND a.source IS DISTINCT FROM %s", 2))
#: A metadata pair: a containment the GIN index answers, twice when the value's text is
#: also an integer's (an integer value matches its decimal text).
_METADATA = "a.metadata @> %s"
_METADATA_OR_INTEGER = "(a.metadata @> %s OR a.metadata @> %s)"
#: What an integer's decimal text may look like (64 bits at most: metadata's integers).
_INTEGER = re.compile(r"-?[0-9]{1,20}")

#: Among the records in time order (not late): the last one not after a time (0: none),
#: and the first one not before a time (past every sequence: none).
_LAST_NOT_AFTER = (
    "coalesce((SELECT t.sequence FROM audit t WHERE t.latest_at IS NULL AND t.created_at <= %s "
    "ORDER BY t.created_at DESC, t.sequence DESC LIMIT 1), 0)"
)
_FIRST_NOT_BEFORE = (
    "coalesce((SELECT t.sequence FROM audit t WHERE t.latest_at IS NULL AND t.created_at >= %s "
    "ORDER BY t.created_at, t.sequence LIMIT 1), 9223372036854775807)"
)
#: The late records older than a time that the newest before them is not: the ones that
#: come after the first record in time order not before it (``audit_late``'s expression).
_STRADDLING = (
    "SELECT t.sequence FROM audit t WHERE t.latest_at IS NOT NULL "
    "AND goledger_time_range(t.created_at, t.latest_at, '(]') @> %s::text"
)

#: An account's last row at or before a sequence, its balance after it and its record's time
#: (parameters: username, sequence): one step down ``audit_parties``' key.
_LAST_ROW = (
    "SELECT p.sequence, p.balance_after, (SELECT a.created_at FROM audit a WHERE a.sequence = p.sequence) "
    "FROM audit_parties p WHERE p.username = %s AND p.sequence <= %s ORDER BY p.sequence DESC LIMIT 1"
)
#: Among the records in time order: the first one after a time (past every sequence: none).
#: Every record before it is not after the time (the newest before it is not), every one
#: from it on that is not late is after it.
_FIRST_AFTER = (
    "coalesce((SELECT t.sequence FROM audit t WHERE t.latest_at IS NULL AND t.created_at > %s "
    "ORDER BY t.created_at, t.sequence LIMIT 1), 9223372036854775807)"
)
#: The account's last row at or before a time (parameters: username, at, username, the time
#: just after at, at): the last one before the first record in time order after ``at``, or
#: one of the late records from there on that are still not after it: those whose
#: ``(created_at, latest_at]`` holds the time just after ``at`` (``audit_late``'s expression).
_LAST_ROW_AT = (
    "SELECT b.sequence, b.balance_after, a.created_at FROM ("  # noqa: S608 (this module's constants)
    "(SELECT p.sequence, p.balance_after FROM audit_parties p WHERE p.username = %s "
    f"AND p.sequence < {_FIRST_AFTER} ORDER BY p.sequence DESC LIMIT 1) UNION ALL "
    "(SELECT p.sequence, p.balance_after FROM audit_parties p WHERE p.username = %s AND p.sequence IN ("
    f"{_STRADDLING} AND t.created_at <= %s))"
    ") b JOIN audit a ON a.sequence = b.sequence ORDER BY b.sequence DESC LIMIT 1"
)
#: What, appended to a time in the records' form, makes the least text after it that comes
#: before every later time of that form (the database's collation is bytewise, "C").
_JUST_AFTER = " "

#: Conditions joined by ``AND`` and their parameters, in the order of their placeholders.
_Branch = tuple[list[str], list[object]]


def history(runner: Runner, username: str, before: int, limit: int, where: RecordFilter) -> list[Transaction]:
    """Up to ``limit`` of ``username``'s records older than sequence ``before`` passing ``where``,
    newest first."""
    conditions, parameters = _conditions(where, _HISTORY_CONDITIONS)
    newest_first = " ORDER BY p.sequence DESC LIMIT %s"
    joined = any("a." in condition for condition in conditions)
    selects = [
        (
            " AND ".join([_HISTORY if joined else _HISTORY_SEQUENCES, *conditions, *times]) + newest_first,
            [username, before, *parameters, *time_parameters, limit],
        )
        for times, time_parameters in _time_branches(where, "p")
    ]
    if joined:
        return _read(runner, *_merged(selects, " ORDER BY sequence DESC LIMIT %s", limit))
    query = _RECORDS_OF + " UNION ALL ".join(f"({text})" for text, _ in selects)
    query += ") ORDER BY a.sequence DESC LIMIT %s"
    return _read(runner, query, [*(value for _, values in selects for value in values), limit])


def balance_at(
    runner: Runner, username: str, sequence: int | None, at: str | None
) -> tuple[int, int | None, str] | None:
    """``username``'s row with the largest sequence at or before ``sequence``, or among those
    with ``created_at <= at`` (the records' form): its sequence, the account's balance right
    after it, its time; ``None``: no such row. Every record before the first one in time
    order after ``at`` is not after it, and every later one that is not late is; the late
    ones from there on that are not after it are the few ``at`` falls between (their
    ``(created_at, latest_at]`` holds the time just after ``at``)."""
    if at is None:
        query, parameters = _LAST_ROW, [username, sequence]
    else:
        query, parameters = _LAST_ROW_AT, [username, at, username, at + _JUST_AFTER, at]
    row = runner.read(lambda connection: connection.execute(query.encode(), parameters).fetchone())
    return None if row is None else (row[0], row[1], row[2])


def transactions(runner: Runner, after: int, limit: int, where: RecordFilter) -> list[Transaction]:
    """Up to ``limit`` records of every account after sequence ``after`` passing ``where``, oldest first."""
    conditions, parameters = _conditions(where, _TRANSACTIONS_CONDITIONS)
    # The admin's counterparty is either party: each party's index in sequence order, merged
    # (an OR of the two would make the planner walk the whole trail for a name it guesses
    # is common).
    parties: list[_Branch] = [([], [])]
    if where.counterparty is not None:
        parties = [([party], [where.counterparty] * count) for party, count in _EITHER_PARTY]
    selects = [
        (
            " AND ".join([_TRANSACTIONS, *party, *conditions, *times]) + " ORDER BY a.sequence LIMIT %s",
            [after, *party_parameters, *parameters, *time_parameters, limit],
        )
        for party, party_parameters in parties
        for times, time_parameters in _time_branches(where, "a")
    ]
    return _read(runner, *_merged(selects, " ORDER BY sequence LIMIT %s", limit))


def _time_branches(where: RecordFilter, alias: str) -> list[_Branch]:
    """The records within the sequences the bounds give (each checked against ``created_after``),
    and, with ``created_before``, the late records after them that are older still (one
    branch, with no condition, without a time filter)."""
    after, before = where.created_after, where.created_before
    in_order: _Branch = ([], [])
    if after is not None:
        # Past the bound only a late record may be older. Said so on the trail (where a record
        # says whether it is late), the planner does not take the check for a rare match and
        # walk the whole trail rather than the sequences from the bound on.
        newer = "(a.latest_at IS NULL OR a.created_at > %s)" if alias == "a" else f"{alias}.created_at > %s"
        in_order[0].extend([f"{alias}.sequence > {_LAST_NOT_AFTER}", newer])
        in_order[1].extend([after, after])
    if before is None:
        return [in_order]
    in_order[0].append(f"{alias}.sequence < {_FIRST_NOT_BEFORE}")
    in_order[1].append(before)
    # An array, found first: joined, the planner walks the trail in order to meet them.
    straddling: _Branch = ([f"{alias}.sequence = ANY(ARRAY({_STRADDLING}))"], [before])
    if after is not None:
        straddling[0].append(f"{alias}.created_at > %s")
        straddling[1].append(after)
    return [in_order, straddling]


def _merged(selects: list[tuple[str, list[object]]], order: str, limit: int) -> tuple[str, list[object]]:
    """One query of several (each ordered and limited), merged in ``order`` (one: as it is)."""
    if len(selects) == 1:
        return selects[0]
    query = " UNION ALL ".join(f"({text})" for text, _ in selects) + order
    return query, [*(value for _, values in selects for value in values), limit]


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
