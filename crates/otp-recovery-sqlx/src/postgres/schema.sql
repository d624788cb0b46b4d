CREATE TABLE IF NOT EXISTS otp_flows (
    id BYTEA PRIMARY KEY,
    subject TEXT NOT NULL,
    state SMALLINT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    seq BIGSERIAL NOT NULL,
    purge_after BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS otp_flows_subject ON otp_flows (subject, seq DESC);
CREATE INDEX IF NOT EXISTS otp_flows_purge ON otp_flows (purge_after);
CREATE TABLE IF NOT EXISTS otp_counters (
    key TEXT PRIMARY KEY,
    count BIGINT NOT NULL,
    resets_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS otp_counters_resets ON otp_counters (resets_at);
CREATE TABLE IF NOT EXISTS otp_cases (
    reference TEXT PRIMARY KEY,
    purge_after BIGINT NOT NULL,
    data BYTEA NOT NULL
);

CREATE OR REPLACE FUNCTION otp_create_flow(
    p_id BYTEA, p_subject TEXT, p_state SMALLINT, p_version BIGINT, p_created BIGINT, p_updated BIGINT,
    p_purge BIGINT, p_data BYTEA
) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    -- The supersede below must see a create committed while this one
    -- waited for the lock: only READ COMMITTED gives each statement a new
    -- snapshot (a pool set to a stricter default would keep two open).
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'otp_create_flow needs READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = '0A000';
    END IF;
    -- Creates of one subject run one at a time, so exactly one stays open.
    PERFORM pg_advisory_xact_lock(hashtextextended('otp:' || p_subject, 0));
    -- Then, in one statement (its snapshot taken under the lock): supersede
    -- and insert.
    WITH superseded AS (
        UPDATE otp_flows SET state = 5, version = version + 1, updated_at = p_created
            WHERE subject = p_subject AND state IN (1, 2, 7)
    )
    INSERT INTO otp_flows (id, subject, state, version, updated_at, purge_after, data)
        VALUES (p_id, p_subject, p_state, p_version, p_updated, p_purge, p_data);
END $$;

CREATE OR REPLACE FUNCTION otp_counters(
    p_keys TEXT[], p_windows BIGINT[], p_bys BIGINT[], p_conds INT[], p_maxes BIGINT[],
    p_guarded BOOLEAN[], p_now BIGINT,
    OUT o_counts BIGINT[], OUT o_resets BIGINT[]
) LANGUAGE plpgsql AS $$
DECLARE
    i INT;
    by_ BIGINT;
    c BIGINT;
    r BIGINT;
    opened BOOLEAN[] := '{}';
    applied BIGINT[] := '{}';
    refused BOOLEAN := false;
BEGIN
    -- Counters are locked in one order (of their lock ids) whatever the
    -- order of the call, so calls that share counters never deadlock; one
    -- statement takes them all.
    PERFORM pg_advisory_xact_lock(l.h) FROM (
        SELECT DISTINCT hashtextextended('otp:ctr:' || u.key, 0) AS h
            FROM unnest(p_keys, p_bys) AS u(key, by_) WHERE u.by_ > 0 ORDER BY 1) l;
    o_counts := '{}';
    o_resets := '{}';
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        by_ := p_bys[i];
        -- A conditional counter counts only if the one it names opened.
        IF p_conds[i] > 0 AND NOT coalesce(opened[p_conds[i]], false) THEN
            by_ := 0;
        END IF;
        IF by_ = 0 THEN
            SELECT count, resets_at INTO c, r FROM otp_counters WHERE key = p_keys[i];
            IF NOT FOUND OR r <= p_now THEN
                c := 0;
                r := NULL;
            END IF;
        ELSE
            INSERT INTO otp_counters AS t (key, count, resets_at)
                VALUES (p_keys[i], by_, p_now + p_windows[i])
                ON CONFLICT (key) DO UPDATE SET
                    count = CASE WHEN t.resets_at > p_now THEN t.count + by_ ELSE by_ END,
                    resets_at = CASE WHEN t.resets_at > p_now THEN t.resets_at ELSE p_now + p_windows[i] END
                RETURNING t.count, t.resets_at INTO c, r;
        END IF;
        opened[i] := by_ > 0 AND c = by_ AND r = p_now + p_windows[i];
        applied := applied || by_;
        -- A counter with a maximum (-1: none) that ends above it refuses.
        IF p_maxes[i] >= 0 AND c > p_maxes[i] THEN
            refused := true;
        END IF;
        o_counts := o_counts || c;
        o_resets := o_resets || r;
    END LOOP;
    -- A refused call spends nothing: undo the guarded increments.
    IF refused THEN
        FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
            IF p_guarded[i] AND applied[i] > 0 THEN
                UPDATE otp_counters SET count = count - applied[i]
                    WHERE key = p_keys[i] AND resets_at > p_now;
                DELETE FROM otp_counters WHERE key = p_keys[i] AND count <= 0;
            END IF;
        END LOOP;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION otp_swap_counting(
    p_id BYTEA, p_expected BIGINT, p_state SMALLINT, p_version BIGINT, p_updated BIGINT,
    p_purge BIGINT, p_data BYTEA,
    p_keys TEXT[], p_windows BIGINT[], p_bys BIGINT[], p_conds INT[], p_maxes BIGINT[],
    p_guarded BOOLEAN[], p_now BIGINT,
    OUT o_swapped BOOLEAN, OUT o_counts BIGINT[], OUT o_resets BIGINT[]
) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE otp_flows SET state = p_state, version = p_version, updated_at = p_updated,
            purge_after = p_purge, data = p_data
        WHERE id = p_id AND version = p_expected;
    o_swapped := FOUND;
    IF o_swapped THEN
        SELECT c.o_counts, c.o_resets INTO o_counts, o_resets
            FROM otp_counters(p_keys, p_windows, p_bys, p_conds, p_maxes, p_guarded, p_now) c;
    END IF;
END $$;
