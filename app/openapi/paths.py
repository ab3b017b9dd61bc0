"""The OpenAPI document's operations: one per route and method of the app.

``tests/test_openapi.py`` walks Flask's URL map and fails when a route or method is
here and not in the app, or the other way round. The links between operations
(create a hold -> read, capture or void it; create an account -> its balance) are
what schemathesis follows in its stateful phase.
"""

from __future__ import annotations

from typing import Any

from app.ledger.model import MAX_BATCH_ITEMS
from app.openapi.components import (
    FILTER_PARAMETERS,
    FILTERS_DESCRIPTION,
    TEXT,
    answer,
    errors,
    header_ref,
    parameter_ref,
)
from app.openapi.schemas import Schema, ref

Operation = dict[str, Any]

Security = list[dict[str, list[str]]]

_USER: Security = [{"userToken": []}]
_ADMIN: Security = [{"adminToken": []}]
_NO_TOKEN: Security = []

# The 400 codes of each kind of /account operation.
_READ_400 = ["invalid_json", "conflicting_parameters", "invalid_username", "invalid_timeout"]
_KEYED_400 = [*_READ_400, "invalid_idempotency_key"]
_MONEY_400 = [*_KEYED_400, "missing_parameter", "invalid_amount"]
# ... and of those that take a reference and metadata.
_TAGGED_400 = [*_MONEY_400, "invalid_reference", "invalid_metadata"]

#: Appended to the description of every operation that takes a reference and metadata.
_TAGGING = (
    " Optional `reference` and `metadata` tag the record: in the JSON body, or in the query string as "
    "`reference=...` and `metadata.<key>=<value>` pairs (string values). They are part of the idempotency "
    "fingerprint."
)

_ACCOUNT_PARAMETERS = ["username", "X-Timeout-Ms", "X-Request-Id"]
_MONEY_PARAMETERS = [*_ACCOUNT_PARAMETERS, "Idempotency-Key", "If-Match"]


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    *,
    security: Security,
    parameters: list[str],
    responses: dict[str, Any],
    body: str | None = None,
) -> Operation:
    operation: Operation = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "security": security,
        "parameters": [parameter_ref(name) for name in parameters],
        "responses": responses,
    }
    if body is not None:
        operation["requestBody"] = {
            "required": False,
            "description": "The parameters as a JSON object, instead of or as well as the query string (the "
            "same field with different values: 400 conflicting_parameters; unknown fields are ignored).",
            "content": {"application/json": {"schema": ref(body)}},
        }
    return operation


def _account_errors(codes_400: list[str], more: dict[int, list[str]] | None = None) -> dict[str, Any]:
    """The errors of an ``/account`` read: these 400 codes, ``more``, and those every one can answer."""
    statuses = {
        400: codes_400,
        401: ["unauthorized"],
        405: ["method_not_allowed"],
        413: ["payload_too_large"],
        500: ["internal_error"],
        # storage_unavailable: the account's last change never reached a failed journal.
        503: ["timeout", "storage_unavailable"],
    }
    return errors({**statuses, **(more or {})})


def _money_errors(
    codes_400: list[str], more: dict[int, list[str]], shapes: dict[int, Schema] | None = None
) -> dict[str, Any]:
    """The errors of a money operation, which takes Idempotency-Key and If-Match."""
    statuses = {
        400: codes_400,
        401: ["unauthorized"],
        405: ["method_not_allowed"],
        409: ["idempotency_key_reused"],
        412: ["version_conflict"],
        413: ["payload_too_large"],
        500: ["internal_error"],
        503: ["timeout", "idempotency_store_full", "storage_unavailable"],
    }
    return errors({**statuses, **more}, replayable=True, shapes=shapes)


def _links(*targets: tuple[str, str, dict[str, str]]) -> dict[str, Any]:
    return {name: {"operationId": operation, "parameters": values} for name, operation, values in targets}


_TO_BALANCE = _links(
    ("balance", "getBalance", {"username": "$response.body#/username"}),
    ("history", "getHistory", {"username": "$response.body#/username"}),
)
_HOLD = {"hold_id": "$response.body#/hold/id", "username": "$response.body#/username"}
_TO_HOLD = _links(("read", "getHold", _HOLD), ("capture", "captureHold", _HOLD), ("void", "voidHold", _HOLD))


def _money(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    *,
    parameters: list[str],
    body: str,
    failures: dict[str, Any],
    result: str = "MoneyResult",
    status: int = 200,
    links: dict[str, Any] = _TO_BALANCE,
) -> Operation:
    success = answer(description.split(".")[0] + ".", ref(result), headers=("ETag", "Idempotent-Replayed"))
    return _operation(
        operation_id,
        tag,
        summary,
        description,
        security=_USER,
        parameters=[*_MONEY_PARAMETERS, *parameters],
        body=body,
        responses={str(status): {**success, "links": links}, **failures},
    )


def _money_paths() -> dict[str, Any]:
    atomic_failure = {"anyOf": [ref("BatchAtomicFailure"), ref("Error")]}
    return {
        "/account/coins/add": {
            "post": _money(
                "deposit",
                "money",
                "Deposit",
                "Adds `amount` coins to the caller's account. With LEDGER_SELF_DEPOSIT=0 (the default on a "
                "durable store) users may not mint coins: 403, and the operator deposits instead." + _TAGGING,
                parameters=["amount", "reference"],
                body="AmountBody",
                failures=_money_errors(_TAGGED_400, {403: ["forbidden"], 422: ["balance_overflow"]}),
            )
        },
        "/account/coins/withdraw": {
            "post": _money(
                "withdraw",
                "money",
                "Withdraw",
                "Takes `amount` coins from the caller's available balance." + _TAGGING,
                parameters=["amount", "reference"],
                body="AmountBody",
                failures=_money_errors(_TAGGED_400, {422: ["insufficient_funds"]}),
            )
        },
        "/account/coins/transfer": {
            "post": _money(
                "transfer",
                "money",
                "Transfer",
                "Moves `amount` coins from the caller to `to`, atomically: both balances change or neither "
                "does. `from` defaults to `username` and must equal it." + _TAGGING,
                parameters=["from", "to", "amount", "reference"],
                body="TransferBody",
                failures=_money_errors(
                    [*_TAGGED_400, "same_account"],
                    {
                        403: ["forbidden"],
                        404: ["account_not_found"],
                        422: ["insufficient_funds", "balance_overflow"],
                    },
                ),
            )
        },
        "/account/coins/batch": {
            "post": _money(
                "batch",
                "money",
                "Many operations in one request",
                f"Up to {MAX_BATCH_ITEMS} operations of the caller, applied in order under one lock "
                "acquisition. `atomic: false`: each item stands alone. `atomic: true`: all apply or none "
                "do; on the first failing item the answer has that item's status and every item's outcome. "
                "Idempotency-Key, If-Match (checked once, before the first item) and X-Timeout-Ms apply to "
                "the whole batch. Each item may carry its own `reference` and `metadata` (in the item object "
                "only), part of the idempotency fingerprint.",
                parameters=[],
                body="BatchBody",
                result="BatchResult",
                failures=_money_errors(
                    [*_TAGGED_400, "invalid_batch", "same_account"],
                    {
                        403: ["forbidden"],
                        404: ["account_not_found"],
                        422: ["insufficient_funds", "balance_overflow"],
                    },
                    shapes={404: atomic_failure, 422: atomic_failure},
                ),
            )
        },
    }


def _hold_paths() -> dict[str, Any]:
    pending = {404: ["hold_not_found"], 409: ["hold_not_pending", "idempotency_key_reused"]}
    return {
        "/account/holds": {
            "post": _money(
                "createHold",
                "holds",
                "Hold money for a payee",
                "Reserves `amount` of the caller's available balance for `to` until it is captured, "
                "voided or expires (after `timeout_s`). Its capture, void and expire records carry the "
                "hold's reference and metadata." + _TAGGING,
                parameters=["to", "amount", "timeout_s", "reference"],
                body="HoldBody",
                result="HoldResult",
                status=201,
                links=_TO_HOLD,
                failures=_money_errors(
                    [*_TAGGED_400, "same_account"], {404: ["account_not_found"], 422: ["insufficient_funds"]}
                ),
            )
        },
        "/account/holds/{hold_id}": {
            "get": _operation(
                "getHold",
                "holds",
                "Read a hold",
                "The hold, to either party.",
                security=_USER,
                parameters=["hold_id", *_ACCOUNT_PARAMETERS],
                responses={
                    "200": answer("The hold.", ref("HoldView")),
                    **_account_errors(_READ_400, {404: ["hold_not_found"]}),
                },
            )
        },
        "/account/holds/{hold_id}/capture": {
            "post": _money(
                "captureHold",
                "holds",
                "Capture a hold",
                "Moves `amount` (default: all of it) from the hold's payer to its payee and releases "
                "the rest. Either party may capture.",
                parameters=["hold_id", "amount"],
                body="CaptureBody",
                result="HoldResult",
                links=_TO_HOLD,
                failures=_money_errors(
                    [*_KEYED_400, "invalid_amount"], {**pending, 422: ["balance_overflow"]}
                ),
            )
        },
        "/account/holds/{hold_id}/void": {
            "post": _money(
                "voidHold",
                "holds",
                "Void a hold",
                "Releases the whole hold. Either party may void.",
                parameters=["hold_id"],
                body="UsernameBody",
                result="HoldResult",
                links=_TO_HOLD,
                failures=_money_errors(_KEYED_400, pending),
            )
        },
    }


_REVERSE_DESCRIPTION = (
    "The recipient of a successful transfer (or of a captured hold) sends `amount` of it (default: all "
    "that is left) back to the sender, as a record of type `reversal` whose `reverses` names the "
    "original; the original then shows `reversed_amount`. Partial reversals add up to at most the "
    "original (400 invalid_amount past what is left, 409 already_reversed once nothing is). Only the "
    "recipient may reverse (404 transaction_not_found for anyone else, as for an unknown id); reversals "
    "are not reversible. If-Match names the caller's version."
)
_REVERSAL_FAILURES = {
    404: ["transaction_not_found", "account_not_found"],
    409: ["already_reversed", "idempotency_key_reused"],
    422: ["insufficient_funds", "balance_overflow"],
}


def _reversal_paths() -> dict[str, Any]:
    return {
        "/account/transactions/{transaction_id}/reverse": {
            "post": _money(
                "reverse",
                "money",
                "Send a transaction back",
                _REVERSE_DESCRIPTION + _TAGGING,
                parameters=["transaction_id", "amount", "reference"],
                body="ReverseBody",
                failures=_money_errors(_TAGGED_400, _REVERSAL_FAILURES),
            )
        },
        "/admin/transactions/{transaction_id}/reverse": {
            "post": _admin_reverse(),
        },
    }


def _admin_reverse() -> Operation:
    operation = _money(
        "adminReverse",
        "admin",
        "The operator reverses a transaction",
        "Sends back `amount` (default: all that is left) of any successful transfer, capture, deposit or "
        "withdrawal: a transfer's (or capture's) back from its recipient to its sender, a deposit's out of "
        "the ledger, a withdrawal's back into its account. It may fail for funds (422), audited as FAILED. "
        "The answer is about the account that sends the money back (a withdrawal's: the one that gets it), "
        "whose version If-Match names. Idempotency-Key: the operator's own namespace." + _TAGGING,
        parameters=["transaction_id", "amount", "reference"],
        body="ReverseBody",
        failures=_money_errors(_TAGGED_400, _REVERSAL_FAILURES),
    )
    operation["security"] = _ADMIN
    operation["parameters"] = [
        parameter for parameter in operation["parameters"] if parameter != parameter_ref("username")
    ]
    return operation


def _account_paths() -> dict[str, Any]:
    at_version = {"username": "$response.body#/username", "header.If-Match": "$response.header.ETag"}
    balance = answer(
        "The caller's account; at a point (`at` or `sequence`), its balance then.",
        {"oneOf": [ref("Balance"), ref("BalanceAt")]},
    )
    balance["headers"]["ETag"] = header_ref("ETagUnlessAtPoint")  # none at a point
    return {
        "/account/coins": {
            "get": _operation(
                "getBalance",
                "account",
                "Balance",
                "The caller's balance, version, money on hold (`held`) and `available` (balance - held). "
                "With `at` (an RFC 3339 time) or `sequence`: the balance right after the caller's last "
                "record at or before that point, and that record's sequence and time (`as_of`), without "
                "an ETag; the last record at or before a time is, of the records created at or before it, "
                "the one with the largest sequence (records are not always stamped in sequence order). "
                "Both at once or a malformed value: 400 invalid_parameter; a point before the caller's "
                "first record: 404 account_not_found. Any other query parameter is ignored.",
                security=_USER,
                parameters=[*_ACCOUNT_PARAMETERS, "at", "sequence"],
                responses={
                    "200": {**balance, "links": _links(("depositAtVersion", "deposit", at_version))},
                    **_account_errors([*_READ_400, "invalid_parameter"], {404: ["account_not_found"]}),
                },
            )
        },
        "/account/transactions": {
            "get": _operation(
                "getHistory",
                "account",
                "Transaction history",
                "The caller's records as sender or receiver, FAILED ones included, newest first. Pages never "
                "repeat or skip a record, even while new ones arrive. " + FILTERS_DESCRIPTION,
                security=_USER,
                parameters=[*_ACCOUNT_PARAMETERS, "limit", "cursor", *FILTER_PARAMETERS],
                responses={
                    "200": answer("One page of records.", ref("History")),
                    # History ends at the last durable record: never storage_unavailable.
                    **_account_errors(
                        [*_READ_400, "invalid_limit", "invalid_cursor", "invalid_parameter"],
                        {503: ["timeout"]},
                    ),
                },
            )
        },
    }


def _operator_money(operation_id: str, summary: str, description: str, refusal: str) -> Operation:
    """A deposit or withdrawal the operator runs on the account in the path."""
    operation = _money(
        operation_id,
        "admin",
        summary,
        description + " Audited like a user's operation. Idempotency-Key (the operator's own namespace; a "
        "key names the account it was used on), If-Match (the account's version) and X-Timeout-Ms apply."
        + _TAGGING,
        parameters=["amount", "reference"],
        body="AmountBody",
        failures=_money_errors(_TAGGED_400, {404: ["account_not_found"], 422: [refusal]}),
    )
    operation["security"] = _ADMIN
    operation["parameters"] = [
        {
            "name": "username",
            "in": "path",
            "required": True,
            "description": "The account whose coins the operator moves.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        },
        *(parameter for parameter in operation["parameters"] if parameter != parameter_ref("username")),
    ]
    return operation


def _admin_paths() -> dict[str, Any]:
    admin_errors = {401: ["unauthorized"], 405: ["method_not_allowed"], 500: ["internal_error"]}
    create_400 = ["invalid_json", "conflicting_parameters", "invalid_username", "missing_parameter"]
    create_400 += ["invalid_token", "invalid_amount", "invalid_timeout"]
    created = answer("The new account and its token.", ref("AccountCreated"))
    verified = {"anyOf": [ref("Verification"), ref("Error")]}
    page_400 = ["invalid_json", "conflicting_parameters", "invalid_limit", "invalid_cursor"]
    return {
        "/admin/accounts": {
            "post": _operation(
                "createAccount",
                "admin",
                "Create an account",
                "Opens an account with an opening balance. The token is generated when not given and shown "
                "only in this answer (only its digest is kept).",
                security=_ADMIN,
                parameters=["username", "X-Timeout-Ms", "X-Request-Id"],
                body="CreateAccountBody",
                responses={
                    "201": {**created, "links": _TO_BALANCE},
                    **errors(
                        {
                            **admin_errors,
                            400: create_400,
                            409: ["account_exists"],
                            413: ["payload_too_large"],
                            503: ["timeout", "storage_unavailable"],
                        }
                    ),
                },
            )
        },
        "/admin/accounts/{username}/deposit": {
            "post": _operator_money(
                "adminDeposit",
                "The operator mints coins",
                "Adds `amount` coins to the account.",
                "balance_overflow",
            )
        },
        "/admin/accounts/{username}/withdraw": {
            "post": _operator_money(
                "adminWithdraw",
                "The operator removes coins",
                "Takes `amount` coins from the account's available balance.",
                "insufficient_funds",
            )
        },
        "/admin/audit": {
            "get": _operation(
                "getAudit",
                "admin",
                "The audit trail",
                "Every record, oldest first, with its place in the hash chain.",
                security=_ADMIN,
                parameters=["limit", "cursor", "X-Request-Id"],
                responses={
                    "200": answer("One page of audit records.", ref("AuditPage")),
                    **errors({**admin_errors, 400: page_400, 413: ["payload_too_large"]}),
                },
            )
        },
        "/admin/transactions": {
            "get": _operation(
                "listTransactions",
                "admin",
                "Search every account's transactions",
                "Every account's records, FAILED ones included, oldest first, that pass the filters; "
                "`counterparty` matches either party. " + FILTERS_DESCRIPTION,
                security=_ADMIN,
                parameters=["limit", "cursor", *FILTER_PARAMETERS, "X-Request-Id"],
                responses={
                    "200": answer("One page of records.", ref("TransactionPage")),
                    **errors(
                        {**admin_errors, 400: [*page_400, "invalid_parameter"], 413: ["payload_too_large"]}
                    ),
                },
            )
        },
        "/admin/audit/checkpoints": {
            "get": _operation(
                "getCheckpoints",
                "admin",
                "The audit trail's checkpoints",
                "Newest first: each a record's sequence, its hash and a digest of every balance right after "
                "it, taken every LEDGER_CHECKPOINT_RECORDS records and at a clean shutdown. A verification "
                "may start from one (`GET /admin/verify?from=<sequence>`).",
                security=_ADMIN,
                parameters=["limit", "cursor", "X-Request-Id"],
                responses={
                    "200": answer("One page of checkpoints.", ref("CheckpointPage")),
                    **errors({**admin_errors, 400: page_400, 413: ["payload_too_large"], 503: ["timeout"]}),
                },
            )
        },
        "/admin/verify": {
            "get": _operation(
                "verifyLedger",
                "admin",
                "Verify the ledger",
                "Checks every balance >= 0, that money is conserved, each balance against the replay of its "
                "audit records, the hash chain, each checkpoint the records pass, and each account's held "
                "money against its pending holds. With `from`, only the records after that checkpoint, "
                "against it, in time proportional to them.",
                security=_ADMIN,
                parameters=["from_checkpoint", "X-Request-Id"],
                responses={
                    "200": answer("Every invariant holds.", ref("Verification")),
                    **errors(
                        {
                            **admin_errors,
                            400: ["invalid_json", "conflicting_parameters", "invalid_parameter"],
                            413: ["payload_too_large"],
                            503: ["timeout"],
                        }
                    ),
                    "500": answer(
                        "A broken invariant (`ok: false`, the problems), or a bug (Error).", verified
                    ),
                },
            )
        },
    }


def _service_paths(asset_names: list[str]) -> dict[str, Any]:
    def public(operation_id: str, summary: str, description: str, responses: dict[str, Any]) -> Operation:
        parameters = ["X-Request-Id"]
        return _operation(
            operation_id,
            "service",
            summary,
            description + " No token.",
            security=_NO_TOKEN,
            parameters=parameters,
            responses={**responses, **errors({405: ["method_not_allowed"]})},
        )

    asset = public(
        "getDocsAsset",
        "An asset of the docs page",
        "Swagger UI's own files, from the flask-swagger-ui package, and the page's initializer.",
        {
            "200": {
                **answer("The file.", TEXT),
                "content": {
                    media: {"schema": TEXT} for media in ("text/css", "text/javascript", "image/png")
                },
            },
            **errors({404: ["not_found"]}),
        },
    )
    asset["parameters"].insert(
        0,
        {"name": "asset", "in": "path", "required": True, "schema": {"type": "string", "enum": asset_names}},
    )
    health = ref("Health")
    probe = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    not_ready = {
        "type": "object",
        "required": ["status", "reason"],
        "properties": {"status": {"const": "not_ready"}, "reason": {"type": "string"}},
    }
    return {
        "/livez": {
            "get": public(
                "getLiveness",
                "Liveness probe",
                "200 while the process serves requests; never calls the store, so that a database outage "
                "does not restart the instance.",
                {"200": answer("Alive.", {**probe, "properties": {"status": {"const": "alive"}}})},
            )
        },
        "/readyz": {
            "get": public(
                "getReadiness",
                "Readiness probe",
                "200 when the store answers and takes writes; 503 with the reason otherwise (a database "
                "outage, a failed journal, a wedged writer).",
                {
                    "200": answer("Ready.", {**probe, "properties": {"status": {"const": "ready"}}}),
                    "503": answer("Not ready, and why.", not_ready),
                },
            )
        },
        "/system/health": {
            "get": public(
                "getHealth",
                "Health",
                "200 when healthy; 503 with the failing component false otherwise.",
                {"200": answer("Healthy.", health), "503": answer("Degraded or unhealthy.", health)},
            )
        },
        "/metrics": {
            "get": public(
                "getMetrics",
                "Prometheus metrics",
                "Request counts and latency histograms per route and status, operations by type and outcome, "
                "lock wait time.",
                {"200": answer("Prometheus text exposition (format 0.0.4).", TEXT, media_type="text/plain")},
            )
        },
        "/openapi.json": {
            "get": public(
                "getOpenApi",
                "This document",
                "The OpenAPI 3.1 description of the whole service.",
                {"200": answer("This document.", {"type": "object", "required": ["openapi", "paths"]})},
            )
        },
        "/docs": {
            "get": public(
                "getDocs",
                "This document for people",
                "Swagger UI 5 rendering this document, every asset served by the service itself.",
                {"200": answer("The page.", TEXT, media_type="text/html")},
            )
        },
        "/docs/assets/{asset}": {"get": asset},
    }


def paths(asset_names: list[str]) -> dict[str, Any]:
    private = {**_account_paths(), **_money_paths(), **_reversal_paths(), **_hold_paths(), **_admin_paths()}
    for path, operations in private.items():
        if not path.startswith(("/account", "/admin")):
            raise ValueError(f"{path} is neither under /account nor under /admin")
        for operation in operations.values():
            for response in operation["responses"].values():
                # Copied: error answers are shared between operations.
                response["headers"] = {**response["headers"], "Cache-Control": header_ref("Cache-Control")}
    return {**private, **_service_paths(asset_names)}
