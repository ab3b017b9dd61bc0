-- Seal and append audit records inside the database, so that the chain head's row
-- lock (the global serialisation point) is held only while this function and the
-- COMMIT after it run on the server: no client round trip, no Python thread waiting
-- for the GIL, while every other transaction waits for the head.
--
-- The application sends each record's canonical encoding without its sequence
-- number (``tail``: the bytes after "[<sequence>" in app.ledger.audit's encoding);
-- the function numbers the records and chains them exactly as
-- app.ledger.audit.chain_hash does: sha256(previous_hash || "[" || sequence || tail).

CREATE FUNCTION goledger_append(
    record_ids text[],
    record_types text[],
    record_sources text[],
    record_targets text[],
    record_amounts bigint[],
    record_statuses text[],
    record_reasons text[],
    record_created_at text[],
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
    INSERT INTO audit (sequence, id, type, source, target, amount, status, reason, created_at, previous_hash, hash)
    SELECT * FROM unnest(
        sequences, record_ids, record_types, record_sources, record_targets, record_amounts,
        record_statuses, record_reasons, record_created_at, previous_hashes, hashes
    );
    INSERT INTO audit_parties (username, sequence)
    SELECT p.name, first_sequence + p.position - 1 FROM unnest(party_names, party_records) AS p(name, position);
    UPDATE chain_head SET sequence = head_sequence, hash = head_hash;
    RETURN QUERY SELECT * FROM unnest(sequences, previous_hashes, hashes);
END
$$;
