-- The order ledger: a durable intent per order (committed before anything is sent), an
-- append-only log of its state changes, and fills unique per venue trade id. Positions,
-- balances and PnL are derived by replaying fills; nothing here stores them.

-- Client order ids are minted from blocks of this sequence: unique forever, never reused.
CREATE SEQUENCE order_id_blocks;

CREATE TABLE orders (
    id              bigserial   PRIMARY KEY,
    client_order_id text        NOT NULL UNIQUE CHECK (client_order_id ~ '^[A-Za-z0-9_-]{1,36}$'),
    strategy        text        NOT NULL,
    exchange        text        NOT NULL,
    instrument_name text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type      text        NOT NULL CHECK (order_type IN ('limit', 'market')),
    time_in_force   text        NOT NULL CHECK (time_in_force IN ('GTC', 'IOC', 'FOK')),
    quantity        numeric     NOT NULL CHECK (quantity > 0),
    price           numeric,
    reduce_only     boolean     NOT NULL DEFAULT false,
    tag             text        NOT NULL DEFAULT '',
    state           text        NOT NULL,
    filled_quantity numeric     NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    average_price   numeric,
    venue_order_id  text,
    reason          text        NOT NULL DEFAULT '',
    -- The venue's own deadline for this order (Binance timestamp + recvWindow, Deribit
    -- valid_until): an order still absent after it was never placed.
    deadline        timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_exchange_state ON orders (exchange, state);
CREATE INDEX orders_strategy_created ON orders (strategy, created_at);

CREATE TABLE order_events (
    id              bigserial   PRIMARY KEY,
    client_order_id text        NOT NULL REFERENCES orders (client_order_id),
    at              timestamptz NOT NULL DEFAULT now(),
    from_state      text,
    to_state        text        NOT NULL,
    -- Who said so: executor, venue:ack, venue:stream, venue:query, operator, reconcile, paper.
    source          text        NOT NULL,
    detail          jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX order_events_order ON order_events (client_order_id, id);

CREATE TABLE fills (
    id              bigserial   PRIMARY KEY,
    exchange        text        NOT NULL,
    trade_id        text        NOT NULL,
    client_order_id text        NOT NULL REFERENCES orders (client_order_id),
    strategy        text        NOT NULL,
    instrument_name text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity        numeric     NOT NULL CHECK (quantity > 0),
    price           numeric     NOT NULL CHECK (price > 0),
    fee             numeric     NOT NULL DEFAULT 0,
    fee_currency    text        NOT NULL,
    liquidity       text        NOT NULL CHECK (liquidity IN ('maker', 'taker')),
    at              timestamptz NOT NULL,
    UNIQUE (exchange, trade_id)
);
CREATE INDEX fills_order ON fills (client_order_id);
CREATE INDEX fills_at ON fills (at);

-- The paper venue's own book: what a simulated exchange remembers of the orders it received,
-- independently of the ledger (as a real venue does), so that a restarted daemon reconciles
-- its ledger against it exactly as against a live venue. One row per request received.
CREATE TABLE paper_orders (
    id              bigserial   PRIMARY KEY,
    exchange        text        NOT NULL,
    client_order_id text        NOT NULL,
    instrument_name text        NOT NULL,
    side            text        NOT NULL,
    order_type      text        NOT NULL,
    time_in_force   text        NOT NULL,
    quantity        numeric     NOT NULL,
    price           numeric,
    state           text        NOT NULL,
    filled_quantity numeric     NOT NULL DEFAULT 0,
    reason          text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX paper_orders_client ON paper_orders (exchange, client_order_id);
CREATE INDEX paper_orders_open ON paper_orders (exchange) WHERE state IN ('OPEN', 'PARTIALLY_FILLED');

CREATE TABLE paper_fills (
    id              bigserial   PRIMARY KEY,
    paper_order_id  bigint      NOT NULL REFERENCES paper_orders (id),
    quantity        numeric     NOT NULL,
    price           numeric     NOT NULL,
    fee             numeric     NOT NULL,
    fee_currency    text        NOT NULL,
    liquidity       text        NOT NULL,
    at              timestamptz NOT NULL
);
CREATE INDEX paper_fills_order ON paper_fills (paper_order_id);
