"""The audit trail's hash chain, and verification of a whole ledger against it.

Each record carries ``hash = SHA-256(previous_hash || canonical encoding)``, the
first one chained to ``GENESIS_HASH``. Changing, removing or reordering any record
breaks every hash after it. Verification replays the trail from nothing and checks
it against the balances the store holds. Pure functions: callers take the
snapshot under their own locks and verify outside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.ledger.model import Hold, HoldStatus, OperationType, Status, Transaction
from app.ledger.records import digest, encode

GENESIS_HASH = "0" * 64

#: Record types that bring coins into the ledger, and that move coins between accounts.
#: (hold, void and expire only reserve or release money: no balance changes.)
_CREDITS = (OperationType.OPEN, OperationType.DEPOSIT)
_MOVES = (OperationType.TRANSFER, OperationType.CAPTURE)


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
    )


def chain_hash(previous_hash: str, record: Transaction) -> str:
    return digest(previous_hash, canonical_encoding(record))


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
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


def verify_ledger(
    accounts: Mapping[str, AccountSnapshot], records: Sequence[Transaction], holds: Sequence[Hold] = ()
) -> Verification:
    """Check the invariants: balances >= 0, money conserved, balances == replay, chain intact,
    each account's held money == its pending holds, no hold captured beyond its amount."""
    report = Verification(accounts=len(accounts), records=len(records))
    report.problems.extend(check_chain(records, GENESIS_HASH, 1))
    if records:
        report.last_hash = records[-1].hash

    replayed: dict[str, int] = {}
    for record in records:
        if record.status != Status.SUCCESS:
            continue
        if record.type in _CREDITS and record.target is not None:
            replayed[record.target] = replayed.get(record.target, 0) + record.amount
            report.total_deposited += record.amount
        elif record.type == OperationType.WITHDRAWAL and record.source is not None:
            replayed[record.source] = replayed.get(record.source, 0) - record.amount
            report.total_withdrawn += record.amount
        elif record.type in _MOVES and record.source is not None and record.target is not None:
            replayed[record.source] = replayed.get(record.source, 0) - record.amount
            replayed[record.target] = replayed.get(record.target, 0) + record.amount

    for username, account in accounts.items():
        report.total_balance += account.balance
        if account.balance < 0:
            report.problems.append(f"{username} has a negative balance: {account.balance}")
        if not 0 <= account.held <= max(account.balance, 0):
            report.problems.append(f"{username} holds {account.held} of a balance of {account.balance}")
        expected = replayed.get(username, 0)
        if account.balance != expected:
            report.problems.append(
                f"{username} has {account.balance} but its audit records add up to {expected}"
            )
    pending: dict[str, int] = {}
    for hold in holds:
        if hold.status == HoldStatus.PENDING:
            pending[hold.source] = pending.get(hold.source, 0) + hold.amount
            if hold.captured:
                report.problems.append(f"hold {hold.id} is pending but has captured {hold.captured}")
        if not 0 <= hold.captured <= hold.amount:
            report.problems.append(f"hold {hold.id} captured {hold.captured} of {hold.amount}")
    for username, account in accounts.items():
        if account.held != pending.get(username, 0):
            report.problems.append(
                f"{username} holds {account.held} but its pending holds add up to {pending.get(username, 0)}"
            )
    for username in replayed.keys() - accounts.keys():
        report.problems.append(f"the audit trail moves money of {username}, which has no account")
    if report.total_balance != report.total_deposited - report.total_withdrawn:
        report.problems.append(
            f"money is not conserved: balances add up to {report.total_balance}, deposits minus "
            f"withdrawals to {report.total_deposited - report.total_withdrawn}"
        )
    del report.problems[MAX_PROBLEMS:]
    return report
