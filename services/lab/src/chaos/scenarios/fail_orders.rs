//! fail-orders: orders failing a fifth of its calls with UNAVAILABLE through its fault admin
//! API. Sync and the writes fail with it; async and the monolith call no one.

use contracts::fault::v1 as fault_pb;

use super::{Injected, Lifted, clear_faults, set_fault};
use crate::chaos::expectations::{Claim, unaffected};
use crate::chaos::load::Series;
use crate::topology::Service;
use crate::up::RunningLab;

pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    set_fault(
        &lab.endpoints,
        Service::Orders,
        fault_pb::Fault {
            failure_fraction: 0.2,
            failure_code: "UNAVAILABLE".to_owned(),
            ..fault_pb::Fault::default()
        },
    )
    .await?;
    Ok(Injected::Done)
}

pub(super) async fn lift(lab: &mut RunningLab) -> anyhow::Result<Lifted> {
    clear_faults(&lab.endpoints, Service::Orders).await?;
    Ok(Lifted::default())
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        (Series::Sync, 50.0, 95.0, "sync fails with orders"),
        (
            Series::Bus,
            50.0,
            95.0,
            "the bus way fails with orders (the fault is in orders' one stack)",
        ),
        (Series::Writes, 50.0, 95.0, "writes fail with orders"),
        unaffected(Series::Async, "async calls no one"),
        unaffected(Series::Monolith, "the monolith calls no one"),
    ]
}
