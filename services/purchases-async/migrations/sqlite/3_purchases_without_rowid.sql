-- The purchases table without SQLite's hidden rowid: keyed by order id alone, each event's
-- upsert touches the table and the by-user index, not also a separate index of the key.
CREATE TABLE p_purchases_keyed (
    order_id   TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    product_id TEXT,
    quantity   INTEGER,
    status     TEXT    NOT NULL,
    placed_at  BIGINT
) WITHOUT ROWID;
INSERT INTO p_purchases_keyed (order_id, user_id, product_id, quantity, status, placed_at)
    SELECT order_id, user_id, product_id, quantity, status, placed_at FROM p_purchases;
DROP TABLE p_purchases;
ALTER TABLE p_purchases_keyed RENAME TO p_purchases;
CREATE INDEX p_purchases_by_user ON p_purchases (user_id, placed_at DESC, order_id DESC);
