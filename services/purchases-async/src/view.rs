//! An in-memory copy of the projection that reads are served from, kept in step with it.
//!
//! Why: through sqlx's SQLite driver a query costs about 80 us here, more than the gRPC hop
//! itself, and a purchases answer needs two. The database stays the durable truth: the view
//! is loaded from it at start, and after every committed batch the rows that batch touched
//! are read back from it, so the view never holds anything the database does not, and a
//! rebuild or restart reaches the same state. Should a refresh fail, the view stops being
//! trusted and reads go to the database until the next start. Memory grows with the
//! projection (a few hundred bytes per purchase), which suits the lab's data sizes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use platform::db::{Columns, Database, Param, StoreError};
use platform::paging::Cursor;
use purchases::{OrderStatus, ProductView, PurchaseView, PurchasesError, Query, UserView};
use tracing::Instrument as _;
use uuid::Uuid;

/// Newest first: (placed_at, order id), both descending.
type Key = (Reverse<i64>, Reverse<Uuid>);

#[derive(Debug, Clone)]
struct PurchaseRow {
    status: OrderStatus,
    quantity: i32,
    product_id: Uuid,
}

/// A user as the view keeps them.
#[derive(Debug, Clone)]
struct StoredUser {
    name: String,
    given_name: String,
    family_name: String,
    deleted: bool,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<Uuid, StoredUser>,
    products: HashMap<Uuid, ProductView>,
    by_user: HashMap<Uuid, BTreeMap<Key, PurchaseRow>>,
    /// Where each order sits in `by_user`, if it is complete enough to be answered.
    orders: HashMap<Uuid, (Uuid, Option<Key>)>,
}

#[derive(Debug)]
pub struct View {
    db: Database,
    state: RwLock<State>,
    trusted: AtomicBool,
}

/// Ids per `IN (...)` list when reading rows back.
const CHUNK: usize = 200;

impl View {
    /// Loads the whole projection.
    pub async fn load(db: Database) -> Result<Arc<Self>, StoreError> {
        let view = Arc::new(Self {
            db,
            state: RwLock::new(State::default()),
            trusted: AtomicBool::new(true),
        });
        // Whole tables, once at start: through the pool, off the async workers' threads.
        let pool = view.db.pool();
        let users = sqlx::query(SELECT_USERS).fetch_all(pool).await?;
        let users = users
            .iter()
            .map(|row| decode_user(row))
            .collect::<Result<Vec<_>, _>>()?;
        let products = sqlx::query(SELECT_PRODUCTS).fetch_all(pool).await?;
        let products = products
            .iter()
            .map(|row| decode_product(row))
            .collect::<Result<Vec<_>, _>>()?;
        let purchases = sqlx::query(SELECT_PURCHASES).fetch_all(pool).await?;
        let purchases = purchases
            .iter()
            .map(|row| decode_purchase(row))
            .collect::<Result<Vec<_>, _>>()?;
        view.apply_rows(users, products, purchases)?;
        Ok(view)
    }

    /// Whether reads may be served from memory.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Reads these users' rows back after a commit.
    pub async fn refresh_users(&self, ids: &[Uuid]) {
        let rows = self
            .read_back(SELECT_USERS, "id", ids, decode_user)
            .instrument(refresh_span("users", ids.len()))
            .await;
        self.settle(rows.and_then(|rows| self.apply_rows(rows, Vec::new(), Vec::new())));
    }

    pub async fn refresh_products(&self, ids: &[Uuid]) {
        let rows = self
            .read_back(SELECT_PRODUCTS, "id", ids, decode_product)
            .instrument(refresh_span("products", ids.len()))
            .await;
        self.settle(rows.and_then(|rows| self.apply_rows(Vec::new(), rows, Vec::new())));
    }

    pub async fn refresh_orders(&self, ids: &[Uuid]) {
        let rows = self
            .read_back(SELECT_PURCHASES, "order_id", ids, decode_purchase)
            .instrument(refresh_span("purchases", ids.len()))
            .await;
        self.settle(rows.and_then(|rows| self.apply_rows(Vec::new(), Vec::new(), rows)));
    }

    fn settle(&self, outcome: Result<(), StoreError>) {
        if let Err(error) = outcome {
            self.trusted.store(false, Ordering::Release);
            tracing::error!(
                error = %platform::status::error_chain(&error),
                "the in-memory view could not follow the projection; reads go to the database until restart"
            );
        }
    }

    /// The rows of `select` whose `key` is one of `ids`, decoded.
    async fn read_back<T>(
        &self,
        select: &str,
        key: &str,
        ids: &[Uuid],
        decode: fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            // Only constants and numbered placeholders are interpolated; the values are bound.
            let sql = format!("{select} WHERE {key} IN ({})", placeholders.join(", "));
            let params: Vec<Param> = chunk.iter().map(|id| id.to_string().into()).collect();
            rows.extend(self.db.read_rows(&sql, &params, decode).await?);
        }
        Ok(rows)
    }

    fn apply_rows(
        &self,
        users: Vec<(Uuid, StoredUser)>,
        products: Vec<ProductView>,
        purchases: Vec<DecodedPurchase>,
    ) -> Result<(), StoreError> {
        let mut state = self
            .state
            .write()
            .map_err(|_| StoreError::Corrupt("the view's lock is poisoned".into()))?;
        for (id, user) in users {
            state.users.insert(id, user);
        }
        for product in products {
            state.products.insert(product.id, product);
        }
        for (order_id, user_id, key, row) in purchases {
            if let Some((old_user, Some(old_key))) = state.orders.get(&order_id).cloned()
                && let Some(index) = state.by_user.get_mut(&old_user)
            {
                index.remove(&old_key);
            }
            if let (Some(key), Some(row)) = (key, row) {
                state.by_user.entry(user_id).or_default().insert(key, row);
            }
            state.orders.insert(order_id, (user_id, key));
        }
        Ok(())
    }

    /// The same rows as the SQL read path, from memory: the user and up to one purchase more
    /// than the page (see `Page::cut`).
    pub fn page(&self, query: &Query) -> Result<(UserView, Vec<PurchaseView>), PurchasesError> {
        let state = self
            .state
            .read()
            .map_err(|_| StoreError::Corrupt("the view's lock is poisoned".into()))?;
        let user = match state.users.get(&query.user_id) {
            Some(user) if !user.deleted => user.clone(),
            _ => return Err(PurchasesError::UserNotFound(query.user_id)),
        };
        let start = match query.after {
            Some(Cursor { sort_key, id }) => Bound::Excluded((Reverse(sort_key), Reverse(id))),
            None => Bound::Unbounded,
        };
        let mut purchases = Vec::new();
        if let Some(index) = state.by_user.get(&query.user_id) {
            for ((Reverse(placed_at), Reverse(order_id)), row) in index
                .range((start, Bound::Unbounded))
                .take(query.page_size as usize + 1)
            {
                purchases.push(PurchaseView {
                    order_id: *order_id,
                    status: row.status,
                    quantity: row.quantity,
                    placed_at_micros: *placed_at,
                    product_id: row.product_id,
                    product: state.products.get(&row.product_id).cloned(),
                });
            }
        }
        Ok((
            UserView {
                id: query.user_id,
                name: user.name,
                given_name: user.given_name,
                family_name: user.family_name,
            },
            purchases,
        ))
    }
}

/// The refresh of the view after a batch, inside that batch's span when it is traced.
fn refresh_span(rows: &'static str, n: usize) -> tracing::Span {
    platform::telemetry::child_span(
        || tracing::info_span!("refresh view", otel.name = %format!("refresh view {rows}"), rows = n),
    )
}

fn uuid(row: &dyn Columns, column: &str) -> Result<Uuid, StoreError> {
    purchases::rows::stored_uuid(&row.text(column)?, column)
}

fn decode_user(row: &dyn Columns) -> Result<(Uuid, StoredUser), StoreError> {
    Ok((
        uuid(row, "id")?,
        StoredUser {
            name: row.text("name")?,
            given_name: row.text("given_name")?,
            family_name: row.text("family_name")?,
            deleted: row.optional_integer("deleted_at")?.is_some(),
        },
    ))
}

fn decode_product(row: &dyn Columns) -> Result<ProductView, StoreError> {
    Ok(ProductView {
        id: uuid(row, "id")?,
        title: row.text("title")?,
        image_url: row.text("image_url")?,
        price_cents: row.integer("price_cents")?,
        currency: row.text("currency")?,
    })
}

const SELECT_USERS: &str = "SELECT id, name, given_name, family_name, deleted_at FROM p_users";
const SELECT_PRODUCTS: &str = "SELECT id, title, image_url, price_cents, currency FROM p_products";
const SELECT_PURCHASES: &str =
    "SELECT order_id, user_id, product_id, quantity, status, placed_at FROM p_purchases";

type DecodedPurchase = (Uuid, Uuid, Option<Key>, Option<PurchaseRow>);

/// A purchase row, indexed only once its placement has arrived.
fn decode_purchase(row: &dyn Columns) -> Result<DecodedPurchase, StoreError> {
    let order_id = uuid(row, "order_id")?;
    let user_id = uuid(row, "user_id")?;
    let placed_at = row.optional_integer("placed_at")?;
    let product_id = row.optional_text("product_id")?;
    let quantity = row.optional_integer("quantity")?;
    let status = match row.text("status")?.as_str() {
        "placed" => OrderStatus::Placed,
        "cancelled" => OrderStatus::Cancelled,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown order status {other:?}"
            )));
        }
    };
    let (Some(placed_at), Some(product_id), Some(quantity)) = (placed_at, product_id, quantity)
    else {
        return Ok((order_id, user_id, None, None));
    };
    let product_id = purchases::rows::stored_uuid(&product_id, "product_id")?;
    let quantity = i32::try_from(quantity)
        .map_err(|_| StoreError::Corrupt(format!("quantity {quantity} out of range")))?;
    Ok((
        order_id,
        user_id,
        Some((Reverse(placed_at), Reverse(order_id))),
        Some(PurchaseRow {
            status,
            quantity,
            product_id,
        }),
    ))
}
