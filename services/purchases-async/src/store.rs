//! The read side: answering a purchases query from the projection alone — from its
//! in-memory view ([`crate::view`]), or from its tables when the view cannot be trusted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer::Position;
use platform::db::Database;
use platform::paging::Cursor;
use purchases::{Freshness, Page, PurchaseSource, PurchasesError, Query, StreamPosition, UserView};
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

use crate::view::{OrderWait, View};

/// Answers from the projection, and says how far each stream has been applied.
#[derive(Debug, Clone)]
pub struct ProjectionReader {
    db: Database,
    /// None when reads are configured to go to the database.
    view: Option<Arc<View>>,
    positions: Vec<(&'static str, watch::Receiver<Position>)>,
    /// One permit per read allowed to wait for an order at once.
    waiting: Arc<Semaphore>,
    max_waiting: usize,
}

impl ProjectionReader {
    pub fn new(
        db: Database,
        view: Option<Arc<View>>,
        positions: Vec<(&'static str, watch::Receiver<Position>)>,
        max_waiting: usize,
    ) -> Self {
        Self {
            db,
            view,
            positions,
            waiting: Arc::new(Semaphore::new(max_waiting)),
            max_waiting,
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

/// Longest a read waits for an order to arrive, whatever the caller's deadline.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Left of the caller's deadline for the answer to travel back, so a wait that runs out
/// reaches the caller as this service's DEADLINE_EXCEEDED, which says what was missing,
/// rather than as the caller's own: a twentieth of it, from 5 to 100 ms. A fixed 5 ms was
/// too little on a busy machine, where the answer's trip back sometimes took longer and the
/// caller saw its own bare timeout instead.
fn answer_margin(left: Duration) -> Duration {
    (left / 20).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

impl ProjectionReader {
    /// Whether the projection answers with the order, from the view when it is trusted.
    async fn holds_order(&self, user_id: Uuid, order_id: Uuid) -> Result<bool, PurchasesError> {
        if let Some(view) = self.view.as_ref().filter(|view| view.is_trusted()) {
            return view.holds_order(user_id, order_id);
        }
        let found = self
            .db
            .read_optional(
                "SELECT 1 AS found FROM p_purchases pu JOIN p_users u ON u.id = pu.user_id
                 WHERE pu.order_id = $1 AND pu.user_id = $2 AND pu.placed_at IS NOT NULL",
                &[order_id.to_string().into(), user_id.to_string().into()],
                |row| row.integer("found"),
            )
            .await?;
        Ok(found.is_some())
    }

    /// Waits until the projection holds `order_id` among `user_id`'s purchases, looking
    /// again when the view applies that order (or, reading from the database, when a stream's
    /// position moves): the answer goes out with the update that brought the order, not at
    /// the next poll.
    async fn wait_for_order(
        &self,
        user_id: Uuid,
        order_id: Uuid,
        wait: Duration,
    ) -> Result<(), PurchasesError> {
        let started = Instant::now();
        let order_wait = self.view.as_deref().map(|view| view.wait_for(order_id));
        let mut positions: Vec<_> = self.positions.iter().map(|(_, p)| p.clone()).collect();
        // Taken at the first look that finds the order missing: a read of an order already
        // there is never refused.
        let mut permit = None;
        loop {
            // Made before looking, so an update between the look and the wait wakes the
            // wait instead of being missed.
            let from_view = self.view.as_ref().is_some_and(|view| view.is_trusted());
            let applied = order_wait
                .as_ref()
                .filter(|_| from_view)
                .map(OrderWait::notified);
            for position in &mut positions {
                position.borrow_and_update();
            }
            if self.holds_order(user_id, order_id).await? {
                return Ok(());
            }
            if permit.is_none() {
                permit = Some(self.waiting.try_acquire().map_err(|_| {
                    PurchasesError::TooManyWaiting {
                        limit: self.max_waiting,
                    }
                })?);
            }
            let moved = async {
                match applied {
                    Some(applied) => applied.await,
                    None => any_change(&mut positions).await,
                }
            };
            if tokio::time::timeout_at((started + wait).into(), moved)
                .await
                .is_err()
            {
                return Err(PurchasesError::OrderNotYetVisible {
                    order_id,
                    user_id,
                    waited_ms: started.elapsed().as_millis(),
                    applied: self.applied(),
                });
            }
        }
    }

    /// Where each stream stands, for a message: "the projection has applied USERS #3, ...".
    fn applied(&self) -> String {
        let streams: Vec<String> = self
            .positions
            .iter()
            .map(|(stream, position)| format!("{stream} #{}", position.borrow().stream_sequence))
            .collect();
        format!("the projection has applied {}", streams.join(", "))
    }
}

/// Resolves when any stream's position changes. A sender that is gone (its consumer
/// stopped) never resolves, rather than resolving at once, over and over.
async fn any_change(positions: &mut [watch::Receiver<Position>]) {
    async fn changed<T>(receiver: &mut watch::Receiver<T>) {
        if receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    if positions.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(
        positions
            .iter_mut()
            .map(|position| Box::pin(changed(position))),
    )
    .await;
}

impl PurchaseSource for ProjectionReader {
    async fn list(&self, query: Query, deadline: Option<Duration>) -> Result<Page, PurchasesError> {
        if let Some(order_id) = query.wait_for_order {
            let wait = deadline
                .map_or(MAX_WAIT, |left| left.saturating_sub(answer_margin(left)))
                .min(MAX_WAIT);
            self.wait_for_order(query.user_id, order_id, wait).await?;
        }
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
