//! retention: every stream purged, as retention would after long enough. A projection built
//! from what is left has nothing; one built from the owners' re-emitted state answers as the
//! original does, and says in its freshness what it never read.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use contracts::ops::v1 as ops;
use contracts::ops::v1::outbox_admin_client::OutboxAdminClient;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;

use super::{Checked, Injected, Left, Lifted, STREAMS, Window};
use crate::chaos::consistency::CONVERGE_WITHIN;
use crate::chaos::expectations::{Claim, Expectation, bus_fault, unaffected};
use crate::chaos::load::Series;
use crate::children::ServiceProcess;
use crate::topology::Service;
use crate::up::RunningLab;

/// A projection built after the streams lost their history.
#[derive(Debug)]
pub(in crate::chaos) struct Rebuilt {
    process: ServiceProcess,
    addr: std::net::SocketAddr,
    /// Entities and events the owners re-emitted, and how long it took.
    entities: u64,
    events: u64,
    re_emit_s: f64,
}

/// The durable name of the projection rebuilt from re-emitted state.
const REBUILT: &str = "retention-rebuild";

pub(super) async fn inject(lab: &RunningLab) -> anyhow::Result<Injected> {
    Ok(Injected::Retention(Box::new(
        lose_history_and_rebuild(lab).await?,
    )))
}

pub(super) fn lift(rebuilt: Box<Rebuilt>) -> Lifted {
    Lifted {
        notes: vec![format!(
            "the owners re-emitted {} entities as {} events in {:.2} s",
            rebuilt.entities, rebuilt.events, rebuilt.re_emit_s
        )],
        left: Some(Left::Rebuilt(rebuilt)),
    }
}

pub(super) fn during() -> Vec<Claim> {
    let mut claims = bus_fault("writes commit with their events in the outbox");
    claims.push(unaffected(
        Series::Bus,
        "the bus way asks over NATS's request/reply, not the streams",
    ));
    claims
}

/// The rebuilt projection answers every seeded user as the original does; it is stopped
/// afterwards.
pub(super) async fn check(
    mut rebuilt: Box<Rebuilt>,
    window: &Window<'_>,
) -> anyhow::Result<Checked> {
    let (asynchronous, seeded, probe_user) =
        (window.asynchronous, window.seeded, window.probe_user);
    let mut expected = Vec::new();
    let rebuilt_client = PurchaseServiceClient::new(crate::topology::channel_to(rebuilt.addr));
    let deadline = Instant::now() + CONVERGE_WITHIN;
    let (mut same, mut different) = (0, Vec::new());
    for user in &seeded.users {
        let user = &user.microservices;
        loop {
            let original = crate::measure::all_purchases(asynchronous, user).await;
            let from_state = crate::measure::all_purchases(&rebuilt_client, user).await;
            let agree = match (&original, &from_state) {
                (Ok(original), Ok(from_state)) => original == from_state,
                (Err(original), Err(from_state)) => original.code() == from_state.code(),
                _ => false,
            };
            if agree {
                same += 1;
                break;
            }
            if Instant::now() > deadline {
                different.push(user.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    expected.push(Expectation {
        what: "a projection built from the owners' re-emitted state answers every seeded user as the original does".to_owned(),
        measured: if different.is_empty() {
            format!("{same} of {} users identical", seeded.users.len())
        } else {
            format!("{} users differ, e.g. {}", different.len(), different[0])
        },
        met: different.is_empty(),
    });
    let missed: Vec<(String, u64)> = crate::measure::positions(&rebuilt_client, probe_user)
        .await
        .unwrap_or_default()
        .into_values()
        .map(|position| (position.stream, position.missed))
        .collect();
    expected.push(Expectation {
        what: "and it says, in its answers' freshness, what it never read".to_owned(),
        measured: format!("missed per stream: {missed:?}"),
        met: missed.len() == STREAMS.len() && missed.iter().all(|(_, n)| *n > 0),
    });
    rebuilt.process.stop().await?;
    Ok(Checked {
        notes: Vec::new(),
        expectations: expected,
    })
}

/// Purges every stream, as retention would after long enough, starts a projection of its own
/// from what is left (nothing), and has the owners re-emit their state into their outboxes.
async fn lose_history_and_rebuild(lab: &RunningLab) -> anyhow::Result<Rebuilt> {
    let js = jetstream::new(crate::topology::connect_nats(&lab.endpoints).await?);
    for name in bus::SYSTEM_STREAMS {
        js.get_stream(name)
            .await
            .with_context(|| format!("no stream {name}"))?
            .purge()
            .await
            .with_context(|| format!("cannot purge {name}"))?;
    }
    let (process, addr) = lab.start_fresh_projection(REBUILT, &[]).await?;
    let started = Instant::now();
    let (mut entities, mut events) = (0, 0);
    for owner in [Service::Users, Service::Products, Service::Orders] {
        let done = OutboxAdminClient::new(lab.endpoints.fault_admin_channel(owner))
            .re_emit_state(ops::ReEmitStateRequest {})
            .await
            .with_context(|| format!("{owner} re-emits its state"))?
            .into_inner();
        entities += done.entities;
        events += done.events;
    }
    Ok(Rebuilt {
        process,
        addr,
        entities,
        events,
        re_emit_s: started.elapsed().as_secs_f64(),
    })
}
