//! The read side: answering a purchases query from the projection alone — from its
//! in-memory view ([`crate::view`]), or from its tables when the view cannot be trusted.

use std::sync::Arc;

use consumer::Position;
use platform::db::{Database, StoreError};
use platform::paging::Cursor;
use purchases::{Freshness, Page, PurchaseSource, PurchasesError, Query, StreamPosition, UserView};
use sqlx::Row as _;
use tokio::sync::watch;
use uuid::Uuid;

use crate::view::View;

/// Answers from the projection, and says how far each stream has been applied.
#[derive(Debug, Clone)]
pub struct ProjectionReader {
    db: Database,
    /// None when reads are configured to go to the database.
    view: Option<Arc<View>>,
    positions: Vec<(&'static str, watch::Receiver<Position>)>,
}

impl ProjectionReader {
    pub fn new(
        db: Database,
        view: Option<Arc<View>>,
        positions: Vec<(&'static str, watch::Receiver<Position>)>,
    ) -> Self {
        Self {
            db,
            view,
            positions,
        }
    }

    fn freshness(&self) -> Freshness {
        Freshness::Projection(
            self.positions
                .iter()
                .map(|(stream, position)| {
                    let position = position.borrow();
                    StreamPosition {
                        stream: (*stream).to_owned(),
                        sequence: position.stream_sequence,
                        last_event_at_micros: position.last_event_at_micros,
                        applied_at_micros: position.applied_at_micros,
                        pending: position.pending,
                        skipped: position.n_skipped,
                        dead_lettered: position.n_dead_lettered,
                    }
                })
                .collect(),
        )
    }
}

impl PurchaseSource for ProjectionReader {
    async fn list(
        &self,
        query: Query,
        _deadline: Option<std::time::Duration>,
    ) -> Result<Page, PurchasesError> {
        // Taken before reading, so the answer is at least as fresh as it claims.
        let freshness = self.freshness();
        if let Some(view) = self.view.as_ref().filter(|view| view.is_trusted()) {
            let (user, mut purchases) = view.page(&query)?;
            let next = Page::cut(&mut purchases, query.page_size);
            return Ok(Page {
                user,
                purchases,
                next,
                freshness,
            });
        }
        let mut conn = self.db.pool().acquire().await.map_err(StoreError::from)?;
        let user = sqlx::query(
            "SELECT name, given_name, family_name, deleted_at FROM p_users WHERE id = $1",
        )
        .bind(query.user_id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(StoreError::from)?;
        let user = match user {
            Some(row)
                if row
                    .try_get::<Option<i64>, _>("deleted_at")
                    .map_err(StoreError::from)?
                    .is_none() =>
            {
                let text =
                    |column: &str| row.try_get::<String, _>(column).map_err(StoreError::from);
                UserView {
                    id: query.user_id,
                    name: text("name")?,
                    given_name: text("given_name")?,
                    family_name: text("family_name")?,
                }
            }
            _ => return Err(PurchasesError::UserNotFound(query.user_id)),
        };
        let after = query.after.unwrap_or(Cursor {
            sort_key: i64::MAX,
            id: Uuid::max(),
        });
        let rows = sqlx::query(
            "SELECT pu.order_id, pu.status, pu.quantity, pu.placed_at, pu.product_id,
                    pr.title, pr.image_url, pr.price_cents, pr.currency
             FROM p_purchases pu LEFT JOIN p_products pr ON pr.id = pu.product_id
             WHERE pu.user_id = $1 AND pu.placed_at IS NOT NULL
               AND (pu.placed_at < $2 OR (pu.placed_at = $2 AND pu.order_id < $3))
             ORDER BY pu.placed_at DESC, pu.order_id DESC
             LIMIT $4",
        )
        .bind(query.user_id.to_string())
        .bind(after.sort_key)
        .bind(after.id.to_string())
        .bind(i64::from(query.page_size) + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::from)?;
        let mut purchases = Vec::with_capacity(rows.len());
        for row in &rows {
            // placed_at is filtered non-null, so every row is a complete purchase.
            if let Some(purchase) = purchases::rows::decode_purchase(row)? {
                purchases.push(purchase);
            }
        }
        let next = Page::cut(&mut purchases, query.page_size);
        Ok(Page {
            user,
            purchases,
            next,
            freshness,
        })
    }
}
