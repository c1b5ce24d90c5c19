-- user_id and product_id name entities owned by other services: they are plain ids, never
-- foreign keys, because those rows live in other databases.
CREATE TABLE orders (
    id         TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    product_id TEXT   NOT NULL,
    quantity   BIGINT NOT NULL,
    status     TEXT   NOT NULL CHECK (status IN ('placed', 'cancelled')),
    version    BIGINT NOT NULL,
    placed_at  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- ListOrdersByUser pages newest first by (placed_at, id).
CREATE INDEX orders_by_user ON orders (user_id, placed_at DESC, id DESC);
