-- Tags and filters: records and holds carry the caller's reference and metadata, and
-- history and /admin/transactions pages filter in indexes. Applies to a populated
-- ledger: the new audit and holds columns are NULL for every row written before
-- (records without a tag, hashed as before); audit_parties gets copies of the
-- columns a history filter reads (backfilled here from audit), so that a filtered
-- history page walks one account's index entries without visiting every record.

ALTER TABLE audit ADD COLUMN reference text, ADD COLUMN metadata jsonb;
ALTER TABLE holds ADD COLUMN reference text, ADD COLUMN metadata jsonb;

-- Each row's columns as seen from its account: ``counterparty`` is the other party
-- (NULL when there is none), which is what a history's counterparty filter compares.
ALTER TABLE audit_parties
    ADD COLUMN type text, ADD COLUMN status text, ADD COLUMN amount bigint,
    ADD COLUMN created_at text, ADD COLUMN counterparty text;
UPDATE audit_parties AS p
SET type = a.type, status = a.status, amount = a.amount, created_at = a.created_at,
    counterparty = CASE WHEN a.source = p.username THEN a.target ELSE a.source END
FROM audit AS a WHERE a.sequence = p.sequence;
ALTER TABLE audit_parties
    ALTER COLUMN type SET NOT NULL, ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN amount SET NOT NULL, ALTER COLUMN created_at SET NOT NULL;

-- History (one account, newest first): the primary key (username, sequence) serves
-- no filter and the loose ones (amount ranges, a common type); these serve the
-- selective ones, each in sequence order within the account.
CREATE INDEX audit_parties_by_type ON audit_parties (username, type, sequence);
CREATE INDEX audit_parties_failed ON audit_parties (username, sequence) WHERE status = 'FAILED';
CREATE INDEX audit_parties_by_counterparty ON audit_parties (username, counterparty, sequence);
CREATE INDEX audit_parties_by_time ON audit_parties (username, created_at);
CREATE INDEX audit_parties_by_amount ON audit_parties (username, amount);

-- /admin/transactions (every account, oldest first) and the tags of both.
CREATE INDEX audit_by_reference ON audit (reference) WHERE reference IS NOT NULL;
CREATE INDEX audit_by_metadata ON audit USING gin (metadata jsonb_path_ops);
CREATE INDEX audit_by_type ON audit (type, sequence);
CREATE INDEX audit_failed ON audit (sequence) WHERE status = 'FAILED';
CREATE INDEX audit_by_source ON audit (source, sequence);
CREATE INDEX audit_by_target ON audit (target, sequence);
CREATE INDEX audit_by_time ON audit (created_at);
CREATE INDEX audit_by_amount ON audit (amount);

-- goledger_append as in 0002, with each record's reference and metadata, and the
-- party rows' copies of the filtered columns.
DROP FUNCTION goledger_append(
    text[], text[], text[], text[], bigint[], text[], text[], text[], bytea[], text[], integer[]
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
    record_tails bytea[],
    party_names text[],
    party_records integer[]  -- the 1-based position, in the arrays above, of each party's record
) RETURNS TABLE (sealed_sequence bigint, sealed_previous_hash text, sealed_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    head_sequence bigint;
    head_hash text;
    first_sequence bigint;
    sequences bigint[] := '{}';
    previous_hashes text[] := '{}';
    hashes text[] := '{}';
BEGIN
    SELECT c.sequence, c.hash INTO head_sequence, head_hash FROM chain_head AS c FOR NO KEY UPDATE;
    first_sequence := head_sequence + 1;
    FOR position IN 1 .. coalesce(array_length(record_ids, 1), 0) LOOP
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
        previous_hash, hash
    )
    SELECT * FROM unnest(
        sequences, record_ids, record_types, record_sources, record_targets, record_amounts,
        record_statuses, record_reasons, record_created_at, record_references, record_metadata,
        previous_hashes, hashes
    );
    INSERT INTO audit_parties (username, sequence, type, status, amount, created_at, counterparty)
    SELECT p.name, first_sequence + p.position - 1, record_types[p.position], record_statuses[p.position],
        record_amounts[p.position], record_created_at[p.position],
        CASE WHEN record_sources[p.position] = p.name THEN record_targets[p.position]
             ELSE record_sources[p.position] END
    FROM unnest(party_names, party_records) AS p(name, position);
    UPDATE chain_head SET sequence = head_sequence, hash = head_hash;
    RETURN QUERY SELECT * FROM unnest(sequences, previous_hashes, hashes);
END
$$;
