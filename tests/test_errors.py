"""Every error is the contract's JSON shape: unknown routes, wrong methods, bugs."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.content_type == "application/json"
    assert response.json == {"code": 404, "error": "not_found", "message": "No such route."}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/account/coins"),
        ("GET", "/account/coins/add"),
        ("DELETE", "/account/coins/transfer"),
        ("PUT", "/account/coins/withdraw"),
        ("POST", "/system/health"),
        ("GET", "/admin/accounts"),
    ],
)
def test_wrong_method_is_json_405_with_allow(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method, headers={"Authorization": "1"})
    assert response.status_code == 405
    assert response.json["error"] == "method_not_allowed"
    assert response.headers["Allow"]


def test_a_bug_is_json_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    app: Flask = create_app({"demo": False})

    def explode() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/explode", view_func=explode)
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.json == {
        "code": 500,
        "error": "internal_error",
        "message": "An unexpected error occurred.",
    }
    assert "secret internals" not in response.get_data(as_text=True)
    assert "secret internals" in caplog.text
