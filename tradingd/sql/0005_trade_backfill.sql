-- Trade history backfill from the venue's public data files: one row per file, so an
-- interrupted `tradingd backfill trades` resumes where it stopped (files already loaded are
-- skipped; a file being loaded continues after the last trade id committed from it).

CREATE TABLE trade_backfill_files (
    exchange           text        NOT NULL,
    instrument_name    text        NOT NULL,
    file_name          text        NOT NULL,
    first_day          date        NOT NULL,
    last_day           date        NOT NULL CHECK (last_day >= first_day),
    -- loading: rows are being written (loaded_through_seq says how far);
    -- done: every row is stored; absent: the repository had no such file.
    status             text        NOT NULL CHECK (status IN ('loading', 'done', 'absent')),
    sha256             text,
    rows_read          bigint      NOT NULL DEFAULT 0,
    rows_new           bigint      NOT NULL DEFAULT 0,
    first_seq          bigint,
    loaded_through_seq bigint,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, instrument_name, file_name)
);
