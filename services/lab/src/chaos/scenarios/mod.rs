//! The scenarios, and the injection that runs them: what each breaks and for how long (the
//! table below), and, one file per scenario, how its fault is injected and lifted, what each
//! mode should do while it lasts, and what it checks once the load has stopped. This module
//! dispatches to those files and holds what several share (the fault admin API, JetStream).

mod catch_up;
mod cluster_failover;
mod duplicates;
mod fail_orders;
mod forged_event;
mod idle_connections;
mod kill_users;
mod nats_outage;
mod retention;
mod schema_evolution;
mod slow_products;
mod stream_lost;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use contracts::fault::v1 as fault_pb;
use contracts::fault::v1::fault_admin_client::FaultAdminClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use super::expectations::{Claim, Expectation};
use super::load::Series;
use super::phases::PhaseStats;
use crate::seed::Seeded;
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;

pub(super) use catch_up::{time as time_catching_up, timed as caught_up_note};

/// One scripted failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    KillUsers,
    SlowProducts,
    FailOrders,
    NatsOutage,
    CatchUp,
    Duplicates,
    ClusterFailover,
    SchemaEvolution,
    ForgedEvent,
    IdleConnections,
    StreamLost,
    Retention,
}

impl Scenario {
    /// In the order `all` runs them: retention last, since it leaves the streams without
    /// their history for whatever would come after.
    pub const ALL: [Self; 12] = [
        Self::KillUsers,
        Self::SlowProducts,
        Self::FailOrders,
        Self::NatsOutage,
        Self::CatchUp,
        Self::Duplicates,
        Self::ClusterFailover,
        Self::SchemaEvolution,
        Self::ForgedEvent,
        Self::IdleConnections,
        Self::StreamLost,
        Self::Retention,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::KillUsers => "kill-users",
            Self::SlowProducts => "slow-products",
            Self::FailOrders => "fail-orders",
            Self::NatsOutage => "nats-outage",
            Self::CatchUp => "catch-up",
            Self::Duplicates => "duplicates",
            Self::ClusterFailover => "cluster-failover",
            Self::SchemaEvolution => "schema-evolution",
            Self::ForgedEvent => "forged-event",
            Self::IdleConnections => "idle-connections",
            Self::StreamLost => "stream-lost",
            Self::Retention => "retention",
        }
    }

    /// What the scenario does, as the report says it.
    pub fn what(self) -> &'static str {
        match self {
            Self::KillUsers => "the users service killed (SIGKILL), then started again",
            Self::SlowProducts => "products slowed by 50 ms per call (fault admin API)",
            Self::FailOrders => "orders failing 20% of calls with UNAVAILABLE (fault admin API)",
            Self::NatsOutage => "nats-server stopped while writes go on, then started again",
            Self::CatchUp => "purchases-async killed while writes go on, then started again",
            Self::SchemaEvolution => {
                "users and products upgraded to event schema 2 (the name split into given and family name, prices with a currency) beside a purchases-async still reading schema 1, then rolled back"
            }
            Self::ClusterFailover => {
                "in a three-node JetStream cluster (streams replicated 3 times), the server leading ORDERS killed, then restarted"
            }
            Self::Duplicates => {
                "the newest events of every stream published again, newest first, as new messages: duplicates delivered out of order"
            }
            Self::ForgedEvent => {
                "an outsider forges events: refused by NATS (no anonymous client, no service publishing another's events); then, with authorization switched off on purpose, forged renames published onto USERS"
            }
            Self::IdleConnections => {
                "thousands of idle TCP connections held open against every service while the load goes on"
            }
            Self::StreamLost => {
                "the ORDERS stream deleted under load; orders' relay makes it again and republishes its outbox"
            }
            Self::Retention => {
                "every stream purged, as retention would; a projection built from nothing, then from the owners' re-emitted state"
            }
        }
    }

    /// Whether it stops, kills, restarts or starts processes, or switches NATS's
    /// authorization: what only a lab that started the system may do.
    pub fn needs_the_labs_processes(self) -> bool {
        !matches!(
            self,
            Self::SlowProducts
                | Self::FailOrders
                | Self::Duplicates
                | Self::IdleConnections
                | Self::StreamLost
        )
    }

    /// Whether it needs the lab to run a NATS cluster rather than one server.
    pub fn needs_cluster(self) -> bool {
        self == Self::ClusterFailover
    }

    /// Seconds before, during and after the fault.
    pub(in crate::chaos) fn phases(self, quick: bool) -> [u64; 3] {
        match (self, quick) {
            (Self::KillUsers, false) => [10, 15, 15],
            (Self::SlowProducts | Self::FailOrders | Self::Duplicates, false) => [10, 15, 10],
            (Self::NatsOutage, false) => [10, 10, 15],
            (Self::CatchUp, false) => [10, 30, 20],
            (Self::ClusterFailover, false) => [10, 20, 15],
            (Self::ClusterFailover, true) => [4, 8, 6],
            (Self::SchemaEvolution, false) => [10, 20, 10],
            (Self::SchemaEvolution, true) => [3, 6, 3],
            // Failing a fraction needs enough calls for the share to show.
            (Self::FailOrders, true) => [3, 8, 3],
            (Self::SlowProducts | Self::Duplicates, true) => [3, 4, 3],
            (Self::KillUsers | Self::NatsOutage | Self::CatchUp, true) => [3, 5, 6],
            (Self::ForgedEvent | Self::IdleConnections | Self::StreamLost, false) => [10, 15, 10],
            (Self::Retention, false) => [10, 20, 10],
            (Self::ForgedEvent | Self::IdleConnections | Self::StreamLost, true) => [3, 5, 4],
            (Self::Retention, true) => [3, 6, 4],
        }
    }

    /// The series that must be back once the fault is lifted, when the fault stopped some.
    pub(in crate::chaos) fn recovers(self) -> &'static [Series] {
        match self {
            Self::KillUsers => &[Series::Sync, Series::Bus],
            Self::FailOrders => &[Series::Writes],
            Self::CatchUp => &[Series::Async],
            Self::NatsOutage => &[Series::Bus],
            Self::SlowProducts
            | Self::Duplicates
            | Self::ClusterFailover
            | Self::SchemaEvolution
            | Self::ForgedEvent
            | Self::IdleConnections
            | Self::StreamLost
            | Self::Retention => &[],
        }
    }
}

/// What an injected fault left to undo.
pub(super) enum Injected {
    /// Nothing but the fault itself, lifted by the scenario's own `lift`.
    Done,
    Duplicates(duplicates::Republishing),
    ClusterFailover(cluster_failover::Election),
    SchemaEvolution(schema_evolution::Evolving),
    ForgedEvent(forged_event::Forgery),
    IdleConnections(Vec<tokio::net::TcpStream>),
    StreamLost(stream_lost::Watch),
    Retention(Box<retention::Rebuilt>),
}

/// What lifting a fault found, and what it leaves to check once the load has stopped.
#[derive(Default)]
pub(super) struct Lifted {
    pub(super) notes: Vec<String>,
    pub(super) left: Option<Left>,
}

/// What a scenario checks after its window, once the projection has converged.
pub(super) enum Left {
    /// Copies of events published, each to be skipped.
    Copies(u64),
    Evolved(schema_evolution::Evolved),
    Forged(forged_event::Forgery),
    /// Seconds until the deleted stream was back, if it came back.
    StreamBack(Option<f64>),
    Rebuilt(Box<retention::Rebuilt>),
}

/// What those checks see: the lab, the projection, the seed, and the projection's positions
/// from before the fault.
pub(super) struct Window<'a> {
    pub(super) lab: &'a RunningLab,
    pub(super) asynchronous: &'a PurchaseServiceClient<Channel>,
    pub(super) seeded: &'a Seeded,
    pub(super) positions_before: Option<&'a BTreeMap<String, pb::StreamPosition>>,
    pub(super) probe_user: &'a str,
}

/// What a scenario's own checks found.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub(super) notes: Vec<String>,
    pub(super) expectations: Vec<Expectation>,
}

/// Whether `scenario` can run on this lab, checked before its load starts.
pub(super) fn can_run(lab: &RunningLab, scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::NatsOutage => nats_outage::can_run(lab),
        _ => Ok(()),
    }
}

/// Injects `scenario`'s fault, which lasts `during`.
pub(super) async fn inject(
    lab: &mut RunningLab,
    scenario: Scenario,
    during: Duration,
    quick: bool,
    target_user: &str,
) -> anyhow::Result<Injected> {
    match scenario {
        Scenario::KillUsers => kill_users::inject(lab).await,
        Scenario::SlowProducts => slow_products::inject(lab).await,
        Scenario::FailOrders => fail_orders::inject(lab).await,
        Scenario::NatsOutage => nats_outage::inject(lab).await,
        Scenario::CatchUp => catch_up::inject(lab).await,
        Scenario::Duplicates => Ok(duplicates::inject(lab, during, quick)),
        Scenario::ClusterFailover => cluster_failover::inject(lab).await,
        Scenario::SchemaEvolution => schema_evolution::inject(lab).await,
        Scenario::ForgedEvent => forged_event::inject(lab, target_user).await,
        Scenario::IdleConnections => idle_connections::inject(&lab.endpoints, quick).await,
        Scenario::StreamLost => stream_lost::inject(&lab.endpoints).await,
        Scenario::Retention => retention::inject(lab).await,
    }
}

/// Undoes what [`inject`] did; an ongoing fault is stopped and says how much it did.
pub(super) async fn lift(
    lab: &mut RunningLab,
    scenario: Scenario,
    injected: Injected,
) -> anyhow::Result<Lifted> {
    match (scenario, injected) {
        (Scenario::KillUsers, Injected::Done) => kill_users::lift(lab).await,
        (Scenario::SlowProducts, Injected::Done) => slow_products::lift(lab).await,
        (Scenario::FailOrders, Injected::Done) => fail_orders::lift(lab).await,
        (Scenario::NatsOutage, Injected::Done) => nats_outage::lift(lab).await,
        (Scenario::CatchUp, Injected::Done) => catch_up::lift(lab).await,
        (Scenario::Duplicates, Injected::Duplicates(republishing)) => {
            duplicates::lift(republishing).await
        }
        (Scenario::ClusterFailover, Injected::ClusterFailover(killed)) => {
            cluster_failover::lift(lab, killed).await
        }
        (Scenario::SchemaEvolution, Injected::SchemaEvolution(evolving)) => {
            schema_evolution::lift(lab, evolving).await
        }
        (Scenario::ForgedEvent, Injected::ForgedEvent(forgery)) => {
            forged_event::lift(lab, forgery).await
        }
        (Scenario::IdleConnections, Injected::IdleConnections(sockets)) => {
            Ok(idle_connections::lift(sockets))
        }
        (Scenario::StreamLost, Injected::StreamLost(watch)) => Ok(stream_lost::lift(watch).await),
        (Scenario::Retention, Injected::Retention(rebuilt)) => Ok(retention::lift(rebuilt)),
        (scenario, _) => anyhow::bail!(
            "{}: what was injected is not what this scenario injects",
            scenario.name()
        ),
    }
}

/// The scenario's checks once its window is over.
pub(super) async fn check(left: Left, window: &Window<'_>) -> anyhow::Result<Checked> {
    match left {
        Left::Copies(copies) => Ok(duplicates::check(copies, window).await),
        Left::Evolved(evolved) => schema_evolution::check(evolved, window).await,
        Left::Forged(forgery) => forged_event::check(forgery, window).await,
        Left::StreamBack(back) => Ok(stream_lost::check(back)),
        Left::Rebuilt(rebuilt) => retention::check(rebuilt, window).await,
    }
}

/// What each mode should do while `scenario`'s fault lasts.
pub(super) fn during(scenario: Scenario) -> Vec<Claim> {
    match scenario {
        Scenario::KillUsers => kill_users::during(),
        Scenario::SlowProducts => slow_products::during(),
        Scenario::FailOrders => fail_orders::during(),
        Scenario::NatsOutage => nats_outage::during(),
        Scenario::CatchUp => catch_up::during(),
        Scenario::Duplicates => duplicates::during(),
        Scenario::ClusterFailover => cluster_failover::during(),
        Scenario::SchemaEvolution => schema_evolution::during(),
        Scenario::ForgedEvent => forged_event::during(),
        Scenario::IdleConnections => idle_connections::during(),
        Scenario::StreamLost => stream_lost::during(),
        Scenario::Retention => retention::during(),
    }
}

/// Claims about latency during the fault, for the scenarios that make them.
pub(super) fn latency_claims(
    scenario: Scenario,
    stat: &dyn Fn(&str, Series) -> PhaseStats,
) -> Vec<Expectation> {
    match scenario {
        Scenario::SlowProducts => slow_products::latency_claims(stat),
        _ => Vec::new(),
    }
}

pub(super) async fn set_fault(
    endpoints: &Endpoints,
    service: Service,
    fault: fault_pb::Fault,
) -> anyhow::Result<()> {
    FaultAdminClient::new(endpoints.fault_admin_channel(service))
        .set_faults(fault_pb::SetFaultsRequest {
            faults: vec![fault],
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{service}'s fault admin API refused the fault: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(())
}

pub(super) async fn clear_faults(endpoints: &Endpoints, service: Service) -> anyhow::Result<()> {
    FaultAdminClient::new(endpoints.fault_admin_channel(service))
        .clear_faults(fault_pb::ClearFaultsRequest {})
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{service}'s fault admin API did not clear its faults: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(())
}

/// The streams the projection follows.
pub(super) const STREAMS: [&str; 3] = bus::SYSTEM_STREAMS;

pub(super) async fn jetstream(
    endpoints: &Endpoints,
) -> anyhow::Result<async_nats::jetstream::Context> {
    Ok(async_nats::jetstream::new(
        crate::topology::connect_nats(endpoints).await?,
    ))
}

/// The last sequence of each stream the projection follows, read from JetStream itself.
pub(super) async fn stream_heads(endpoints: &Endpoints) -> anyhow::Result<BTreeMap<String, u64>> {
    let js = jetstream(endpoints).await?;
    let mut heads = BTreeMap::new();
    for name in STREAMS {
        let stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("no stream {name}"))?;
        let info = stream
            .get_info()
            .await
            .with_context(|| format!("no information on the stream {name}"))?;
        heads.insert(name.to_owned(), info.state.last_sequence);
    }
    Ok(heads)
}
