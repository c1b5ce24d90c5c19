-- Fields that event schema 2 adds (users split the name; products state the currency).
-- Empty until a producer publishes schema 2 and this projection reads it.
ALTER TABLE p_users ADD COLUMN given_name TEXT NOT NULL DEFAULT '';
ALTER TABLE p_users ADD COLUMN family_name TEXT NOT NULL DEFAULT '';
ALTER TABLE p_products ADD COLUMN currency TEXT NOT NULL DEFAULT '';
