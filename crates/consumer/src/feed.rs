//! The consuming loop: pull a batch, apply it in one transaction, commit, then acknowledge.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use contracts::events::v1::EventEnvelope;
use futures::{FutureExt as _, StreamExt as _};
use platform::db::{Database, StoreError, WriteTx};
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use opentelemetry::trace::TraceContextExt as _;
use platform::telemetry::metrics as names;
use platform::telemetry::propagation;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::event::{self, ApplyError, Event, Freshness, Projection};
use crate::store::{self, AggregateKey, BatchCounts, DeadLetter, Position};

/// Which stream to follow, under which durable name, and how hard to try.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The durable consumer's name, which is also the key of its rows in the local tables:
    /// the consuming service's name ("orders"). One process per name and stream: two would
    /// share the deliveries and lose the per-aggregate order.
    pub name: String,
    /// The stream to follow ("USERS").
    pub stream: String,
    /// Subjects to receive; all of the stream's when empty.
    pub filter_subjects: Vec<String>,
    /// Most events pulled and applied per transaction; also bounds the messages in flight.
    /// Only a backlog fills a batch (an idle feed applies each event as it comes), so the
    /// size sets catch-up's pace. 1,024 was no faster than 256: a projection rebuilt from
    /// 100,000 events at 39,100 events/s on SQLite, against 41,000-44,600 for 256 in runs
    /// of the same session (`cargo bench --bench catch_up`, issue 25).
    pub batch_size: usize,
    /// How many times an event whose apply fails with a database error (other than the
    /// database being unavailable) is tried before it is dead-lettered.
    pub max_attempts: u32,
    /// Most versions an event may be ahead of the one applied before it is dead-lettered as
    /// implausible (see [`crate::MAX_PLAUSIBLE_VERSION`] for the absolute bound).
    pub max_version_jump: u64,
}

impl ConsumerSpec {
    pub fn new(name: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            stream: stream.into(),
            filter_subjects: Vec::new(),
            batch_size: 256,
            max_attempts: 3,
            max_version_jump: Self::DEFAULT_MAX_VERSION_JUMP,
        }
    }

    /// Events in this system change an entity once per write, and each carries its full
    /// state, so a consumer misses versions only where a stream lost events (retention) or
    /// it dead-lettered some: a handful, not ten thousand.
    pub const DEFAULT_MAX_VERSION_JUMP: u64 = 10_000;

    fn config(&self, deliver_policy: jetstream::consumer::DeliverPolicy) -> pull::Config {
        let batch = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        pull::Config {
            durable_name: Some(self.name.clone()),
            description: Some(format!("{} applying {}", self.name, self.stream)),
            deliver_policy,
            // Acknowledging the last event of a committed batch acknowledges the batch.
            ack_policy: jetstream::consumer::AckPolicy::All,
            // Long enough for a batch that waits out a short database outage; a redelivery
            // after it is harmless, only wasted work.
            ack_wait: Duration::from_secs(60),
            // Redelivered forever: this crate, not the server, decides when an event is poison.
            max_deliver: -1,
            filter_subjects: self.filter_subjects.clone(),
            max_ack_pending: batch.saturating_mul(4),
            ..Default::default()
        }
    }
}

/// Follows one stream until cancelled. See the crate documentation for the guarantees.
#[derive(Debug)]
pub struct Consumer<P> {
    core: Arc<Core<P>>,
}

/// What the consuming loop and the replay of dead letters share.
struct Core<P> {
    db: Database,
    js: jetstream::Context,
    spec: ConsumerSpec,
    /// The stream as the bus defines it: who owns it, which subjects it holds.
    origin: bus::Stream,
    projection: P,
    status: watch::Sender<Position>,
    /// Held while a batch or a replay runs, so a replay never interleaves its reads and
    /// writes of applied versions with a batch's (PostgreSQL would let them).
    applying: tokio::sync::Mutex<()>,
}

/// How often the position is logged while events flow.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a pull may go without a delivery before the server is asked whether it holds
/// events for this consumer. Two idle heartbeats: a healthy pull delivers what the server
/// holds within milliseconds, and the heartbeats keep arriving when it does not.
const STALL_CHECK_AFTER: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The consumer sequences of one pull, which JetStream numbers 1, 2, 3... per delivery
/// (redeliveries included). A jump means a delivery was lost on the way, typically when a
/// server between the consumer's leader and this client failed; a step back, that a new
/// leader restarted from an older state. Either way, acknowledging a later event (ack policy
/// "all") would acknowledge what this side never saw, so the pull is reopened from the
/// committed position instead.
#[derive(Debug)]
struct DeliverySequence {
    next: u64,
}

impl DeliverySequence {
    /// Expects the delivery after `delivered`, the consumer sequence the server reported when
    /// the pull was opened. Seeding it from the server rather than from the first message is
    /// what catches a delivery handed, in between, to a pull request left over from before.
    fn after(delivered: u64) -> Self {
        Self {
            next: delivered + 1,
        }
    }

    /// Whether `message` is the delivery expected next; it becomes the new reference.
    fn check(&mut self, message: &jetstream::Message) -> Result<(), OutOfSequence> {
        let Ok(info) = message.info() else {
            return Ok(());
        };
        let expected = self.next;
        if self.step(info.consumer_sequence) {
            Ok(())
        } else {
            Err(OutOfSequence {
                expected,
                delivered: info.consumer_sequence,
                stream_sequence: info.stream_sequence,
            })
        }
    }

    fn step(&mut self, sequence: u64) -> bool {
        let in_order = self.next == sequence;
        self.next = sequence + 1;
        in_order
    }
}

/// A delivery that did not carry the expected consumer sequence, kept for the log line that
/// tells an operator a failover was absorbed.
#[derive(Debug)]
struct OutOfSequence {
    expected: u64,
    delivered: u64,
    stream_sequence: u64,
}

/// A message off the stream, decoded as far as the crate needs before the transaction.
enum Incoming {
    Valid(Event),
    Poison(DeadLetter),
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// Retry the same batch the same way once the database is back.
    #[error(transparent)]
    Unavailable(StoreError),
    /// Something in the batch fails: retry it one event at a time to find what.
    #[error(transparent)]
    Failed(ApplyError),
}

impl From<StoreError> for BatchError {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            Self::Unavailable(error)
        } else {
            Self::Failed(ApplyError::Store(error))
        }
    }
}

impl<P> std::fmt::Debug for Core<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("spec", &self.spec)
            .field("position", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl<P: Projection> Consumer<P> {
    /// Prepares a consumer; its position starts from what the database says it has applied.
    pub async fn new(
        db: Database,
        client: async_nats::Client,
        spec: ConsumerSpec,
        projection: P,
    ) -> Result<Self, StoreError> {
        let position = store::load_position(&db, &spec.name, &spec.stream)
            .await?
            .unwrap_or_default();
        Ok(Self {
            core: Arc::new(Core {
                db,
                js: jetstream::new(client),
                origin: bus::Stream::named(&spec.stream),
                spec,
                projection,
                status: watch::Sender::new(position),
                applying: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The consumer's position, updated after every committed batch.
    pub fn status(&self) -> watch::Receiver<Position> {
        self.core.status.subscribe()
    }

    /// A handle that replays this consumer's dead letters, for the admin API; it stays
    /// usable while the consumer runs.
    pub fn replayer(&self) -> Arc<dyn Replayer> {
        Arc::clone(&self.core) as Arc<dyn Replayer>
    }

    /// Consumes until `cancel` fires. NATS being unreachable or the stream not existing yet
    /// (its producer has not started) is waited out with backoff; nothing here gives up.
    pub async fn run(self, cancel: CancellationToken) {
        self.core.run(cancel).await;
    }
}

/// Replays the dead letters of one consumer (of one durable name on one stream).
pub trait Replayer: Send + Sync + std::fmt::Debug {
    /// The durable consumer's name.
    fn consumer(&self) -> &str;
    fn stream(&self) -> &str;
    /// Applies dead letter `id` again through every check a delivery passes.
    fn replay(
        &self,
        id: i64,
    ) -> Pin<Box<dyn Future<Output = Result<ReplayOutcome, StoreError>> + Send + '_>>;
}

/// What replaying a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Applied; the letter is deleted.
    Applied,
    /// A newer version of its aggregate was applied since; the letter is deleted.
    Skipped { applied: u64 },
    /// Still not applicable; the letter stays, with this reason.
    StillFailing(String),
    /// No such letter of this consumer.
    NotFound,
}

impl<P: Projection> Replayer for Core<P> {
    fn consumer(&self) -> &str {
        &self.spec.name
    }

    fn stream(&self) -> &str {
        &self.spec.stream
    }

    fn replay(
        &self,
        id: i64,
    ) -> Pin<Box<dyn Future<Output = Result<ReplayOutcome, StoreError>> + Send + '_>> {
        Box::pin(self.replay_letter(id))
    }
}

impl<P: Projection> Core<P> {
    async fn run(&self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut waiting_since: Option<Instant> = None;
        let mut last_log = Instant::now();
        let mut logged = self.status.borrow().clone();
        // Set when the durable's state on the server is not to be trusted; it is then made
        // again after the committed position. Kept until an open succeeds.
        let mut afresh = false;
        'feed: while !cancel.is_cancelled() {
            let opened = tokio::select! {
                opened = self.open(afresh) => opened,
                () = cancel.cancelled() => break,
            };
            let (mut messages, mut delivery, consumer) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    if waiting_since.is_none() {
                        waiting_since = Some(Instant::now());
                        tracing::warn!(consumer = %self.spec.name, stream = %self.spec.stream, %error, "cannot follow the stream yet; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if let Some(since) = waiting_since.take() {
                tracing::info!(consumer = %self.spec.name, stream = %self.spec.stream, waited = ?since.elapsed(), "following the stream");
            }
            backoff = Duration::from_millis(50);
            afresh = false;

            loop {
                let first = tokio::select! {
                    first = messages.next() => first,
                    () = tokio::time::sleep(STALL_CHECK_AFTER) => {
                        if self.stalled(&consumer).await {
                            afresh = true;
                            break;
                        }
                        continue;
                    }
                    () = cancel.cancelled() => break 'feed,
                };
                let first = match first {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::debug!(consumer = %self.spec.name, %error, "pull interrupted; reopening");
                        break;
                    }
                    None => break,
                };
                let mut batch = Vec::new();
                let mut out_of_sequence = delivery.check(&first).err();
                if out_of_sequence.is_none() {
                    batch.push(first);
                }
                // Take what has already arrived, without waiting for more: batches grow
                // under load and stay at one event when idle, so latency never waits on size.
                while out_of_sequence.is_none() && batch.len() < self.spec.batch_size {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => match delivery.check(&message) {
                            Ok(()) => batch.push(message),
                            Err(gap) => out_of_sequence = Some(gap),
                        },
                        _ => break,
                    }
                }
                // What arrived in sequence is applied and acknowledged; nothing after a break.
                if !self.handle(batch, &cancel).await {
                    break 'feed;
                }
                if let Some(gap) = out_of_sequence {
                    tracing::warn!(
                        consumer = %self.spec.name,
                        stream = %self.spec.stream,
                        expected_delivery = gap.expected,
                        delivery = gap.delivered,
                        stream_sequence = gap.stream_sequence,
                        committed = self.status.borrow().stream_sequence,
                        "deliveries out of sequence (a server failed over or restarted?); making the durable again after the committed position"
                    );
                    afresh = true;
                    break;
                }
                let position = self.status.borrow().clone();
                if last_log.elapsed() >= LOG_EVERY && position != logged {
                    log_position(&self.spec, &position);
                    logged = position;
                    last_log = Instant::now();
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => break,
            }
        }
        log_position(&self.spec, &self.status.borrow());
    }

    /// Opens the pull, from the event after the last one this side committed, and says which
    /// delivery must come first.
    ///
    /// The durable's own pointer cannot be trusted for that: it counts events *delivered*,
    /// and a previous run (killed, or a pull dropped on a NATS hiccup) may have received
    /// events it never committed. The server would redeliver those only after `ack_wait`,
    /// and with ack policy "all" the acknowledgement of any later event would discard them
    /// unseen. So when the durable has delivered past the committed position, it is
    /// recreated to start right after that position: the local database, where the position
    /// commits with the data, is the single source of truth. The check is made on the state
    /// the server returns when the durable is updated, the last look before pulling, so a
    /// delivery to a leftover pull request just before it is caught too.
    ///
    /// `afresh` makes the durable again whatever the server says of it: after deliveries
    /// out of sequence or a stalled pull, its state on the server is what went wrong. (Seen
    /// after nats-server was killed and restarted: the durable's state had not reached the
    /// disk, the pull reopened on reconnect was handed every new event while this side was
    /// reopening, and the update then returned a durable that had delivered nothing and went
    /// on delivering nothing.)
    async fn open(
        &self,
        afresh: bool,
    ) -> Result<(pull::Stream, DeliverySequence, PullConsumer), async_nats::Error> {
        use async_nats::jetstream::consumer::DeliverPolicy;
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let stream = self.js.get_stream(&self.spec.stream).await?;
        if self.check_stream(stream.cached_info()).await? {
            // A durable left on the new stream by an earlier look would resume past events
            // this side never saw: start it afresh.
            // Usually gone with the old stream already; one that is not and cannot be deleted
            // now is caught below, where a durable that delivered past the position is
            // made again.
            if let Err(error) = stream.delete_consumer(&self.spec.name).await {
                tracing::debug!(consumer = %self.spec.name, %error, "no durable to delete after the stream was made again");
            }
        }
        let committed = self.status.borrow().stream_sequence;
        let resume = if committed == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: committed + 1,
            }
        };
        let mut existing = if afresh {
            self.delete_durable(&stream).await?;
            None
        } else {
            match stream.consumer_info(&self.spec.name).await {
                Ok(info) => Some(info),
                Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => None,
                Err(error) => return Err(error.into()),
            }
        };
        let consumer = loop {
            // An update keeps the durable's start policy (it cannot change); a new durable
            // starts after the committed position.
            let kept = existing.take();
            let deliver_policy = kept
                .as_ref()
                .map_or(resume, |info| info.config.deliver_policy);
            let consumer = stream
                .create_consumer(self.spec.config(deliver_policy))
                .await?;
            let delivered = consumer.cached_info().delivered.stream_sequence;
            if kept.is_none() || delivered <= committed {
                break consumer;
            }
            tracing::warn!(
                consumer = %self.spec.name,
                stream = %self.spec.stream,
                committed,
                delivered,
                "events were delivered past the committed position; resuming after it"
            );
            self.delete_durable(&stream).await?;
        };
        let pending = consumer.cached_info().num_pending;
        if self.nearly_caught_up(pending) {
            self.projection.caught_up().await;
        }
        self.status
            .send_modify(|position| position.pending = pending);
        let delivery = DeliverySequence::after(consumer.cached_info().delivered.consumer_sequence);
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.spec.batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?;
        Ok((messages, delivery, consumer))
    }

    /// Whether what the stream still holds for this consumer fits in one batch: the point
    /// at which [`Projection::caught_up`] is called.
    fn nearly_caught_up(&self, pending: u64) -> bool {
        pending < u64::try_from(self.spec.batch_size).unwrap_or(u64::MAX)
    }

    /// Deletes this consumer's durable; one already gone is as good.
    async fn delete_durable(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> Result<(), async_nats::Error> {
        use async_nats::jetstream::{ErrorCode, stream::ConsumerErrorKind};
        match stream.delete_consumer(&self.spec.name).await {
            Ok(_) => Ok(()),
            Err(error) if matches!(error.kind(), ConsumerErrorKind::JetStream(ref e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND) => {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Whether a pull that delivered nothing for [`STALL_CHECK_AFTER`] is stuck: the server
    /// says it holds events for this consumer (not yet delivered, or delivered and never
    /// acknowledged, when this side holds none: it acknowledges each batch as it commits).
    /// A server that cannot say is not taken for a stall; the pull's own heartbeats cover
    /// an unreachable server.
    async fn stalled(&self, consumer: &PullConsumer) -> bool {
        let Ok(info) = consumer.get_info().await else {
            return false;
        };
        let stuck = info.num_pending + info.num_ack_pending as u64;
        if stuck == 0 {
            return false;
        }
        tracing::warn!(
            consumer = %self.spec.name,
            stream = %self.spec.stream,
            pending = info.num_pending,
            unacknowledged = info.num_ack_pending,
            delivered = info.delivered.stream_sequence,
            committed = self.status.borrow().stream_sequence,
            idle = ?STALL_CHECK_AFTER,
            "the server holds events for this consumer but delivered none; making the durable again after the committed position"
        );
        true
    }

    /// Compares the stream with the one the committed position counts in, before pulling.
    ///
    /// - Made again since (deleted and recreated: another creation time): its sequence
    ///   numbers start over, so the position is reset to its start and every event in it is
    ///   read, those already applied skipped by version. Returns true.
    /// - Its first event is past the one after the position: events aged out of it (or were
    ///   purged) before this consumer read them. They can never be applied here; they are
    ///   counted as missed, said so at warn, and the position moves past them, so the answers'
    ///   freshness reports them instead of the consumer skipping them without a word.
    async fn check_stream(
        &self,
        info: &async_nats::jetstream::stream::Info,
    ) -> Result<bool, StoreError> {
        let created = i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        let position = self.status.borrow().clone();
        let recreated = position.stream_created != 0 && position.stream_created != created;
        let mut committed = if recreated {
            tracing::warn!(
                consumer = %self.spec.name,
                stream = %self.spec.stream,
                committed = position.stream_sequence,
                "the stream was deleted and made again since this consumer last read it: reading the new one from its start, skipping what was already applied"
            );
            0
        } else {
            position.stream_sequence
        };
        // With a subject filter, events before the first one may be of other subjects.
        let missed = if self.spec.filter_subjects.is_empty() {
            info.state.first_sequence.saturating_sub(committed + 1)
        } else {
            0
        };
        if missed > 0 {
            tracing::warn!(
                consumer = %self.spec.name,
                stream = %self.spec.stream,
                committed,
                first_in_stream = info.state.first_sequence,
                missed,
                "events left the stream (retention, a purge) before this consumer read them; they were never applied here: rebuild from the owners' re-emitted state if they matter"
            );
            committed = info.state.first_sequence - 1;
        }
        if recreated || missed > 0 || position.stream_created != created {
            let mut tx = self.db.begin_write().await?;
            store::set_position(
                &mut tx,
                &self.spec.name,
                &self.spec.stream,
                committed,
                created,
                missed,
            )
            .await?;
            tx.commit().await?;
            self.status.send_modify(|position| {
                position.stream_sequence = committed;
                position.stream_created = created;
                position.n_missed += missed;
            });
        }
        Ok(recreated)
    }

    /// Applies and acknowledges one batch. Returns false when cancelled before it committed
    /// (the batch will be redelivered).
    async fn handle(&self, batch: Vec<jetstream::Message>, cancel: &CancellationToken) -> bool {
        let Some(last) = batch.last() else {
            return true;
        };
        let pending = last.info().map(|info| info.pending).unwrap_or(0);
        let incoming: Vec<Incoming> = batch.iter().map(|m| self.decode(m)).collect();
        let span = self.batch_span(&batch);

        let mut careful = false;
        let mut backoff = Duration::from_millis(50);
        let applying = self.applying.lock().await;
        let (counts, applied) = loop {
            let attempt = tokio::select! {
                attempt = self.apply(&incoming, careful).instrument(span.clone()) => attempt,
                () = cancel.cancelled() => return false,
            };
            match attempt {
                Ok(outcome) => break outcome,
                Err(BatchError::Failed(error)) if !careful => {
                    tracing::warn!(consumer = %self.spec.name, error = %platform::status::error_chain(&error), "batch failed; applying its events one at a time");
                    careful = true;
                }
                Err(error) => {
                    tracing::warn!(consumer = %self.spec.name, error = %platform::status::error_chain(&error), retry_in = ?backoff, "cannot apply the batch; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        if !applied.is_empty() {
            self.projection
                .committed(&applied)
                .instrument(span.clone())
                .await;
        }
        drop(applying);
        drop(span);
        self.record_metrics(&counts, pending, &applied);
        // Committed: only now may the server forget these events. A lost ack means a
        // redelivery, which the version check turns into skips.
        if let Err(error) = last.ack().await {
            tracing::debug!(consumer = %self.spec.name, %error, "acknowledgement not sent; the batch will be redelivered and skipped");
        }
        if self.nearly_caught_up(pending) {
            self.projection.caught_up().await;
        }
        self.status.send_modify(|position| {
            position.stream_sequence = counts.last_sequence;
            position.last_event_at_micros = position
                .last_event_at_micros
                .max(counts.last_event_at_micros);
            position.applied_at_micros = platform::time::now_micros();
            position.pending = pending;
            position.n_applied += counts.n_applied;
            position.n_skipped += counts.n_skipped;
            position.n_gaps += counts.n_gaps;
            position.n_dead_lettered += counts.n_dead_lettered;
            position.n_missed += counts.n_missed;
        });
        true
    }

    /// The span of one batch, by OpenTelemetry's messaging conventions: a `process` span
    /// linked to the publish of every event in it that was traced (the link carries the
    /// event's stream sequence), so a write's trace leads here. None when no event of the
    /// batch was traced: a batch alone starts no trace.
    fn batch_span(&self, batch: &[jetstream::Message]) -> tracing::Span {
        let links: Vec<(opentelemetry::trace::SpanContext, u64)> = batch
            .iter()
            .filter_map(|message| {
                let traceparent = message
                    .headers
                    .as_ref()?
                    .get(propagation::TRACEPARENT)?
                    .as_str()
                    .to_owned();
                let context = propagation::from_traceparent(&traceparent);
                let linked = context.span().span_context().clone();
                let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
                linked.is_valid().then_some((linked, sequence))
            })
            .collect();
        if links.is_empty() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            "process",
            otel.name = %format!("process {}", self.spec.stream),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %self.spec.stream,
            messaging.consumer.group.name = %self.spec.name,
            messaging.batch.message_count = batch.len(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        for (linked, sequence) in links {
            span.add_link_with_attributes(
                linked,
                vec![opentelemetry::KeyValue::new(
                    "messaging.nats.stream_sequence",
                    i64::try_from(sequence).unwrap_or(i64::MAX),
                )],
            );
        }
        platform::telemetry::record_ids(&span);
        span
    }

    /// The consumer's metrics after a committed batch.
    fn record_metrics(&self, counts: &BatchCounts, pending: u64, applied: &[Event]) {
        let labels = [
            ("consumer", self.spec.name.clone()),
            ("stream", self.spec.stream.clone()),
        ];
        let now = platform::time::now_micros();
        metrics::gauge!(names::CONSUMER_COMMITTED_SEQUENCE, &labels)
            .set(counts.last_sequence as f64);
        metrics::gauge!(names::CONSUMER_STREAM_SEQUENCE, &labels)
            .set(counts.last_sequence.saturating_add(pending) as f64);
        metrics::gauge!(names::CONSUMER_LAG_EVENTS, &labels).set(pending as f64);
        let lag = if pending > 0 && counts.last_event_at_micros > 0 {
            (now - counts.last_event_at_micros).max(0) as f64 / 1e6
        } else {
            0.0
        };
        metrics::gauge!(names::CONSUMER_LAG_SECONDS, &labels).set(lag);
        metrics::counter!(names::CONSUMER_APPLIED, &labels).increment(counts.n_applied);
        metrics::counter!(names::CONSUMER_SKIPPED, &labels).increment(counts.n_skipped);
        metrics::counter!(names::CONSUMER_DEAD_LETTERED, &labels).increment(counts.n_dead_lettered);
        metrics::counter!(names::CONSUMER_MISSED, &labels).increment(counts.n_missed);
        let freshness =
            metrics::histogram!(names::PROJECTION_FRESHNESS, "stream" => self.spec.stream.clone());
        for event in applied.iter().filter(|event| !event.freshness.is_stale()) {
            let occurred = event.occurred_at_micros();
            if occurred > 0 {
                freshness.record((now - occurred).max(0) as f64 / 1e6);
            }
        }
    }

    fn decode(&self, message: &jetstream::Message) -> Incoming {
        let stream_sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        self.decode_payload(
            message.payload.as_ref(),
            message.subject.as_str(),
            stream_sequence,
        )
    }

    /// Decodes and checks an event as it came off the stream: an envelope the crate can use,
    /// from the stream's owner, about the entity and event its subject names.
    fn decode_payload(&self, payload: &[u8], subject: &str, stream_sequence: u64) -> Incoming {
        let poison = |reason: String, envelope: Option<&EventEnvelope>| {
            Incoming::Poison(DeadLetter {
                id: 0,
                consumer: self.spec.name.clone(),
                failed_at_micros: 0,
                stream: self.spec.stream.clone(),
                stream_sequence,
                subject: subject.to_owned(),
                event_id: envelope.map(|e| e.event_id.clone()),
                event_type: envelope.map(|e| e.event_type.clone()),
                reason,
                payload: payload.to_vec(),
            })
        };
        match EventEnvelope::decode(payload) {
            Err(error) => poison(
                format!("the message is not an event envelope: {error}"),
                None,
            ),
            Ok(envelope) => match event::validate(&envelope)
                .and_then(|()| event::validate_origin(&envelope, subject, &self.origin))
            {
                Err(reason) => poison(reason, Some(&envelope)),
                Ok(()) => Incoming::Valid(Event {
                    envelope,
                    subject: subject.to_owned(),
                    stream_sequence,
                    freshness: Freshness::Next,
                }),
            },
        }
    }

    /// One attempt at a batch, in one transaction. In careful mode each event gets a
    /// savepoint, so one that fails is dead-lettered without undoing the others.
    async fn apply(
        &self,
        incoming: &[Incoming],
        careful: bool,
    ) -> Result<(BatchCounts, Vec<Event>), BatchError> {
        let consumer = self.spec.name.as_str();
        let mut tx = self.db.begin_write().await?;
        let owned_keys: Vec<AggregateKey> = incoming
            .iter()
            .filter_map(|item| match item {
                Incoming::Valid(event) => Some(aggregate_key(event)),
                Incoming::Poison(_) => None,
            })
            .collect();
        let mut keys: Vec<&AggregateKey> = owned_keys.iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut versions = store::load_versions(&mut tx, consumer, &keys).await?;

        let (committed, stream_created) = {
            let position = self.status.borrow();
            (position.stream_sequence, position.stream_created)
        };
        let mut counts = BatchCounts {
            stream_created,
            ..BatchCounts::default()
        };
        let mut raised: HashMap<AggregateKey, u64> = HashMap::new();
        let mut to_apply: Vec<Event> = Vec::new();
        let mut applied_alone: Vec<Event> = Vec::new();
        // Without a subject filter the consumer is handed every event of the stream in order,
        // so a jump in stream sequence is events the stream no longer held.
        let mut last_seen = committed;
        for item in incoming {
            let sequence = match item {
                Incoming::Poison(letter) => letter.stream_sequence,
                Incoming::Valid(event) => event.stream_sequence,
            };
            if self.spec.filter_subjects.is_empty() && sequence > last_seen + 1 && last_seen > 0 {
                let missed = sequence - last_seen - 1;
                counts.n_missed += missed;
                tracing::warn!(
                    consumer,
                    stream = %self.spec.stream,
                    after = last_seen,
                    next = sequence,
                    missed,
                    "events left the stream before this consumer read them; they were never applied here"
                );
            }
            last_seen = last_seen.max(sequence);
            let event = match item {
                Incoming::Poison(letter) => {
                    counts.last_sequence = counts.last_sequence.max(letter.stream_sequence);
                    self.dead_letter(&mut tx, letter).await?;
                    counts.n_dead_lettered += 1;
                    continue;
                }
                Incoming::Valid(event) => event,
            };
            counts.last_sequence = counts.last_sequence.max(event.stream_sequence);
            counts.last_event_at_micros =
                counts.last_event_at_micros.max(event.occurred_at_micros());
            let key = aggregate_key(event);
            let version = event.envelope.aggregate_version;
            let applied = versions.get(&key).copied().unwrap_or(0);
            if let Some(reason) =
                event::implausible_version(applied, version, self.spec.max_version_jump)
            {
                self.dead_letter(&mut tx, &letter_for(&self.spec, event, reason))
                    .await?;
                counts.n_dead_lettered += 1;
                continue;
            }
            let freshness = Freshness::classify(applied, version);
            let event = Event {
                freshness,
                ..event.clone()
            };
            if freshness.is_stale() {
                counts.n_skipped += 1;
                if !self.projection.wants_stale() {
                    continue;
                }
            }
            if careful {
                if !self.apply_alone(&mut tx, &event).await? {
                    counts.n_dead_lettered += 1;
                    continue;
                }
                applied_alone.push(event.clone());
            }
            if let Freshness::AfterGap { missing } = freshness {
                counts.n_gaps += 1;
                tracing::warn!(
                    consumer,
                    aggregate_type = %key.0,
                    aggregate_id = %key.1,
                    version,
                    missing,
                    "version gap: applying the newer event; the missing ones were never seen here"
                );
            }
            if !freshness.is_stale() {
                counts.n_applied += 1;
                versions.insert(key.clone(), version);
                raised.insert(key, version);
            }
            if !careful {
                to_apply.push(event);
            }
        }
        if !to_apply.is_empty() {
            self.projection
                .apply(&mut tx, &to_apply)
                .await
                .map_err(|error| match error {
                    ApplyError::Store(store) => BatchError::from(store),
                    rejected => BatchError::Failed(rejected),
                })?;
        }
        store::store_versions(&mut tx, consumer, &raised).await?;
        store::advance_position(
            &mut tx,
            consumer,
            &self.spec.stream,
            &counts,
            platform::time::now_micros(),
        )
        .await?;
        tx.commit().await?;
        let applied = if careful { applied_alone } else { to_apply };
        Ok((counts, applied))
    }

    /// Applies one event under a savepoint, retrying failures up to `max_attempts`. Returns
    /// false when the event was dead-lettered instead.
    async fn apply_alone(&self, tx: &mut WriteTx, event: &Event) -> Result<bool, BatchError> {
        let mut attempt = 0;
        let reason = loop {
            attempt += 1;
            tx.execute("SAVEPOINT consumer_event", &[]).await?;
            match self.projection.apply(tx, std::slice::from_ref(event)).await {
                Ok(()) => {
                    tx.execute("RELEASE SAVEPOINT consumer_event", &[]).await?;
                    return Ok(true);
                }
                Err(ApplyError::Store(error)) if error.is_transient() => {
                    return Err(BatchError::Unavailable(error));
                }
                Err(error) => {
                    tx.execute("ROLLBACK TO SAVEPOINT consumer_event", &[])
                        .await?;
                    tx.execute("RELEASE SAVEPOINT consumer_event", &[]).await?;
                    let rejected = matches!(error, ApplyError::Rejected(_));
                    if rejected || attempt >= self.spec.max_attempts {
                        break format!(
                            "{} (after {attempt} attempt{})",
                            platform::status::error_chain(&error),
                            if attempt == 1 { "" } else { "s" }
                        );
                    }
                }
            }
        };
        self.dead_letter(tx, &letter_for(&self.spec, event, reason))
            .await?;
        Ok(false)
    }

    /// Replays one dead letter: the checks a delivery passes, then the projection, in one
    /// transaction that also deletes the letter (or records why it still fails).
    async fn replay_letter(&self, id: i64) -> Result<ReplayOutcome, StoreError> {
        let _applying = self.applying.lock().await;
        let consumer = self.spec.name.as_str();
        let mut tx = self.db.begin_write().await?;
        let Some(letter) = store::load_dead_letter(&mut tx, id).await? else {
            return Ok(ReplayOutcome::NotFound);
        };
        if letter.consumer != self.spec.name || letter.stream != self.spec.stream {
            return Ok(ReplayOutcome::NotFound);
        }
        let still_failing = async |mut tx: WriteTx, reason: String| {
            store::refail_dead_letter(&mut tx, id, &reason).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(ReplayOutcome::StillFailing(reason))
        };
        let event =
            match self.decode_payload(&letter.payload, &letter.subject, letter.stream_sequence) {
                Incoming::Poison(poison) => return still_failing(tx, poison.reason).await,
                Incoming::Valid(event) => event,
            };
        let key = aggregate_key(&event);
        let versions = store::load_versions(&mut tx, consumer, &[&key]).await?;
        let applied = versions.get(&key).copied().unwrap_or(0);
        let version = event.envelope.aggregate_version;
        if let Some(reason) =
            event::implausible_version(applied, version, self.spec.max_version_jump)
        {
            return still_failing(tx, reason).await;
        }
        let freshness = Freshness::classify(applied, version);
        if freshness.is_stale() && !self.projection.wants_stale() {
            store::delete_dead_letter(&mut tx, id).await?;
            tx.commit().await?;
            return Ok(ReplayOutcome::Skipped { applied });
        }
        let event = Event { freshness, ..event };
        tx.execute("SAVEPOINT consumer_replay", &[]).await?;
        match self
            .projection
            .apply(&mut tx, std::slice::from_ref(&event))
            .await
        {
            Ok(()) => tx.execute("RELEASE SAVEPOINT consumer_replay", &[]).await?,
            Err(ApplyError::Store(error)) if error.is_transient() => return Err(error),
            Err(error) => {
                tx.execute("ROLLBACK TO SAVEPOINT consumer_replay", &[])
                    .await?;
                tx.execute("RELEASE SAVEPOINT consumer_replay", &[]).await?;
                return still_failing(tx, platform::status::error_chain(&error)).await;
            }
        };
        if !freshness.is_stale() {
            store::store_versions(&mut tx, consumer, &HashMap::from([(key, version)])).await?;
        }
        store::delete_dead_letter(&mut tx, id).await?;
        tx.commit().await?;
        self.projection
            .committed(std::slice::from_ref(&event))
            .await;
        tracing::info!(consumer, stream = %self.spec.stream, id, event_id = %event.envelope.event_id, "dead letter replayed");
        Ok(ReplayOutcome::Applied)
    }

    async fn dead_letter(&self, tx: &mut WriteTx, letter: &DeadLetter) -> Result<(), BatchError> {
        tracing::error!(
            consumer = %self.spec.name,
            stream = %letter.stream,
            stream_sequence = letter.stream_sequence,
            subject = %letter.subject,
            event_id = letter.event_id.as_deref().unwrap_or("-"),
            reason = %letter.reason,
            "dead-lettering an event"
        );
        store::insert_dead_letter(tx, &self.spec.name, letter).await?;
        Ok(())
    }
}

/// The dead letter for a valid event that was not applied.
fn letter_for(spec: &ConsumerSpec, event: &Event, reason: String) -> DeadLetter {
    DeadLetter {
        id: 0,
        consumer: spec.name.clone(),
        failed_at_micros: 0,
        stream: spec.stream.clone(),
        stream_sequence: event.stream_sequence,
        subject: event.subject.clone(),
        event_id: Some(event.envelope.event_id.clone()),
        event_type: Some(event.envelope.event_type.clone()),
        reason,
        payload: event.envelope.encode_to_vec(),
    }
}

fn aggregate_key(event: &Event) -> AggregateKey {
    (
        event.envelope.aggregate_type.clone(),
        event.envelope.aggregate_id.clone(),
    )
}

fn log_position(spec: &ConsumerSpec, position: &Position) {
    let lag_ms = if position.applied_at_micros > 0 && position.last_event_at_micros > 0 {
        (position.applied_at_micros - position.last_event_at_micros) / 1000
    } else {
        0
    };
    tracing::info!(
        consumer = %spec.name,
        stream = %spec.stream,
        stream_sequence = position.stream_sequence,
        pending = position.pending,
        applied = position.n_applied,
        skipped = position.n_skipped,
        gaps = position.n_gaps,
        dead_lettered = position.n_dead_lettered,
        missed = position.n_missed,
        last_event_to_apply_ms = lag_ms,
        "consumer position"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_or_a_step_back_in_deliveries_breaks_the_sequence() {
        let mut delivery = DeliverySequence::after(6);
        assert!(
            delivery.step(7),
            "the delivery after the one the server reported"
        );
        assert!(delivery.step(8));
        assert!(!delivery.step(10), "delivery 9 went missing");
        assert!(delivery.step(11));
        assert!(!delivery.step(3), "a new leader restarted from older state");
    }

    #[test]
    fn a_delivery_made_before_the_first_message_arrived_breaks_the_sequence() {
        // The server reported 6 deliveries when the pull opened; a seventh went to a pull
        // request left over from a dropped stream, so the first message here is the eighth.
        let mut delivery = DeliverySequence::after(6);
        assert!(!delivery.step(8));
        assert!(
            DeliverySequence::after(0).step(1),
            "a new durable's first delivery"
        );
    }
}
