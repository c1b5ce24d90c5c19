-- The versions table without SQLite's hidden rowid: keyed by its primary key alone, an upsert
-- walks one B-tree instead of the key's index and then the table, and every event a consumer
-- applies does one.
CREATE TABLE consumer_versions_keyed (
    consumer       TEXT   NOT NULL,
    aggregate_type TEXT   NOT NULL,
    aggregate_id   TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    PRIMARY KEY (consumer, aggregate_type, aggregate_id)
) WITHOUT ROWID;
INSERT INTO consumer_versions_keyed (consumer, aggregate_type, aggregate_id, version)
    SELECT consumer, aggregate_type, aggregate_id, version FROM consumer_versions;
DROP TABLE consumer_versions;
ALTER TABLE consumer_versions_keyed RENAME TO consumer_versions;
