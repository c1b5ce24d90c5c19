//! The event feed's benchmark: how fast the outbox relay drains into JetStream, against
//! JetStream's own async publish rate measured in the same run, and how long a committed
//! change takes to be applied by a consumer in another database, at a steady write rate.
//! Every figure is taken on SQLite and on PostgreSQL, and under both JetStream fsync
//! settings (`sync_interval: always`, the lab's default, and nats-server's lazy default).
//!
//! Run: `cargo bench -p benches --bench relay` (about a minute; PostgreSQL on
//! 127.0.0.1:5432 or `TEST_POSTGRES_URL`). `-- --test` runs every case once, tiny, so CI
//! keeps it working. Figures vary by machine; the ratios in the last columns are what carry.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use consumer::{ApplyError, Consumer, ConsumerSpec, Event, Projection};
use contracts::events::v1 as events;
use hdrhistogram::Histogram;
use natsd::{NatsServer, NatsServerOptions, SyncPolicy};
use outbox::{Producer, Relay, RelayArgs, RelayConfig, StreamArgs, StreamSpec, Wakeup};
use platform::db::{Database, DatabaseConfig, WriteTx};
use testkit::{Backend, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Messages JetStream's own publisher sends for the floor.
    floor_messages: usize,
    /// Events in the outbox backlog the relay drains.
    relay_events: usize,
    /// Steady write rate for the commit-to-apply lag, events per second.
    write_rate: u64,
    /// Events written at that rate.
    lag_events: usize,
}

const FULL: Scale = Scale {
    floor_messages: 20_000,
    relay_events: 20_000,
    write_rate: 1_000,
    lag_events: 3_000,
};

const SMOKE: Scale = Scale {
    floor_messages: 200,
    relay_events: 200,
    write_rate: 1_000,
    lag_events: 100,
};

/// Publishes JetStream's floor and the relay allow outstanding: the floor gets the larger
/// window, so it is the best JetStream can do here, not a handicapped copy of the relay.
const FLOOR_ACKS_IN_FLIGHT: usize = 2048;

#[derive(Debug)]
struct Row {
    sync: SyncPolicy,
    backend: Backend,
    floor_per_s: f64,
    relay_per_s: f64,
    lag: Lag,
}

fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|arg| arg == "--test");
    let scale = if smoke { SMOKE } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = runtime.block_on(run(scale))?;
    report(&rows, scale);
    Ok(())
}

async fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for sync in [SyncPolicy::Always, SyncPolicy::Lazy] {
        let nats = NatsServer::start(NatsServerOptions {
            sync,
            ..NatsServerOptions::default()
        })
        .await
        .context("start nats-server")?;
        for backend in [Backend::Sqlite, Backend::Postgres] {
            // The floor beside each relay measurement, so both see the same server state.
            let floor_per_s = jetstream_floor(&nats, scale.floor_messages).await?;
            let relay_per_s = relay_throughput(&nats, backend, scale.relay_events).await?;
            let lag = commit_to_apply(&nats, backend, scale).await?;
            eprintln!(
                "  {sync:?}/{backend:?}: floor {floor_per_s:.0}/s, relay {relay_per_s:.0}/s, lag p99 {} us",
                lag.total.value_at_quantile(0.99)
            );
            rows.push(Row {
                sync,
                backend,
                floor_per_s,
                relay_per_s,
                lag,
            });
        }
    }
    Ok(rows)
}

fn context(client: async_nats::Client, in_flight: usize) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(in_flight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// A payload the size of a real envelope.
fn sample_envelope() -> Vec<u8> {
    let id = Uuid::now_v7();
    outbox::OutboxEvent::new(
        outbox::Aggregate {
            producer: "bench",
            kind: "user",
            id: &id,
            version: 1,
        },
        platform::time::now_micros(),
        &events::UserRegistered {
            user_id: id.to_string(),
            email: format!("{id}@example.com"),
            name: "Ada Lovelace".into(),
            ..Default::default()
        },
    )
    .envelope
}

/// JetStream's own async publish rate: pipelined publishes with message ids, to a file
/// stream with the same settings as the services' streams.
async fn jetstream_floor(nats: &NatsServer, n_messages: usize) -> anyhow::Result<f64> {
    let client = async_nats::connect(nats.url()).await?;
    let js = context(client, FLOOR_ACKS_IN_FLIGHT);
    let service = format!("floor{}", Uuid::now_v7().simple());
    let spec = StreamSpec::for_producer(&service, &StreamArgs::default());
    spec.ensure(&js).await?;
    let payload = bytes::Bytes::from(sample_envelope());
    let subject = format!("{service}.user.UserRegistered");
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(FLOOR_ACKS_IN_FLIGHT);
    for _ in 0..n_messages {
        let message = PublishMessage::build()
            .payload(payload.clone())
            .message_id(Uuid::now_v7().to_string());
        acks.push_back(js.send_publish(subject.clone(), message).await?);
        if acks.len() >= FLOOR_ACKS_IN_FLIGHT
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(n_messages as f64 / started.elapsed().as_secs_f64())
}

async fn open(backend: Backend) -> anyhow::Result<(TestDatabase, Database)> {
    let db = TestDatabase::create(backend).await;
    let database = Database::connect(&DatabaseConfig::new(db.url())).await?;
    database
        .migrate([outbox::migrations(), consumer::migrations()])
        .await?;
    Ok((db, database))
}

fn producer(service: &'static str) -> Producer {
    Producer::new(service, "user")
}

async fn write_event(
    database: &Database,
    wakeup: &Wakeup,
    service: &'static str,
) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    let mut tx = database.begin_write().await?;
    let payload = events::UserRegistered {
        user_id: id.to_string(),
        email: format!("{id}@example.com"),
        name: "Ada Lovelace".into(),
        ..Default::default()
    };
    producer(service)
        .record(&mut tx, &id, 1, platform::time::now_micros(), &payload)
        .await?;
    wakeup.commit(tx).await?;
    Ok(id)
}

fn relay(database: &Database, client: async_nats::Client, service: &str, wakeup: &Wakeup) -> Relay {
    Relay::new(
        database.clone(),
        client,
        StreamSpec::for_producer(service, &StreamArgs::default()),
        wakeup.clone(),
        RelayConfig::from_args(&RelayArgs::default()),
    )
}

async fn unpublished(database: &Database) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox_pending")
        .fetch_one(database.pool())
        .await?)
}

/// Events per second from a committed backlog to JetStream acks, marked published.
async fn relay_throughput(
    nats: &NatsServer,
    backend: Backend,
    n_events: usize,
) -> anyhow::Result<f64> {
    let (_db, database) = open(backend).await?;
    let service: &'static str = "relaybench";
    // The backlog, committed in large transactions so filling it is quick.
    let mut written = 0;
    while written < n_events {
        let mut tx = database.begin_write().await?;
        for _ in 0..500.min(n_events - written) {
            let id = Uuid::now_v7();
            let payload = events::UserRegistered {
                user_id: id.to_string(),
                email: format!("{id}@example.com"),
                name: "Ada Lovelace".into(),
                ..Default::default()
            };
            producer(service)
                .record(&mut tx, &id, 1, platform::time::now_micros(), &payload)
                .await?;
            written += 1;
        }
        tx.commit().await?;
    }
    let client = async_nats::connect(nats.url()).await?;
    // Provision the stream first so its creation is not timed.
    StreamSpec::for_producer(service, &StreamArgs::default())
        .ensure(&jetstream::new(client.clone()))
        .await?;
    let cancel = CancellationToken::new();
    let wakeup = Wakeup::new();
    let started = Instant::now();
    let task = tokio::spawn(relay(&database, client, service, &wakeup).run(cancel.clone()));
    let deadline = started + Duration::from_secs(120);
    while unpublished(&database).await? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not drain in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    task.await?;
    database.close().await;
    Ok(n_events as f64 / elapsed.as_secs_f64())
}

/// When each event was committed at the producer, by aggregate id.
type Commits = Arc<Mutex<HashMap<String, Instant>>>;

/// A consumer's projection that writes a row per event, as a real one does, and notes which
/// events it wrote so their latency is taken once their batch has committed.
#[derive(Debug, Clone)]
struct Recorder {
    written: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Projection for Recorder {
    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for event in events {
            tx.execute(
                "INSERT INTO bench_users (id, email) VALUES ($1, $2)",
                &[
                    event.envelope.aggregate_id.as_str().into(),
                    event.decode::<events::UserRegistered>()?.email.into(),
                ],
            )
            .await?;
        }
        if let Ok(mut written) = self.written.lock() {
            written.extend(
                events
                    .iter()
                    .map(|e| (e.stream_sequence, e.envelope.aggregate_id.clone())),
            );
        }
        Ok(())
    }
}

/// Latency distributions of the feed, in microseconds.
#[derive(Debug)]
struct Lag {
    /// Commit at the producer to commit at the consumer.
    total: Histogram<u64>,
    /// Commit at the producer to the event on the bus.
    relay: Histogram<u64>,
    /// The event on the bus to commit at the consumer.
    consumer: Histogram<u64>,
}

impl Lag {
    fn new() -> anyhow::Result<Self> {
        let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
        Ok(Self {
            total: histogram()?,
            relay: histogram()?,
            consumer: histogram()?,
        })
    }
}

fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Commit at the producer to commit at the consumer, at a steady write rate.
async fn commit_to_apply(nats: &NatsServer, backend: Backend, scale: Scale) -> anyhow::Result<Lag> {
    let service: &'static str = "lagbench";
    let (_producer_db, producer_db) = open(backend).await?;
    let (_consumer_db, consumer_db) = open(backend).await?;
    sqlx::query("CREATE TABLE bench_users (id TEXT PRIMARY KEY, email TEXT NOT NULL)")
        .execute(consumer_db.pool())
        .await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    let stream = StreamSpec::for_producer(service, &StreamArgs::default());
    // A fresh stream per case, so the consumer starts at the first event of this case.
    let _ = js.delete_stream(&stream.name).await;
    stream.ensure(&js).await?;

    let cancel = CancellationToken::new();
    let wakeup = Wakeup::new();
    let relay_task =
        tokio::spawn(relay(&producer_db, client.clone(), service, &wakeup).run(cancel.clone()));
    let recorder = Recorder {
        written: Arc::default(),
    };
    let consumer = Consumer::new(
        consumer_db.clone(),
        client,
        ConsumerSpec::new("bench", stream.name.clone()),
        recorder.clone(),
    )
    .await?;
    let mut status = consumer.status();
    let consumer_task = tokio::spawn(consumer.run(cancel.clone()));

    // Warm-up: the first events pay for the consumer's first pull and the pools' first
    // connections, which is start-up cost, not lag.
    let warm_up = 20u64;
    for _ in 0..warm_up {
        write_event(&producer_db, &wakeup, service).await?;
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|position| position.stream_sequence >= warm_up),
    )
    .await
    .context("the consumer did not start in time")??;

    // A plain NATS subscriber sees each event as the server accepts it: splitting the lag
    // into commit -> on the bus (the relay) and on the bus -> applied (the consumer).
    let on_bus: Commits = Arc::default();
    let bus_task = {
        let on_bus = on_bus.clone();
        let mut subscription = async_nats::connect(nats.url())
            .await?
            .subscribe(format!("{service}.>"))
            .await?;
        tokio::spawn(async move {
            use futures::StreamExt as _;
            while let Some(message) = subscription.next().await {
                let seen = Instant::now();
                if let Ok(envelope) =
                    <events::EventEnvelope as prost::Message>::decode(message.payload.as_ref())
                    && let Ok(mut on_bus) = on_bus.lock()
                {
                    on_bus.insert(envelope.aggregate_id, seen);
                }
            }
        })
    };

    let commits: Commits = Arc::default();
    let writer = {
        let commits = commits.clone();
        let wakeup = wakeup.clone();
        let producer_db = producer_db.clone();
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval(Duration::from_micros(1_000_000 / scale.write_rate));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..scale.lag_events {
                ticks.tick().await;
                let id = write_event(&producer_db, &wakeup, service).await?;
                if let Ok(mut commits) = commits.lock() {
                    commits.insert(id.to_string(), Instant::now());
                }
            }
            anyhow::Ok(())
        })
    };

    // When each event's batch committed at the consumer. Matched with the commit times at
    // the end: an event can be applied before its writer has noted when it committed.
    let mut applied: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied.len() < scale.lag_events {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer did not keep up in time"
        );
        if tokio::time::timeout(Duration::from_secs(1), status.changed())
            .await
            .is_ok_and(|changed| changed.is_err())
        {
            anyhow::bail!("the consumer stopped");
        }
        let now = Instant::now();
        let committed_up_to = status.borrow().stream_sequence;
        match recorder.written.lock() {
            Ok(mut written) => {
                let (done, later): (Vec<_>, Vec<_>) = written
                    .drain(..)
                    .partition(|(sequence, _)| *sequence <= committed_up_to);
                *written = later;
                applied.extend(
                    done.into_iter()
                        .filter(|(sequence, _)| *sequence > warm_up)
                        .map(|(_, id)| (id, now)),
                );
            }
            Err(_) => anyhow::bail!("the recorder panicked"),
        }
    }
    writer.await??;
    bus_task.abort();
    let mut lag = Lag::new()?;
    if let (Ok(commits), Ok(on_bus)) = (commits.lock(), on_bus.lock()) {
        for (id, applied_at) in &applied {
            let committed = commits
                .get(id)
                .with_context(|| format!("event {id} applied but never written"))?;
            lag.total.record(micros_between(*committed, *applied_at))?;
            if let Some(seen) = on_bus.get(id) {
                lag.relay.record(micros_between(*committed, *seen))?;
                lag.consumer.record(micros_between(*seen, *applied_at))?;
            }
        }
    }
    cancel.cancel();
    relay_task.await?;
    consumer_task.await?;
    producer_db.close().await;
    consumer_db.close().await;
    Ok(lag)
}

fn report(rows: &[Row], scale: Scale) {
    println!();
    println!(
        "Outbox relay and event feed ({} backlog events; lag at {} events/s for {} events)",
        scale.relay_events, scale.write_rate, scale.lag_events
    );
    println!(
        "| fsync | database | JetStream async publish /s | relay /s | relay / floor | commit->apply p50 us | p99 us | max us | of which relay p50/p99 us | consumer p50/p99 us |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let sync = match row.sync {
            SyncPolicy::Always => "always",
            SyncPolicy::Lazy => "lazy",
        };
        println!(
            "| {sync} | {:?} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} / {} | {} / {} |",
            row.backend,
            row.floor_per_s,
            row.relay_per_s,
            row.relay_per_s / row.floor_per_s,
            row.lag.total.value_at_quantile(0.5),
            row.lag.total.value_at_quantile(0.99),
            row.lag.total.max(),
            row.lag.relay.value_at_quantile(0.5),
            row.lag.relay.value_at_quantile(0.99),
            row.lag.consumer.value_at_quantile(0.5),
            row.lag.consumer.value_at_quantile(0.99),
        );
    }
    println!();
    println!("Aims: relay / floor >= 0.5; commit->apply p99 < 5000 us at 1000 events/s.");
}
