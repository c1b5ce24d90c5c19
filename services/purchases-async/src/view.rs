//! An in-memory copy of the projection that reads are served from, kept in step with it.
//!
//! Why: through sqlx's SQLite driver a query costs about 80 us here, more than the gRPC hop
//! itself, and a purchases answer needs two. The database stays the durable truth: the view
//! is loaded from it at start, and after every committed batch the same decoded changes the
//! tables took ([`crate::changes`]) are applied here by the same rules, so the view never
//! holds anything the database does not, and a rebuild or restart reaches the same state.
//! (It once read the batch's rows back instead: a query per batch, the largest part of the
//! time from delivery to visible.) Should an update fail, the view stops being trusted and
//! reads go to the database until the next start. Memory grows with the projection (a few
//! hundred bytes per purchase), which suits the lab's data sizes.
//!
//! A read that waits for an order (`wait_for_order_id`) is woken by the batch that brings
//! that order, not by every batch: each wake-up of a waiting read costs a pass through the
//! whole request stack on the thread that also applies the events.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, hash_map};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use consumer::ApplyError;
use platform::db::{Columns, Database, StoreError};
use platform::paging::Cursor;
use platform::sync::lock;
use purchases::{OrderStatus, ProductView, PurchaseView, PurchasesError, Query, UserView};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use uuid::Uuid;

use crate::changes::{self, UserChange};

/// Newest first: (placed_at, order id), both descending.
type Key = (Reverse<i64>, Reverse<Uuid>);

#[derive(Debug, Clone)]
struct PurchaseRow {
    status: OrderStatus,
    quantity: i32,
    product_id: Uuid,
}

/// A user as the view keeps them.
#[derive(Debug, Clone, Default)]
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
    state: RwLock<State>,
    trusted: AtomicBool,
    /// Reads waiting for an order, by order id.
    waiting: Mutex<HashMap<Uuid, Waiting>>,
}

/// The reads waiting for one order share a notification.
#[derive(Debug)]
struct Waiting {
    notify: Arc<Notify>,
    readers: usize,
}

/// A read's registration as waiting for an order, for as long as it is held. It is woken
/// when a batch applies the order, when any user changes (the order's user may arrive after
/// it, on its own stream), and when the view stops being trusted.
#[derive(Debug)]
pub struct OrderWait<'v> {
    view: &'v View,
    order_id: Uuid,
    notify: Arc<Notify>,
}

impl OrderWait<'_> {
    /// Resolves at the next wake-up after it was made, even one before its first poll.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for OrderWait<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(&self.view.waiting);
        if let hash_map::Entry::Occupied(mut entry) = waiting.entry(self.order_id) {
            entry.get_mut().readers -= 1;
            if entry.get().readers == 0 {
                entry.remove();
            }
        }
    }
}

impl View {
    /// Loads the whole projection.
    pub async fn load(db: Database) -> Result<Arc<Self>, StoreError> {
        let view = Arc::new(Self::empty());
        // Whole tables, once at start: through the pool, off the async workers' threads.
        let pool = db.pool();
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

    fn empty() -> Self {
        Self {
            state: RwLock::new(State::default()),
            trusted: AtomicBool::new(true),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Whether reads may be served from memory.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Registers a read as waiting for `order_id`; look for the order after registering, so
    /// an update in between is not missed.
    pub fn wait_for(&self, order_id: Uuid) -> OrderWait<'_> {
        let mut waiting = lock(&self.waiting);
        let entry = waiting.entry(order_id).or_insert_with(|| Waiting {
            notify: Arc::new(Notify::new()),
            readers: 0,
        });
        entry.readers += 1;
        OrderWait {
            view: self,
            order_id,
            notify: Arc::clone(&entry.notify),
        }
    }

    /// Wakes the reads waiting for any of `orders`.
    fn wake(&self, orders: &[Uuid]) {
        let waiting = lock(&self.waiting);
        for order_id in orders {
            if let Some(waiting) = waiting.get(order_id) {
                waiting.notify.notify_waiters();
            }
        }
    }

    fn wake_all(&self) {
        for waiting in lock(&self.waiting).values() {
            waiting.notify.notify_waiters();
        }
    }

    /// Whether a read of `user_id`'s purchases would find the order, and the user with it.
    pub fn holds_order(&self, user_id: Uuid, order_id: Uuid) -> Result<bool, PurchasesError> {
        let state = self.state.read().map_err(|_| poisoned())?;
        Ok(state.users.contains_key(&user_id)
            && matches!(state.orders.get(&order_id), Some((owner, Some(_))) if *owner == user_id))
    }

    /// Brings the view in step with a committed batch of user events.
    pub fn apply_users(&self, changes: Result<Vec<UserChange>, ApplyError>) {
        let _span = update_span("users").entered();
        self.update(changes, |state, changes| {
            for change in changes {
                match change {
                    UserChange::Named {
                        id,
                        name,
                        given_name,
                        family_name,
                    } => {
                        let user = StoredUser {
                            name,
                            given_name,
                            family_name,
                            deleted: false,
                        };
                        state.users.insert(id, user);
                    }
                    UserChange::Deleted { id, .. } => {
                        state.users.entry(id).or_default().deleted = true;
                    }
                }
            }
        });
        self.wake_all();
    }

    pub fn apply_products(&self, changes: Result<Vec<ProductView>, ApplyError>) {
        let _span = update_span("products").entered();
        self.update(changes, |state, products| {
            for product in products {
                state.products.insert(product.id, product);
            }
        });
    }

    /// The same rules as the tables' upserts (see [`changes::Orders`]): placements first,
    /// each keeping the status its order already has, then cancellations.
    pub fn apply_orders(&self, changes: Result<changes::Orders, ApplyError>) {
        let _span = update_span("purchases").entered();
        let mut placed = Vec::new();
        self.update(changes, |state, orders| {
            // Looked at under the write lock: a read that registers after this look finds its
            // order when it looks, since its look waits for the lock; one registered before
            // is woken below.
            let watched = !lock(&self.waiting).is_empty();
            for (order_id, placement) in orders.placements {
                if watched {
                    placed.push(order_id);
                }
                let status = match state.orders.get(&order_id).copied() {
                    Some((user_id, Some(key))) => state
                        .by_user
                        .get_mut(&user_id)
                        .and_then(|index| index.remove(&key))
                        .map_or(OrderStatus::Placed, |row| row.status),
                    // Only a cancellation leaves an order waiting for its placement.
                    Some((_, None)) => OrderStatus::Cancelled,
                    None => OrderStatus::Placed,
                };
                let key = (Reverse(placement.placed_at), Reverse(order_id));
                let row = PurchaseRow {
                    status,
                    quantity: placement.quantity,
                    product_id: placement.product_id,
                };
                state
                    .by_user
                    .entry(placement.user_id)
                    .or_default()
                    .insert(key, row);
                state
                    .orders
                    .insert(order_id, (placement.user_id, Some(key)));
            }
            for (order_id, user_id) in orders.cancellations {
                match state.orders.get(&order_id).copied() {
                    // Indexed under the user its placement named.
                    Some((placed_by, Some(key))) => {
                        if let Some(row) = state
                            .by_user
                            .get_mut(&placed_by)
                            .and_then(|index| index.get_mut(&key))
                        {
                            row.status = OrderStatus::Cancelled;
                        }
                    }
                    Some((_, None)) => {}
                    None => {
                        state.orders.insert(order_id, (user_id, None));
                    }
                }
            }
        });
        // After the lock is let go, so a woken read finds the order in place.
        if !placed.is_empty() {
            self.wake(&placed);
        }
    }

    /// Applies `changes` under the write lock. A batch the tables took but the view cannot
    /// (which only a bug could cause: both decode the same events the same way) stops the
    /// view being trusted.
    fn update<C>(&self, changes: Result<C, ApplyError>, apply: impl FnOnce(&mut State, C)) {
        let outcome = changes
            .map_err(|error| StoreError::Corrupt(platform::status::error_chain(&error)))
            .and_then(|changes| {
                let mut state = self.state.write().map_err(|_| poisoned())?;
                apply(&mut state, changes);
                Ok(())
            });
        if let Err(error) = outcome {
            self.trusted.store(false, Ordering::Release);
            tracing::error!(
                error = %platform::status::error_chain(&error),
                "the in-memory view could not follow the projection; reads go to the database until restart"
            );
            // Waiting reads look again, now in the database, and wait on its positions.
            self.wake_all();
        }
    }

    fn apply_rows(
        &self,
        users: Vec<(Uuid, StoredUser)>,
        products: Vec<ProductView>,
        purchases: Vec<DecodedPurchase>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.write().map_err(|_| poisoned())?;
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
        let state = self.state.read().map_err(|_| poisoned())?;
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

fn poisoned() -> StoreError {
    StoreError::Corrupt("the view's lock is poisoned".into())
}

/// The update of the view after a batch, inside that batch's span when it is traced.
fn update_span(rows: &'static str) -> tracing::Span {
    platform::telemetry::child_span(
        || tracing::info_span!("update view", otel.name = %format!("update view {rows}")),
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

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;
    use crate::changes::{Orders, Placement};

    fn placed(order_id: Uuid, user_id: Uuid) -> Result<Orders, ApplyError> {
        Ok(Orders {
            placements: vec![(
                order_id,
                Placement {
                    user_id,
                    product_id: Uuid::now_v7(),
                    quantity: 1,
                    placed_at: 1,
                },
            )],
            cancellations: Vec::new(),
        })
    }

    fn named(id: Uuid) -> Result<Vec<UserChange>, ApplyError> {
        Ok(vec![UserChange::Named {
            id,
            name: "Ada".into(),
            given_name: String::new(),
            family_name: String::new(),
        }])
    }

    #[test]
    fn a_waiting_read_is_woken_by_the_batch_that_applies_its_order_only() {
        let view = View::empty();
        let (user, order) = (Uuid::now_v7(), Uuid::now_v7());
        view.apply_users(named(user));
        let wait = view.wait_for(order);
        let mut applied = Box::pin(wait.notified());
        view.apply_orders(placed(Uuid::now_v7(), user));
        assert!(
            applied.as_mut().now_or_never().is_none(),
            "woken by another order"
        );
        view.apply_orders(placed(order, user));
        assert!(
            applied.now_or_never().is_some(),
            "not woken by its own order"
        );
        assert!(view.holds_order(user, order).expect("the view's lock"));
    }

    #[test]
    fn a_users_batch_or_a_failed_update_wakes_every_waiting_read() {
        let view = View::empty();
        let wait = view.wait_for(Uuid::now_v7());
        let user_arrived = wait.notified();
        view.apply_users(named(Uuid::now_v7()));
        assert!(user_arrived.now_or_never().is_some());
        let untrusted = wait.notified();
        view.apply_orders(Err(ApplyError::Rejected(
            "a batch the view cannot take".into(),
        )));
        assert!(!view.is_trusted());
        assert!(untrusted.now_or_never().is_some());
    }

    #[test]
    fn the_reads_waiting_for_an_order_share_it_until_the_last_one_goes() {
        let view = View::empty();
        let order = Uuid::now_v7();
        let first = view.wait_for(order);
        let second = view.wait_for(order);
        assert_eq!(lock(&view.waiting).len(), 1);
        drop(first);
        assert_eq!(lock(&view.waiting)[&order].readers, 1);
        let still_waiting = second.notified();
        view.apply_orders(placed(order, Uuid::now_v7()));
        assert!(still_waiting.now_or_never().is_some());
        drop(second);
        assert!(lock(&view.waiting).is_empty());
    }
}
