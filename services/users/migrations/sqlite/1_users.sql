-- A deleted user keeps its row as a tombstone (deleted_at set) so its id is never reused
-- and late writes can be told apart from unknown ids; its email and name are erased.
CREATE TABLE users (
    id         TEXT   PRIMARY KEY,
    email      TEXT   UNIQUE,
    name       TEXT,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
