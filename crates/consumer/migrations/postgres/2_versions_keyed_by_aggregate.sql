-- The version lookup asks for (consumer, aggregate_type, aggregate_id IN (..200 ids..)). With
-- the key led by consumer and type, PostgreSQL used only those two columns, trusting its
-- default guess that they are selective, and filtered every version of that type row by row:
-- a lookup took 0.2 ms on an empty table and 85 ms at 28,000 orders, so a projection rebuilt
-- from its streams at 2,600 events/s. Led by the aggregate id, the key serves the id list
-- itself: 0.3 ms at the same size. (SQLite uses all three columns of the old order.)
ALTER TABLE consumer_versions DROP CONSTRAINT consumer_versions_pkey;
ALTER TABLE consumer_versions ADD PRIMARY KEY (aggregate_id, aggregate_type, consumer);
