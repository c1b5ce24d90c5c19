//! kill-users: the users service killed (SIGKILL), then started again. Sync needs users;
//! async and the monolith call no one, and orders checks users in its own replica.

use super::{Injected, Lifted};
use crate::chaos::expectations::{Claim, unaffected};
use crate::chaos::load::Series;
use crate::topology::Service;
use crate::up::RunningLab;

pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    lab.kill_service(Service::Users).await?;
    Ok(Injected::Done)
}

pub(super) async fn lift(lab: &mut RunningLab) -> anyhow::Result<Lifted> {
    lab.restart_service(Service::Users).await?;
    Ok(Lifted::default())
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        (Series::Sync, 0.0, 10.0, "sync needs users"),
        (
            Series::Bus,
            0.0,
            10.0,
            "the bus way needs users too: no one answers its question",
        ),
        unaffected(Series::Async, "async calls no one"),
        unaffected(Series::Monolith, "the monolith calls no one"),
        unaffected(Series::Writes, "orders checks users in its own replica"),
    ]
}
