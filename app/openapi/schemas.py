"""The OpenAPI document's reusable schemas: the shapes the service reads and answers.

Each bound comes from the code that enforces it (``app.params``, ``app.ledger.model``),
so that a changed limit changes the document too. Examples are real answers of the
service (ids and times from one run); ``tests/test_openapi.py`` validates every
example against its schema.
"""

from __future__ import annotations

from typing import Any

from app.ledger.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_BATCH_ITEMS,
    MAX_HOLD_TIMEOUT_S,
    MIN_HOLD_TIMEOUT_S,
    HoldStatus,
    OperationType,
    Status,
)
from app.params import MAX_PAGE_LIMIT, USERNAME_PATTERN
from app.tagging import (
    MAX_METADATA_BYTES,
    MAX_METADATA_INTEGER,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MIN_METADATA_INTEGER,
    REFERENCE_PATTERN,
)

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


#: Every ``error`` code the service answers with, and why (the contract's and GoLedger's own).
ERROR_CODES: dict[str, str] = {
    "invalid_amount": "an amount that is not a whole number from 1 to 10^15 (or more than a hold's)",
    "invalid_username": "a username outside ^[A-Za-z0-9_.-]{1,64}$",
    "invalid_json": "a body that is not a JSON object (or shorter than its Content-Length)",
    "missing_parameter": "a required parameter is given nowhere",
    "conflicting_parameters": "one parameter given twice with different values",
    "same_account": "a transfer or hold to the caller's own account",
    "invalid_cursor": "a cursor this server did not issue",
    "invalid_limit": "a page limit outside 1..500",
    "invalid_batch": "a batch with no operations, too many, or an unknown type",
    "invalid_timeout": "X-Timeout-Ms outside 1..60000, or timeout_s outside 1..604800",
    "invalid_parameter": "a malformed parameter, or one naming nothing there is (from on /admin/verify: "
    "no checkpoint has that sequence), or a history filter that is unknown or malformed; the message names "
    "the parameter",
    "invalid_reference": "a reference that is not 1..128 printable ASCII characters",
    "invalid_metadata": f"metadata that is not an object of at most {MAX_METADATA_KEYS} keys of "
    f"^{USERNAME_PATTERN.pattern}$ whose values are strings of at most {MAX_METADATA_VALUE_CHARS} characters "
    f"(no NUL) or 64-bit integers, at most {MAX_METADATA_BYTES} bytes encoded",
    "invalid_token": "an account token that is not 1..256 printable ASCII characters (GoLedger)",
    "invalid_idempotency_key": "an Idempotency-Key that is not 1..255 printable ASCII characters (GoLedger)",
    "bad_request": "a request gunicorn could not parse (GoLedger)",
    "unauthorized": "missing or wrong token, or unknown username",
    "forbidden": "acting on an account that is not the caller's",
    "account_not_found": "the recipient or target account does not exist",
    "hold_not_found": "an unknown hold, or a hold of other accounts",
    "transaction_not_found": "an unknown transaction, or one the caller may not reverse (only its recipient "
    "may; reversals and FAILED records are not reversible)",
    "already_reversed": "reversing a transaction that has been reversed in full",
    "not_found": "an unknown route",
    "method_not_allowed": "a method the route does not take",
    "idempotency_key_reused": "the same Idempotency-Key with different parameters",
    "account_exists": "creating an account that exists",
    "hold_not_pending": "capturing or voiding a hold that is no longer PENDING",
    "version_conflict": "If-Match names a version the account no longer has",
    "payload_too_large": "a body over 1 MiB",
    "request_line_too_large": "a request line over 8190 bytes (GoLedger)",
    "headers_too_large": "a header over 8190 bytes (GoLedger)",
    "insufficient_funds": "more than the available balance",
    "balance_overflow": "a credit past 2^63-1",
    "batch_failed": "an item of an atomic batch not applied because another item failed (GoLedger)",
    "timeout": "the operation could not finish within its deadline; nothing was applied",
    "idempotency_store_full": "every idempotency slot holds a key younger than 24 hours (GoLedger)",
    "storage_unavailable": "the journal of LEDGER_DATA_DIR cannot write: writes are refused until a restart, "
    "and an operation caught by the failure was not acknowledged (GoLedger)",
    "internal_error": "a bug; details go to the log only",
}

_TIMESTAMP: Schema = {"type": "string", "format": "date-time", "examples": ["2026-11-29T12:34:10.553308Z"]}
_VERSION: Schema = {"type": "integer", "minimum": 0, "description": "Grows by one with every change."}
_BALANCE: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_BALANCE}
_HASH: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def _account_state(*, with_holds: bool) -> dict[str, Schema]:
    """The caller's account after an operation: the fields every money answer shares."""
    fields: dict[str, Schema] = {"username": ref("Username"), "balance": _BALANCE}
    if with_holds:
        fields["held"] = {**_BALANCE, "description": "Money the caller has on hold as payer."}
        fields["available"] = {**_BALANCE, "description": "balance - held: what can still be spent."}
    fields["version"] = _VERSION
    return fields


def _object(properties: dict[str, Schema], *, required: tuple[str, ...] | None = None) -> Schema:
    """An answer object: every property is always present unless ``required`` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
    }


def _error_object() -> Schema:
    return {
        "type": "object",
        "description": "Every error has this shape; never a stack trace or an HTML page.",
        "properties": {
            "code": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status."},
            "error": {
                "type": "string",
                "enum": list(ERROR_CODES),
                "description": "\n".join(f"- `{code}`: {why}" for code, why in ERROR_CODES.items()),
            },
            "message": {"type": "string", "description": "For people; never a stack trace."},
        },
        "required": ["code", "error", "message"],
        "examples": [
            {"code": 422, "error": "insufficient_funds", "message": "aaron has 40 coins, 100 requested"}
        ],
    }


_TRANSACTION_EXAMPLE = {
    "id": "tx_01a23a66aadca76e4f49577802003fd6",
    "sequence": 3,
    "type": "transfer",
    "from": "aaron",
    "to": "bryan",
    "amount": 100,
    "status": "SUCCESS",
    "reason": None,
    "created_at": "2026-12-03T05:35:36.668641Z",
    "reference": "order-42",
    "metadata": {"campaign": "spring"},
    "reverses": None,
    "reversed_amount": 0,
    "balance_after": 9900,
}

_HOLD_EXAMPLE = {
    "id": "hold_01a227d76fc72805bfdcca0ea8e2215a",
    "from": "aaron",
    "to": "bryan",
    "amount": 300,
    "captured": 0,
    "status": "PENDING",
    "expires_at": "2026-11-29T15:16:00.007084Z",
    "created_at": "2026-11-29T15:06:00.007087Z",
    "reference": None,
    "metadata": {},
}


def _transaction(*, operator: bool = False) -> Schema:
    """A record as a user sees it (with their ``balance_after``), or as the operator does
    (with both parties' balances)."""
    balance = nullable({"type": "integer", "minimum": 0})
    balances: dict[str, Schema] = (
        {
            "from_balance_after": balance | {"description": "The payer's balance right after the record."},
            "to_balance_after": balance | {"description": "The payee's balance right after the record."},
        }
        if operator
        else {
            "balance_after": balance
            | {"description": "The balance of the account whose history this is, right after the record."}
        }
    )
    example = dict(_TRANSACTION_EXAMPLE)
    if operator:
        example["from_balance_after"], example["to_balance_after"] = example.pop("balance_after"), 10100
    return {
        **_object(
            {
                "id": {"type": "string", "pattern": "^tx_[0-9a-f]{32}$", "description": "Unique forever."},
                "sequence": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "The ledger-wide order: strictly increasing, no gaps.",
                },
                "type": {"type": "string", "enum": [kind.value for kind in OperationType]},
                "from": nullable(ref("Username")) | {"description": "The payer; null for a deposit."},
                "to": nullable(ref("Username")) | {"description": "The payee; null for a withdrawal."},
                "amount": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT},
                "status": {"type": "string", "enum": [status.value for status in Status]},
                "reason": nullable({"type": "string"})
                | {"description": "The error code of a FAILED record."},
                "created_at": _TIMESTAMP,
                "reference": nullable(ref("Reference"))
                | {"description": "The operation's reference; null when none was given."},
                "metadata": {
                    **ref("Metadata"),
                    "description": "The operation's metadata; {} when none was given.",
                },
                "reverses": nullable({"type": "string", "pattern": "^tx_[0-9a-f]{32}$"})
                | {"description": "A reversal's original transaction; null for every other record."},
                "reversed_amount": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_AMOUNT,
                    "description": "How much of this transaction has been reversed so far (as of this "
                    "answer); 0 for a record never reversed, or of a type that cannot be.",
                },
                **balances,
            }
        ),
        "description": "One audit record: a money operation that reached the ledger, succeeded or failed. A "
        "hold's capture, void and expire records carry the hold's reference and metadata. Balances are null "
        "on records written before records carried them, for a name that is no account, and (PostgreSQL) on "
        "the record of an operation that timed out before it held its accounts.",
        "examples": [example],
    }


def _hold() -> Schema:
    return {
        **_object(
            {
                "id": ref("HoldId"),
                "from": ref("Username"),
                "to": ref("Username"),
                "amount": {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
                "captured": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT},
                "status": {"type": "string", "enum": [status.value for status in HoldStatus]},
                "expires_at": _TIMESTAMP,
                "created_at": _TIMESTAMP,
                "reference": nullable(ref("Reference"))
                | {"description": "The hold's reference; null when none was given."},
                "metadata": {
                    **ref("Metadata"),
                    "description": "The hold's metadata; {} when none was given.",
                },
            }
        ),
        "examples": [_HOLD_EXAMPLE],
    }


def _metadata() -> Schema:
    string = {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS, "pattern": "^[^\\x00]*$"}
    integer = {"type": "integer", "minimum": MIN_METADATA_INTEGER, "maximum": MAX_METADATA_INTEGER}
    return {
        "type": "object",
        "maxProperties": MAX_METADATA_KEYS,
        "propertyNames": {"pattern": f"^{USERNAME_PATTERN.pattern}$"},
        "additionalProperties": {"anyOf": [string, integer]},
        "description": f"Up to {MAX_METADATA_KEYS} keys (^{USERNAME_PATTERN.pattern}$), each a string of at "
        f"most {MAX_METADATA_VALUE_CHARS} characters without NUL or a 64-bit integer; at most "
        f"{MAX_METADATA_BYTES} bytes encoded (keys sorted, compact JSON). Otherwise 400 invalid_metadata. "
        "In a query string: metadata.<key>=<value> pairs, whose values are strings. Kept with the record, "
        "covered by its hash; {} in an answer means none.",
        "examples": [{"campaign": "spring", "line": 3}],
    }


def _batch_operation() -> Schema:
    return {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["add", "withdraw", "transfer"]},
            "amount": ref("Amount"),
            "to": {**ref("Username"), "description": "The recipient of a transfer (required for transfers)."},
            "from": {**ref("Username"), "description": "If given, the caller (403 otherwise)."},
            "reference": {**ref("Reference"), "description": "This item's reference (only in the item)."},
            "metadata": {**ref("Metadata"), "description": "This item's metadata (only in the item)."},
        },
        "required": ["type", "amount"],
    }


def _batch_item_result() -> Schema:
    success = _object(
        {
            "index": {"type": "integer", "minimum": 0},
            "status": {"const": "SUCCESS"},
            "transaction": ref("Transaction"),
        }
    )
    failure = _object(
        {"index": {"type": "integer", "minimum": 0}, "status": {"const": "FAILED"}, "error": ref("Error")}
    )
    return {"oneOf": [success, failure]}


def _request_bodies() -> dict[str, Schema]:
    """The JSON-body style of each operation's parameters (the query string is the other)."""
    username = {**ref("Username"), "description": "The caller (here or in the query string)."}
    amount = {**ref("Amount"), "description": "A JSON integer (a string of plain digits is also taken)."}
    tag = {
        "reference": {**ref("Reference"), "description": "Here or in the query string."},
        "metadata": {
            **ref("Metadata"),
            "description": "Here, or in the query string as metadata.<key>=<value> pairs (string values).",
        },
    }
    return {
        "AmountBody": {"type": "object", "properties": {"username": username, "amount": amount, **tag}},
        "TransferBody": {
            "type": "object",
            "properties": {
                "username": username,
                "from": {**ref("Username"), "description": "Defaults to username; must equal it (403)."},
                "to": ref("Username"),
                "amount": amount,
                **tag,
            },
            "examples": [
                {
                    "username": "aaron",
                    "to": "bryan",
                    "amount": 100,
                    "reference": "order-42",
                    "metadata": {"campaign": "spring", "line": 3},
                }
            ],
        },
        "HoldBody": {
            "type": "object",
            "properties": {
                "username": username,
                "to": ref("Username"),
                "amount": amount,
                "timeout_s": ref("HoldTimeout"),
                **tag,
            },
        },
        "CaptureBody": {
            "type": "object",
            "properties": {
                "username": username,
                "amount": {**ref("Amount"), "description": "Default: the whole hold."},
            },
        },
        "UsernameBody": {"type": "object", "properties": {"username": username}},
        "ReverseBody": {
            "type": "object",
            "properties": {
                "username": username,
                "amount": {**ref("Amount"), "description": "Default: all that is left to reverse."},
                **tag,
            },
        },
        "BatchBody": {
            "type": "object",
            "properties": {
                "username": username,
                "atomic": {
                    "type": ["boolean", "null"],
                    "default": False,
                    "description": "true: all items apply or none do. Absent or null: false.",
                },
                "operations": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH_ITEMS,
                    "items": ref("BatchOperation"),
                },
            },
            "required": ["operations"],
            "examples": [
                {
                    "atomic": False,
                    "operations": [
                        {"type": "transfer", "to": "bryan", "amount": 5, "reference": "payout-7"},
                        {"type": "add", "amount": 100},
                        {"type": "withdraw", "amount": 7},
                    ],
                }
            ],
        },
        "CreateAccountBody": {
            "type": "object",
            "properties": {
                "username": {**ref("Username"), "description": "Required (here or in the query string)."},
                "token": {
                    "type": "string",
                    "pattern": "^[\\x21-\\x7e]{1,256}$",
                    "not": {"pattern": "^[Bb][Ee][Aa][Rr][Ee][Rr]$"},
                    "description": "The account's token; generated when absent. Only in the body: "
                    "a token in the query string is 400 invalid_token.",
                },
                "balance": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT, "default": 0},
            },
            "examples": [{"username": "carol", "balance": 500}],
        },
    }


def _answers() -> dict[str, Schema]:
    holds_state = _account_state(with_holds=True)
    return {
        "Balance": {
            **_object(_account_state(with_holds=True)),
            "examples": [
                {"username": "aaron", "balance": 10000, "version": 0, "held": 0, "available": 10000}
            ],
        },
        "BalanceAt": {
            **_object(
                {
                    "username": ref("Username"),
                    "balance": _BALANCE,
                    "as_of": _object(
                        {
                            "sequence": {"type": "integer", "minimum": 1},
                            "created_at": {"type": "string", "format": "date-time"},
                        }
                    ),
                }
            ),
            "description": "The caller's balance right after its last record at or before the point asked "
            "for (`at` or `sequence`), and that record's sequence and time. No version: it is no state "
            "the account can be matched against.",
            "examples": [
                {
                    "username": "aaron",
                    "balance": 9900,
                    "as_of": {"sequence": 42, "created_at": "2026-11-24T01:02:03.456789Z"},
                }
            ],
        },
        "MoneyResult": {
            **_object({"transaction": ref("Transaction"), **_account_state(with_holds=False)}),
            "description": "balance and version are the caller's after the operation.",
            "examples": [
                {"transaction": _TRANSACTION_EXAMPLE, "username": "aaron", "balance": 9900, "version": 1}
            ],
        },
        "HoldResult": {
            **_object({"hold": ref("Hold"), "transaction": ref("Transaction"), **holds_state}),
            "description": "The hold, its audit record and the caller's account afterwards.",
        },
        "HoldView": _object({"hold": ref("Hold")}),
        "History": {
            **_object(
                {
                    "transactions": {"type": "array", "items": ref("Transaction")},
                    "next_cursor": ref("NextCursor"),
                }
            ),
            "description": "Newest first. Pass next_cursor back as cursor for the next page.",
        },
        "TransactionPage": {
            **_object(
                {
                    "transactions": {"type": "array", "items": ref("OperatorTransaction")},
                    "next_cursor": ref("NextCursor"),
                }
            ),
            "description": "Oldest first. Pass next_cursor back as cursor for the next page.",
        },
        "AuditPage": {
            **_object(
                {
                    "transactions": {"type": "array", "items": ref("AuditRecord")},
                    "next_cursor": ref("NextCursor"),
                }
            ),
            "description": "Oldest first, each record with its place in the hash chain.",
        },
        "BatchResult": _object(
            {
                "results": {"type": "array", "items": ref("BatchItemResult")},
                "succeeded": {"type": "integer", "minimum": 0},
                "failed": {"type": "integer", "minimum": 0},
                **_account_state(with_holds=False),
            }
        ),
        "BatchAtomicFailure": {
            **_object(
                {
                    **_error_object()["properties"],
                    "index": {"type": "integer", "minimum": 0, "description": "The failing item."},
                    "results": {"type": "array", "items": ref("BatchItemResult")},
                }
            ),
            "description": "An atomic batch refused because of one item: nothing was applied. Every other "
            "item is FAILED with batch_failed.",
        },
        "AccountCreated": {
            **_object(
                {
                    "username": ref("Username"),
                    "token": {"type": "string", "description": "Shown only here: only its digest is kept."},
                    "balance": _BALANCE,
                    "version": _VERSION,
                }
            ),
            "examples": [
                {
                    "username": "carol",
                    "token": "Vj1Xf7NIQwAwAHvXhGgsZVsTd0ofHtXqxPJHZtJGvoo",
                    "balance": 500,
                    "version": 0,
                }
            ],
        },
        "Health": _object(
            {
                "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
                "uptime_seconds": {"type": "number", "minimum": 0},
                "operation_count": {"type": "integer", "minimum": 0},
                "components": _object(
                    {
                        "database": {"type": "boolean"},
                        "audit_log": {"type": "boolean"},
                        "performance": {"type": "boolean"},
                    }
                ),
            }
        ),
        "Verification": {
            **_object(
                {
                    "ok": {"type": "boolean"},
                    "problems": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "When ok is false.",
                    },
                    "accounts": {"type": "integer", "minimum": 0},
                    "records": {"type": "integer", "minimum": 0},
                    "total_balance": {"type": "integer", "minimum": 0},
                    "total_deposited": {"type": "integer", "minimum": 0},
                    "total_withdrawn": {"type": "integer", "minimum": 0},
                    "last_hash": _HASH,
                    "from_sequence": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "description": "The checkpoint the verification started from (null: from the start).",
                    },
                    "checkpoints_checked": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Checkpoints whose chain head and balances digest a full verification "
                        "confirmed (0 from a checkpoint).",
                    },
                },
                required=(
                    "ok",
                    "accounts",
                    "records",
                    "total_balance",
                    "total_deposited",
                    "total_withdrawn",
                    "last_hash",
                    "from_sequence",
                    "checkpoints_checked",
                ),
            ),
            "description": "records: the records checked (those after from_sequence, when given); "
            "total_deposited and total_withdrawn count those records only.",
        },
        "Checkpoint": {
            **_object(
                {
                    "sequence": {"type": "integer", "minimum": 1, "description": "The record it follows."},
                    "chain_head": {**_HASH, "description": "That record's hash."},
                    "balances_digest": {
                        **_HASH,
                        "description": "SHA-256 of a `name TAB balance LF` line per account existing then, "
                        "names in byte order.",
                    },
                    "created_at": _TIMESTAMP,
                }
            ),
            "examples": [
                {
                    "sequence": 100000,
                    "chain_head": "baef86a2b10299ac2e3d4c611918474723ac4b26f3e5cb0b999b9012e7d9aff3",
                    "balances_digest": "1edf54a764d90086f607c124317f4706434f860c72f2b0a57870ff2a273f3925",
                    "created_at": "2026-12-02T18:03:48.169545Z",
                }
            ],
        },
        "CheckpointPage": {
            **_object(
                {
                    "checkpoints": {"type": "array", "items": ref("Checkpoint")},
                    "next_cursor": ref("NextCursor"),
                }
            ),
            "description": "Newest first. Pass next_cursor back as cursor for the next page.",
        },
    }


def schemas() -> dict[str, Schema]:
    """``components.schemas`` of the document."""
    return {
        "Username": {
            "type": "string",
            "pattern": f"^{USERNAME_PATTERN.pattern}$",
            "description": "Case-sensitive.",
            "examples": ["aaron"],
        },
        "Amount": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_AMOUNT,
            "description": "A whole number of coins, 1..10^15. Floats, booleans, zero, negatives: "
            "400 invalid_amount.",
            "examples": [100],
        },
        "HoldId": {"type": "string", "pattern": "^hold_[0-9a-f]{32}$", "examples": [_HOLD_EXAMPLE["id"]]},
        "HoldTimeout": {
            "type": "integer",
            "minimum": MIN_HOLD_TIMEOUT_S,
            "maximum": MAX_HOLD_TIMEOUT_S,
            "default": 3600,
            "description": "Seconds until the hold expires by itself.",
        },
        "Reference": {
            "type": "string",
            "pattern": f"^{REFERENCE_PATTERN.pattern}$",
            "description": "An external id of the operation (order, invoice, game round): 1..128 printable "
            "ASCII characters, else 400 invalid_reference. Kept with the record, covered by its hash.",
            "examples": ["order-42"],
        },
        "Metadata": _metadata(),
        "PageLimit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT, "default": 50},
        "Cursor": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Opaque."},
        "NextCursor": {**nullable(ref("Cursor")), "description": "null on the last page."},
        "Error": _error_object(),
        "Transaction": _transaction(),
        "OperatorTransaction": _transaction(operator=True),
        "AuditRecord": {
            "allOf": [
                ref("OperatorTransaction"),
                {
                    "type": "object",
                    "properties": {"previous_hash": _HASH, "hash": _HASH},
                    "required": ["previous_hash", "hash"],
                },
            ]
        },
        "Hold": _hold(),
        "BatchOperation": _batch_operation(),
        "BatchItemResult": _batch_item_result(),
        **_request_bodies(),
        **_answers(),
    }
