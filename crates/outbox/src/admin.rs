//! The outbox admin API (`ops.v1.OutboxAdmin`): an owning service writes its current state
//! into its outbox, one event per entity, so projections can be rebuilt after a stream's
//! retention dropped the history. What the state is, and which event carries it, is the
//! owning service's business ([`StateSource`]); this module walks it a chunk at a time.

use std::future::Future;

use contracts::ops::v1 as pb;
use contracts::ops::v1::outbox_admin_server::{OutboxAdmin, OutboxAdminServer};
use platform::db::{Database, StoreError, WriteTx};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Wakeup;

/// What one chunk of re-emitted state held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReEmitted {
    /// The last entity of the chunk, by id: the next chunk starts after it.
    pub last: Option<Uuid>,
    pub entities: u64,
    pub events: u64,
}

/// An owning service's entities, as events that carry each one's whole current state.
pub trait StateSource: Send + Sync + 'static {
    /// Appends to `tx` the events of up to `limit` entities with ids after `after`, in id
    /// order, each at its current version.
    fn re_emit_chunk(
        &self,
        tx: &mut WriteTx,
        after: Option<Uuid>,
        limit: u32,
    ) -> impl Future<Output = Result<ReEmitted, StoreError>> + Send;
}

/// The next chunk of a service's entities, for [`StateSource::re_emit_chunk`]: `select` (a
/// `SELECT <columns> FROM <table>` whose key column is `id`) limited to the ids after `after`,
/// in id order, at most `limit`, read in the re-emitting transaction.
pub async fn next_chunk<T>(
    tx: &mut WriteTx,
    select: &str,
    after: Option<Uuid>,
    limit: u32,
    decode: fn(&dyn platform::db::Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    // Only a constant SELECT and numbered placeholders are interpolated; values are bound.
    let sql = format!("{select} WHERE id > $1 ORDER BY id LIMIT $2");
    tx.fetch_all(
        &sql,
        &[
            after.map(|id| id.to_string()).unwrap_or_default().into(),
            i64::from(limit).into(),
        ],
        decode,
    )
    .await
}

/// Entities per transaction: a few milliseconds of SQLite's writer, so writes go on.
const CHUNK: u32 = 500;

/// Re-emits every entity of `source` into the outbox of `db`, a chunk per transaction, and
/// wakes the relay after each.
pub async fn re_emit_all<S: StateSource>(
    db: &Database,
    wakeup: &Wakeup,
    source: &S,
) -> Result<ReEmitted, StoreError> {
    let mut total = ReEmitted::default();
    loop {
        let mut tx = db.begin_write().await?;
        let chunk = source.re_emit_chunk(&mut tx, total.last, CHUNK).await?;
        wakeup.commit(tx).await?;
        total.entities += chunk.entities;
        total.events += chunk.events;
        if chunk.entities < u64::from(CHUNK) || chunk.last.is_none() {
            return Ok(total);
        }
        total.last = chunk.last;
        tokio::task::yield_now().await;
    }
}

/// The API over one owning service's state.
#[derive(Debug, Clone)]
pub struct OutboxApi<S> {
    db: Database,
    wakeup: Wakeup,
    source: S,
}

impl<S: StateSource> OutboxApi<S> {
    pub fn new(db: Database, wakeup: Wakeup, source: S) -> Self {
        Self { db, wakeup, source }
    }

    pub fn into_server(self) -> OutboxAdminServer<Self> {
        OutboxAdminServer::new(self)
    }
}

#[tonic::async_trait]
impl<S: StateSource> OutboxAdmin for OutboxApi<S> {
    async fn re_emit_state(
        &self,
        _request: Request<pb::ReEmitStateRequest>,
    ) -> Result<Response<pb::ReEmitStateResponse>, Status> {
        let started = std::time::Instant::now();
        let done = re_emit_all(&self.db, &self.wakeup, &self.source)
            .await
            .map_err(|error| platform::status::from_store_error(&error))?;
        tracing::info!(
            entities = done.entities,
            events = done.events,
            took_ms = started.elapsed().as_millis(),
            "current state re-emitted into the outbox"
        );
        Ok(Response::new(pb::ReEmitStateResponse {
            entities: done.entities,
            events: done.events,
        }))
    }
}
