//! Where an order's freshness goes. While freshness is timed the bench follows the orders
//! stream itself, twice: a plain subscription on the stream's subjects sees each event when
//! the relay publishes it, and an ordered consumer sees it when JetStream delivers it from the
//! stream (after storing it, and under fsync `always` after the fsync). With PlaceOrder's
//! answer and the first read that shows the order, every timed order splits into three
//! stages: relay (outbox to the wire), JetStream (wire to delivery) and projection (delivery
//! to visible in purchases-async). All four instants are taken in this one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use contracts::events::v1::EventEnvelope;
use futures::{Stream, StreamExt as _, future};
use hdrhistogram::Histogram;
use prost::Message as _;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::measure::{micros, micros_histogram};
use crate::writer::lock;

/// The stream orders publishes to.
pub(crate) const ORDERS_STREAM: &str = bus::ORDERS;
/// Orders remembered at most: a freshness phase at the highest write rate the flags allow
/// (20,000/s for 60 s) stays well inside it, and nothing grows past it.
const MAX_TRACKED: usize = 1_500_000;

/// When the probe saw one aggregate's first event.
#[derive(Debug, Default, Clone, Copy)]
struct Stamps {
    published: Option<Instant>,
    delivered: Option<Instant>,
}

type Seen = Arc<Mutex<HashMap<String, Stamps>>>;

/// Follows the orders stream until dropped.
pub struct StageProbe {
    seen: Seen,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for StageProbe {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl StageProbe {
    /// Subscribes to the orders stream, from its next event on. Both subscriptions are in
    /// place on the server when this returns.
    pub async fn start(endpoints: &crate::topology::Endpoints) -> anyhow::Result<Self> {
        let client = crate::topology::connect_nats(endpoints).await?;
        let orders = jetstream::new(client.clone())
            .get_stream(ORDERS_STREAM)
            .await
            .context("no orders stream")?;
        let (wire, delivered) = sightings(
            &client,
            &bus::Stream::named(ORDERS_STREAM).subjects(),
            &orders,
            consumer::DeliverPolicy::New,
        )
        .await?;
        let seen: Seen = Arc::default();
        let on_wire = follow(wire, stamper(&seen, |stamps| &mut stamps.published));
        let from_stream = follow(delivered, stamper(&seen, |stamps| &mut stamps.delivered));
        Ok(Self {
            seen,
            tasks: vec![on_wire, from_stream],
        })
    }

    /// The JetStream stage of every order the probe saw both times, timed or not: many
    /// more than the timed samples, so its tail is read from thousands.
    pub fn jetstream_every_order(&self) -> EveryOrder {
        let mut jetstream = micros_histogram();
        for stamps in lock(&self.seen).values() {
            if let (Some(published), Some(delivered)) = (stamps.published, stamps.delivered) {
                jetstream.saturating_record(whole_micros(
                    delivered.saturating_duration_since(published),
                ));
            }
        }
        EveryOrder {
            orders: jetstream.len(),
            jetstream: StageSummary::of(&jetstream),
        }
    }

    /// Splits one timed order: answered at `answered`, first seen in purchases-async
    /// `visible` later. None when the probe missed one of its events.
    pub fn split(&self, sample: &Sample) -> Option<Split> {
        let stamps = *lock(&self.seen).get(&sample.order_id)?;
        let (published, delivered) = (stamps.published?, stamps.delivered?);
        let visible = sample.answered + sample.visible;
        // The relay often publishes before the answer reaches the caller: that stage is 0.
        let relay = published.saturating_duration_since(sample.answered);
        let jetstream = delivered.saturating_duration_since(published.max(sample.answered));
        let projection = visible.saturating_duration_since(delivered.max(sample.answered));
        Some(Split {
            at_ms: sample.at.as_millis().try_into().unwrap_or(u64::MAX),
            total_us: micros(sample.visible),
            relay_us: whole_micros(relay),
            jetstream_us: whole_micros(jetstream),
            projection_us: whole_micros(projection),
        })
    }
}

/// Both sightings of each event on `subjects`: on the wire, from a plain subscription, and
/// from `stream`, through an ordered consumer starting where `deliver_policy` says. Both are
/// in place on the server when this returns. The ordered consumer recreates itself after an
/// error; what it misses meanwhile is not seen.
pub(crate) async fn sightings(
    client: &async_nats::Client,
    subjects: &str,
    stream: &jetstream::stream::Stream,
    deliver_policy: consumer::DeliverPolicy,
) -> anyhow::Result<(
    impl Stream<Item = Bytes> + Send + 'static,
    impl Stream<Item = Bytes> + Send + 'static,
)> {
    let wire = client
        .subscribe(subjects.to_owned())
        .await
        .with_context(|| format!("cannot subscribe to {subjects}"))?;
    let delivered = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("cannot follow the stream")?
        .messages()
        .await
        .context("cannot follow the stream")?;
    client.flush().await.context("NATS did not answer")?;
    Ok((
        wire.map(|message| message.payload),
        delivered.filter_map(|message| future::ready(message.ok().map(|m| m.message.payload))),
    ))
}

/// Hands each payload on `payloads`, with the instant it arrived, to `sighted`, until the
/// stream ends or the task is aborted.
pub(crate) fn follow(
    payloads: impl Stream<Item = Bytes> + Send + 'static,
    mut sighted: impl FnMut(&[u8], Instant) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut payloads = std::pin::pin!(payloads);
        while let Some(payload) = payloads.next().await {
            sighted(&payload, Instant::now());
        }
    })
}

/// Stamps, in the field `which` picks, the first sighting of each event's aggregate. What
/// does not decode is not an orders event this probe can place, and is left out.
fn stamper(
    seen: &Seen,
    which: fn(&mut Stamps) -> &mut Option<Instant>,
) -> impl FnMut(&[u8], Instant) + Send + 'static {
    let seen = Arc::clone(seen);
    move |payload, at| {
        let Ok(envelope) = EventEnvelope::decode(payload) else {
            return;
        };
        let mut seen = lock(&seen);
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&envelope.aggregate_id) {
            return;
        }
        which(seen.entry(envelope.aggregate_id).or_default()).get_or_insert(at);
    }
}

/// A stage may take no time at all (the relay publishing before the answer arrives).
fn whole_micros(stage: Duration) -> u64 {
    u64::try_from(stage.as_micros()).unwrap_or(u64::MAX)
}

/// One timed order.
#[derive(Debug, Clone)]
pub struct Sample {
    pub order_id: String,
    /// When PlaceOrder answered.
    pub answered: Instant,
    /// The same instant by the wall clock the services stamp their spans with, in ns since
    /// the Unix epoch.
    pub answered_unix_ns: u64,
    /// From the start of the freshness phase to the answer.
    pub at: Duration,
    /// From the answer to the end of the read that showed the order.
    pub visible: Duration,
    /// From the start of that read (which waited for the order) to its end. The order
    /// became visible somewhere in that window.
    pub window: Duration,
    /// The trace the order's write started, when it was traced.
    pub trace_id: Option<String>,
}

/// One timed order's freshness, split into stages.
#[derive(Debug, Clone, Serialize)]
pub struct Split {
    /// When the order was answered, from the start of the freshness phase.
    pub at_ms: u64,
    pub total_us: u64,
    pub relay_us: u64,
    pub jetstream_us: u64,
    pub projection_us: u64,
}

/// Percentiles of one stage over every split sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageSummary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl StageSummary {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

/// Freshness split into stages, with the slowest samples whole so a tail can be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    /// Samples whose events the probe saw both times.
    pub samples: u64,
    /// PlaceOrder's answer to the relay's publish (0 when the publish came first).
    pub relay: StageSummary,
    /// The publish to JetStream's delivery from the stream: storing, and fsync if `always`.
    pub jetstream: StageSummary,
    /// The delivery to the answer of the read of purchases-async that waited for the order:
    /// pulling, applying, committing, waking the read, and its answer's trip back.
    pub projection: StageSummary,
    /// The slowest samples, slowest first.
    pub slowest: Vec<Split>,
    pub every_order: EveryOrder,
}

/// The JetStream stage over every order of the freshness phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EveryOrder {
    pub orders: u64,
    pub jetstream: StageSummary,
}

/// How many of the slowest samples the report keeps whole.
const SLOWEST_KEPT: usize = 10;

pub fn summarize(splits: &[Split], every_order: EveryOrder) -> Stages {
    let (mut relay, mut jetstream, mut projection) =
        (micros_histogram(), micros_histogram(), micros_histogram());
    for split in splits {
        relay.saturating_record(split.relay_us);
        jetstream.saturating_record(split.jetstream_us);
        projection.saturating_record(split.projection_us);
    }
    let mut slowest = splits.to_vec();
    slowest.sort_by_key(|split| std::cmp::Reverse(split.total_us));
    slowest.truncate(SLOWEST_KEPT);
    Stages {
        samples: splits.len() as u64,
        relay: StageSummary::of(&relay),
        jetstream: StageSummary::of(&jetstream),
        projection: StageSummary::of(&projection),
        slowest,
        every_order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(total_us: u64, relay_us: u64) -> Split {
        Split {
            at_ms: total_us,
            total_us,
            relay_us,
            jetstream_us: 0,
            projection_us: total_us - relay_us,
        }
    }

    #[test]
    fn the_slowest_samples_come_first_and_are_bounded() {
        let splits: Vec<Split> = (1..=20).map(|n| split(n * 100, n)).collect();
        let stages = summarize(&splits, EveryOrder::default());
        assert_eq!(stages.samples, 20);
        let totals: Vec<u64> = stages.slowest.iter().map(|s| s.total_us).collect();
        let expected: Vec<u64> = (1..=20).rev().take(SLOWEST_KEPT).map(|n| n * 100).collect();
        assert_eq!(totals, expected);
        assert_eq!(stages.relay.max_us, 20);
        assert_eq!(stages.jetstream.p99_us, 0);
    }

    #[tokio::test]
    async fn a_split_charges_each_stage_from_the_later_of_its_two_ends() {
        let probe = StageProbe {
            seen: Arc::default(),
            tasks: Vec::new(),
        };
        // Published before the answer arrived, delivered 2 ms after it.
        let published = Instant::now();
        let answered = published + Duration::from_micros(300);
        lock(&probe.seen).insert(
            "o".into(),
            Stamps {
                published: Some(published),
                delivered: Some(answered + Duration::from_millis(2)),
            },
        );
        let sample = Sample {
            order_id: "o".into(),
            answered,
            answered_unix_ns: 0,
            at: Duration::from_millis(40),
            visible: Duration::from_millis(5),
            window: Duration::from_millis(1),
            trace_id: None,
        };
        let split = probe.split(&sample).expect("both stamps are there");
        assert_eq!(
            (split.relay_us, split.jetstream_us, split.projection_us),
            (0, 2_000, 3_000)
        );
        assert_eq!((split.at_ms, split.total_us), (40, 5_000));
        let missing = Sample {
            order_id: "unseen".into(),
            ..sample
        };
        assert!(probe.split(&missing).is_none());
        // Every order counts in the stage's own tail, timed or not: publish to delivery.
        let every = probe.jetstream_every_order();
        assert_eq!(every.orders, 1);
        assert!(every.jetstream.max_us.abs_diff(2_300) <= 2, "{every:?}");
    }
}
