"""What ``create_app`` attaches to the application, and the accessors that read it back.

The blueprints and the CLI reach the store, the configuration, the admin token's
digest and the observability objects only through these functions, never through
``current_app.extensions`` directly and never through ``g`` or a module global.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

from app.config import Config
from app.ledger.store import LedgerStore

if TYPE_CHECKING:
    from app.observability import Observability

_STORE = "ledger"
_CONFIG = "ledger_config"
_ADMIN_DIGEST = "ledger_admin_digest"
_OBSERVABILITY = "ledger_observability"


def attach(
    app: Flask, config: Config, ledger: LedgerStore, admin_digest: bytes | None, observability: Observability
) -> None:
    """Attach what the accessors below hand out (once, in ``create_app``)."""
    app.extensions[_CONFIG] = config
    app.extensions[_ADMIN_DIGEST] = admin_digest
    app.extensions[_STORE] = ledger
    app.extensions[_OBSERVABILITY] = observability


def store(app: Flask | None = None) -> LedgerStore:
    """The application's ledger store (the current app's unless ``app`` is given)."""
    ledger: LedgerStore = (app or current_app).extensions[_STORE]
    return ledger


def config(app: Flask | None = None) -> Config:
    settings: Config = (app or current_app).extensions[_CONFIG]
    return settings


def admin_digest() -> bytes | None:
    """The digest of ``LEDGER_ADMIN_TOKEN`` (``None``: the admin endpoints are off)."""
    digest: bytes | None = current_app.extensions[_ADMIN_DIGEST]
    return digest


def observability() -> Observability:
    found: Observability = current_app.extensions[_OBSERVABILITY]
    return found
