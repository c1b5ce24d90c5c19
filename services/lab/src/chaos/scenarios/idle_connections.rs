//! idle-connections: thousands of idle TCP connections held open against every service while
//! the load goes on. Idle sockets take no request's place: not one call may fail.

use anyhow::Context as _;
use tokio::net::TcpStream;

use super::{Injected, Lifted};
use crate::chaos::expectations::Claim;
use crate::chaos::load::Series;
use crate::topology::{Endpoints, Service};

/// Idle sockets held against each service.
fn per_service(quick: bool) -> usize {
    if quick { 300 } else { 1_500 }
}

pub(super) async fn inject(endpoints: &Endpoints, quick: bool) -> anyhow::Result<Injected> {
    Ok(Injected::IdleConnections(
        idle_sockets(endpoints, per_service(quick)).await?,
    ))
}

pub(super) fn lift(sockets: Vec<TcpStream>) -> Lifted {
    let held = sockets.len();
    drop(sockets);
    Lifted {
        notes: vec![format!(
            "{held} idle connections held through the window ({} per service), then closed",
            held / Service::ALL.len()
        )],
        left: None,
    }
}

pub(super) fn during() -> Vec<Claim> {
    [
        Series::Sync,
        Series::Bus,
        Series::Async,
        Series::Monolith,
        Series::Writes,
    ]
    .into_iter()
    .map(|series| {
        (
            series,
            100.0,
            100.0,
            "idle sockets take no request's place: not one call fails",
        )
    })
    .collect()
}

/// Opens `per_service` TCP connections to every service that send nothing, the cheapest way
/// to take a server's connections (and, before, its requests) from everyone else.
async fn idle_sockets(endpoints: &Endpoints, per_service: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut sockets = Vec::with_capacity(per_service * Service::ALL.len());
    for service in Service::ALL {
        let addr = endpoints.addr(service);
        for _ in 0..per_service {
            sockets.push(
                TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connect to {service} at {addr}"))?,
            );
        }
    }
    Ok(sockets)
}
