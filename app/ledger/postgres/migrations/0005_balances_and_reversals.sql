-- Balances in time and reversals. Every record carries its parties' balances right after
-- it (NULL on the records written before, whose hash covers no balance), a reversal
-- names the transaction it reverses, and a reversed transaction keeps how much of it
-- has been reversed (not hashed: like a hold's status, it changes after the record).
-- Applies to a populated ledger: each account's balance after each of its records is
-- replayed here into audit_parties.balance_after, which a balance at a past point reads.

ALTER TABLE audit
    ADD COLUMN from_balance_after bigint,
    ADD COLUMN to_balance_after bigint,
    ADD COLUMN reverses text,
    ADD COLUMN reversed_amount bigint NOT NULL DEFAULT 0;
ALTER TABLE audit ADD CONSTRAINT reversed_within_amount CHECK (reversed_amount >= 0 AND reversed_amount <= amount);
ALTER TABLE audit_parties ADD COLUMN balance_after bigint;

-- Only successes change a balance, and every success is in both of its parties' rows.
UPDATE audit_parties AS p
SET balance_after = replayed.balance_after
FROM (
    SELECT q.username, q.sequence,
        sum(
            CASE WHEN a.status = 'SUCCESS' AND a.target = q.username
                      AND a.type IN ('open', 'deposit', 'transfer', 'capture') THEN a.amount ELSE 0 END
            - CASE WHEN a.status = 'SUCCESS' AND a.source = q.username
                        AND a.type IN ('withdrawal', 'transfer', 'capture') THEN a.amount ELSE 0 END
        ) OVER (PARTITION BY q.username ORDER BY q.sequence) AS balance_after
    FROM audit_parties AS q JOIN audit AS a ON a.sequence = q.sequence
) AS replayed
WHERE replayed.username = p.username AND replayed.sequence = p.sequence;

CREATE INDEX audit_reversals ON audit (reverses) WHERE reverses IS NOT NULL;

-- goledger_append as in 0004, with each record's balances after it and the id it reverses
-- (and each party row's balance after it).
DROP FUNCTION goledger_append(
    text[], text[], text[], text[], bigint[], text[], text[], text[], text[], jsonb[], bytea[], text[], integer[]
);

CREATE FUNCTION goledger_append(
    record_ids text[],
    record_types text[],
    record_sources text[],
    record_targets text[],
    record_amounts bigint[],
    record_statuses text[],
    record_reasons text[],
    record_created_at text[],
    record_references text[],
    record_metadata jsonb[],
    record_from_balances bigint[],
    record_to_balances bigint[],
    record_reverses text[],
    record_tails bytea[],
    party_names text[],
    party_records integer[]  -- the 1-based position, in the arrays above, of each party's record
) RETURNS TABLE (sealed_sequence bigint, sealed_previous_hash text, sealed_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    head_sequence bigint;
    head_hash text;
    head_latest_at text;
    sequences bigint[] := '{}';
    previous_hashes text[] := '{}';
    hashes text[] := '{}';
    latests text[] := '{}';
BEGIN
    SELECT c.sequence, c.hash, c.latest_at INTO head_sequence, head_hash, head_latest_at
    FROM chain_head AS c FOR NO KEY UPDATE;
    FOR position IN 1 .. coalesce(array_length(record_ids, 1), 0) LOOP
        IF record_created_at[position] < head_latest_at THEN
            latests := array_append(latests, head_latest_at);
        ELSE
            latests := array_append(latests, NULL::text);
            head_latest_at := record_created_at[position];
        END IF;
        head_sequence := head_sequence + 1;
        sequences := sequences || head_sequence;
        previous_hashes := previous_hashes || head_hash;
        head_hash := encode(
            sha256(convert_to(head_hash || '[' || head_sequence::text, 'UTF8') || record_tails[position]), 'hex'
        );
        hashes := hashes || head_hash;
    END LOOP;
    INSERT INTO audit (
        sequence, id, type, source, target, amount, status, reason, created_at, reference, metadata,
        from_balance_after, to_balance_after, reverses, latest_at, previous_hash, hash
    )
    SELECT * FROM unnest(
        sequences, record_ids, record_types, record_sources, record_targets, record_amounts,
        record_statuses, record_reasons, record_created_at, record_references, record_metadata,
        record_from_balances, record_to_balances, record_reverses, latests, previous_hashes, hashes
    );
    -- Joined by position, not record_types[p.position] and the like (see 0004).
    INSERT INTO audit_parties (username, sequence, type, status, amount, created_at, counterparty, balance_after)
    SELECT p.name, r.sequence, r.type, r.status, r.amount, r.created_at,
        CASE WHEN r.source = p.name THEN r.target ELSE r.source END,
        CASE WHEN r.source = p.name THEN r.from_balance ELSE r.to_balance END
    FROM unnest(party_names, party_records) AS p(name, position)
    JOIN unnest(sequences, record_types, record_statuses, record_amounts, record_created_at, record_sources,
        record_targets, record_from_balances, record_to_balances) WITH ORDINALITY
        AS r(sequence, type, status, amount, created_at, source, target, from_balance, to_balance, position)
        ON r.position = p.position;
    UPDATE chain_head SET sequence = head_sequence, hash = head_hash, latest_at = head_latest_at;
    RETURN QUERY SELECT * FROM unnest(sequences, previous_hashes, hashes);
END
$$;
