-- Which incarnation of the stream the position counts in (its creation time at JetStream, in
-- nanoseconds since the epoch; 0 before it was first recorded): a stream deleted and made
-- again restarts its sequence numbers, so a position in the old one means nothing in the new.
ALTER TABLE consumer_positions ADD COLUMN stream_created BIGINT NOT NULL DEFAULT 0;
-- Events the stream no longer held when the consumer got to them (aged out, purged, lost
-- with a deleted stream): never applied here, and said so in every answer's freshness.
ALTER TABLE consumer_positions ADD COLUMN n_missed BIGINT NOT NULL DEFAULT 0;
