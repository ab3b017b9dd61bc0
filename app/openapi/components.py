"""The OpenAPI document's shared parts: parameters, response headers, and answers.

``answer`` and ``errors`` build the responses of an operation; an error answer
names the exact ``error`` codes that status can carry on that operation, so that a
conformance check (schemathesis) fails on any code the document does not promise.
"""

from __future__ import annotations

from typing import Any

from app.config import MAX_TIMEOUT_MS, MIN_TIMEOUT_MS
from app.ledger.filters import MAX_METADATA_FILTERS
from app.ledger.model import MAX_AMOUNT, OperationType, Status
from app.openapi.schemas import ERROR_CODES, Schema, ref
from app.tagging import TIMESTAMP_PATTERN

_STATUS_DESCRIPTIONS = {
    400: "Bad input; nothing was applied.",
    401: "Missing or wrong token, or unknown username: always `Invalid username or token.`",
    403: "The caller acts on an account that is not theirs.",
    404: "Not found.",
    405: "Another method on this route: the one documented here is the only one it takes (see `Allow`).",
    409: "Conflict.",
    412: "`If-Match` names a version the account no longer has; nothing was applied (audited as FAILED).",
    413: "The body is over 1 MiB.",
    422: "Refused for a business reason; nothing was applied (audited as FAILED).",
    500: "A bug: `An unexpected error occurred.`; details go to the log only.",
    503: "The operation could not finish within its deadline (`timeout`: nothing was applied), or the "
    "journal cannot write (`storage_unavailable`). See `Retry-After`.",
}

# Messages of real answers, for the examples.
_EXAMPLE_MESSAGES = {
    "invalid_json": "The body must be a JSON object.",
    "unauthorized": "Invalid username or token.",
    "forbidden": "You can only move money out of your own account.",
    "account_not_found": "Account nobody does not exist.",
    "hold_not_found": "No hold hold_01a227d76fc72805bfdcca0ea8e2215a of yours.",
    "not_found": "No such route.",
    "method_not_allowed": "This method is not allowed on this route.",
    "idempotency_key_reused": "This Idempotency-Key was used with different parameters.",
    "account_exists": "Account carol already exists.",
    "hold_not_pending": "The hold is CAPTURED, no longer PENDING.",
    "version_conflict": "The account is at version 7, not 1.",
    "payload_too_large": "The request body is larger than the limit.",
    "insufficient_funds": "aaron has 9900 coins, 1000000 requested",
    "timeout": "The operation could not finish within 500 ms; nothing was applied.",
    "internal_error": "An unexpected error occurred.",
}

TEXT: Schema = {"type": "string"}


def header_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def parameter_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def answer(
    description: str, schema: Schema, *, headers: tuple[str, ...] = (), media_type: str = "application/json"
) -> dict[str, Any]:
    """A response with this body and these headers (``X-Request-Id`` and ``X-Content-Type-Options``
    are on every answer; ``Cache-Control`` is added to those under ``/account`` and ``/admin``
    by ``app.openapi.paths.paths``)."""
    return {
        "description": description,
        "headers": {name: header_ref(name) for name in ("X-Request-Id", "X-Content-Type-Options", *headers)},
        "content": {media_type: {"schema": schema}},
    }


def _error_answer(status: int, codes: list[str], shape: Schema, replayable: bool) -> dict[str, Any]:
    unknown = set(codes) - set(ERROR_CODES)
    if unknown:
        raise ValueError(f"error codes missing from ERROR_CODES: {sorted(unknown)}")
    headers: tuple[str, ...] = {503: ("Retry-After",), 405: ("Allow",)}.get(status, ())
    if replayable and status not in (405, 500):
        headers += ("Idempotent-Replayed",)
    listed = ", ".join(f"`{code}`" for code in codes)
    schema = {"allOf": [shape, {"properties": {"code": {"const": status}, "error": {"enum": codes}}}]}
    response = answer(f"{_STATUS_DESCRIPTIONS[status]} Codes: {listed}.", schema, headers=headers)
    message = _EXAMPLE_MESSAGES.get(codes[0], f"See `{codes[0]}` in the Error schema.")
    response["content"]["application/json"]["example"] = {
        "code": status,
        "error": codes[0],
        "message": message,
    }
    return response


def errors(
    statuses: dict[int, list[str]], *, replayable: bool = False, shapes: dict[int, Schema] | None = None
) -> dict[str, Any]:
    """The error answers of an operation: ``statuses`` maps each status to the codes it can carry.

    ``replayable``: the operation takes ``Idempotency-Key``, so an error may be a replay.
    ``shapes``: statuses whose body is not the plain ``Error`` (an atomic batch's failure).
    """
    return {
        str(status): _error_answer(status, codes, (shapes or {}).get(status, ref("Error")), replayable)
        for status, codes in sorted(statuses.items())
    }


def parameters() -> dict[str, Any]:
    """``components.parameters``: the query, path and header parameters operations share."""

    def header(name: str, schema: Schema, description: str, example: object) -> dict[str, Any]:
        return {**_query(name, schema, description), "in": "header", "example": example}

    either = "Required, here or in the JSON body."
    return {
        "username": _query("username", ref("Username"), "The caller. " + either),
        "amount": _query("amount", ref("Amount"), "Coins, as plain decimal digits. " + either),
        "to": _query(
            "to", ref("Username"), "The recipient, an existing account other than the caller. " + either
        ),
        "from": _query("from", ref("Username"), "Optional; must equal username (403 otherwise)."),
        "timeout_s": _query("timeout_s", ref("HoldTimeout"), "Seconds until the hold expires; default 3600."),
        "from_checkpoint": _query(
            "from",
            {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
            "A checkpoint's sequence: only the records after it are checked, against it. Not a whole number: "
            "400 invalid_parameter; no checkpoint there: 400 invalid_parameter.",
        ),
        "reference": _query(
            "reference",
            ref("Reference"),
            "The operation's reference; optional, here or in the JSON body. Its metadata goes in the body "
            "(`metadata`) or here as `metadata.<key>=<value>` pairs.",
        ),
        **_filters(),
        "limit": _query("limit", ref("PageLimit"), "Records per page, 1..500; default 50."),
        "cursor": _query("cursor", ref("Cursor"), "The next_cursor of the previous page."),
        "hold_id": {
            "name": "hold_id",
            "in": "path",
            "required": True,
            "schema": ref("HoldId"),
            "description": "The hold's id; an unknown one, or one of other accounts, is 404.",
        },
        "transaction_id": {
            "name": "transaction_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^tx_[0-9a-f]{32}$"},
            "description": "The transaction to reverse; an unknown one, or one the caller may not reverse, "
            "is 404.",
        },
        "Idempotency-Key": header(
            "Idempotency-Key",
            {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
            "The first request with a key runs; a later one by the same user with the same key and "
            "parameters gets the same status and body back (with `Idempotent-Replayed: true`) and nothing "
            "runs twice. The same key with other parameters: 409 idempotency_key_reused. Kept at least 24 "
            "hours. Anything but 1..255 printable ASCII characters: 400 invalid_idempotency_key.",
            "order-1001",
        ),
        "If-Match": header(
            "If-Match",
            {"type": "string", "pattern": '^(\\*|"[0-9]{1,19}"|[0-9]{1,19})$'},
            'Apply only if the caller\'s account is at this version (`"7"`), else 412 version_conflict. '
            "`*` means any version; a value naming no version is also 412.",
            '"7"',
        ),
        "X-Timeout-Ms": header(
            "X-Timeout-Ms",
            {"type": "integer", "minimum": MIN_TIMEOUT_MS, "maximum": MAX_TIMEOUT_MS},
            "The operation's deadline in ms (default LEDGER_OP_TIMEOUT_MS, 2000); past it, 503 timeout "
            "with nothing applied. Outside 1..60000: 400 invalid_timeout.",
            500,
        ),
        "X-Request-Id": header(
            "X-Request-Id",
            {"type": "string"},
            "Echoed back when it is 1..128 of `A-Z a-z 0-9 . _ : -`; otherwise one is generated.",
            "req-42",
        ),
    }


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _filters() -> dict[str, Any]:
    """The history filters (``GET /account/transactions``, ``GET /admin/transactions``); a malformed
    one is 400 invalid_parameter. ``metadata.<key>`` filters have no fixed name: the operations say."""
    timestamp = {
        "type": "string",
        "pattern": f"^{TIMESTAMP_PATTERN.pattern}$",
        "examples": ["2026-12-01T00:00:00Z"],
    }
    amount = {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT}
    kinds = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "enum": [kind.value for kind in OperationType]},
    }
    return {
        "type": {
            **_query("type", kinds, "Only records of these types, comma-separated: `type=transfer,capture`."),
            "style": "form",
            "explode": False,
        },
        "status": _query(
            "status", {"type": "string", "enum": [status.value for status in Status]}, "Only these records."
        ),
        "counterparty": _query(
            "counterparty",
            ref("Username"),
            "Only records with this party: in an account's history the other party (a deposit or a "
            "withdrawal has none), in `/admin/transactions` either party.",
        ),
        "created_after": _query(
            "created_after", timestamp, "Only records created strictly after this RFC 3339 time."
        ),
        "created_before": _query(
            "created_before", timestamp, "Only records created strictly before this RFC 3339 time."
        ),
        "min_amount": _query("min_amount", amount, "Only records of at least this amount."),
        "max_amount": _query("max_amount", amount, "Only records of at most this amount."),
        "reference_filter": _query(
            "reference", ref("Reference"), "Only records with exactly this reference."
        ),
        "at": _query(
            "at",
            timestamp,
            "A point in time (RFC 3339): the balance right after the caller's last record created at or "
            "before it (of the records created at or before it, the one with the largest sequence). Not "
            "with `sequence`.",
        ),
        "sequence": _query(
            "sequence",
            {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            "A point in the audit trail: the balance right after the caller's last record whose sequence "
            "is at most this. Not with `at`.",
        ),
    }


#: What the paged reads say about the filters OpenAPI cannot name.
FILTERS_DESCRIPTION = (
    "Filters, all optional and AND-combined: `type`, `status`, `counterparty`, `created_after`, "
    "`created_before` (both exclusive), `min_amount`, `max_amount` (both inclusive), `reference`, and up to "
    f"{MAX_METADATA_FILTERS} `metadata.<key>=<value>` query pairs (exact match; an integer value matches "
    "its decimal text, `metadata.line=3`). Any other query parameter, or a malformed filter, is 400 "
    "invalid_parameter naming it. Paging stays stable under filters."
)
FILTER_PARAMETERS = [
    "type", "status", "counterparty", "created_after", "created_before", "min_amount", "max_amount",
    "reference_filter",
]  # fmt: skip


def headers() -> dict[str, Any]:
    """``components.headers``: the response headers."""

    def header(schema: Schema, description: str, *, required: bool = True) -> dict[str, Any]:
        return {"schema": schema, "description": description, "required": required}

    return {
        "ETag": header(
            {"type": "string", "pattern": '^"[0-9]+"$'}, 'The caller\'s account version, as `"7"`.'
        ),
        "ETagUnlessAtPoint": header(
            {"type": "string", "pattern": '^"[0-9]+"$'},
            'The caller\'s account version, as `"7"`; absent from a balance at a point (`at`, `sequence`).',
            required=False,
        ),
        "Retry-After": header({"type": "string", "pattern": "^[0-9]+$"}, "Seconds to wait before retrying."),
        "Idempotent-Replayed": header(
            {"type": "string", "enum": ["true"]},
            "`true`: this answer is the stored answer of an earlier request with the same Idempotency-Key.",
            required=False,
        ),
        "X-Request-Id": header({"type": "string", "minLength": 1}, "This request's id, as in its log line."),
        "Allow": header({"type": "string"}, "The methods this route takes."),
        "Cache-Control": header(
            {"type": "string", "enum": ["no-store"]},
            "Balances, histories and tokens must not be kept by any cache.",
        ),
        "X-Content-Type-Options": header(
            {"type": "string", "enum": ["nosniff"]}, "Every answer: no sniffing."
        ),
    }


def security_schemes() -> dict[str, Any]:
    forms = "bare (`Authorization: 1`, the original style) or `Bearer 1`"
    return {
        "userToken": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"The account's token in Authorization, {forms}. The username goes in the query "
            "string or the JSON body.",
        },
        "adminToken": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"The admin token (LEDGER_ADMIN_TOKEN) in Authorization, {forms}. With no admin "
            "token configured, admin operations answer 401.",
        },
    }
