//! nats-outage: the lab's nats-server stopped while writes go on, then started again. Writes
//! commit with their events in the outbox; the relay publishes them once NATS is back. The
//! bus way is the one that stops: it has no one to ask, as the design notes predict.

use super::{Injected, Lifted};
use crate::chaos::expectations::{Claim, bus_fault};
use crate::chaos::load::Series;
use crate::up::RunningLab;

/// The lab must have started the nats-server it stops.
pub(super) fn can_run(lab: &RunningLab) -> anyhow::Result<()> {
    anyhow::ensure!(
        lab.owns_nats(),
        "nats-outage stops the lab's own nats-server; this lab runs on an external one (--nats-url)"
    );
    Ok(())
}

pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    lab.stop_nats().await?;
    Ok(Injected::Done)
}

pub(super) async fn lift(lab: &mut RunningLab) -> anyhow::Result<Lifted> {
    lab.restart_nats().await?;
    Ok(Lifted::default())
}

pub(super) fn during() -> Vec<Claim> {
    let mut claims = bus_fault("writes commit with their events in the outbox");
    // Calls already on their way when NATS stops may still be answered.
    claims.push((Series::Bus, 0.0, 10.0, "the bus way needs the bus"));
    claims
}
