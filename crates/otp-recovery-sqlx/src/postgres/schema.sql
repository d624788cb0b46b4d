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

-- Inserts a flow if the subject's newest flow is still p_newest at
-- p_newest_version (both null: none), writing that flow's replacement
-- (p_next_*, null: none) in the same transaction. o_inserted is null for
-- a taken id, false (with the newest flow's row) when the newest flow is
-- another.
CREATE OR REPLACE FUNCTION otp_insert_flow(
    p_id BYTEA, p_subject TEXT, p_state SMALLINT, p_version BIGINT, p_updated BIGINT,
    p_purge BIGINT, p_data BYTEA, p_newest BYTEA, p_newest_version BIGINT,
    p_next_state SMALLINT, p_next_version BIGINT, p_next_updated BIGINT, p_next_purge BIGINT,
    p_next_data BYTEA,
    OUT o_inserted BOOLEAN, OUT o_id BYTEA, OUT o_version BIGINT, OUT o_data BYTEA
) LANGUAGE plpgsql AS $$
BEGIN
    -- The read below must see a create committed while this one waited
    -- for the lock: only READ COMMITTED gives each statement a new
    -- snapshot (a pool set to a stricter default would keep the old one).
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'otp_insert_flow needs READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = '0A000';
    END IF;
    PERFORM 1 FROM otp_flows WHERE id = p_id;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Creates of one subject run one at a time. A stale create reads
    -- only, so it writes nothing to the log.
    PERFORM pg_advisory_xact_lock(hashtextextended('otp:' || p_subject, 0));
    SELECT id, version, data INTO o_id, o_version, o_data FROM otp_flows
        WHERE subject = p_subject ORDER BY seq DESC LIMIT 1;
    IF o_id IS DISTINCT FROM p_newest OR o_version IS DISTINCT FROM p_newest_version THEN
        o_inserted := false;
        RETURN;
    END IF;
    -- The newest row is replaced or locked at the version read, so that no
    -- swap changes it before this commits; one that got there first makes
    -- this create stale.
    IF p_next_data IS NOT NULL THEN
        UPDATE otp_flows SET state = p_next_state, version = p_next_version,
                updated_at = p_next_updated, purge_after = p_next_purge, data = p_next_data
            WHERE id = p_newest AND version = p_newest_version;
    ELSIF p_newest IS NOT NULL THEN
        PERFORM 1 FROM otp_flows WHERE id = p_newest AND version = p_newest_version FOR UPDATE;
    END IF;
    IF p_newest IS NOT NULL AND NOT FOUND THEN
        SELECT id, version, data INTO o_id, o_version, o_data FROM otp_flows WHERE id = p_newest;
        o_inserted := false;
        RETURN;
    END IF;
    INSERT INTO otp_flows (id, subject, state, version, updated_at, purge_after, data)
        VALUES (p_id, p_subject, p_state, p_version, p_updated, p_purge, p_data);
    o_inserted := true;
    o_id := NULL;
    o_version := NULL;
    o_data := NULL;
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
