//! The catch-up: a second purchases-async started from nothing while the streams hold every
//! event of the run, timed until it stands where the streams stand.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;

use super::results::CatchUp;
use crate::measure::positions;
use crate::seed::Seeded;
use crate::topology::Service;
use crate::up::RunningLab;

/// How long a new projection may take to catch up before the bench gives up on it.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(300);

/// Starts a second purchases-async that rebuilds its projection from the first event, and
/// times it until it stands where the lab's own projection stands.
pub(super) async fn catch_up(lab: &RunningLab, seeded: &Seeded) -> anyhow::Result<CatchUp> {
    let user = seeded
        .users
        .first()
        .context("no seeded user to read with")?
        .microservices
        .clone();
    let own = PurchaseServiceClient::new(lab.endpoints.channel(Service::PurchasesAsync));
    // The writers have stopped: wait until the lab's projection has nothing pending.
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    let target = loop {
        if let Some(now) = positions(&own, &user).await
            && now.len() == 3
            && now.values().all(|stream| stream.pending == 0)
        {
            break now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "purchases-async still had events pending after {CATCH_UP_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let events: u64 = target.values().map(|stream| stream.sequence).sum();
    let started = Instant::now();
    let (mut process, addr) = lab.start_fresh_projection("bench-catch-up", &[]).await?;
    let client = PurchaseServiceClient::new(crate::topology::channel_to(addr));
    let mut first: Option<(Instant, u64)> = None;
    let outcome = loop {
        let at = Instant::now();
        let applied: u64 = positions(&client, &user)
            .await
            .map(|now| now.values().map(|stream| stream.sequence).sum())
            .unwrap_or(0);
        let (since, applied_then) = *first.get_or_insert((at, applied));
        if applied >= events {
            let done = Instant::now();
            let window = done.duration_since(since).as_secs_f64();
            let after_start = events - applied_then;
            // When every event was in before the first look, only the whole run can be timed.
            let events_per_second = if after_start > 0 && window > 0.0 {
                after_start as f64 / window
            } else {
                events as f64 / started.elapsed().as_secs_f64()
            };
            break Ok(CatchUp {
                events,
                seconds_from_start: done.duration_since(started).as_secs_f64(),
                events_per_second: events_per_second.round(),
            });
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the new projection applied {applied} of {events} events in {CATCH_UP_WITHIN:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    process.stop().await?;
    outcome
}
