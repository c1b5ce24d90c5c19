//! The read side: answering a purchases query from the projection alone — from its
//! in-memory view ([`crate::view`]), or from its tables when the view cannot be trusted.

use std::sync::Arc;

use consumer::Position;
use platform::db::Database;
use platform::paging::Cursor;
use purchases::{Freshness, Page, PurchaseSource, PurchasesError, Query, StreamPosition, UserView};
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
                        missed: position.n_missed,
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
        let user = self
            .db
            .read_optional(
                "SELECT name, given_name, family_name, deleted_at FROM p_users WHERE id = $1",
                &[query.user_id.to_string().into()],
                |row| {
                    let live = row.optional_integer("deleted_at")?.is_none();
                    Ok(live.then_some((
                        row.text("name")?,
                        row.text("given_name")?,
                        row.text("family_name")?,
                    )))
                },
            )
            .await?;
        let Some(Some((name, given_name, family_name))) = user else {
            return Err(PurchasesError::UserNotFound(query.user_id));
        };
        let user = UserView {
            id: query.user_id,
            name,
            given_name,
            family_name,
        };
        let after = query.after.unwrap_or(Cursor {
            sort_key: i64::MAX,
            id: Uuid::max(),
        });
        let rows = self
            .db
            .read_rows(
                "SELECT pu.order_id, pu.status, pu.quantity, pu.placed_at, pu.product_id,
                        pr.title, pr.image_url, pr.price_cents, pr.currency
                 FROM p_purchases pu LEFT JOIN p_products pr ON pr.id = pu.product_id
                 WHERE pu.user_id = $1 AND pu.placed_at IS NOT NULL
                   AND (pu.placed_at < $2 OR (pu.placed_at = $2 AND pu.order_id < $3))
                 ORDER BY pu.placed_at DESC, pu.order_id DESC
                 LIMIT $4",
                &[
                    query.user_id.to_string().into(),
                    after.sort_key.into(),
                    after.id.to_string().into(),
                    (i64::from(query.page_size) + 1).into(),
                ],
                purchases::rows::decode_purchase,
            )
            .await?;
        // placed_at is filtered non-null, so every row is a complete purchase.
        let mut purchases: Vec<_> = rows.into_iter().flatten().collect();
        let next = Page::cut(&mut purchases, query.page_size);
        Ok(Page {
            user,
            purchases,
            next,
            freshness,
        })
    }
}
