-- Market data: instruments, public trades (partitioned by month), OHLC bars, ticker snapshots.

CREATE TABLE instruments (
    exchange             text        NOT NULL,
    instrument_name      text        NOT NULL,
    market_type          text        NOT NULL
                         CHECK (market_type IN ('spot', 'perpetual', 'future', 'option')),
    base_currency        text        NOT NULL,
    quote_currency       text        NOT NULL,
    tick_size            numeric     NOT NULL,
    min_trade_amount     numeric     NOT NULL,
    contract_size        numeric     NOT NULL DEFAULT 1,
    min_notional         numeric,
    expiration_timestamp timestamptz,
    is_active            boolean     NOT NULL DEFAULT true,
    raw                  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, instrument_name)
);

-- The venue's tape. Uniqueness includes trade_timestamp because a partitioned table's unique
-- keys must contain the partition key; a venue never changes a trade's time, so
-- (exchange, instrument_name, trade_id) stays unique in practice and the writer relies on it.
CREATE TABLE public_trades (
    exchange             text        NOT NULL,
    instrument_name      text        NOT NULL,
    market_type          text        NOT NULL,
    trade_id             text        NOT NULL,
    trade_seq            bigint      NOT NULL,
    price                numeric     NOT NULL CHECK (price > 0),
    quantity             numeric     NOT NULL CHECK (quantity > 0),
    is_buyer_maker       boolean     NOT NULL,
    was_best_price_match boolean,
    trade_timestamp      timestamptz NOT NULL,
    received_at          timestamptz NOT NULL,
    PRIMARY KEY (exchange, instrument_name, trade_id, trade_timestamp)
) PARTITION BY RANGE (trade_timestamp);
CREATE INDEX public_trades_seq ON public_trades (exchange, instrument_name, trade_seq);

-- Monthly partitions, created on demand by the persister (and ahead of time at start-up);
-- retention drops whole partitions.
CREATE FUNCTION tradingd_ensure_trades_partition(month_start date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month_start)::date;
    part text := format('public_trades_y%sm%s',
                        to_char(first_day, 'YYYY'), to_char(first_day, 'MM'));
BEGIN
    IF to_regclass(part) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF public_trades FOR VALUES FROM (%L) TO (%L)',
                part, first_day::timestamp AT TIME ZONE 'UTC',
                (first_day + interval '1 month') AT TIME ZONE 'UTC');
        EXCEPTION WHEN duplicate_table THEN
            NULL;  -- created concurrently by another session
        END;
    END IF;
    RETURN part;
END $$;

CREATE TABLE ohlc (
    exchange        text        NOT NULL,
    instrument_name text        NOT NULL,
    resolution      text        NOT NULL,
    tick            timestamptz NOT NULL,
    open            numeric     NOT NULL,
    high            numeric     NOT NULL,
    low             numeric     NOT NULL,
    close           numeric     NOT NULL,
    volume          numeric     NOT NULL,
    closed          boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, instrument_name, resolution, tick)
);
CREATE INDEX ohlc_tick ON ohlc (tick);

CREATE TABLE tickers (
    exchange         text        NOT NULL,
    instrument_name  text        NOT NULL,
    snapshot_at      timestamptz NOT NULL,
    ticker_timestamp timestamptz NOT NULL,
    best_bid_price   numeric,
    best_bid_amount  numeric,
    best_ask_price   numeric,
    best_ask_amount  numeric,
    last_price       numeric,
    mark_price       numeric,
    index_price      numeric,
    PRIMARY KEY (exchange, instrument_name, snapshot_at)
);

CREATE TABLE data_gaps (
    id              bigserial   PRIMARY KEY,
    exchange        text        NOT NULL,
    instrument_name text        NOT NULL,
    first_seq       bigint      NOT NULL,
    last_seq        bigint      NOT NULL CHECK (last_seq >= first_seq),
    detected_at     timestamptz NOT NULL DEFAULT now(),
    repaired_at     timestamptz,
    status          text        NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'repaired', 'unfillable')),
    reason          text        NOT NULL
);
CREATE INDEX data_gaps_open ON data_gaps (exchange, instrument_name) WHERE status = 'open';
