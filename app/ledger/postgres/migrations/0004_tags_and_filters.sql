-- Tags and filters: records and holds carry the caller's reference and metadata, and
-- history and /admin/transactions pages filter in indexes. Applies to a populated
-- ledger: the new audit and holds columns are NULL for every row written before
-- (records without a tag, hashed as before); audit_parties gets copies of the
-- columns a history filter reads (backfilled here from audit), so that a filtered
-- history page walks one account's index entries without visiting every record.

ALTER TABLE audit ADD COLUMN reference text, ADD COLUMN metadata jsonb;
ALTER TABLE holds ADD COLUMN reference text, ADD COLUMN metadata jsonb;

-- Times. created_at is stamped before a record takes its sequence (under the chain
-- head's lock), so it only nearly grows with the sequence. A record is *late* when it
-- is older than some record before it; audit.latest_at is then the newest created_at
-- before it (NULL for the others; chain_head.latest_at is the newest of all, for
-- goledger_append). Records that are not late have created_at in sequence order, so
-- a time bound is a sequence bound (found in audit_in_time_order); the late records a
-- bound cannot place are those it falls between (created_at, latest_at]: few, found in
-- audit_late (see app/ledger/postgres/pages.py).
ALTER TABLE chain_head ADD COLUMN latest_at text NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN latest_at text;
UPDATE audit AS a SET latest_at = w.newest_before
FROM (
    SELECT sequence, created_at, max(created_at) OVER (
        ORDER BY sequence ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS newest_before
    FROM audit
) AS w
WHERE w.created_at < w.newest_before AND a.sequence = w.sequence;
UPDATE chain_head SET latest_at = coalesce((SELECT max(created_at) FROM audit), '');
CREATE TYPE goledger_time_range AS RANGE (subtype = text);

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
CREATE INDEX audit_parties_by_amount ON audit_parties (username, amount);

-- /admin/transactions (every account, oldest first) and the tags of both.
CREATE INDEX audit_by_reference ON audit (reference) WHERE reference IS NOT NULL;
CREATE INDEX audit_by_metadata ON audit USING gin (metadata jsonb_path_ops);
CREATE INDEX audit_by_type ON audit (type, sequence);
CREATE INDEX audit_failed ON audit (sequence) WHERE status = 'FAILED';
CREATE INDEX audit_by_source ON audit (source, sequence);
CREATE INDEX audit_by_target ON audit (target, sequence);
-- Time bounds (history's too): where a bound falls among the records in time order, and
-- the late records it falls between.
CREATE INDEX audit_in_time_order ON audit (created_at, sequence) WHERE latest_at IS NULL;
CREATE INDEX audit_late ON audit USING gist (goledger_time_range(created_at, latest_at, '(]'))
    WHERE latest_at IS NOT NULL;
CREATE INDEX audit_by_amount ON audit (amount);

-- goledger_append as in 0002, with each record's reference and metadata, its latest_at
-- (and the newest created_at in chain_head), and the party rows' copies of the filtered
-- columns.
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
        latest_at, previous_hash, hash
    )
    SELECT * FROM unnest(
        sequences, record_ids, record_types, record_sources, record_targets, record_amounts,
        record_statuses, record_reasons, record_created_at, record_references, record_metadata,
        latests, previous_hashes, hashes
    );
    -- Joined by position, not record_types[p.position] and the like: the first few calls of
    -- a session plan with the arrays as constants, where finding an element of a text
    -- array walks the elements before it (a batch's party rows took seconds).
    INSERT INTO audit_parties (username, sequence, type, status, amount, created_at, counterparty)
    SELECT p.name, r.sequence, r.type, r.status, r.amount, r.created_at,
        CASE WHEN r.source = p.name THEN r.target ELSE r.source END
    FROM unnest(party_names, party_records) AS p(name, position)
    JOIN unnest(sequences, record_types, record_statuses, record_amounts, record_created_at, record_sources,
        record_targets) WITH ORDINALITY AS r(sequence, type, status, amount, created_at, source, target, position)
        ON r.position = p.position;
    UPDATE chain_head SET sequence = head_sequence, hash = head_hash, latest_at = head_latest_at;
    RETURN QUERY SELECT * FROM unnest(sequences, previous_hashes, hashes);
END
$$;
