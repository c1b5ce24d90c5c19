//! The products table and its outbox rows. Every write and the event describing it commit in
//! one transaction.

use contracts::events::v1 as events;
use outbox::{Producer, Wakeup};
use platform::db::{
    Columns, Database, Param, StoreError, check_version, stored_version, version_from_db,
};
use platform::paging::Cursor;
use uuid::Uuid;

use crate::domain::{NewProduct, Product, ProductChange};
use crate::error::ProductsError;

/// Every price this service holds is in cents of this currency.
const PRICE_CURRENCY: &str = "USD";

const EVENTS: Producer = Producer::new("products", "product");

const COLUMNS: &str = "id, title, image_url, price_cents, version, created_at, updated_at";

/// One page of the catalogue and where the next one starts.
#[derive(Debug)]
pub struct ProductPage {
    pub products: Vec<Product>,
    pub next: Option<Cursor>,
}

#[derive(Debug, Clone)]
pub struct ProductStore {
    db: Database,
    /// Woken after every commit, so the relay publishes the new event at once.
    wakeup: Wakeup,
    /// Where its events go, and in which schema version (see `outbox::EventSchemaArgs`).
    events: Producer,
}

impl ProductStore {
    pub fn new(db: Database, wakeup: Wakeup) -> Self {
        Self {
            db,
            wakeup,
            events: EVENTS,
        }
    }

    /// Publishes events of schema version `event_schema` from now on.
    #[must_use]
    pub fn with_event_schema(mut self, event_schema: u32) -> Self {
        self.events = EVENTS.with_schema_version(event_schema);
        self
    }

    /// The currency field of schema 2; version 1 leaves it out (its prices are USD).
    fn currency(&self) -> String {
        if self.events.schema_version >= 2 {
            PRICE_CURRENCY.to_owned()
        } else {
            String::new()
        }
    }

    pub async fn create(&self, new: NewProduct) -> Result<Product, ProductsError> {
        let now = platform::time::now_micros();
        let product = Product {
            id: Uuid::now_v7(),
            title: new.title.into_inner(),
            image_url: new.image_url.into_inner(),
            price_cents: new.price_cents.get(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin_write().await?;
        tx.execute(
            "INSERT INTO products (id, title, image_url, price_cents, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 1, $5, $5)",
            &[
                product.id.to_string().into(),
                product.title.as_str().into(),
                product.image_url.as_str().into(),
                product.price_cents.into(),
                now.into(),
            ],
        )
        .await?;
        let payload = events::ProductCreated {
            product_id: product.id.to_string(),
            title: product.title.clone(),
            image_url: product.image_url.clone(),
            price_cents: product.price_cents,
            currency: self.currency(),
        };
        self.events
            .record(&mut tx, &product.id, product.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(product)
    }

    pub async fn get(&self, id: Uuid) -> Result<Product, ProductsError> {
        let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
        self.db
            .read_optional(&sql, &[id.to_string().into()], decode)
            .await?
            .ok_or(ProductsError::NotFound(id))
    }

    /// The products among `ids` that exist, in the order of `ids` (which must hold no
    /// duplicates), and the ids that name none.
    pub async fn batch_get(
        &self,
        ids: &[Uuid],
    ) -> Result<(Vec<Product>, Vec<Uuid>), ProductsError> {
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        // Only numbered placeholders are interpolated; the ids themselves are bound.
        let sql = format!(
            "SELECT {COLUMNS} FROM products WHERE id IN ({})",
            placeholders.join(", ")
        );
        let params: Vec<Param> = ids.iter().map(|id| id.to_string().into()).collect();
        let decoded = self.db.read_rows(&sql, &params, decode).await?;
        let mut found: std::collections::HashMap<Uuid, Product> = decoded
            .into_iter()
            .map(|product| (product.id, product))
            .collect();
        let mut products = Vec::with_capacity(found.len());
        let mut missing = Vec::new();
        for id in ids {
            match found.remove(id) {
                Some(product) => products.push(product),
                None => missing.push(*id),
            }
        }
        Ok((products, missing))
    }

    pub async fn update(&self, change: &ProductChange) -> Result<Product, ProductsError> {
        let mut tx = self.db.begin_write().await?;
        let current = tx
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM products WHERE id = $1"),
                &[change.id.to_string().into()],
                decode,
            )
            .await?
            .ok_or(ProductsError::NotFound(change.id))?;
        check_version(change.expected_version, current.version).map_err(|conflict| {
            ProductsError::VersionMismatch {
                id: change.id,
                expected: conflict.expected,
                actual: conflict.actual,
            }
        })?;
        let changed = change.apply_to(&current);
        if changed == current {
            // Setting fields to the values they hold changes nothing and records no event, so
            // a retried request stays harmless.
            return Ok(current);
        }
        let now = platform::time::now_micros();
        let product = Product {
            version: current.version + 1,
            updated_at: now,
            ..changed
        };
        let updated = tx
            .execute(
                "UPDATE products SET title = $1, image_url = $2, price_cents = $3, version = version + 1, updated_at = $4
                 WHERE id = $5 AND version = $6",
                &[
                    product.title.as_str().into(),
                    product.image_url.as_str().into(),
                    product.price_cents.into(),
                    now.into(),
                    product.id.to_string().into(),
                    stored_version(current.version)?.into(),
                ],
            )
            .await?;
        if updated != 1 {
            // Another transaction changed the row between our read and this write (possible
            // on PostgreSQL, whose transactions do not take the write lock up front).
            return Err(ProductsError::ChangedConcurrently(product.id));
        }
        let payload = self.updated(&product);
        self.events
            .record(&mut tx, &product.id, product.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(product)
    }

    /// The event that carries a product's whole state after a change.
    fn updated(&self, product: &Product) -> events::ProductUpdated {
        events::ProductUpdated {
            product_id: product.id.to_string(),
            title: product.title.clone(),
            image_url: product.image_url.clone(),
            price_cents: product.price_cents,
            currency: self.currency(),
        }
    }

    /// Products in creation order, starting after `after`.
    pub async fn list(
        &self,
        after: Option<Cursor>,
        page_size: u32,
    ) -> Result<ProductPage, ProductsError> {
        let cursor = after.unwrap_or(Cursor {
            sort_key: i64::MIN,
            id: Uuid::nil(),
        });
        // One row more than the page tells whether another page follows.
        let sql = format!(
            "SELECT {COLUMNS} FROM products
             WHERE created_at > $1 OR (created_at = $1 AND id > $2)
             ORDER BY created_at, id
             LIMIT $3"
        );
        let params = [
            cursor.sort_key.into(),
            cursor.id.to_string().into(),
            (i64::from(page_size) + 1).into(),
        ];
        let mut products = self.db.read_rows(&sql, &params, decode).await?;
        let next = if products.len() > page_size as usize {
            products.truncate(page_size as usize);
            products.last().map(|last| Cursor {
                sort_key: last.created_at,
                id: last.id,
            })
        } else {
            None
        };
        Ok(ProductPage { products, next })
    }
}

impl outbox::admin::StateSource for ProductStore {
    /// Each product at its current version as ProductUpdated, the event that carries a
    /// product's whole state.
    async fn re_emit_chunk(
        &self,
        tx: &mut platform::db::WriteTx,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<outbox::admin::ReEmitted, StoreError> {
        let select = format!("SELECT {COLUMNS} FROM products");
        let rows = outbox::admin::next_chunk(tx, &select, after, limit, decode).await?;
        for product in &rows {
            let payload = self.updated(product);
            self.events
                .record(
                    tx,
                    &product.id,
                    product.version,
                    product.updated_at,
                    &payload,
                )
                .await?;
        }
        let n = rows.len() as u64;
        Ok(outbox::admin::ReEmitted {
            last: rows.last().map(|product| product.id),
            entities: n,
            events: n,
        })
    }
}

fn decode(row: &dyn Columns) -> Result<Product, StoreError> {
    let id = row.text("id")?;
    Ok(Product {
        id: Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt(format!("product id {id:?}")))?,
        title: row.text("title")?,
        image_url: row.text("image_url")?,
        price_cents: row.integer("price_cents")?,
        version: version_from_db(row.integer("version")?)?,
        created_at: row.integer("created_at")?,
        updated_at: row.integer("updated_at")?,
    })
}
