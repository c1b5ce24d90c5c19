//! The orders table and its outbox rows. Every write and the event describing it commit in
//! one transaction.

use contracts::events::v1 as events;
use outbox::{Producer, Wakeup};
use platform::db::{
    Columns, Database, StoreError, WriteTx, check_version, stored_version, version_from_db,
};
use platform::paging::Cursor;
use uuid::Uuid;

use crate::domain::{Cancellation, NewOrder, Order, OrderStatus};
use crate::error::OrdersError;

const EVENTS: Producer = Producer::new("orders", "order");

const COLUMNS: &str = "id, user_id, product_id, quantity, status, version, placed_at, updated_at";

/// One page of a user's orders and where the next one starts.
#[derive(Debug)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub next: Option<Cursor>,
}

/// Where PlaceOrder learns which users and products exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum References {
    /// The replica fed by the USERS and PRODUCTS streams (`known_users`, `known_products`):
    /// the orders service, which owns no user or product data.
    Replica,
    /// The `users` and `products` tables of the same database: the monolith, where one
    /// database holds everything.
    SharedDatabase,
}

#[derive(Debug, Clone)]
pub struct OrderStore {
    db: Database,
    references: References,
    /// Woken after every commit, so the relay publishes the new event at once.
    wakeup: Wakeup,
}

impl OrderStore {
    pub fn new(db: Database, wakeup: Wakeup, references: References) -> Self {
        Self {
            db,
            references,
            wakeup,
        }
    }

    pub async fn place(&self, new: &NewOrder) -> Result<Order, OrdersError> {
        let now = platform::time::now_micros();
        let order = Order {
            id: Uuid::now_v7(),
            user_id: new.user_id,
            product_id: new.product_id,
            quantity: new.quantity.get(),
            status: OrderStatus::Placed,
            version: 1,
            placed_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin_write().await?;
        check_references(&mut tx, self.references, new).await?;
        tx.execute(
            "INSERT INTO orders (id, user_id, product_id, quantity, status, version, placed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $6)",
            &[
                order.id.to_string().into(),
                order.user_id.to_string().into(),
                order.product_id.to_string().into(),
                order.quantity.into(),
                order.status.as_str().into(),
                now.into(),
            ],
        )
        .await?;
        let payload = events::OrderPlaced {
            order_id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            product_id: order.product_id.to_string(),
            quantity: order.quantity,
            placed_at: Some(platform::time::to_timestamp(now)),
        };
        EVENTS
            .record(&mut tx, &order.id, order.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(order)
    }

    pub async fn get(&self, id: Uuid) -> Result<Order, OrdersError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE id = $1");
        self.db
            .read_optional(&sql, &[id.to_string().into()], decode)
            .await?
            .ok_or(OrdersError::NotFound(id))
    }

    /// A user's orders, newest first, starting after `after`.
    pub async fn list_by_user(
        &self,
        user_id: Uuid,
        after: Option<Cursor>,
        page_size: u32,
    ) -> Result<OrderPage, OrdersError> {
        let cursor = after.unwrap_or(Cursor {
            sort_key: i64::MAX,
            id: Uuid::max(),
        });
        // One row more than the page tells whether another page follows.
        let sql = format!(
            "SELECT {COLUMNS} FROM orders
             WHERE user_id = $1 AND (placed_at < $2 OR (placed_at = $2 AND id < $3))
             ORDER BY placed_at DESC, id DESC
             LIMIT $4"
        );
        let params = [
            user_id.to_string().into(),
            cursor.sort_key.into(),
            cursor.id.to_string().into(),
            (i64::from(page_size) + 1).into(),
        ];
        let mut orders = self.db.read_rows(&sql, &params, decode).await?;
        let next = if orders.len() > page_size as usize {
            orders.truncate(page_size as usize);
            orders.last().map(|last| Cursor {
                sort_key: last.placed_at,
                id: last.id,
            })
        } else {
            None
        };
        Ok(OrderPage { orders, next })
    }

    pub async fn cancel(&self, cancellation: &Cancellation) -> Result<Order, OrdersError> {
        let id = cancellation.id;
        let mut tx = self.db.begin_write().await?;
        let current = tx
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM orders WHERE id = $1"),
                &[id.to_string().into()],
                decode,
            )
            .await?
            .ok_or(OrdersError::NotFound(id))?;
        check_version(cancellation.expected_version, current.version).map_err(|conflict| {
            OrdersError::VersionMismatch {
                id,
                expected: conflict.expected,
                actual: conflict.actual,
            }
        })?;
        if current.status == OrderStatus::Cancelled {
            return Err(OrdersError::AlreadyCancelled(id));
        }
        let now = platform::time::now_micros();
        let order = Order {
            status: OrderStatus::Cancelled,
            version: current.version + 1,
            updated_at: now,
            ..current
        };
        let updated = tx
            .execute(
                "UPDATE orders SET status = $1, version = version + 1, updated_at = $2 WHERE id = $3 AND version = $4",
                &[
                    order.status.as_str().into(),
                    now.into(),
                    id.to_string().into(),
                    stored_version(current.version)?.into(),
                ],
            )
            .await?;
        if updated != 1 {
            // Another transaction changed the row between our read and this write (possible
            // on PostgreSQL, whose transactions do not take the write lock up front).
            return Err(OrdersError::ChangedConcurrently(id));
        }
        let payload = events::OrderCancelled {
            order_id: id.to_string(),
            user_id: order.user_id.to_string(),
            cancelled_at: Some(platform::time::to_timestamp(now)),
        };
        EVENTS
            .record(&mut tx, &id, order.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(order)
    }
}

impl outbox::admin::StateSource for OrderStore {
    /// Each order's placement (at version 1, the event that holds its facts), and for one
    /// that was cancelled its cancellation at its current version: OrderCancelled alone does
    /// not say who bought what, so a projection built from nothing needs both.
    async fn re_emit_chunk(
        &self,
        tx: &mut WriteTx,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<outbox::admin::ReEmitted, StoreError> {
        let select = format!("SELECT {COLUMNS} FROM orders");
        let rows = outbox::admin::next_chunk(tx, &select, after, limit, decode).await?;
        let mut n_events = 0;
        for order in &rows {
            let placed = events::OrderPlaced {
                order_id: order.id.to_string(),
                user_id: order.user_id.to_string(),
                product_id: order.product_id.to_string(),
                quantity: order.quantity,
                placed_at: Some(platform::time::to_timestamp(order.placed_at)),
            };
            EVENTS
                .record(tx, &order.id, 1, order.placed_at, &placed)
                .await?;
            n_events += 1;
            if order.status == OrderStatus::Cancelled {
                let cancelled = events::OrderCancelled {
                    order_id: order.id.to_string(),
                    user_id: order.user_id.to_string(),
                    cancelled_at: Some(platform::time::to_timestamp(order.updated_at)),
                };
                EVENTS
                    .record(tx, &order.id, order.version, order.updated_at, &cancelled)
                    .await?;
                n_events += 1;
            }
        }
        Ok(outbox::admin::ReEmitted {
            last: rows.last().map(|order| order.id),
            entities: rows.len() as u64,
            events: n_events,
        })
    }
}

fn decode(row: &dyn Columns) -> Result<Order, StoreError> {
    let uuid = |column: &str| -> Result<Uuid, StoreError> {
        let raw = row.text(column)?;
        Uuid::parse_str(&raw).map_err(|_| StoreError::Corrupt(format!("order {column} {raw:?}")))
    };
    let status = row.text("status")?;
    let quantity = row.integer("quantity")?;
    Ok(Order {
        id: uuid("id")?,
        user_id: uuid("user_id")?,
        product_id: uuid("product_id")?,
        quantity: i32::try_from(quantity)
            .map_err(|_| StoreError::Corrupt(format!("order quantity {quantity}")))?,
        status: OrderStatus::parse_stored(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("order status {status:?}")))?,
        version: version_from_db(row.integer("version")?)?,
        placed_at: row.integer("placed_at")?,
        updated_at: row.integer("updated_at")?,
    })
}

/// Refuses an order whose user or product the replica does not know, or whose user it knows
/// to be deleted. Read in the placing transaction, so the answer and the order agree.
async fn check_references(
    tx: &mut WriteTx,
    references: References,
    new: &NewOrder,
) -> Result<(), OrdersError> {
    let (users, products) = match references {
        References::Replica => (
            "SELECT deleted_at FROM known_users WHERE id = $1",
            "SELECT 1 AS known FROM known_products WHERE id = $1",
        ),
        References::SharedDatabase => (
            "SELECT deleted_at FROM users WHERE id = $1",
            "SELECT 1 AS known FROM products WHERE id = $1",
        ),
    };
    let user = tx
        .fetch_optional(users, &[new.user_id.to_string().into()], |row| {
            row.optional_integer("deleted_at")
        })
        .await?;
    match user {
        None => return Err(OrdersError::UnknownUser(new.user_id)),
        Some(Some(_deleted_at)) => return Err(OrdersError::DeletedUser(new.user_id)),
        Some(None) => {}
    }
    let product = tx
        .fetch_optional(products, &[new.product_id.to_string().into()], |row| {
            row.integer("known")
        })
        .await?;
    if product.is_none() {
        return Err(OrdersError::UnknownProduct(new.product_id));
    }
    Ok(())
}
