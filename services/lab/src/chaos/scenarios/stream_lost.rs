//! stream-lost: the ORDERS stream deleted under load, as an administrator (or an attacker
//! with its rights) would. Orders' relay makes it again on its next publish and republishes
//! its outbox; nothing acknowledged is lost.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use super::{Checked, Injected, Left, Lifted};
use crate::chaos::expectations::{Claim, Expectation, bus_fault, unaffected};
use crate::chaos::load::Series;
use crate::topology::Endpoints;

/// A watch for the deleted stream to be back: the seconds it took, or None within a minute.
pub(super) type Watch = tokio::task::JoinHandle<Option<f64>>;

pub(super) async fn inject(endpoints: &Endpoints) -> anyhow::Result<Injected> {
    Ok(Injected::StreamLost(
        delete_stream(endpoints, bus::ORDERS).await?,
    ))
}

pub(super) async fn lift(watch: Watch) -> Lifted {
    let back = watch.await.ok().flatten();
    Lifted {
        notes: vec![match back {
            Some(seconds) => format!(
                "{} was made again by orders' relay {seconds:.2} s after it was deleted",
                bus::ORDERS
            ),
            None => format!("{} was not made again within a minute", bus::ORDERS),
        }],
        left: Some(Left::StreamBack(back)),
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

pub(super) fn check(back: Option<f64>) -> Checked {
    Checked {
        notes: Vec::new(),
        expectations: vec![Expectation {
            what: "orders' relay makes ORDERS again on its next publish, with its outbox"
                .to_owned(),
            measured: back.map_or("not within a minute".to_owned(), |seconds| {
                format!("{seconds:.2} s after the deletion")
            }),
            met: back.is_some(),
        }],
    }
}

/// Deletes `stream` as an administrator (or an attacker with its rights) would, and watches
/// in the background for it to be back: made again by its producer's relay on the next
/// publish that fails. The watch gives the seconds it took, or None within a minute.
async fn delete_stream(
    endpoints: &Endpoints,
    stream: &str,
) -> anyhow::Result<tokio::task::JoinHandle<Option<f64>>> {
    let js = jetstream::new(crate::topology::connect_nats(endpoints).await?);
    js.delete_stream(stream)
        .await
        .with_context(|| format!("cannot delete {stream}"))?;
    let deleted_at = Instant::now();
    let stream = stream.to_owned();
    Ok(tokio::spawn(async move {
        while deleted_at.elapsed() < Duration::from_secs(60) {
            if js.get_stream(&stream).await.is_ok() {
                return Some(deleted_at.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }))
}
