-- Highest version applied per aggregate and consumer: the key to idempotent, order-safe apply.
CREATE TABLE consumer_versions (
    consumer       TEXT   NOT NULL,
    aggregate_type TEXT   NOT NULL,
    aggregate_id   TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    PRIMARY KEY (consumer, aggregate_type, aggregate_id)
);

-- Where each consumer stands on each stream: the position and time of the last event it
-- handled, and running counts of what it did with the events.
CREATE TABLE consumer_positions (
    consumer          TEXT   NOT NULL,
    stream            TEXT   NOT NULL,
    stream_sequence   BIGINT NOT NULL,
    last_event_at     BIGINT NOT NULL,
    applied_at        BIGINT NOT NULL,
    n_applied         BIGINT NOT NULL,
    n_skipped         BIGINT NOT NULL,
    n_gaps            BIGINT NOT NULL,
    n_dead_lettered   BIGINT NOT NULL,
    PRIMARY KEY (consumer, stream)
);

-- Events that could not be applied, kept with the reason, so one bad message cannot stop a feed.
CREATE TABLE consumer_dead_letters (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer        TEXT    NOT NULL,
    stream          TEXT    NOT NULL,
    stream_sequence BIGINT  NOT NULL,
    subject         TEXT    NOT NULL,
    event_id        TEXT,
    event_type      TEXT,
    reason          TEXT    NOT NULL,
    payload         BYTEA   NOT NULL,
    failed_at       BIGINT  NOT NULL
);
