//! slow-products: products slowed by 50 ms per call through its fault admin API. Slow is
//! not down: sync still answers, and pays the 50 ms, and so does the bus way (the fault sits
//! in products' one stack, under gRPC and the bus alike); async never asks products.

use contracts::fault::v1 as fault_pb;

use super::{Injected, Lifted, clear_faults, set_fault};
use crate::chaos::expectations::{Claim, Expectation, unaffected};
use crate::chaos::load::Series;
use crate::chaos::phases::PhaseStats;
use crate::topology::Service;
use crate::up::RunningLab;

/// The delay added to every call of products, in milliseconds.
const DELAY_MS: u32 = 50;

pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    set_fault(
        &lab.endpoints,
        Service::Products,
        fault_pb::Fault {
            latency_ms: DELAY_MS,
            ..fault_pb::Fault::default()
        },
    )
    .await?;
    Ok(Injected::Done)
}

pub(super) async fn lift(lab: &mut RunningLab) -> anyhow::Result<Lifted> {
    clear_faults(&lab.endpoints, Service::Products).await?;
    Ok(Lifted::default())
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        unaffected(Series::Sync, "slow is not down"),
        unaffected(Series::Bus, "slow is not down"),
        unaffected(Series::Async, "async calls no one"),
    ]
}

/// Sync's and the bus way's medians pay the delay; async's tail does not.
pub(super) fn latency_claims(stat: &dyn Fn(&str, Series) -> PhaseStats) -> Vec<Expectation> {
    let asynchronous = stat("during", Series::Async);
    let delay_us = u64::from(DELAY_MS) * 1_000;
    let pays = |series: Series| {
        let during = stat("during", series);
        Expectation {
            what: format!(
                "{} pays the {DELAY_MS} ms: its median during is at least {DELAY_MS} ms",
                series.name()
            ),
            measured: format!("p50 {} us", during.p50_us),
            met: during.p50_us >= delay_us,
        }
    };
    vec![
        pays(Series::Sync),
        pays(Series::Bus),
        Expectation {
            what: format!("async does not: its p99 during stays under {DELAY_MS} ms"),
            measured: format!("p99 {} us", asynchronous.p99_us),
            met: asynchronous.ok > 0 && asynchronous.p99_us < delay_us,
        },
    ]
}
