"""Configuration: the environment, read in this one place, into one frozen ``Config``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: The contract's body limit: larger bodies are answered ``413 payload_too_large``.
MAX_BODY_BYTES = 1024 * 1024
#: Bounds of a per-request deadline (``X-Timeout-Ms``) and of the configured default.
MIN_TIMEOUT_MS = 1
MAX_TIMEOUT_MS = 60_000


class ConfigError(ValueError):
    """The environment holds a value the service cannot start with."""


@dataclass(frozen=True, slots=True)
class Config:
    store: str = "memory"
    data_dir: str | None = None
    admin_token: str | None = None
    demo: bool = True
    #: Users may deposit into their own account (``POST /account/coins/add``).
    self_deposit: bool = True
    op_timeout_ms: int = 2000
    port: int = 3000
    max_body_bytes: int = MAX_BODY_BYTES
    log_level: str = "INFO"
    idempotency_max_keys: int = 1_000_000
    #: One user's share of ``idempotency_max_keys`` (the embedded store's table).
    idempotency_max_keys_per_user: int = 10_000
    #: Connections each worker process may open to PostgreSQL (the pool's maximum).
    pg_pool_size: int = 10
    #: With ``data_dir``: snapshot once the journal's current segment grows past this (0: never).
    snapshot_bytes: int = 64 * 1024 * 1024
    #: A checkpoint (and, with ``data_dir``, a state snapshot) every this many audit records.
    checkpoint_records: int = 50_000
    #: With ``data_dir``: audit records kept in memory besides those on disk (recent ones).
    record_cache: int = 50_000

    @property
    def uses_memory_store(self) -> bool:
        return self.store == "memory"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Config:
        """Read the contract's variables; ``overrides`` (tests) win over the environment."""
        store = environ.get("LEDGER_STORE", "memory").strip() or "memory"
        if store != "memory" and not store.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"LEDGER_STORE must be 'memory' or a postgresql:// URL, not {redacted_url(store)!r}"
            )
        data_dir = environ.get("LEDGER_DATA_DIR") or None
        # Demo accounts and self-deposits only for a ledger that is gone at the next start:
        # anything durable gets them only when asked for explicitly.
        open_default = "1" if store == "memory" and data_dir is None else "0"
        config = cls(
            store=store,
            data_dir=data_dir,
            admin_token=environ.get("LEDGER_ADMIN_TOKEN") or None,
            demo=_flag("LEDGER_DEMO", environ.get("LEDGER_DEMO", open_default)),
            self_deposit=_flag("LEDGER_SELF_DEPOSIT", environ.get("LEDGER_SELF_DEPOSIT", open_default)),
            op_timeout_ms=_integer(
                "LEDGER_OP_TIMEOUT_MS",
                environ.get("LEDGER_OP_TIMEOUT_MS", "2000"),
                MIN_TIMEOUT_MS,
                MAX_TIMEOUT_MS,
            ),
            port=_integer("PORT", environ.get("PORT", "3000"), 1, 65535),
            log_level=_log_level(environ.get("LEDGER_LOG_LEVEL", "INFO")),
            idempotency_max_keys=_integer(
                "LEDGER_IDEMPOTENCY_MAX_KEYS",
                environ.get("LEDGER_IDEMPOTENCY_MAX_KEYS", "1000000"),
                1,
                100_000_000,
            ),
            idempotency_max_keys_per_user=_integer(
                "LEDGER_IDEMPOTENCY_MAX_KEYS_PER_USER",
                environ.get("LEDGER_IDEMPOTENCY_MAX_KEYS_PER_USER", "10000"),
                1,
                100_000_000,
            ),
            pg_pool_size=_integer("LEDGER_PG_POOL_SIZE", environ.get("LEDGER_PG_POOL_SIZE", "10"), 1, 1000),
            snapshot_bytes=_integer(
                "LEDGER_SNAPSHOT_BYTES",
                environ.get("LEDGER_SNAPSHOT_BYTES", str(64 * 1024 * 1024)),
                0,
                2**33,
            ),
            checkpoint_records=_integer(
                "LEDGER_CHECKPOINT_RECORDS", environ.get("LEDGER_CHECKPOINT_RECORDS", "50000"), 1, 10**9
            ),
            record_cache=_integer(
                "LEDGER_RECORD_CACHE", environ.get("LEDGER_RECORD_CACHE", "50000"), 0, 10**9
            ),
        )
        return dataclasses.replace(config, **dict(overrides or {}))


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable>"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def without_password(text: str, url: str) -> str:
    """``text`` (an error message that may quote ``url``) with ``url``'s password masked."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text if not password else text.replace(password, "***")


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {value!r}")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LEDGER_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {value!r}")
    return level


def _integer(name: str, value: str, low: int, high: int) -> int:
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,10}", text) is None or not low <= int(text) <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return int(text)
