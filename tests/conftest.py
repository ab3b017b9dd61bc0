"""Fixtures: the app built from the factory with a test config, its client, a bare store."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app import create_app
from app.auth import token_digest
from app.ledger.memory import MockDB
from app.ledger.model import Deadline

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def app() -> Flask:
    application = create_app({"admin_token": ADMIN_TOKEN, "demo": True})
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def store() -> MockDB:
    return MockDB()


def open_account(store: MockDB, username: str, balance: int, token: str | None = None) -> None:
    """Open an account directly in a store (token defaults to the username)."""
    store.create_account(username, token_digest(token or username), balance, deadline=Deadline.after_ms(5000))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": token}
