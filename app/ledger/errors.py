"""The ledger's failures.

Each carries the contract's HTTP status and error code so that the web layer can
render it without a lookup table, while the ledger package stays free of Flask.
A failure that reached the ledger also carries its FAILED audit record.
"""

from __future__ import annotations

from app.ledger.model import Transaction


class LedgerError(Exception):
    """Base of every failure the API reports to a caller (never a 500)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, transaction: Transaction | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transaction = transaction
        #: Extra response headers, such as ``Retry-After`` on a timeout.
        self.headers: dict[str, str] = {}


class InvalidInput(LedgerError):
    """Bad input; ``code`` is chosen per case (``invalid_amount``, ``invalid_username``…)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Unauthorized(LedgerError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        # One message for every cause, so that a stranger learns nothing about which
        # usernames exist.
        super().__init__("Invalid username or token.")


class Forbidden(LedgerError):
    status = 403
    code = "forbidden"


class AccountNotFound(LedgerError):
    status = 404
    code = "account_not_found"


class AccountExists(LedgerError):
    status = 409
    code = "account_exists"


class VersionConflict(LedgerError):
    status = 412
    code = "version_conflict"


class InsufficientFunds(LedgerError):
    status = 422
    code = "insufficient_funds"


class BalanceOverflow(LedgerError):
    status = 422
    code = "balance_overflow"


class OperationTimeout(LedgerError):
    """The operation could not finish within its deadline; nothing was applied."""

    status = 503
    code = "timeout"

    def __init__(self, message: str, *, transaction: Transaction | None = None) -> None:
        super().__init__(message, transaction=transaction)
        self.headers["Retry-After"] = "1"


class StorageUnavailable(LedgerError):
    """The journal cannot write: the ledger refuses writes until it is restarted.

    Raised before anything is applied when the journal has already failed. Raised
    after the fact for an operation whose journal entry was queued but could not be
    made durable: that operation was not acknowledged and its outcome is unknown
    until a restart replays the journal (a retry with the same ``Idempotency-Key``
    after the restart answers it).
    """

    status = 503
    code = "storage_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "30"


class CommitOutcomeUnknown(StorageUnavailable):
    """The connection to the database broke while it committed: applied or not, nobody
    can tell yet. Never retried (a retry could apply it twice) and never audited as a
    timeout (that would say nothing was applied)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "1"


class StoreInvariantBroken(Exception):
    """An internal invariant failed: a bug, reported as a 500 and logged in full."""


class IdempotencyKeyReused(LedgerError):
    status = 409
    code = "idempotency_key_reused"


class IdempotencyStoreFull(LedgerError):
    """Every slot holds a key younger than its retention period; nothing was applied."""

    status = 503
    code = "idempotency_store_full"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "60"


class BatchFailed(LedgerError):
    """An item of an atomic batch that was not applied because another item failed."""

    status = 424
    code = "batch_failed"


class HoldNotFound(LedgerError):
    """Unknown hold id, or a hold between other accounts (the same answer for both)."""

    status = 404
    code = "hold_not_found"


class HoldNotPending(LedgerError):
    status = 409
    code = "hold_not_pending"


class TransactionNotFound(LedgerError):
    """Unknown transaction id, or one the caller may not reverse (the same answer for both)."""

    status = 404
    code = "transaction_not_found"


class AlreadyReversed(LedgerError):
    """Reversing a transaction that has been reversed in full."""

    status = 409
    code = "already_reversed"
