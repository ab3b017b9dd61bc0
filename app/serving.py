"""Checks made by the server process before it starts serving."""

from __future__ import annotations

from app.config import Config, ConfigError


def check_worker_count(workers: int, config: Config) -> None:
    """The memory store lives in one process: several workers would each hold their own ledger."""
    if config.uses_memory_store and workers > 1:
        raise ConfigError(
            f"GoLedger's memory store keeps the ledger inside one process, so it cannot run with "
            f"{workers} gunicorn workers: each would hold its own copy of every balance and they "
            f"would silently diverge. Run one worker (raise GUNICORN_THREADS for concurrency) or "
            f"use LEDGER_STORE=postgresql://... for several."
        )
