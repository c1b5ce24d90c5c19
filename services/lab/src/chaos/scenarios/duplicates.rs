//! duplicates: the newest events of every stream published again, newest first, as new
//! messages. The consumers get every event twice, the copies in reverse, and must skip each
//! copy as already applied or older than what they hold.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{Checked, Injected, Left, Lifted, STREAMS, Window, jetstream};
use crate::chaos::expectations::{Claim, Expectation, unaffected};
use crate::chaos::load::Series;
use crate::topology::Endpoints;
use crate::up::RunningLab;

/// The publisher of copies, running through the fault window.
pub(in crate::chaos) struct Republishing {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

pub(super) fn inject(lab: &RunningLab, during: Duration, quick: bool) -> Injected {
    let stop = CancellationToken::new();
    let per_stream = if quick { 200 } else { 1_000 };
    let task = tokio::spawn(republish_backwards(
        lab.endpoints.clone(),
        per_stream,
        during,
        stop.clone(),
    ));
    Injected::Duplicates(Republishing { stop, task })
}

pub(super) async fn lift(republishing: Republishing) -> anyhow::Result<Lifted> {
    republishing.stop.cancel();
    let copies = republishing
        .task
        .await
        .context("the fault's task failed")??;
    Ok(Lifted {
        notes: vec![format!(
            "{copies} events published a second time, newest first, across {} streams",
            STREAMS.len()
        )],
        left: Some(Left::Copies(copies)),
    })
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        unaffected(Series::Async, "duplicates are skipped, not failed on"),
        unaffected(Series::Writes, "orders' replica skips the copies too"),
    ]
}

/// Every copy reached the projection and was skipped.
pub(super) async fn check(copies: u64, window: &Window<'_>) -> Checked {
    let before = skipped(window.positions_before);
    let more = skipped_since(window.asynchronous, window.probe_user, before, copies).await;
    Checked {
        notes: vec![format!(
            "purchases-async skipped {more} events as already applied or older than what it held"
        )],
        expectations: vec![Expectation {
            what: "every copy reached the projection and was skipped, not applied".to_owned(),
            measured: format!("{more} skipped of {copies} copies"),
            met: copies > 0 && more >= copies,
        }],
    }
}

/// Publishes the newest `per_stream` events of every stream again, newest first and the
/// streams interleaved, spread over `over`. Without their message ids JetStream cannot tell
/// them from new events and stores them again, as it would after a producer re-sent them
/// past the duplicate window: the consumers get every event twice, the copies in reverse.
async fn republish_backwards(
    endpoints: Endpoints,
    per_stream: u64,
    over: Duration,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let js = jetstream(&endpoints).await?;
    let mut queues = Vec::new();
    for name in STREAMS {
        let stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("no stream {name}"))?;
        let state = stream.get_info().await?.state;
        let first = state
            .first_sequence
            .max(state.last_sequence.saturating_sub(per_stream) + 1);
        let newest_first: Vec<u64> = (first..=state.last_sequence).rev().collect();
        queues.push((stream, newest_first.into_iter()));
    }
    let total: usize = queues.iter().map(|(_, queue)| queue.len()).sum();
    let mut ticks = tokio::time::interval(over.div_f64(total.max(1) as f64 * 1.2));
    let mut published = 0_u64;
    'publishing: loop {
        let mut any = false;
        for (stream, queue) in &mut queues {
            let Some(sequence) = queue.next() else {
                continue;
            };
            any = true;
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break 'publishing,
            }
            let message = stream
                .get_raw_message(sequence)
                .await
                .with_context(|| format!("cannot read event {sequence}"))?;
            js.publish(message.subject.to_string(), message.payload.clone())
                .await?
                .await
                .context("JetStream did not store the copy")?;
            published += 1;
        }
        if !any {
            break;
        }
    }
    Ok(published)
}

/// Events the projection reports having skipped (duplicates, late versions), all streams.
fn skipped(positions: Option<&BTreeMap<String, pb::StreamPosition>>) -> u64 {
    positions.map_or(0, |positions| {
        positions.values().map(|stream| stream.skipped).sum()
    })
}

/// Waits (bounded) until the projection has skipped `copies` more events than `before`, and
/// returns how many more it skipped.
async fn skipped_since(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
    before: u64,
    copies: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = skipped(crate::measure::positions(client, user).await.as_ref());
        let more = now.saturating_sub(before);
        if more >= copies || Instant::now() > deadline {
            return more;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
