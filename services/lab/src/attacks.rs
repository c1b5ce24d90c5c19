//! The attacks `lab chaos` plays against the system's trust boundaries, as an outsider or a
//! misbehaving client would, and what each leaves behind to check: forged events (refused by
//! NATS; with authorization switched off on purpose, dead-lettered by every consumer),
//! thousands of idle connections, a stream deleted under load, and a projection built after
//! the streams lost their history.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use contracts::events::v1 as events;
use contracts::ops::v1 as ops;
use contracts::ops::v1::dead_letter_admin_client::DeadLetterAdminClient;
use contracts::ops::v1::outbox_admin_client::OutboxAdminClient;
use prost::Message as _;
use tokio::net::TcpStream;

use crate::children::ServiceProcess;
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;

/// What the forger tried, and what came of it.
#[derive(Debug)]
pub struct Forgery {
    /// How NATS answered a client without credentials.
    pub anonymous: Result<String, String>,
    /// How NATS answered purchases-async's own user publishing a users event.
    pub impostor: Result<String, String>,
    /// Forged messages stored while authorization was off.
    pub forged: u64,
    /// The user the forgeries were about.
    pub target: String,
}

/// How long a refused request is waited for: NATS never answers one, so this is how long
/// the refusal takes to show.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// Plays the forger: first against the lab as it runs (an anonymous client, then a service's
/// own credentials publishing another service's events), then with authorization switched
/// off on purpose, publishing forged events about `target` onto USERS as anyone could before
/// per-service users existed. Authorization is back on when this returns.
pub async fn forge(lab: &mut RunningLab, target: &str) -> anyhow::Result<Forgery> {
    let endpoints = lab.endpoints.clone();
    let urls: Vec<&str> = endpoints.nats_url.split(',').collect();
    let anonymous = match async_nats::ConnectOptions::new()
        .connection_timeout(REFUSED_WITHIN)
        .connect(urls.clone())
        .await
    {
        Ok(_) => Err("an anonymous client was let in".to_owned()),
        Err(error) => Ok(format!("refused: {error}")),
    };
    let impostor = impostor_publishes(&endpoints).await?;

    lab.set_nats_authorization(false).await?;
    let forged = publish_forgeries(&urls, target).await;
    lab.set_nats_authorization(true).await?;
    Ok(Forgery {
        anonymous,
        impostor,
        forged: forged?,
        target: target.to_owned(),
    })
}

/// purchases-async's credentials publishing a users event: NATS must drop it and say so.
async fn impostor_publishes(endpoints: &Endpoints) -> anyhow::Result<Result<String, String>> {
    let seed_file = endpoints
        .nats_seed(Service::PurchasesAsync.binary())
        .context("the lab's NATS runs without credentials")?;
    let seed = std::fs::read_to_string(&seed_file)
        .with_context(|| format!("cannot read {}", seed_file.display()))?;
    let (violations_tx, mut violations) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        .custom_inbox_prefix(bus::inbox_prefix(Service::PurchasesAsync.binary()))
        .event_callback(move |event| {
            let violations_tx = violations_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = violations_tx.send(error.to_string());
                }
            }
        })
        .connect(endpoints.nats_url.split(',').collect::<Vec<_>>())
        .await
        .context("purchases-async's credentials no longer connect")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(REFUSED_WITHIN)
        .build(client);
    let subject = "users.user.UserRenamed";
    let acknowledged = async {
        js.publish(subject, "forged by an impostor".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    }
    .await;
    if acknowledged.is_ok() {
        return Ok(Err(format!("{subject} was stored")));
    }
    let seen = tokio::time::timeout(REFUSED_WITHIN, async {
        while let Some(error) = violations.recv().await {
            if error.to_lowercase().contains("permissions violation") {
                return Some(error);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    Ok(seen.ok_or_else(|| format!("{subject} was neither stored nor reported refused")))
}

/// Publishes, as anyone, the forgeries a consumer must refuse: a rename at a version no real
/// write reaches (applied, it would make every later event of the user look stale), a rename
/// claiming to come from orders, and bytes that are no event at all.
async fn publish_forgeries(urls: &[&str], target: &str) -> anyhow::Result<u64> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(urls.to_vec())
        .await
        .context("with authorization off, anyone connects")?;
    let js = jetstream::new(client);
    let envelope = |version: u64, producer: &str| events::EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "events.v1.UserRenamed".to_owned(),
        aggregate_type: "user".to_owned(),
        aggregate_id: target.to_owned(),
        aggregate_version: version,
        occurred_at: Some(platform::time::to_timestamp(platform::time::now_micros())),
        producer: producer.to_owned(),
        schema_version: 1,
        payload: events::UserRenamed {
            user_id: target.to_owned(),
            name: "Mallory".to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
        metadata: Default::default(),
    };
    let forgeries: [Vec<u8>; 3] = [
        envelope(1 << 62, "users").encode_to_vec(),
        envelope(3, "orders").encode_to_vec(),
        b"\x00not an event at all".to_vec(),
    ];
    let mut stored = 0;
    for payload in forgeries {
        js.publish("users.user.UserRenamed", payload.into())
            .await
            .context("publish a forgery")?
            .await
            .context("JetStream stores the forgery")?;
        stored += 1;
    }
    Ok(stored)
}

/// Dead letters of `stream` in `service`'s database, through its admin API.
pub async fn dead_letters(
    endpoints: &Endpoints,
    service: Service,
    stream: &str,
) -> anyhow::Result<Vec<ops::DeadLetter>> {
    let mut client = DeadLetterAdminClient::new(endpoints.fault_admin_channel(service));
    let mut letters = Vec::new();
    let mut after_id = 0;
    loop {
        let page = client
            .list_dead_letters(ops::ListDeadLettersRequest {
                stream: stream.to_owned(),
                page_size: 1_000,
                after_id,
            })
            .await
            .with_context(|| format!("{service}'s dead letters"))?
            .into_inner();
        letters.extend(page.dead_letters);
        if page.next_after_id == 0 {
            return Ok(letters);
        }
        after_id = page.next_after_id;
    }
}

/// Opens `per_service` TCP connections to every service that send nothing, the cheapest way
/// to take a server's connections (and, before, its requests) from everyone else.
pub async fn idle_sockets(
    endpoints: &Endpoints,
    per_service: usize,
) -> anyhow::Result<Vec<TcpStream>> {
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

/// Deletes `stream` as an administrator (or an attacker with its rights) would, and watches
/// in the background for it to be back: made again by its producer's relay on the next
/// publish that fails. The watch gives the seconds it took, or None within a minute.
pub async fn delete_stream(
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

/// A projection built after the streams lost their history.
#[derive(Debug)]
pub struct Rebuilt {
    pub process: ServiceProcess,
    pub addr: std::net::SocketAddr,
    /// Entities and events the owners re-emitted, and how long it took.
    pub entities: u64,
    pub events: u64,
    pub re_emit_s: f64,
}

/// The durable name of the projection rebuilt from re-emitted state.
const REBUILT: &str = "retention-rebuild";

/// Purges every stream, as retention would after long enough, starts a projection of its own
/// from what is left (nothing), and has the owners re-emit their state into their outboxes.
pub async fn lose_history_and_rebuild(lab: &RunningLab) -> anyhow::Result<Rebuilt> {
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
