-- The stream the relay last published to, by its creation time at JetStream (nanoseconds
-- since the epoch). A stream found with another creation time was deleted and made again,
-- losing the events it held, so the relay publishes every row the outbox still keeps once more.
CREATE TABLE outbox_streams (
    stream  TEXT   PRIMARY KEY,
    created BIGINT NOT NULL
);
