"""The OpenAPI 3.1 description of the service, built from the code's own limits.

``build_document`` assembles it; ``app.api.docs`` serves it at ``/openapi.json`` and
renders it at ``/docs``. ``tests/test_openapi.py`` keeps it and the app in step: every
route and method of Flask's URL map is in the document and nothing else is, the
document validates as OpenAPI 3.1, and every example matches its schema.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from app.openapi.components import headers, parameters, security_schemes
from app.openapi.paths import paths
from app.openapi.schemas import schemas

_DESCRIPTION = """\
A coin ledger over HTTP: balances, deposits, withdrawals, atomic transfers, batches,
two-phase transfers (holds) and a tamper-evident audit trail.

**Money is an integer** number of coins, 1..10^15 per operation; balances are never
negative and never exceed 2^63-1.

**Parameters** (`username`, `from`, `to`, `amount`, ...) come from the query string
(`?username=aaron&amount=100`) **or** a JSON object body; the same field with different
values in both is `400 conflicting_parameters`, unknown JSON fields are ignored, a body
that is not a JSON object is `400 invalid_json`, a body over 1 MiB is `413 payload_too_large`.

**Authentication**: every `/account` operation needs the caller's `username` and their
token in `Authorization`, bare (`Authorization: 1`) or `Bearer 1`. Admin operations take
the admin token. `/system/health`, `/metrics`, `/openapi.json` and `/docs` need none.

**Errors** always have the shape `{"code": 422, "error": "insufficient_funds", "message": "..."}`
(the `Error` schema lists every code). An unknown route is `404 not_found`; a method a
route does not take is `405 method_not_allowed` with `Allow`. A failed operation changes
no balance, and every money operation that reached the ledger is in the audit trail.
"""

_TAGS = [
    {"name": "account", "description": "The caller's balance and history."},
    {"name": "money", "description": "Deposits, withdrawals, transfers and batches."},
    {"name": "holds", "description": "Two-phase transfers: reserve, then capture or void, exactly once."},
    {"name": "admin", "description": "Accounts, the audit trail and its verification (admin token)."},
    {"name": "service", "description": "Health, metrics and this documentation (no token)."},
]


def _service_version() -> str:
    try:
        return version("goledger")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def build_document(docs_assets: list[str]) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document; ``docs_assets`` are the files ``/docs/assets`` serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GoLedger",
            "version": _service_version(),
            "summary": "A thread-safe coin ledger over HTTP.",
            "description": _DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": _TAGS,
        "paths": paths(docs_assets),
        "components": {
            "schemas": schemas(),
            "parameters": parameters(),
            "headers": headers(),
            "securitySchemes": security_schemes(),
        },
    }
