-- Checkpoints: a place in the hash chain (the record ``sequence`` and its hash) and
-- the digest of every account's balance right after that record
-- (app.ledger.audit.balances_digest). Taken on one MVCC snapshot by any worker and
-- inserted with ON CONFLICT DO NOTHING, so workers that race to the same sequence
-- keep one row. Only adds a table: it applies to a populated ledger as it stands.

CREATE TABLE checkpoints (
    sequence        bigint PRIMARY KEY CHECK (sequence >= 1),
    chain_head      text NOT NULL,
    balances_digest text NOT NULL,
    created_at      text NOT NULL
);
