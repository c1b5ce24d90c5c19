-- What orders knows of other services' entities, learned from their event streams (never by
-- reading their databases or calling them): enough to refuse an order for a user or product
-- that does not exist. A deleted user stays as a tombstone so orders can say so.
CREATE TABLE known_users (
    id         TEXT    PRIMARY KEY,
    deleted_at BIGINT,
    learned_at BIGINT  NOT NULL
);

CREATE TABLE known_products (
    id         TEXT    PRIMARY KEY,
    learned_at BIGINT  NOT NULL
);
