"""Every error leaves the service in the contract's JSON shape.

``{"code": 422, "error": "insufficient_funds", "message": "..."}``: ledger failures,
HTTP errors raised by Flask/Werkzeug (404, 405, 413…), and bugs (500, details only
in the log). Never an HTML page, never a traceback.
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.jsonio import json_response
from app.ledger.errors import LedgerError

_log = logging.getLogger("goledger.errors")

_HTTP_CODES = {
    400: "invalid_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}

_HTTP_MESSAGES = {
    400: "The request body could not be read.",
    404: "No such route.",
    405: "This method is not allowed on this route.",
    413: "The request body is larger than the limit.",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(
        {"code": status, "error": code, "message": message}, status, headers.items() if headers else ()
    )


def _ledger_error(error: LedgerError) -> Response:
    return error_response(error.status, error.code, error.message, error.headers)


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status >= 500:
        return _internal_error(error)
    code = _HTTP_CODES.get(status, error.name.lower().replace(" ", "_"))
    message = _HTTP_MESSAGES.get(status, error.description or error.name)
    headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    if status == 413:
        # The rest of the body was not read, so the connection cannot carry another request.
        headers["Connection"] = "close"
    return error_response(status, code, message, headers)


def _internal_error(error: Exception) -> Response:
    _log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "An unexpected error occurred.")


def init_app(app: Flask) -> None:
    app.register_error_handler(LedgerError, _ledger_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
