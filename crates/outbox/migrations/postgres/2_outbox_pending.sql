-- The relay's work list: the seq of every outbox row not yet acknowledged by JetStream.
-- Marking a batch published used to update each of its outbox rows, which PostgreSQL does by
-- writing a new copy of the row (envelope included) and new entries in every index; now it
-- deletes a batch of integers from this table, and the outbox rows are never rewritten. The
-- trigger fills it for every writer, so no service can append an event the relay would not see.
CREATE TABLE outbox_pending (
    seq BIGINT PRIMARY KEY
);

INSERT INTO outbox_pending (seq) SELECT seq FROM outbox WHERE published_at IS NULL;

CREATE FUNCTION outbox_pending_on_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_pending (seq) VALUES (NEW.seq);
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_pending_on_append AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_pending_on_append();

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
