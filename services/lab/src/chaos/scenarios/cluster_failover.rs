//! cluster-failover: in a three-node JetStream cluster (streams replicated three times), the
//! server leading ORDERS killed, then restarted. A new leader is elected; writes, async and
//! the freshness of every timed order carry on.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Injected, Lifted, jetstream};
use crate::chaos::expectations::{Claim, unaffected};
use crate::chaos::load::Series;
use crate::topology::Endpoints;
use crate::up::RunningLab;

/// The member killed, and a watch for the leader elected in its place.
pub(in crate::chaos) struct Election {
    name: String,
    election: tokio::task::JoinHandle<Option<(String, f64)>>,
}

/// The stream whose leader the failover scenario kills: the one every write goes to.
const FAILOVER_STREAM: &str = bus::ORDERS;

/// Kills the cluster member leading ORDERS and watches for its successor.
pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    let endpoints = lab.endpoints.clone();
    let leader = stream_leader(&endpoints, FAILOVER_STREAM)
        .await?
        .context("ORDERS reports no leader: is the lab running a cluster?")?;
    let cluster = lab
        .nats_cluster_mut()
        .context("cluster-failover needs the lab's NATS cluster (lab --nats-cluster)")?;
    let server = cluster
        .server_mut(&leader)
        .with_context(|| format!("the leader {leader:?} is not a member the lab started"))?;
    server.kill().await.context("cannot kill the leader")?;
    let killed_at = Instant::now();
    let (url, dead) = (endpoints, leader.clone());
    let election = tokio::spawn(async move {
        while killed_at.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(leader)) = stream_leader(&url, FAILOVER_STREAM).await
                && leader != dead
            {
                return Some((leader, killed_at.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    Ok(Injected::ClusterFailover(Election {
        name: leader,
        election,
    }))
}

pub(super) async fn lift(lab: &mut RunningLab, killed: Election) -> anyhow::Result<Lifted> {
    let Election { name, election } = killed;
    let elected = match election.await.ok().flatten() {
        Some((leader, seconds)) => format!(
            "{FAILOVER_STREAM} elected {leader} its leader {seconds:.2} s after {name} was killed"
        ),
        None => format!("{FAILOVER_STREAM} elected no new leader while {name} was down"),
    };
    let cluster = lab
        .nats_cluster_mut()
        .context("the lab's NATS cluster is gone")?;
    cluster
        .server_mut(&name)
        .with_context(|| format!("no member {name}"))?
        .restart()
        .await
        .with_context(|| format!("cannot restart {name}"))?;
    lab.refresh_state()?;
    Ok(Lifted {
        notes: vec![elected],
        left: None,
    })
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        unaffected(
            Series::Writes,
            "writes commit with their events in the outbox",
        ),
        unaffected(Series::Async, "async answers from its projection"),
        unaffected(Series::Sync, "sync does not use NATS"),
        (
            Series::Bus,
            80.0,
            100.0,
            "the bus way loses only the questions in flight on the killed server, then asks through another",
        ),
        unaffected(
            Series::Freshness,
            "every timed order reaches the projection",
        ),
    ]
}

/// The server JetStream names as the leader of `stream`, if it has one.
async fn stream_leader(endpoints: &Endpoints, stream: &str) -> anyhow::Result<Option<String>> {
    let js = jetstream(endpoints).await?;
    let info = tokio::time::timeout(Duration::from_secs(2), async {
        js.get_stream(stream)
            .await?
            .get_info()
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .context("JetStream did not answer within 2 s")??;
    Ok(info.cluster.and_then(|cluster| cluster.leader))
}
