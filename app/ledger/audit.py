"""The audit trail's hash chain, and verification of a whole ledger against it.

Each record carries ``hash = SHA-256(previous_hash || canonical encoding)``, the
first one chained to ``GENESIS_HASH``. Changing, removing or reordering any record
breaks every hash after it. Verification replays the trail from nothing (or from
a checkpoint) and checks it against the balances the store holds. ``Replay`` takes
the records one at a time, so a verification streams the trail in memory bounded by
the number of accounts. Pure code: callers copy the balances under their own locks
and verify outside them.

Checkpoints
-----------
A checkpoint names a place in the chain (``sequence``, ``chain_head``: the hash of
that record) and the balances of every account that existed there
(``balances_digest``: ``balances_digest`` of them). A verification from a checkpoint
checks the records after it, then takes the current balances back by what those
records moved: the result must match the checkpoint's digest.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from app.ledger.model import Checkpoint, Hold, HoldStatus, OperationType, Transaction
from app.ledger.records import digest, encode, record_balances, record_extension, record_tag

GENESIS_HASH = "0" * 64

#: Record types that bring coins into the ledger, and that move coins between accounts.
#: (hold, void and expire only reserve or release money: no balance changes.)
_CREDITS = (OperationType.OPEN, OperationType.DEPOSIT)
_MOVES = (OperationType.TRANSFER, OperationType.CAPTURE)
_CREDIT_VALUES = frozenset(kind.value for kind in _CREDITS)
#: A journal row whose first nine fields are in canonical form (``add_encoded_rows``):
#: sequence, id, type, from (name or null), to (name or null), amount, status, reason
#: (code or null), created_at; then, after the match, the previous hash and the hash.
#: Groups: 1 sequence, 2 type, 3 from, 4 ``null`` when from is, 5 to, 6 amount, 7 status,
#: 8 previous hash, 9 hash.
_NAME = rb'(?:"([A-Za-z0-9_.@-]{1,64})"|(null))'
_CANONICAL_ROW = re.compile(
    rb'\[([1-9][0-9]*),"[A-Za-z0-9_]{1,64}","([a-z]{1,16})",'
    + _NAME
    + rb',(?:"([A-Za-z0-9_.@-]{1,64})"|null),(0|[1-9][0-9]{0,18}),"([A-Z]{1,16})",'
    + rb'(?:"[a-z_]{1,64}"|null),"[0-9TZ:.-]{1,40}"(?=,"([0-9a-f]{64})","([0-9a-f]{64})",)'
)
_MOVE_VALUES = frozenset(kind.value for kind in _MOVES)
_REVERSAL = OperationType.REVERSAL.value
#: The last byte of a journal row that ends with its links (no extension after them).
_BRACKET = ord("]")


def canonical_encoding(record: Transaction) -> bytes:
    """The bytes a record's hash covers (``app.ledger.records.encode``)."""
    return encode(
        record.sequence,
        record.id,
        record.type,
        record.source,
        record.target,
        record.amount,
        record.status,
        record.reason,
        record.created_at,
        record_tag(record),
        record_balances(record),
        record.reverses,
    )


def _hashed(row: Sequence[Any]) -> bytes:
    """What the hash of a record given as a journal row covers (``canonical_encoding``):
    its first nine fields, and its extension when the row carries one after its links
    (``app.ledger.records.extension``)."""
    if len(row) > _EXTENDED_ROW:
        return orjson.dumps([*row[:9], *row[_EXTENDED_ROW:]], option=orjson.OPT_SORT_KEYS)
    return orjson.dumps(row[:9])


#: Where a journal row's extension starts (``app.ledger.memory.persistence.EXTENDED_ROW``).
_EXTENDED_ROW = 13
#: The length of a row whose extension is whole (a tag, both balances, the reversed id).
_FULL_ROW = _EXTENDED_ROW + 5


def chain_hash(previous_hash: str, record: Transaction) -> str:
    return digest(previous_hash, canonical_encoding(record))


def balances_digest(balances: Iterable[tuple[str, int]], *, ordered: bool = False) -> str:
    """SHA-256 (hex) of ``name TAB balance LF`` lines, names in code-point order (the byte
    order of their UTF-8, PostgreSQL's ``COLLATE "C"``). ``ordered``: the pairs already
    come in that order (streamed from a database), so they are hashed as they come."""
    lines = hashlib.sha256()
    pairs = iter(balances if ordered else sorted(balances, key=itemgetter(0)))
    while chunk := list(itertools.islice(pairs, 10_000)):  # bounded memory for a stream
        lines.update("".join([f"{name}\t{balance}\n" for name, balance in chunk]).encode())
    return lines.hexdigest()


class AccountSnapshot(NamedTuple):
    """An account's balance and held money as a verification reads them (a tuple: a
    store copies one per account while it holds its lock)."""

    balance: int
    held: int


@dataclass(slots=True)
class Verification:
    """The outcome of verifying a ledger; ``ok`` when ``problems`` is empty."""

    accounts: int = 0
    records: int = 0
    total_balance: int = 0
    total_deposited: int = 0
    total_withdrawn: int = 0
    last_hash: str = GENESIS_HASH
    problems: list[str] = field(default_factory=list)
    #: The checkpoint a verification started from (``None``: from the first record).
    from_sequence: int | None = None
    #: Checkpoints whose digest and chain head a full verification confirmed.
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def figures(self) -> dict[str, object]:
        return {
            "accounts": self.accounts,
            "records": self.records,
            "total_balance": self.total_balance,
            "total_deposited": self.total_deposited,
            "total_withdrawn": self.total_withdrawn,
            "last_hash": self.last_hash,
            "from_sequence": self.from_sequence,
            "checkpoints_checked": self.checkpoints,
        }


#: At most this many problems are listed; the rest are counted.
MAX_PROBLEMS = 100


def check_chain(records: Sequence[Transaction], previous_hash: str, first_sequence: int) -> list[str]:
    """Problems in a stretch of the chain that should follow ``previous_hash``."""
    problems = []
    for offset, record in enumerate(records):
        expected_sequence = first_sequence + offset
        if record.sequence != expected_sequence:
            problems.append(f"record {expected_sequence} carries sequence {record.sequence}")
        if record.previous_hash != previous_hash:
            problems.append(f"record {record.sequence} does not link to the hash of the record before it")
        if chain_hash(previous_hash, record) != record.hash:
            problems.append(f"record {record.sequence} ({record.id}) does not match its hash")
        previous_hash = record.hash
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


class Replay:
    """A verification fed one record at a time, in order (``add``), then ``finish``ed
    against the balances and pending holds the store holds once those records applied.

    From the first record (``start=None``) it replays every balance from zero; from a
    checkpoint it collects what the records after it moved, and ``finish`` takes the
    current balances back by that much to compare them with the checkpoint's digest.
    ``checkpoints`` (ascending): the ones a full replay passes are checked against the
    replayed balances and the chain. Memory: one integer per account.
    """

    def __init__(self, start: Checkpoint | None = None, checkpoints: Sequence[Checkpoint] = ()) -> None:
        self.report = Verification()
        self._start = start
        self._sequence = 0 if start is None else start.sequence
        self._hash = GENESIS_HASH if start is None else start.chain_head
        self.report.from_sequence = None if start is None else start.sequence
        #: What the records moved per account (from zero on a full replay).
        self._moved: dict[str, int] = {}
        #: Accounts opened by the records replayed (a checkpoint's digest excludes those after it).
        self._opened: set[str] = set()
        self._checkpoints = [point for point in checkpoints if point.sequence > self._sequence]
        self._chain_problems = 0
        #: Per account, its balance less what the records moved: zero on a full replay (every
        #: account starts empty); from a checkpoint, learnt from the first record that carries
        #: the account's balance after it, which later ones must then agree with.
        self._base: dict[str, int] = {}

    @property
    def sequence(self) -> int:
        """The last record added."""
        return self._sequence

    def add(self, record: Transaction) -> None:
        row = [
            record.sequence, record.id, str(record.type), record.source, record.target,
            record.amount, str(record.status), record.reason, record.created_at,
            record.previous_hash, record.hash,
        ]  # fmt: skip
        more = record_extension(record)
        if more:
            row += [(), (), *more]
        self.add_row(row)

    def add_all(self, records: Iterable[Transaction]) -> None:
        for record in records:
            self.add(record)

    def add_encoded_rows(self, rows: Iterable[bytes]) -> None:
        """``add_row`` for rows given as their compact JSON (how the embedded store's journal
        keeps them), mostly without decoding them.

        A row's encoding starts with its record's canonical encoding (its first nine
        fields). ``_CANONICAL_ROW`` matches a row only if that prefix is exactly what the
        canonical encoding of the fields it holds would be (no spaces, no escapes, integers
        without leading zeros, names of the shapes the service allows), and finds the
        fields and the chain's two hashes after it; the prefix is then hashed as it is.
        A row that does not match, or whose hash does not check out, is decoded and
        checked by ``add_row``, which decides; so is a row with an extension after its
        links (every record since records carry balances: its hash covers the extension
        too), which does not end with its links' ``]]``, without a hash computed in vain.
        """
        report, moved, sha256, match = self.report, self._moved, hashlib.sha256, _CANONICAL_ROW.match
        sequence, last_bytes = self._sequence, self._hash.encode()
        checkpoints = self._checkpoints
        records = 0
        for raw in rows:
            found = match(raw) if raw[-2] == _BRACKET else None
            if (
                found is None
                or found[1] != b"%d" % (sequence + 1)
                or found[8] != last_bytes
                or sha256(last_bytes + raw[: found.end()] + b"]").hexdigest().encode() != found[9]
                or (checkpoints and checkpoints[0].sequence <= sequence + 1)
            ):
                report.records += records
                records = 0
                self._sequence, self._hash = sequence, last_bytes.decode()
                self.add_row(orjson.loads(raw))
                sequence, last_bytes = self._sequence, self._hash.encode()
                continue
            sequence, last_bytes = sequence + 1, found[9]
            records += 1
            if found[7] != b"SUCCESS":
                continue
            kind, amount, source_bytes, target_bytes = found[2], int(found[6]), found[3], found[5]
            if kind == b"transfer" or kind == b"capture":
                if source_bytes is not None and target_bytes is not None:
                    source, target = source_bytes.decode(), target_bytes.decode()
                    moved[source] = moved.get(source, 0) - amount
                    moved[target] = moved.get(target, 0) + amount
            elif kind == b"deposit" or kind == b"open":
                if target_bytes is not None:
                    target = target_bytes.decode()
                    moved[target] = moved.get(target, 0) + amount
                    report.total_deposited += amount
                    if kind == b"open":
                        self._opened.add(target)
            elif kind == b"withdrawal" and source_bytes is not None:
                source = source_bytes.decode()
                moved[source] = moved.get(source, 0) - amount
                report.total_withdrawn += amount
        report.records += records
        self._sequence, self._hash = sequence, last_bytes.decode()

    def add_row(self, row: Sequence[Any]) -> None:
        """Add a record given as its fields: ``[sequence, id, type, from, to, amount, status,
        reason, created_at, previous_hash, hash, ...]`` (the values the API shows; what the
        embedded store's journal holds), without building a ``Transaction``."""
        report = self.report
        sequence, record_hash = row[0], row[10]
        if self._chain_problems < MAX_PROBLEMS:
            problems = report.problems
            before = len(problems)
            if sequence != self._sequence + 1:
                problems.append(f"record {self._sequence + 1} carries sequence {sequence}")
            if row[9] != self._hash:
                problems.append(f"record {sequence} does not link to the hash of the record before it")
            if digest(self._hash, _hashed(row)) != record_hash:
                problems.append(f"record {sequence} ({row[1]}) does not match its hash")
            self._chain_problems += len(problems) - before
        self._sequence, self._hash = sequence, record_hash
        report.records += 1
        if row[6] == "SUCCESS":
            moved = self._moved
            kind, source, target, amount = row[2], row[3], row[4], row[5]
            if kind in _CREDIT_VALUES and target is not None:
                moved[target] = moved.get(target, 0) + amount
                report.total_deposited += amount
                if kind == "open":
                    self._opened.add(target)
            elif kind == "withdrawal" and source is not None:
                moved[source] = moved.get(source, 0) - amount
                report.total_withdrawn += amount
            elif kind in _MOVE_VALUES and source is not None and target is not None:
                moved[source] = moved.get(source, 0) - amount
                moved[target] = moved.get(target, 0) + amount
            elif kind == _REVERSAL:
                self._reverse(source, target, amount)
        if len(row) >= _FULL_ROW:
            self._check_balances(sequence, row[3], row[_FULL_ROW - 3], row[4], row[_FULL_ROW - 2])
        if self._checkpoints and self._checkpoints[0].sequence <= sequence:
            while self._checkpoints and self._checkpoints[0].sequence <= sequence:
                self._check_passed(self._checkpoints.pop(0), sequence, record_hash)

    def _reverse(self, source: str | None, target: str | None, amount: int) -> None:
        """What a reversal moved: its original backwards. Between two accounts (a transfer's
        or a capture's), from one to the other; a deposit's reversal (no ``to``) takes coins
        out of the ledger, counted as withdrawn; a withdrawal's (no ``from``) puts them back,
        counted as deposited. So money stays conserved: balances == deposited - withdrawn."""
        moved, report = self._moved, self.report
        if source is not None:
            moved[source] = moved.get(source, 0) - amount
            if target is None:
                report.total_withdrawn += amount
        if target is not None:
            moved[target] = moved.get(target, 0) + amount
            if source is None:
                report.total_deposited += amount

    def _check_balances(
        self, sequence: int, source: str | None, from_after: object, target: str | None, to_after: object
    ) -> None:
        """The balances a record carries must be the replay's right after it."""
        moved, base = self._moved, self._base
        for name, after in ((source, from_after), (target, to_after)):
            if name is None or after is None:
                continue
            if not isinstance(after, int):
                self.report.problems.append(f"record {sequence} carries a balance that is not a number")
                continue
            current = moved.get(name, 0)
            expected = base.setdefault(name, 0 if self._start is None else after - current) + current
            if after != expected and len(self.report.problems) < MAX_PROBLEMS:
                self.report.problems.append(
                    f"record {sequence} says {name} had {after} after it; the records add up to {expected}"
                )

    def _check_passed(self, point: Checkpoint, sequence: int, record_hash: str) -> None:
        """A full replay reached a checkpoint: the chain and the replayed balances must match it."""
        report = self.report
        if point.sequence != sequence or point.chain_head != record_hash:
            report.problems.append(
                f"checkpoint {point.sequence} does not match the audit record at its sequence"
            )
            return
        if self._start is None:
            replayed = ((name, self._moved.get(name, 0)) for name in self._opened)
            if balances_digest(replayed) != point.balances_digest:
                report.problems.append(
                    f"checkpoint {point.sequence}: the balances replayed up to it do not match its digest"
                )
                return
        report.checkpoints += 1

    def finish(
        self,
        accounts: Mapping[str, tuple[int, int]],
        holds: Iterable[Hold] = (),
        last_hash: str | None = None,
    ) -> Verification:
        """Check the invariants: balances >= 0, money conserved, balances == replay, chain
        intact, each account's held money == its pending holds, no hold captured beyond its
        amount. ``accounts`` and ``holds`` are the state once the added records applied;
        ``last_hash``: the chain head the store holds (it must be the last record's)."""
        report = self.report
        report.accounts = len(accounts)
        report.last_hash = self._hash
        if last_hash is not None and last_hash != self._hash:
            report.problems.append("the chain head the ledger holds is not the hash of its last record")
        for point in self._checkpoints:
            report.problems.append(f"checkpoint {point.sequence} is past the end of the audit trail")
        moved, problems = self._moved, report.problems
        pending = _pending_by_payer(report, holds)
        pending_of = pending.get
        total = 0
        # One pass over the accounts: a verification's share that grows with them.
        for username, (balance, held) in accounts.items():
            total += balance
            if balance < 0:
                problems.append(f"{username} has a negative balance: {balance}")
            if held < 0 or held > max(balance, 0):
                problems.append(f"{username} holds {held} of a balance of {balance}")
            if held != pending_of(username, 0):
                problems.append(
                    f"{username} holds {held} but its pending holds add up to {pending_of(username, 0)}"
                )
        report.total_balance = total
        if self._start is None:
            moved_of = moved.get
            for username, (balance, _) in accounts.items():
                if balance != moved_of(username, 0):
                    problems.append(
                        f"{username} has {balance} but its audit records add up to {moved_of(username, 0)}"
                    )
            if report.total_balance != report.total_deposited - report.total_withdrawn:
                problems.append(
                    f"money is not conserved: balances add up to {report.total_balance}, deposits minus "
                    f"withdrawals to {report.total_deposited - report.total_withdrawn}"
                )
        else:
            opened, moved_of = self._opened, moved.get
            # Each account taken back by what the records after the checkpoint moved.
            at_start = [(name, account[0] - moved_of(name, 0)) for name, account in accounts.items()]
            if opened:
                at_start = [pair for pair in at_start if pair[0] not in opened]
            if balances_digest(at_start) != self._start.balances_digest:
                problems.append(
                    f"the balances do not follow from checkpoint {self._start.sequence} and the "
                    f"{report.records} audit records after it"
                )
        for username in moved.keys() - accounts.keys():
            report.problems.append(f"the audit trail moves money of {username}, which has no account")
        del report.problems[MAX_PROBLEMS:]
        return report


def _pending_by_payer(report: Verification, holds: Iterable[Hold]) -> dict[str, int]:
    """The money each account has on pending holds; problems of the holds themselves."""
    pending: dict[str, int] = {}
    for hold in holds:
        if hold.status == HoldStatus.PENDING:
            pending[hold.source] = pending.get(hold.source, 0) + hold.amount
            if hold.captured:
                report.problems.append(f"hold {hold.id} is pending but has captured {hold.captured}")
        if not 0 <= hold.captured <= hold.amount:
            report.problems.append(f"hold {hold.id} captured {hold.captured} of {hold.amount}")
    return pending


def verify_ledger(
    accounts: Mapping[str, tuple[int, int]],
    records: Iterable[Transaction],
    holds: Iterable[Hold] = (),
    checkpoints: Sequence[Checkpoint] = (),
) -> Verification:
    """A full verification of ``records`` (in order) against ``accounts`` and ``holds``."""
    replay = Replay(checkpoints=checkpoints)
    replay.add_all(records)
    return replay.finish(accounts, holds)
