-- The circuit breaker per exchange (issue 12). Every trip, with its rule, reason and figures.
-- An exchange's breaker is tripped while its last trip is newer than its last unlock (a
-- HEALTHY transition from LOCKED or AUDITING, which only `tradingd unlock` records): a trip
-- survives restarts and nothing but an operator resets it.
CREATE TABLE breaker_trips (
    id       bigserial   PRIMARY KEY,
    exchange text        NOT NULL,
    rule     text        NOT NULL
        CHECK (rule IN ('daily_loss', 'drawdown', 'stale_data', 'venue_failures', 'banned')),
    reason   text        NOT NULL,
    figures  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX breaker_trips_exchange ON breaker_trips (exchange, id DESC);

-- The day's (UTC) equity per PnL currency (realised + unrealised - fees, as the ledger's fills
-- say) when the day began, or when an operator last unlocked, and its peak since: a restart
-- within the day keeps both.
CREATE TABLE breaker_days (
    exchange     text        NOT NULL,
    day          date        NOT NULL,
    start_equity jsonb       NOT NULL,
    peak_equity  jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, day)
);
