-- GoLedger's ledger on PostgreSQL: accounts, holds, the audit trail and its hash
-- chain, idempotency keys. Applied once by app/ledger/pgschema.py, in one transaction.

CREATE TABLE accounts (
    username     text PRIMARY KEY,
    token_digest bytea NOT NULL,
    balance      bigint NOT NULL,
    held         bigint NOT NULL DEFAULT 0,
    version      bigint NOT NULL DEFAULT 0,
    -- The second line of defence: the store checks these before it writes.
    CONSTRAINT balance_not_negative CHECK (balance >= 0),
    CONSTRAINT held_within_balance CHECK (held >= 0 AND held <= balance),
    CONSTRAINT version_not_negative CHECK (version >= 0)
);

-- The head of the hash chain: one row, locked by every append as its last step
-- before commit. It makes the sequence gap-free and the chain linear.
CREATE TABLE chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sequence  bigint NOT NULL CHECK (sequence >= 0),
    hash      text NOT NULL
);
INSERT INTO chain_head (singleton, sequence, hash) VALUES (true, 0, repeat('0', 64));

CREATE TABLE audit (
    sequence      bigint PRIMARY KEY CHECK (sequence >= 1),
    id            text NOT NULL UNIQUE,
    type          text NOT NULL,
    source        text,
    target        text,
    amount        bigint NOT NULL CHECK (amount >= 0),
    status        text NOT NULL CHECK (status IN ('SUCCESS', 'FAILED')),
    reason        text,
    created_at    text NOT NULL,
    previous_hash text NOT NULL,
    hash          text NOT NULL
);

-- Which accounts' history shows a record (both parties of a success, the caller
-- alone for a failure): history pages walk this index newest first.
CREATE TABLE audit_parties (
    username text NOT NULL,
    sequence bigint NOT NULL REFERENCES audit (sequence),
    PRIMARY KEY (username, sequence)
);

CREATE TABLE holds (
    id           text PRIMARY KEY,
    source       text NOT NULL REFERENCES accounts (username),
    target       text NOT NULL REFERENCES accounts (username),
    amount       bigint NOT NULL CHECK (amount >= 1),
    captured     bigint NOT NULL DEFAULT 0,
    status       text NOT NULL CHECK (status IN ('PENDING', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    -- Seconds since the epoch on the application's wall clock (as the embedded store).
    expires_at_s double precision NOT NULL,
    created_at   text NOT NULL,
    CONSTRAINT captured_within_amount CHECK (captured >= 0 AND captured <= amount)
);
CREATE INDEX holds_pending_by_source ON holds (source, expires_at_s) WHERE status = 'PENDING';
CREATE INDEX holds_pending_by_target ON holds (target, expires_at_s) WHERE status = 'PENDING';
CREATE INDEX holds_pending_by_deadline ON holds (expires_at_s) WHERE status = 'PENDING';

-- One row per (user, key), inserted in the same transaction as the operation it
-- guards; a concurrent retry's INSERT waits on the unique index until that
-- transaction ends, then finds the committed outcome.
CREATE TABLE idempotency_keys (
    username    text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    outcome     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (username, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
