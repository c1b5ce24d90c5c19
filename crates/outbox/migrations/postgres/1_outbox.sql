-- Events waiting to be published, in commit order (seq). A row is written in the same
-- transaction as the change it describes, so a change and its event commit together.
CREATE TABLE outbox (
    seq               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          TEXT    NOT NULL UNIQUE,
    subject           TEXT    NOT NULL,
    event_type        TEXT    NOT NULL,
    aggregate_id      TEXT    NOT NULL,
    aggregate_version BIGINT  NOT NULL,
    envelope          BYTEA   NOT NULL,
    created_at        BIGINT  NOT NULL,
    published_at      BIGINT
);

CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
