-- One index per trade instead of two: the primary key now leads with trade_seq after the
-- instrument, so it serves every query by trade_seq (gap repair, backfill, start-up's last
-- sequence, the newest trade) that public_trades_seq served. Each index costs PostgreSQL about
-- as much CPU per inserted trade as the rest of the insert. A trade keeps its trade_seq, so
-- (exchange, instrument_name, trade_id) stays unique in practice, as before.
ALTER TABLE public_trades DROP CONSTRAINT public_trades_pkey;
ALTER TABLE public_trades
    ADD PRIMARY KEY (exchange, instrument_name, trade_seq, trade_id, trade_timestamp);
DROP INDEX public_trades_seq;
