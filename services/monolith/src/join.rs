//! Purchases as the monolith answers them: one query joining users, orders and products.

use platform::db::{Database, StoreError};
use platform::paging::Cursor;
use purchases::{Freshness, Page, PurchaseSource, PurchasesError, Query, UserView};
use sqlx::Row as _;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct JoinSource {
    db: Database,
}

impl JoinSource {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl PurchaseSource for JoinSource {
    async fn list(
        &self,
        query: Query,
        _deadline: Option<std::time::Duration>,
    ) -> Result<Page, PurchasesError> {
        let after = query.after.unwrap_or(Cursor {
            sort_key: i64::MAX,
            id: Uuid::max(),
        });
        // The user's row comes back even without orders (LEFT JOIN), so one query answers
        // both "who" and "what"; one row more than the page tells whether another follows.
        let rows = sqlx::query(
            "SELECT u.name, u.deleted_at,
                    o.id AS order_id, o.status, o.quantity, o.placed_at, o.product_id,
                    p.title, p.image_url, p.price_cents
             FROM users u
             LEFT JOIN orders o
               ON o.user_id = u.id AND (o.placed_at < $2 OR (o.placed_at = $2 AND o.id < $3))
             LEFT JOIN products p ON p.id = o.product_id
             WHERE u.id = $1
             ORDER BY o.placed_at DESC, o.id DESC
             LIMIT $4",
        )
        .bind(query.user_id.to_string())
        .bind(after.sort_key)
        .bind(after.id.to_string())
        .bind(i64::from(query.page_size) + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(StoreError::from)?;
        let Some(first) = rows.first() else {
            return Err(PurchasesError::UserNotFound(query.user_id));
        };
        if first
            .try_get::<Option<i64>, _>("deleted_at")
            .map_err(StoreError::from)?
            .is_some()
        {
            return Err(PurchasesError::UserNotFound(query.user_id));
        }
        let name: String = first.try_get("name").map_err(StoreError::from)?;
        let mut purchases = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(purchase) = purchases::rows::decode_purchase(row)? {
                purchases.push(purchase);
            }
        }
        let next = Page::cut(&mut purchases, query.page_size);
        Ok(Page {
            user: UserView {
                id: query.user_id,
                name,
            },
            purchases,
            next,
            freshness: Freshness::Live,
        })
    }
}
