-- Account reconciliation: every comparison of the ledger with the venue (open orders, fills,
-- balances), with its outcome and findings, so that `tradingd status` and `tradingd state
-- history` show what was compared and what differed. A report marked baseline holds venue
-- balances consistent with the ledger's fills up to fill_watermark: the next start compares the
-- venue's balances with them plus every fill booked since.

CREATE TABLE reconciliations (
    id              bigserial   PRIMARY KEY,
    exchange        text        NOT NULL,
    -- startup, periodic, reconnect, on_demand
    trigger         text        NOT NULL,
    -- clean, foreign (only orders of other clients), mismatch (seen once), auditing, locked
    outcome         text        NOT NULL,
    summary         text        NOT NULL,
    findings        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    fills_booked    integer     NOT NULL DEFAULT 0,
    open_orders     integer     NOT NULL DEFAULT 0,
    venue_balances  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    fill_watermark  bigint      NOT NULL DEFAULT 0,
    baseline        boolean     NOT NULL DEFAULT false,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconciliations_exchange_at ON reconciliations (exchange, id DESC);
CREATE INDEX reconciliations_baseline ON reconciliations (exchange, id DESC) WHERE baseline;
