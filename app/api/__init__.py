"""HTTP blueprints: one per operation, each delegating to the ledger store."""
