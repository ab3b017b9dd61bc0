"""Headers every answer carries (the contract's conventions).

``X-Content-Type-Options: nosniff`` on every answer; ``Cache-Control: no-store`` on
answers under ``/account`` and ``/admin``, which hold balances, histories and tokens
that no shared cache or browser history may keep. Answers gunicorn itself writes
(malformed requests that never reach the app) carry ``nosniff`` too
(``app.serving.write_json_error``).
"""

from __future__ import annotations

from flask import Flask, Response, request

_PRIVATE_PREFIXES = ("/account", "/admin")


def _secure(response: Response) -> Response:
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    if request.path.startswith(_PRIVATE_PREFIXES):
        headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    app.after_request(_secure)
