-- Live subscription changes (`tradingd subscribe` / `tradingd unsubscribe`): per exchange and
-- symbol, the operator's last word, added to (subscribed) or taken out of (not subscribed) the
-- configuration's symbols. The daemon starts from the configured symbols and applies these on
-- top, so a change made at run time survives a restart.

CREATE TABLE live_subscriptions (
    exchange        text        NOT NULL,
    instrument_name text        NOT NULL,
    subscribed      boolean     NOT NULL,
    operator        text        NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, instrument_name)
);
