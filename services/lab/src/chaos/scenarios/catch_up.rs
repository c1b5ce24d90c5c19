//! catch-up: purchases-async killed while writes go on, then started again. It must catch up
//! from the positions it committed, and the lab times how long that takes under the load.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{Injected, Lifted, stream_heads};
use crate::chaos::expectations::{Claim, unaffected};
use crate::chaos::load::{FRESHNESS_LIMIT, Series};
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;

pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    lab.kill_service(Service::PurchasesAsync).await?;
    Ok(Injected::Done)
}

pub(super) async fn lift(lab: &mut RunningLab) -> anyhow::Result<Lifted> {
    lab.restart_service(Service::PurchasesAsync).await?;
    Ok(Lifted::default())
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        (Series::Async, 0.0, 10.0, "async is down"),
        unaffected(Series::Sync, "sync does not need async"),
        unaffected(Series::Bus, "the bus way does not need async"),
        unaffected(Series::Writes, "the owners do not need async"),
        unaffected(Series::Monolith, "the monolith does not need async"),
    ]
}

/// The streams' heads when purchases-async was back, and the seconds it took to reach them.
pub(in crate::chaos) type CatchingUp = JoinHandle<(BTreeMap<String, u64>, Option<f64>)>;

/// Times, while the load goes on (as it would in production), how long purchases-async takes
/// from its restart (`since`) to stand where the streams stood when it was back.
pub(in crate::chaos) async fn time(
    endpoints: &Endpoints,
    asynchronous: &PurchaseServiceClient<Channel>,
    probe_user: &str,
    since: Instant,
) -> anyhow::Result<CatchingUp> {
    let heads = stream_heads(endpoints).await?;
    let (client, user) = (asynchronous.clone(), probe_user.to_owned());
    Ok(tokio::spawn(async move {
        let caught_up = time_to_reach(&client, &user, &heads, since).await;
        (heads, caught_up)
    }))
}

/// What the timing found, as a note of the report.
pub(in crate::chaos) async fn timed(
    catching_up: CatchingUp,
    positions_before: Option<&BTreeMap<String, pb::StreamPosition>>,
) -> anyhow::Result<String> {
    let (heads, caught_up) = catching_up.await.context("the catch-up timer failed")?;
    let target: u64 = heads.values().sum();
    let from: u64 = positions_before.map_or(0, |positions| {
        positions.values().map(|stream| stream.sequence).sum()
    });
    Ok(match caught_up {
        Some(seconds) => format!(
            "purchases-async caught up {seconds:.2} s after its restart began (start-up included): it had {} events to apply, {:.0} events/s",
            target.saturating_sub(from),
            target.saturating_sub(from) as f64 / seconds.max(0.001)
        ),
        None => format!(
            "purchases-async had not reached the streams' positions of its restart within {FRESHNESS_LIMIT:?}"
        ),
    })
}

/// Seconds from `since` until purchases-async reports, for every stream, a position at or
/// past `heads`.
async fn time_to_reach(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
    heads: &BTreeMap<String, u64>,
    since: Instant,
) -> Option<f64> {
    let deadline = since + FRESHNESS_LIMIT;
    while Instant::now() < deadline {
        if let Some(now) = crate::measure::positions(client, user).await
            && heads.iter().all(|(stream, head)| {
                now.get(stream)
                    .is_some_and(|stream| stream.sequence >= *head)
            })
        {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
