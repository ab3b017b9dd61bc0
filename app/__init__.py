"""GoLedger: a coin ledger served over HTTP.

``create_app`` is the only way to build the application: configuration, the store,
the blueprints and the error handlers are all attached here.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import click
from flask import Flask, Request
from flask.ctx import RequestContext
from flask.sessions import NullSession, SessionInterface
from werkzeug.wrappers import Response as BaseResponse

from app.config import Config, ConfigError, without_password
from app.ledger.store import LedgerStore

if TYPE_CHECKING:
    from app.ledger.memory import MockDB

_log = logging.getLogger("goledger")

#: The original project's demo accounts, so its README's curl examples run verbatim.
DEMO_ACCOUNTS = (("aaron", "1", 10_000), ("bryan", "2", 10_000))


class _NoSessions(SessionInterface):
    """No cookie sessions: the API is stateless (a token on every request).

    Flask's default interface builds a signing serializer and, without a secret key,
    a fresh ``NullSession`` on every request; this one hands out one shared
    ``NullSession``, which refuses every write just the same.
    """

    _shared = NullSession()

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self._shared

    def save_session(self, app: Flask, session: Any, response: BaseResponse) -> None:
        return None


class LedgerFlask(Flask):
    """Flask with what GoLedger does per request and nothing more: no cookie sessions,
    and the request context of ``request_context_class`` (``create_app`` sets the one
    that records the matched route for the metrics and the request line)."""

    session_interface = _NoSessions()
    request_context_class: type[RequestContext] = RequestContext

    def request_context(self, environ: dict[str, Any]) -> RequestContext:
        return self.request_context_class(self, environ)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application from the environment; ``test_config`` overrides ``Config`` fields."""
    from app import cli, errors, extensions
    from app.api import (
        admin,
        balance,
        batch,
        deposit,
        docs,
        health,
        history,
        holds,
        metrics,
        probes,
        reverse,
        transfer,
        withdraw,
    )
    from app.auth import token_digest
    from app.jsonio import OrjsonProvider
    from app.logs import configure_logging
    from app.observability import Observability, RoutedRequestContext

    config = Config.from_env(os.environ, test_config)
    configure_logging(config.log_level)
    # No static folder: every route is one of the contract's (and in the OpenAPI document).
    app = LedgerFlask(__name__, static_folder=None)
    app.request_context_class = RoutedRequestContext
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    # OPTIONS is answered like any other unsupported method: a JSON 405 with Allow.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    ledger = _build_store(config)
    _close_at_exit(ledger)
    admin_digest = token_digest(config.admin_token) if config.admin_token else None
    extensions.attach(app, config, ledger, admin_digest, Observability(app, ledger))

    errors.init_app(app)
    for module in (
        balance,
        deposit,
        withdraw,
        transfer,
        reverse,
        batch,
        holds,
        history,
        health,
        probes,
        metrics,
        admin,
        docs,
    ):
        app.register_blueprint(module.bp)
    cli.init_app(app)

    if isinstance(ledger, cli.DataDirInUse):
        return app  # an operator command beside the running service: it owns the ledger
    if config.demo:
        _seed_demo(app)
    _warn_of_demo_tokens(app)
    return app


def _close_at_exit(ledger: LedgerStore) -> None:
    """Stop the store's background threads at exit, without keeping the store alive."""
    reference = weakref.ref(ledger)

    def close() -> None:
        alive = reference()
        if alive is not None:
            alive.close()

    atexit.register(close)


def _build_store(config: Config) -> LedgerStore:
    """The store the configuration names: MockDB (in memory, or on a data directory) or PostgreSQL."""
    if config.uses_memory_store:
        from app.ledger.memory import MockDB
        from app.ledger.memory.keys import IdempotencyTable

        options: dict[str, Any] = {
            "idempotency": IdempotencyTable(
                max_keys=config.idempotency_max_keys, max_keys_per_user=config.idempotency_max_keys_per_user
            ),
            "lock_trouble_after_s": config.op_timeout_ms / 1000,
            "checkpoint_records": config.checkpoint_records,
        }
        if config.data_dir is None:
            return MockDB(**options)
        return _open_data_dir(config, options)
    import psycopg
    from psycopg_pool import PoolTimeout

    from app.ledger.postgres import PostgresStore

    try:
        return PostgresStore(
            config.store,
            max_connections=config.pg_pool_size,
            lock_trouble_after_s=config.op_timeout_ms / 1000,
            checkpoint_records=config.checkpoint_records,
        )
    except (psycopg.OperationalError, PoolTimeout) as error:
        reason = without_password(str(error), config.store)
        raise ConfigError(f"Cannot reach the PostgreSQL store named by LEDGER_STORE: {reason}") from None


def _open_data_dir(config: Config, options: dict[str, Any]) -> MockDB:
    from app.cli import DataDirInUse
    from app.ledger.memory import MockDB
    from app.ledger.memory.files import DataDirLocked, JournalError

    data_dir = config.data_dir
    assert data_dir is not None
    try:
        store = MockDB.open(
            data_dir, snapshot_bytes=config.snapshot_bytes, record_cache=config.record_cache, **options
        )
    except DataDirLocked as error:
        if click.get_current_context(silent=True) is None:
            raise ConfigError(f"LEDGER_DATA_DIR: {error}") from None
        # An operator command (``flask --app app ledger ...``) beside the running service:
        # those that need no store (``ledger backup``) still work.
        return cast(MockDB, DataDirInUse(str(error)))
    except JournalError as error:
        # A clear sentence for the operator, not a traceback: the start stops here.
        raise ConfigError(f"LEDGER_DATA_DIR: {error}") from None
    except OSError as error:  # permissions, a read-only mount, a full disk while cutting a torn tail
        raise ConfigError(f"LEDGER_DATA_DIR {data_dir}: {error}") from None
    recovered = store.recovery
    if recovered is not None:
        _log.info(
            "LEDGER_DATA_DIR %s: snapshot %s, %d journal entries replayed, %d audit records",
            data_dir,
            "none" if recovered.snapshot is None else recovered.snapshot.path.name,
            recovered.entries,
            store.stats().audit_records,
        )
    return store


def _seed_demo(app: Flask) -> None:
    """Open the demo accounts, only ever in an empty ledger."""
    from app.auth import token_digest
    from app.extensions import store
    from app.ledger.errors import AccountExists
    from app.ledger.model import Deadline

    ledger = store(app)
    if not ledger.is_empty():
        return
    for username, token, balance in DEMO_ACCOUNTS:
        try:
            ledger.create_account(username, token_digest(token), balance, deadline=Deadline.after_ms(5000))
        except AccountExists:  # another worker process seeded the shared database first
            return


def _warn_of_demo_tokens(app: Flask) -> None:
    """At every start, warn while any demo account still opens with its well-known token."""
    from app.auth import token_digest
    from app.extensions import store

    ledger = store(app)
    open_with_public_tokens = [
        username
        for username, token, _ in DEMO_ACCOUNTS
        if ledger.token_digest(username) == token_digest(token)
    ]
    if open_with_public_tokens:
        _log.warning(
            "demo accounts %s open with well-known tokens (LEDGER_DEMO): anyone can move their coins; "
            "never use them with real value",
            ", ".join(open_with_public_tokens),
        )
