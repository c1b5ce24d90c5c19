CREATE TABLE products (
    id          TEXT   PRIMARY KEY,
    title       TEXT   NOT NULL,
    image_url   TEXT   NOT NULL,
    price_cents BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- ListProducts pages by (created_at, id).
CREATE INDEX products_by_creation ON products (created_at, id);
