//! The relay: publishes outbox rows to JetStream in commit order and marks them published once
//! JetStream has acknowledged them, by taking them off the `outbox_pending` list. The outbox
//! rows themselves are written once and never updated; they stay for the retention period, a
//! record of what the service emitted, and are then pruned.
//!
//! Delivery is at least once into JetStream and exactly once in effect: every publish carries
//! the event id as `Nats-Msg-Id`, so when the relay re-publishes a row whose earlier publish
//! landed but whose acknowledgement was lost (NATS died, the relay was killed), JetStream drops
//! the copy within its duplicate window. Consumers deduplicate beyond it.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use platform::db::{Backend, Database, Param, StoreError};
use platform::telemetry::metrics as names;
use platform::telemetry::propagation;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::stream::StreamSpec;

/// Wakes the relay when a transaction that wrote outbox rows commits, so an idle relay
/// publishes at once instead of on its next poll.
#[derive(Debug, Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after committing. A wake-up while the relay is busy is remembered, not lost.
    pub fn notify(&self) {
        self.0.notify_one();
    }

    /// Commits a transaction that appended outbox rows, then wakes the relay.
    pub async fn commit(&self, tx: platform::db::WriteTx) -> Result<(), StoreError> {
        tx.commit().await?;
        self.notify();
        Ok(())
    }
}

/// Relay settings, from flags or environment.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Most outbox rows read and published per batch (events are at most a few KiB, so a
    /// batch stays within a few MiB). Larger batches spread each batch's database round
    /// trips over more events: 1024 drained a backlog about 1.3x faster than 256 here.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub outbox_batch_size: u32,
    /// How long a published row stays in the outbox after it was written, in minutes;
    /// then it is pruned. Unpublished rows stay until they are published.
    #[arg(long, env = "OUTBOX_RETENTION_MINUTES", default_value_t = 60)]
    pub outbox_retention_minutes: u64,
    #[command(flatten)]
    pub stream: crate::stream::StreamArgs,
}

impl Default for RelayArgs {
    fn default() -> Self {
        Self {
            outbox_batch_size: 1024,
            outbox_retention_minutes: 60,
            stream: crate::stream::StreamArgs::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: u32,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// How often the relay looks for rows it was not woken for (written by another process
    /// sharing the database, or left by a previous run). Wake-ups make it prompt otherwise.
    pub idle_poll: Duration,
    /// Longest wait between retries while JetStream is unreachable.
    pub max_backoff: Duration,
    /// Longest wait for JetStream to acknowledge a publish.
    pub ack_timeout: Duration,
}

impl RelayConfig {
    pub fn from_args(args: &RelayArgs) -> Self {
        Self {
            batch_size: args.outbox_batch_size,
            retention: Duration::from_secs(args.outbox_retention_minutes * 60),
            idle_poll: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot provision the {stream} stream")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("JetStream did not accept event {event_id}")]
    Publish {
        event_id: String,
        #[source]
        source: async_nats::Error,
    },
}

/// Publishes one service's outbox to its stream until cancelled.
#[derive(Debug)]
pub struct Relay {
    db: Database,
    js: jetstream::Context,
    stream: StreamSpec,
    wakeup: Wakeup,
    config: RelayConfig,
}

/// How often published rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often the outbox's gauges are refreshed.
const PENDING_REPORT_EVERY: Duration = Duration::from_secs(1);

/// A publish's acknowledgement, with the row it is for.
type AckFuture = Pin<Box<dyn Future<Output = (i64, String, Result<(), async_nats::Error>)> + Send>>;

/// A mark's commit, with the rows it marks.
type MarkFuture<'a> = Pin<Box<dyn Future<Output = (Vec<i64>, Result<(), StoreError>)> + Send + 'a>>;

/// A read of the rows to publish next, with the limit it was read with.
type ReadFuture =
    Pin<Box<dyn Future<Output = (usize, Result<Vec<Unpublished>, StoreError>)> + Send>>;

/// What one run of the pipeline has read and not yet marked.
#[derive(Debug, Default)]
struct Pipeline {
    /// The highest seq read so far; reads continue after it.
    cursor: i64,
    /// The next read starts from the first pending row instead of the cursor.
    rescan: bool,
    /// Read and waiting for room in the window, in seq order.
    ready: VecDeque<Unpublished>,
    /// Read (waiting, in flight, acknowledged, or being marked), not yet marked.
    sent: HashSet<i64>,
    /// Acknowledged by JetStream, in publish order, waiting to be marked.
    acknowledged: Vec<i64>,
    /// When the oldest of them was acknowledged.
    acknowledged_since: Option<tokio::time::Instant>,
}

/// Longest an acknowledged row waits to be marked published, unless a whole batch is
/// waiting. Marks are gathered because each is a commit, and a commit per event cost as much
/// disk writing as the events themselves. A mark lost to a crash only re-publishes rows that
/// JetStream drops as duplicates.
const MARK_AFTER: Duration = Duration::from_millis(100);

/// The pending rows past a cursor, in seq order, looked up one by one in the outbox: the cost
/// follows the rows read, however many published rows the outbox still keeps below them.
/// SQLite plans the join that way itself. PostgreSQL, left to choose, merge-joins, scanning
/// the outbox from its first retained row; the lateral subquery (kept apart by `OFFSET 0`)
/// makes it a nested loop of key lookups.
const UNPUBLISHED_SQLITE: &str = "SELECT o.seq, o.event_id, o.subject, o.envelope, o.traceparent
    FROM outbox_pending p JOIN outbox o ON o.seq = p.seq
    WHERE p.seq > $1 ORDER BY p.seq LIMIT $2";
const UNPUBLISHED_POSTGRES: &str = "SELECT p.seq, o.event_id, o.subject, o.envelope, o.traceparent
    FROM outbox_pending p
    CROSS JOIN LATERAL (SELECT event_id, subject, envelope, traceparent FROM outbox WHERE outbox.seq = p.seq OFFSET 0) o
    WHERE p.seq > $1 ORDER BY p.seq LIMIT $2";

/// An outbox row the relay is about to publish.
#[derive(Debug)]
struct Unpublished {
    seq: i64,
    event_id: String,
    subject: String,
    envelope: Vec<u8>,
    traceparent: Option<String>,
}

/// The publish of one event, continuing the trace of the write that recorded it, by
/// OpenTelemetry's messaging conventions.
fn publish_span(traceparent: &str, subject: &str, event_id: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {subject}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %event_id,
    );
    let _ = span.set_parent(propagation::from_traceparent(traceparent));
    span
}

/// Up to `limit` pending rows after `from`, in seq order.
async fn read_unpublished(
    db: Database,
    from: i64,
    limit: usize,
) -> Result<Vec<Unpublished>, StoreError> {
    let sql = match db.backend() {
        Backend::Sqlite => UNPUBLISHED_SQLITE,
        Backend::Postgres => UNPUBLISHED_POSTGRES,
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    db.read_rows(sql, &[from.into(), limit.into()], |row| {
        Ok(Unpublished {
            seq: row.integer("seq")?,
            event_id: row.text("event_id")?,
            subject: row.text("subject")?,
            envelope: row.blob("envelope")?,
            traceparent: row.optional_text("traceparent")?,
        })
    })
    .await
}

/// What a spawned database task gave back. It is cancelled only when the runtime shuts
/// down, which leaves the database as unreachable as a closed pool.
fn joined<T>(
    outcome: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, StoreError> {
    match outcome {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
    }
}

/// Sleeps until `due`, or forever when there is none.
async fn sleep_until_some(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Relay {
    pub fn new(
        db: Database,
        client: async_nats::Client,
        stream: StreamSpec,
        wakeup: Wakeup,
        config: RelayConfig,
    ) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            // Room for two batches of acks; beyond it publishing waits rather than failing.
            .max_ack_inflight(config.batch_size as usize * 2)
            .backpressure_on_inflight(true)
            .build(client);
        Self {
            db,
            js,
            stream,
            wakeup,
            config,
        }
    }

    /// Publishes until `cancel` fires. Failures are retried with capped exponential backoff;
    /// rows wait in the outbox meanwhile, so writes never depend on NATS being up. Beside it,
    /// the outbox's gauges are kept current, whatever the publishing is doing.
    pub async fn run(self, cancel: CancellationToken) {
        tokio::join!(self.publish(&cancel), self.watch_pending(&cancel));
    }

    /// Sets the outbox gauges every second until `cancel` fires: what an operator watches
    /// grow while NATS is away.
    async fn watch_pending(&self, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            self.report_pending().await;
            tokio::select! {
                () = tokio::time::sleep(PENDING_REPORT_EVERY) => {}
                () = cancel.cancelled() => break,
            }
        }
    }

    async fn publish(&self, cancel: &CancellationToken) {
        let mut stream_ready = false;
        let mut backoff = Duration::from_millis(50);
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut next_prune = tokio::time::Instant::now();
        while !cancel.is_cancelled() {
            let attempt = async {
                if !stream_ready {
                    let identity = self.stream.ensure(&self.js).await.map_err(|source| {
                        RelayError::Stream {
                            stream: self.stream.name.clone(),
                            source,
                        }
                    })?;
                    self.follow(identity).await?;
                    stream_ready = true;
                    tracing::info!(stream = %self.stream.name, "stream ready");
                }
                let mut recovered = || {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(stream = %self.stream.name, outage = ?since.elapsed(), "relay recovered");
                    }
                    backoff = Duration::from_millis(50);
                };
                self.pump(cancel, &mut next_prune, &mut recovered).await
            };
            let Err(error) = attempt.await else {
                break; // cancelled
            };
            if failing_since.is_none() {
                failing_since = Some(tokio::time::Instant::now());
                tracing::warn!(stream = %self.stream.name, error = %platform::status::error_chain(&error), "relay cannot publish; events wait in the outbox");
            } else {
                tracing::debug!(error = %platform::status::error_chain(&error), "relay still failing");
            }
            // A publish can fail because the stream is gone (deleted by someone, or lost with
            // a server's store): the next attempt makes sure of the stream first.
            if matches!(
                error,
                RelayError::Stream { .. } | RelayError::Publish { .. }
            ) {
                stream_ready = false;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => break,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
        tracing::debug!(stream = %self.stream.name, "relay stopped");
    }

    /// Records which incarnation of the stream the relay publishes to. When it is not the one
    /// it published to before (the stream was deleted and made again, and the events it held
    /// are gone), or it is a new, empty stream while the outbox still keeps published rows
    /// (the service now publishes to a new server), every row the outbox keeps is published
    /// once more: consumers skip by version what they already have, and whoever had not yet
    /// read an event that was lost with the old stream gets it. Rows older than the outbox's
    /// retention cannot come back this way; the owners' re-emit of their state can.
    async fn follow(&self, identity: crate::StreamIdentity) -> Result<(), RelayError> {
        let stored = self
            .db
            .read_optional(
                "SELECT created FROM outbox_streams WHERE stream = $1",
                &[self.stream.name.as_str().into()],
                |row| row.integer("created"),
            )
            .await?;
        if stored == Some(identity.created) {
            return Ok(());
        }
        let lost_history = match stored {
            Some(_) => true,
            None => identity.last_sequence == 0,
        };
        if lost_history {
            let republished = republish_retained(&self.db).await?;
            if stored.is_some() || republished > 0 {
                tracing::warn!(
                    stream = %self.stream.name,
                    republished,
                    "the stream is not the one this service published to (it was deleted and made again, or the server is new): publishing every event the outbox still keeps once more"
                );
            }
        }
        let mut tx = self.db.begin_write().await?;
        tx.execute(
            "INSERT INTO outbox_streams (stream, created) VALUES ($1, $2)
             ON CONFLICT (stream) DO UPDATE SET created = excluded.created",
            &[self.stream.name.as_str().into(), identity.created.into()],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishes rows as they commit, without waiting for earlier acknowledgements: up to two
    /// batches are in flight, acknowledged in publish order, and marked a batch at a time
    /// (or [`MARK_AFTER`] after the first of them was acknowledged). The next batch is read
    /// while the window drains and published a quarter batch at a time as acknowledgements
    /// free room, so JetStream always has work queued: reading only once half the window
    /// was free left JetStream idle whenever a read took longer than JetStream took to store
    /// the other half (on SQLite a backlog drained at 0.78-0.96 of JetStream's rate then,
    /// 0.86-0.95 now; docs/results.md). Waiting for each batch's
    /// acknowledgements before publishing the next, as this did before, made every event
    /// committed meanwhile wait for a JetStream fsync it had no part in. A mark commits while
    /// the next batches are read and published: on PostgreSQL it takes longer than both, and
    /// waiting for it held the relay to a quarter of JetStream's rate. Returns Ok when
    /// cancelled, after marking what was acknowledged; an error ends the pipeline (what it had
    /// in flight stays unmarked and is published again, which JetStream drops as duplicates).
    async fn pump(
        &self,
        cancel: &CancellationToken,
        next_prune: &mut tokio::time::Instant,
        recovered: &mut impl FnMut(),
    ) -> Result<(), RelayError> {
        let batch = self.config.batch_size as usize;
        let max_in_flight = 2 * batch;
        let mut in_flight = FuturesOrdered::new();
        let mut pipeline = Pipeline::default();
        // At most one mark at a time, so marks commit in order and a slow database holds
        // acknowledged rows back instead of piling up transactions.
        let mut marking: Option<MarkFuture<'_>> = None;
        let mut reading: Option<ReadFuture> = None;
        // Whether the read in progress started from the first pending row.
        let mut reading_from_start = false;
        let mut more = true;
        let mut rescan_at = tokio::time::Instant::now() + self.config.idle_poll;
        // Handles looked up once: a lookup by name and label is a hash and an allocation,
        // per acknowledgement, on a path that carries 100k events a second.
        let stream = self.stream.name.clone();
        let in_flight_gauge = metrics::gauge!(names::RELAY_IN_FLIGHT, "stream" => stream.clone());
        let published_total = metrics::counter!(names::RELAY_PUBLISHED, "stream" => stream.clone());
        let failures_total = metrics::counter!(names::RELAY_FAILURES, "stream" => stream);
        let chunk = batch.div_ceil(4);
        loop {
            in_flight_gauge.set(in_flight.len() as f64);
            let room = max_in_flight - in_flight.len();
            if !pipeline.ready.is_empty() && room >= pipeline.ready.len().min(chunk) {
                if let Err(error) = self
                    .publish_ready(room, &mut pipeline, &mut in_flight)
                    .await
                {
                    self.finish_marks(&mut pipeline, marking.take()).await;
                    return Err(error);
                }
                continue;
            }
            // Read a batch at a time: reading for each slot an acknowledgement frees would
            // cost a query per event once the window is full (a backlog drained at a tenth
            // of the speed on PostgreSQL). A read from the start and a mark never overlap:
            // the read could see rows the mark is deleting, and they would go out again once
            // the mark took them off `sent`.
            if more
                && reading.is_none()
                && pipeline.ready.is_empty()
                && !(pipeline.rescan && marking.is_some())
            {
                more = false;
                reading_from_start = std::mem::take(&mut pipeline.rescan);
                reading = Some(self.read_more(batch, &pipeline, reading_from_start));
            }
            let mark_due = pipeline.acknowledged_since.map(|since| since + MARK_AFTER);
            if marking.is_none()
                && !(reading.is_some() && reading_from_start)
                && (pipeline.acknowledged.len() >= batch
                    || mark_due.is_some_and(|due| tokio::time::Instant::now() >= due))
            {
                marking = Some(self.start_mark(&mut pipeline));
            }
            if in_flight.is_empty()
                && marking.is_none()
                && reading.is_none()
                && tokio::time::Instant::now() >= *next_prune
            {
                *next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                if let Err(error) = self.prune().await {
                    tracing::warn!(error = %platform::status::error_chain(&error), "pruning the outbox failed");
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // Best effort: what stays unmarked is published again after a restart,
                    // and dropped by JetStream as a duplicate.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        self.finish_marks(&mut pipeline, marking.take()),
                    )
                    .await;
                    return Ok(());
                }
                (seqs, marked) = async { marking.as_mut().expect("guarded by the condition").await }, if marking.is_some() => {
                    marking = None;
                    Self::marked(&mut pipeline, &seqs, marked);
                }
                (limit, rows) = async { reading.as_mut().expect("guarded by the condition").await }, if reading.is_some() => {
                    reading = None;
                    match rows {
                        Ok(rows) => {
                            // A full read says there may be more; a short one waits for a
                            // wake-up (or one came meanwhile and set `more` already).
                            more |= rows.len() == limit;
                            Self::take_rows(&mut pipeline, rows);
                        }
                        Err(error) => {
                            self.finish_marks(&mut pipeline, marking.take()).await;
                            return Err(error.into());
                        }
                    }
                }
                Some((seq, event_id, acked)) = in_flight.next() => match acked {
                    Ok(()) => {
                        published_total.increment(1);
                        pipeline
                            .acknowledged_since
                            .get_or_insert_with(tokio::time::Instant::now);
                        pipeline.acknowledged.push(seq);
                        recovered();
                    }
                    Err(source) => {
                        failures_total.increment(1);
                        self.finish_marks(&mut pipeline, marking.take()).await;
                        return Err(RelayError::Publish { event_id, source });
                    }
                },
                () = self.wakeup.0.notified() => more = true,
                () = sleep_until_some(mark_due), if marking.is_none() => {}
                () = tokio::time::sleep_until(rescan_at) => {
                    // Rows another process committed, or (on PostgreSQL) a lower seq that
                    // committed after higher ones the cursor already passed.
                    pipeline.rescan = true;
                    more = true;
                    rescan_at = tokio::time::Instant::now() + self.config.idle_poll;
                }
            }
        }
    }

    /// Reads up to a batch of pending rows past the pipeline's cursor (or from the first,
    /// `from_start`), in seq order. Rows already read and not yet marked are read again
    /// from the start, so such a read takes that many more.
    fn read_more(&self, batch: usize, pipeline: &Pipeline, from_start: bool) -> ReadFuture {
        let (from, limit) = if from_start {
            (0, batch + pipeline.sent.len())
        } else {
            (pipeline.cursor, batch)
        };
        let read = read_unpublished(self.db.clone(), from, limit);
        match self.db.backend() {
            // SQLite reads run to completion on the thread that polls them (see
            // `platform::sqlite`): in a task of their own they took a worker from the
            // connection to NATS and drained a backlog slower (0.70-0.79 of JetStream's
            // rate against 0.81-0.87 here, where the read waits in this task's select).
            Backend::Sqlite => Box::pin(async move { (limit, read.await) }),
            // PostgreSQL's are network round trips that this task would only drive when it
            // wakes for an acknowledgement: in a task of their own they go at the server's
            // pace, on the runtime's other worker.
            Backend::Postgres => {
                let read = tokio::spawn(read);
                Box::pin(async move { (limit, joined(read.await)) })
            }
        }
    }

    /// Queues the rows a read found that the pipeline does not hold yet.
    fn take_rows(pipeline: &mut Pipeline, rows: Vec<Unpublished>) {
        for row in rows {
            pipeline.cursor = pipeline.cursor.max(row.seq);
            if pipeline.sent.insert(row.seq) {
                pipeline.ready.push_back(row);
            }
        }
    }

    /// Publishes up to `room` of the rows read, in seq order. Publishing only queues each
    /// message on the connection; its acknowledgement joins `in_flight`.
    async fn publish_ready(
        &self,
        room: usize,
        pipeline: &mut Pipeline,
        in_flight: &mut FuturesOrdered<AckFuture>,
    ) -> Result<(), RelayError> {
        for _ in 0..room {
            let Some(row) = pipeline.ready.pop_front() else {
                break;
            };
            let Unpublished {
                seq,
                event_id,
                subject,
                envelope,
                traceparent,
            } = row;
            let mut publish = PublishMessage::build()
                .payload(envelope.into())
                .message_id(event_id.as_str());
            // A traced write gets a publish span, from the send to JetStream's ack, whose
            // context the message carries for every consumer to link to.
            let span = traceparent
                .as_deref()
                .map(|traceparent| publish_span(traceparent, &subject, &event_id));
            if let Some(traceparent) = span.as_ref().and_then(propagation::traceparent_of) {
                publish = publish.header(propagation::TRACEPARENT, traceparent.as_str());
            }
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|error| RelayError::Publish {
                    event_id: event_id.clone(),
                    source: error.into(),
                })?;
            in_flight.push_back(Box::pin(async move {
                let acked = ack.await.map(drop).map_err(async_nats::Error::from);
                if let (Some(span), Err(error)) = (&span, &acked) {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", tracing::field::display(error));
                }
                drop(span);
                (seq, event_id, acked)
            }));
        }
        Ok(())
    }

    /// Sets the outbox gauges: rows pending and the age of the oldest. A failure is left for
    /// the next look (the relay's own work reports database trouble).
    async fn report_pending(&self) {
        let pending = self
            .db
            .read_optional(
                "SELECT COUNT(*) AS n, MIN(seq) AS oldest FROM outbox_pending",
                &[],
                |row| Ok((row.integer("n")?, row.optional_integer("oldest")?)),
            )
            .await;
        let Ok(Some((n, oldest))) = pending else {
            return;
        };
        let age = match oldest {
            Some(seq) => self
                .db
                .read_optional(
                    "SELECT created_at FROM outbox WHERE seq = $1",
                    &[seq.into()],
                    |row| row.integer("created_at"),
                )
                .await
                .ok()
                .flatten()
                .map_or(0.0, |created| {
                    (platform::time::now_micros() - created).max(0) as f64 / 1e6
                }),
            None => 0.0,
        };
        let stream = self.stream.name.clone();
        metrics::gauge!(names::OUTBOX_PENDING, "stream" => stream.clone()).set(n as f64);
        metrics::gauge!(names::OUTBOX_OLDEST_PENDING_AGE, "stream" => stream).set(age);
    }

    /// Starts marking the acknowledged rows published.
    fn start_mark(&self, pipeline: &mut Pipeline) -> MarkFuture<'_> {
        pipeline.acknowledged_since = None;
        let seqs = std::mem::take(&mut pipeline.acknowledged);
        Box::pin(async move {
            let marked = self.mark_published(&seqs).await;
            (seqs, marked)
        })
    }

    /// Rows leave the pipeline once their mark is done, whether it committed or not. Rows
    /// whose mark failed stay unpublished in the table and go out again later, which
    /// JetStream drops as duplicates (same message id) and consumers skip beyond that.
    fn marked(pipeline: &mut Pipeline, seqs: &[i64], marked: Result<(), StoreError>) {
        if let Err(error) = marked {
            tracing::debug!(error = %platform::status::error_chain(&error), "marking published rows failed; they will be published again");
        }
        for seq in seqs {
            pipeline.sent.remove(seq);
        }
    }

    /// Waits for the mark in progress, then marks what was acknowledged since.
    async fn finish_marks(&self, pipeline: &mut Pipeline, marking: Option<MarkFuture<'_>>) {
        if let Some(marking) = marking {
            let (seqs, marked) = marking.await;
            Self::marked(pipeline, &seqs, marked);
        }
        let (seqs, marked) = self.start_mark(pipeline).await;
        Self::marked(pipeline, &seqs, marked);
    }

    /// Marks exactly these rows. (Marking a range `seq <= n` would be wrong on PostgreSQL,
    /// where a lower seq can commit after a higher one and would be marked unpublished.)
    async fn mark_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        match self.db.backend() {
            // One statement whatever the count, its plan kept: a list of a thousand
            // placeholders was parsed and planned at every mark (1.4 ms of PostgreSQL's CPU
            // for 1,024 rows, as much as deleting them). The array travels as its text form,
            // the one parameter type both drivers bind.
            Backend::Postgres => {
                let array = seqs
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                tx.execute(
                    "DELETE FROM outbox_pending WHERE seq = ANY($1::bigint[])",
                    &[format!("{{{array}}}").into()],
                )
                .await?;
            }
            Backend::Sqlite => {
                let placeholders: Vec<String> = (1..=seqs.len()).map(|n| format!("${n}")).collect();
                // Only numbered placeholders are interpolated; the values are bound.
                let sql = format!(
                    "DELETE FROM outbox_pending WHERE seq IN ({})",
                    placeholders.join(", ")
                );
                let params: Vec<Param> = seqs.iter().map(|seq| Param::Integer(*seq)).collect();
                tx.execute(&sql, &params).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let pruned = prune(&self.db, self.config.retention).await?;
        if pruned > 0 {
            tracing::debug!(pruned, "pruned published outbox rows");
        }
        Ok(pruned)
    }
}

/// Deletes the published rows written more than `retention` ago and returns how many. Rows
/// still pending stay, however old: they are the relay's work.
///
/// Walks the key from its start, [`PRUNE_CHUNK`] rows a step, and stops at the first young
/// row: an hour of retention at 1,000 writes/s keeps 3.6 million rows, and a condition on
/// `created_at` alone (not indexed; an index would cost every append) would scan them all
/// each minute, on SQLite holding the one writer connection meanwhile. Rows are appended in
/// `seq` order at about their `created_at`, so the old ones come first; a row appended
/// slightly out of time order is pruned a little late or early, never while pending.
pub async fn prune(db: &Database, retention: Duration) -> Result<u64, StoreError> {
    let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let cutoff = platform::time::now_micros().saturating_sub(retention);
    let mut cursor = 0;
    let mut pruned = 0;
    loop {
        let rows = db
            .read_rows(
                "SELECT seq, created_at FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[cursor.into(), PRUNE_CHUNK.into()],
                |row| Ok((row.integer("seq")?, row.integer("created_at")?)),
            )
            .await?;
        let n_old = rows
            .iter()
            .take_while(|(_, created_at)| *created_at < cutoff)
            .count();
        let Some(&(last_old, _)) = rows[..n_old].last() else {
            return Ok(pruned);
        };
        let mut tx = db.begin_write().await?;
        pruned += tx
            .execute(
                // The pending side bounded by the same range, so a long backlog (NATS down
                // for hours) is not read whole at every step.
                "DELETE FROM outbox WHERE seq > $1 AND seq <= $2
                 AND seq NOT IN (SELECT seq FROM outbox_pending WHERE seq > $1 AND seq <= $2)",
                &[cursor.into(), last_old.into()],
            )
            .await?;
        tx.commit().await?;
        if n_old < rows.len() || i64::try_from(rows.len()).unwrap_or(i64::MAX) < PRUNE_CHUNK {
            return Ok(pruned);
        }
        cursor = last_old;
        // Other writers take their turn between steps.
        tokio::task::yield_now().await;
    }
}

/// Rows looked at per pruning step, and so at most deleted per transaction: a few
/// milliseconds of SQLite's writer.
const PRUNE_CHUNK: i64 = 2_000;

/// Puts every row the outbox keeps back on the pending list, a range of `seq` at a time (so
/// SQLite's writer is held for milliseconds, not for the whole retention), and returns how
/// many were published before and are pending again.
pub async fn republish_retained(db: &Database) -> Result<u64, StoreError> {
    let bounds = db
        .read_optional(
            "SELECT MIN(seq) AS first, MAX(seq) AS last FROM outbox",
            &[],
            |row| {
                Ok((
                    row.optional_integer("first")?,
                    row.optional_integer("last")?,
                ))
            },
        )
        .await?;
    let Some((Some(first), Some(last))) = bounds else {
        return Ok(0);
    };
    let mut republished = 0;
    let mut from = first - 1;
    while from < last {
        let to = from.saturating_add(REPUBLISH_CHUNK).min(last);
        let mut tx = db.begin_write().await?;
        republished += tx
            .execute(
                "INSERT INTO outbox_pending (seq) SELECT seq FROM outbox WHERE seq > $1 AND seq <= $2
                 ON CONFLICT (seq) DO NOTHING",
                &[from.into(), to.into()],
            )
            .await?;
        tx.commit().await?;
        from = to;
        tokio::task::yield_now().await;
    }
    Ok(republished)
}

/// Rows put back on the pending list per transaction.
const REPUBLISH_CHUNK: i64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64) -> Unpublished {
        Unpublished {
            seq,
            event_id: format!("event-{seq}"),
            subject: "users.user.UserRenamed".into(),
            envelope: Vec::new(),
            traceparent: None,
        }
    }

    fn ready(pipeline: &Pipeline) -> Vec<i64> {
        pipeline.ready.iter().map(|row| row.seq).collect()
    }

    #[test]
    fn a_read_from_the_start_queues_only_the_rows_the_pipeline_does_not_hold() {
        let mut pipeline = Pipeline::default();
        Relay::take_rows(&mut pipeline, vec![row(1), row(2), row(3)]);
        assert_eq!(ready(&pipeline), [1, 2, 3]);
        assert_eq!(pipeline.cursor, 3);
        // Published; 2 was then acknowledged and marked, so it is off the pending list.
        pipeline.ready.clear();
        pipeline.sent.remove(&2);
        // A rescan reads the pending rows from the first: 1 and 3 are still in flight, and
        // 0 is a lower seq that committed late (PostgreSQL), behind the cursor.
        Relay::take_rows(&mut pipeline, vec![row(0), row(1), row(3), row(4)]);
        assert_eq!(ready(&pipeline), [0, 4], "nothing in flight goes out twice");
        assert_eq!(pipeline.cursor, 4);
        assert_eq!(pipeline.sent, HashSet::from([0, 1, 3, 4]));
    }
}
