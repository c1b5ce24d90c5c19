//! JetStream alone: the floor under freshness's JetStream stage. On the lab's own broker,
//! with nothing else writing, the bench publishes at the freshness write rate to a scratch
//! stream configured like the orders stream, and times each message from its publish to its
//! delivery from the stream, as the stage probe times an order. What the JetStream stage
//! takes beyond this, the rest of the system (its disk writes, its CPU) added.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::stages::{self, ORDERS_STREAM, StageSummary};
use crate::measure::{micros, micros_histogram};
use crate::writer::lock;

/// The scratch stream: deleted after each measurement, and before one in case a killed run
/// left it behind.
const STREAM: &str = "LAB_JETSTREAM_ALONE";
const SUBJECT: &str = "lab.jetstream-alone";
/// Messages sent at most, whatever the rate and duration asked for.
const MAX_MESSAGES: u64 = 100_000;
/// Publishes awaiting their acknowledgement at most; the relay allows as many.
const ACKS_IN_FLIGHT: usize = 1_024;
/// How long the last deliveries may take after the last publish.
const DRAIN_WITHIN: Duration = Duration::from_secs(10);
/// The payload when the orders stream is still empty: about one order event.
const DEFAULT_PAYLOAD_BYTES: usize = 512;

/// JetStream's own publish-to-delivery time, measured alone.
#[derive(Debug, Clone, Serialize)]
pub struct JetStreamAlone {
    pub messages: u64,
    /// Publishes JetStream refused or did not acknowledge.
    pub errors: u64,
    /// Messages never delivered within the drain time.
    pub never_delivered: u64,
    /// The orders stream's average stored message, so the floor carries the same bytes.
    pub payload_bytes: usize,
    pub rate_offered: u32,
    /// From the message on the wire to its delivery from the stream (storing, and the fsync
    /// under `always`), timed as freshness's JetStream stage is.
    pub publish_to_delivery: StageSummary,
    /// From the publish to JetStream's acknowledgement, as the relay waits for it.
    pub publish_to_ack: StageSummary,
}

/// What became of one message.
#[derive(Debug, Default, Clone, Copy)]
struct Message {
    /// Handed to the client.
    sent: Option<Instant>,
    /// Seen on a plain subscription: where the probe starts the JetStream stage.
    on_wire: Option<Instant>,
    /// Delivered from the stream.
    delivered: Option<Instant>,
}

type Timeline = Arc<Mutex<Vec<Message>>>;

/// Publishes at `rate` for `duration` (at most [`MAX_MESSAGES`]) and times every message.
pub async fn measure(
    endpoints: &crate::topology::Endpoints,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<JetStreamAlone> {
    anyhow::ensure!(rate > 0, "the rate must be positive");
    let client = crate::topology::connect_nats(endpoints).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    let orders = js
        .get_stream(ORDERS_STREAM)
        .await
        .context("no orders stream to model the scratch stream on")?;
    let info = orders.cached_info();
    let payload_bytes = usize::try_from(info.state.bytes / info.state.messages.max(1))
        .ok()
        .filter(|bytes| *bytes > 0)
        .unwrap_or(DEFAULT_PAYLOAD_BYTES)
        .clamp(16, 64 * 1024);
    let count = (f64::from(rate) * duration.as_secs_f64()).ceil() as u64;
    let count = count.clamp(1, MAX_MESSAGES);
    let _ = js.delete_stream(STREAM).await;
    let scratch = js
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            max_messages: i64::try_from(count).unwrap_or(i64::MAX),
            max_age: Duration::from_secs(600),
            ..info.config.clone()
        })
        .await
        .context("cannot create the scratch stream")?;
    let measured = time(&client, &js, &scratch, rate, count, payload_bytes).await;
    if let Err(error) = js.delete_stream(STREAM).await {
        eprintln!("Could not delete the scratch stream {STREAM}: {error}");
    }
    measured
}

async fn time(
    client: &async_nats::Client,
    js: &jetstream::Context,
    scratch: &stream::Stream,
    rate: u32,
    count: u64,
    payload_bytes: usize,
) -> anyhow::Result<JetStreamAlone> {
    let timeline: Timeline = Arc::new(Mutex::new(vec![Message::default(); count as usize]));
    let (wire, deliveries) =
        stages::sightings(client, SUBJECT, scratch, consumer::DeliverPolicy::All).await?;
    let followers = [
        stages::follow(wire, stamper(&timeline, |m| &mut m.on_wire)),
        stages::follow(deliveries, stamper(&timeline, |m| &mut m.delivered)),
    ];

    let mut acked = micros_histogram();
    let mut errors = 0;
    let mut pending = FuturesUnordered::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0;
    while sent < count || !pending.is_empty() {
        tokio::select! {
            _ = ticks.tick(), if sent < count && pending.len() < ACKS_IN_FLIGHT => {
                let message = PublishMessage::build()
                    .payload(payload(sent, payload_bytes))
                    .message_id(uuid::Uuid::now_v7().to_string());
                let at = Instant::now();
                match js.send_publish(SUBJECT, message).await {
                    Ok(ack) => {
                        lock(&timeline)[sent as usize].sent = Some(at);
                        pending.push(acknowledged(ack, at));
                    }
                    Err(_) => errors += 1,
                }
                sent += 1;
            }
            Some(ack) = pending.next() => match ack {
                Some(took) => acked.saturating_record(micros(took)),
                None => errors += 1,
            },
        }
    }
    let drain_until = Instant::now() + DRAIN_WITHIN;
    let drained = loop {
        let outstanding = lock(&timeline)
            .iter()
            .any(|m| m.sent.is_some() && (m.on_wire.is_none() || m.delivered.is_none()));
        if !outstanding {
            break true;
        }
        if Instant::now() > drain_until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for follower in followers {
        follower.abort();
    }
    if !drained {
        eprintln!("Not every scratch message came back within {DRAIN_WITHIN:?}");
    }
    let mut to_delivery = micros_histogram();
    let mut never_delivered = 0;
    for message in lock(&timeline).iter().filter(|m| m.sent.is_some()) {
        match (message.on_wire, message.delivered) {
            (Some(on_wire), Some(delivered)) => {
                to_delivery.saturating_record(micros(delivered.saturating_duration_since(on_wire)));
            }
            (_, None) => never_delivered += 1,
            (None, Some(_)) => {}
        }
    }
    Ok(JetStreamAlone {
        messages: count,
        errors,
        never_delivered,
        payload_bytes,
        rate_offered: rate,
        publish_to_delivery: StageSummary::of(&to_delivery),
        publish_to_ack: StageSummary::of(&acked),
    })
}

/// Stamps, in the field `which` picks, the first sighting of each message.
fn stamper(
    timeline: &Timeline,
    which: fn(&mut Message) -> &mut Option<Instant>,
) -> impl FnMut(&[u8], Instant) + Send + 'static {
    let timeline = Arc::clone(timeline);
    move |payload, at| {
        if let Some(index) = index_of(payload)
            && let Some(message) = lock(&timeline).get_mut(index)
        {
            which(message).get_or_insert(at);
        }
    }
}

/// How long JetStream took to acknowledge, or None when it refused or never answered.
async fn acknowledged(ack: PublishAckFuture, since: Instant) -> Option<Duration> {
    ack.await.ok().map(|_| since.elapsed())
}

/// Message `index`, padded to `bytes`: its number first, so a delivery names its publish.
fn payload(index: u64, bytes: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(bytes.max(8));
    payload.put_u64(index);
    payload.resize(bytes.max(8), 0);
    payload.freeze()
}

fn index_of(payload: &[u8]) -> Option<usize> {
    let number = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    usize::try_from(number).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_message_and_has_the_size_asked_for() {
        let message = payload(40_321, 512);
        assert_eq!(message.len(), 512);
        assert_eq!(index_of(&message), Some(40_321));
        assert_eq!(payload(3, 2).len(), 8, "room for the number at least");
        assert_eq!(index_of(b"short"), None);
    }
}
