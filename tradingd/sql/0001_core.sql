-- Core tables: state transitions and dead letters.
-- (schema_migrations itself is created by the migrator before any file runs.)

CREATE TABLE state_transitions (
    id          bigserial PRIMARY KEY,
    exchange    text        NOT NULL,
    from_state  text,
    to_state    text        NOT NULL CHECK (to_state IN
                    ('BOOTSTRAPPING', 'RECONCILING', 'HEALTHY', 'LOCKED', 'AUDITING')),
    operator    text        NOT NULL,
    reason      text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX state_transitions_exchange_at ON state_transitions (exchange, at DESC);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL,
    exchange    text        NOT NULL,
    source      text        NOT NULL,
    payload     bytea       NOT NULL,
    error       text        NOT NULL
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at DESC);

CREATE TABLE system_events (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    kind            text        NOT NULL,
    exchange        text        NOT NULL,
    instrument_name text,
    detail          jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX system_events_at ON system_events (at DESC);
