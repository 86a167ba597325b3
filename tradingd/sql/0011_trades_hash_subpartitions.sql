-- Each new month of public_trades is split by a hash of (exchange, instrument_name) into 16
-- partitions. A B-tree insert whose key is the largest in its index skips the descent from the
-- root (PostgreSQL's rightmost-leaf fast path); trades of one instrument arrive in trade_seq
-- order, so an instrument with an index of its own takes that path for nearly every trade, where
-- instruments sharing one index interleave and all but the last in key order descend. Measured
-- with COPY of 1M trades of 4 interleaved instruments: 4.2 s into one month partition, 3.5 s
-- into 16 hashed ones (two of the four sharing one). Months created before stay as they are.
CREATE OR REPLACE FUNCTION tradingd_ensure_trades_partition(month_start date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month_start)::date;
    part text := format('public_trades_y%sm%s',
                        to_char(first_day, 'YYYY'), to_char(first_day, 'MM'));
    remainder integer;
BEGIN
    IF to_regclass(part) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF public_trades FOR VALUES FROM (%L) TO (%L)'
                ' PARTITION BY HASH (exchange, instrument_name)',
                part, first_day::timestamp AT TIME ZONE 'UTC',
                (first_day + interval '1 month') AT TIME ZONE 'UTC');
            FOR remainder IN 0..15 LOOP
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
                    part || '_h' || lpad(remainder::text, 2, '0'), part, remainder);
            END LOOP;
        EXCEPTION WHEN duplicate_table THEN
            NULL;  -- created concurrently by another session
        END;
    END IF;
    RETURN part;
END $$;
