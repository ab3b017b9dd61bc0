"""Headers every answer carries: ``nosniff`` everywhere, ``no-store`` on ``/account`` and ``/admin``.

(Answers gunicorn writes itself, for requests that never reach the app: test_http_edges.py.)
"""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.stores import ADMIN_TOKEN

USER = {"Authorization": "1"}
ADMIN = {"Authorization": ADMIN_TOKEN}

PRIVATE = [
    ("GET", "/account/coins?username=aaron", USER, 200),
    ("POST", "/account/coins/add?username=aaron&amount=1", USER, 200),
    ("POST", "/account/coins/withdraw?username=aaron&amount=10000000", USER, 422),
    ("GET", "/account/coins?username=aaron", {"Authorization": "wrong"}, 401),
    ("GET", "/account/transactions?username=aaron", USER, 200),
    ("DELETE", "/account/coins?username=aaron", USER, 405),
    ("GET", "/account/nothing-here", USER, 404),
    ("GET", "/admin/audit", ADMIN, 200),
    ("POST", "/admin/accounts", ADMIN, 400),
    ("GET", "/admin/verify", {}, 401),
]
PUBLIC = [
    ("GET", "/system/health", {}, 200),
    ("GET", "/livez", {}, 200),
    ("GET", "/readyz", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("GET", "/openapi.json", {}, 200),
    ("GET", "/docs", {}, 200),
    ("GET", "/no/such/route", {}, 404),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "private"),
    [(*case, True) for case in PRIVATE] + [(*case, False) for case in PUBLIC],
)
def test_no_answer_is_sniffed_and_account_and_admin_answers_are_never_cached(
    client: FlaskClient, method: str, path: str, headers: dict[str, str], status: int, private: bool
) -> None:
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if private:
        assert response.headers["Cache-Control"] == "no-store"
    else:
        assert "no-store" not in response.headers.get("Cache-Control", "")


def test_an_unexpected_error_is_not_sniffed_either(client: FlaskClient) -> None:
    app = client.application

    @app.get("/account/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    response = client.get("/account/boom")
    assert response.status_code == 500
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
