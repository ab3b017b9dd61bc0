"""The PostgreSQL store (placeholder docstring, replaced below)."""

from app.ledger.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
