-- Service D's projection: exactly the columns its one question needs, fed by the USERS,
-- PRODUCTS and ORDERS streams. Nothing here is read from another service's database.

-- Users it has heard of; a deleted user stays as a tombstone so it answers NOT_FOUND.
CREATE TABLE p_users (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    deleted_at BIGINT
);

CREATE TABLE p_products (
    id          TEXT   PRIMARY KEY,
    title       TEXT   NOT NULL,
    image_url   TEXT   NOT NULL,
    price_cents BIGINT NOT NULL
);

-- One row per order. product_id, quantity and placed_at are null only when a cancellation
-- arrived before its placement (possible only under injected reordering); such a row is not
-- answered until the placement fills it in.
CREATE TABLE p_purchases (
    order_id   TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    product_id TEXT,
    quantity   INTEGER,
    status     TEXT    NOT NULL,
    placed_at  BIGINT
);

CREATE INDEX p_purchases_by_user ON p_purchases (user_id, placed_at DESC, order_id DESC);
