-- The relay's work list: the seq of every outbox row not yet acknowledged by JetStream.
-- Marking a batch published used to rewrite each of its outbox rows (envelope included) and
-- its partial-index entries; now it deletes a batch of integers from this table, while the
-- outbox rows themselves are never rewritten. The trigger fills it for every writer, so no
-- service can append an event the relay would not see.
CREATE TABLE outbox_pending (
    seq INTEGER PRIMARY KEY
);

INSERT INTO outbox_pending (seq) SELECT seq FROM outbox WHERE published_at IS NULL;

CREATE TRIGGER outbox_pending_on_append AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_pending (seq) VALUES (new.seq);
END;

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
