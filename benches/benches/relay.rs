//! The event feed's benchmark: how fast the outbox relay drains into JetStream, against
//! JetStream's own async publish rate measured in the same run, and how long a committed
//! change takes to be applied by a consumer in another database, at a steady write rate.
//! Every figure is taken on SQLite and on PostgreSQL, and under both JetStream fsync
//! settings (`sync_interval: always`, the lab's default, and nats-server's lazy default).
//!
//! Run: `cargo bench -p benches --bench relay` (about four minutes; PostgreSQL on
//! 127.0.0.1:5432 or `TEST_POSTGRES_URL`). Words after `--` pick cases by name
//! (`-- lazy/sqlite` runs one; `-- lazy` both databases under lazy fsync), and `-- --test`
//! runs every case once, tiny, so CI keeps it working. Figures vary by machine; the ratios
//! are what carry.
//!
//! The relay's rate is the backlog's events over the time from the relay's start to
//! JetStream holding all of them (the stream's own count, polled), the way the floor's is
//! its messages over the time to the last acknowledgement. When the last of them was marked
//! published is reported beside it: marks are gathered for up to 100 ms, so on a backlog
//! that JetStream takes a fifth of a second to store the last mark says more about that
//! wait than about the rate.

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
use platform::procfs;
use testkit::{Backend, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Events in the outbox backlog the relay drains, and messages JetStream's own
    /// publisher sends for the floor, under fsync always: the disk holds it to a few
    /// thousand a second, so a few seconds.
    backlog_always: usize,
    /// The same under lazy fsync, where JetStream stores 100k+ a second here: enough for
    /// about a second of work, so start-up is a small part of it.
    backlog_lazy: usize,
    /// Floor-then-relay rounds per case.
    rounds: usize,
    /// Steady write rate for the commit-to-apply lag, events per second.
    write_rate: u64,
    /// Events written at that rate.
    lag_events: usize,
}

const FULL: Scale = Scale {
    backlog_always: 10_000,
    backlog_lazy: 100_000,
    rounds: 3,
    write_rate: 1_000,
    lag_events: 3_000,
};

const SMOKE: Scale = Scale {
    backlog_always: 200,
    backlog_lazy: 200,
    rounds: 1,
    write_rate: 1_000,
    lag_events: 100,
};

impl Scale {
    fn backlog(&self, sync: SyncPolicy) -> usize {
        match sync {
            SyncPolicy::Always => self.backlog_always,
            SyncPolicy::Lazy => self.backlog_lazy,
        }
    }
}

/// Publishes JetStream's floor and the relay allow outstanding: the floor gets the larger
/// window, so it is the best JetStream can do here, not a handicapped copy of the relay.
const FLOOR_ACKS_IN_FLIGHT: usize = 2048;

#[derive(Debug)]
struct Row {
    sync: SyncPolicy,
    backend: Backend,
    backlog: usize,
    floor_per_s: f64,
    /// The machine's CPU while JetStream's own publisher ran.
    floor_cpu: CpuUse,
    drain: Drain,
    /// relay / floor of every round, lowest first.
    ratios: Vec<f64>,
    lag: Lag,
}

/// JetStream's floor and the relay, measured one right after the other.
#[derive(Debug)]
struct Round {
    floor_per_s: f64,
    floor_cpu: CpuUse,
    drain: Drain,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.drain.per_s / self.floor_per_s
    }
}

fn sync_name(sync: SyncPolicy) -> &'static str {
    match sync {
        SyncPolicy::Always => "always",
        SyncPolicy::Lazy => "lazy",
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|arg| arg == "--test");
    let mut scale = if smoke { SMOKE } else { FULL };
    // More rounds where the VM is noisy: the median round is reported either way.
    if let Some(rounds) = std::env::var("RELAY_BENCH_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse::<usize>().ok())
        .filter(|rounds| *rounds > 0)
    {
        scale.rounds = rounds;
    }
    // Cargo passes `--bench`; everything else that is not a flag names cases.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .map(|arg| arg.to_lowercase())
        .collect();
    // The services' metrics recorder, so the relay pays for its metrics as it does there.
    let _recorder = platform::telemetry::metrics::handle();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = runtime.block_on(run(scale, &filters))?;
    report(&rows, scale);
    Ok(())
}

async fn run(scale: Scale, filters: &[String]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let chosen = |sync, backend| {
        let name = format!("{}/{}", sync_name(sync), backend_name(backend));
        filters.is_empty() || filters.iter().any(|filter| name.contains(filter.as_str()))
    };
    for sync in [SyncPolicy::Always, SyncPolicy::Lazy] {
        if ![Backend::Sqlite, Backend::Postgres]
            .into_iter()
            .any(|backend| chosen(sync, backend))
        {
            continue;
        }
        let nats = NatsServer::start(NatsServerOptions {
            sync,
            ..NatsServerOptions::default()
        })
        .await
        .context("start nats-server")?;
        let backlog = scale.backlog(sync);
        for backend in [Backend::Sqlite, Backend::Postgres] {
            if !chosen(sync, backend) {
                continue;
            }
            // The floor right before each relay measurement, so both see the same server
            // state and the same neighbours: on a shared VM the floor alone moved by a third
            // between runs. The round with the median ratio is reported, with the others.
            let mut rounds = Vec::new();
            for _ in 0..scale.rounds {
                let before = Cpu::now();
                let floor_per_s = jetstream_floor(&nats, backlog).await?;
                let floor_cpu = Cpu::now().since(&before);
                let drain = relay_throughput(&nats, backend, backlog).await?;
                rounds.push(Round {
                    floor_per_s,
                    floor_cpu,
                    drain,
                });
            }
            rounds.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
            let ratios: Vec<f64> = rounds.iter().map(Round::ratio).collect();
            let Round {
                floor_per_s,
                floor_cpu,
                drain,
            } = rounds.swap_remove(rounds.len() / 2);
            let lag = commit_to_apply(&nats, backend, scale).await?;
            eprintln!(
                "  {sync:?}/{backend:?}: floor {floor_per_s:.0}/s, relay {:.0}/s, lag p99 {} us",
                drain.per_s,
                lag.total.value_at_quantile(0.99)
            );
            rows.push(Row {
                sync,
                backend,
                backlog,
                floor_per_s,
                floor_cpu,
                drain,
                ratios,
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

/// The relay draining a committed backlog.
#[derive(Debug)]
struct Drain {
    /// Events per second from the relay's start to JetStream holding them all.
    per_s: f64,
    /// From the relay's start to the last event marked published.
    marked_after: Duration,
    /// The machine's CPU until JetStream held every event.
    cpu: CpuUse,
}

/// Drains a backlog of `n_events` committed events through a relay that has published to
/// this stream before (as after an outage of NATS), so the figure is the relay's pace and
/// not the one-off republishing of a relay that meets a new stream.
async fn relay_throughput(
    nats: &NatsServer,
    backend: Backend,
    n_events: usize,
) -> anyhow::Result<Drain> {
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
    let js = jetstream::new(client.clone());
    let spec = StreamSpec::for_producer(service, &StreamArgs::default());
    // A stream of its own per case, provisioned before the clock starts, and known to the
    // relay as the one it publishes to.
    let _ = js.delete_stream(&spec.name).await;
    let identity = spec.ensure(&js).await?;
    sqlx::query("INSERT INTO outbox_streams (stream, created) VALUES ($1, $2)")
        .bind(&spec.name)
        .bind(identity.created)
        .execute(database.pool())
        .await?;
    let mut stream = js.get_stream(&spec.name).await?;
    let target = u64::try_from(n_events)?;

    let cancel = CancellationToken::new();
    let wakeup = Wakeup::new();
    let before = Cpu::now();
    let started = Instant::now();
    let task = tokio::spawn(relay(&database, client, service, &wakeup).run(cancel.clone()));
    let deadline = started + Duration::from_secs(120);
    // JetStream's count, not the outbox's: the outbox is not read while the relay works,
    // so the measurement takes nothing from the relay's database.
    while stream.info().await?.state.messages < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not publish in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let published = started.elapsed();
    let cpu = Cpu::now().since(&before);
    while unpublished(&database).await? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not mark in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let marked_after = started.elapsed();
    cancel.cancel();
    task.await?;
    database.close().await;
    Ok(Drain {
        per_s: n_events as f64 / published.as_secs_f64(),
        marked_after,
        cpu,
    })
}

/// CPU time so far, from Linux's /proc (all zero elsewhere): the machine's, and that of the
/// processes that share it during a drain. Where the relay falls short of the floor, this
/// says whether the two cores were the limit and who used them.
#[derive(Debug, Clone, Default)]
struct Cpu {
    /// Clock ticks of all cores: busy, and in all.
    busy: u64,
    total: u64,
    /// Clock ticks of each process watched, by pid: by pid so that a process that ends
    /// between two readings (the previous case's nats-server) takes nothing off the others.
    processes: HashMap<u32, (Watched, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Nats,
    Postgres,
    This,
}

/// What a phase used, from two [`Cpu`] readings.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    /// Share of the machine's CPU that was busy, percent.
    busy_pct: f64,
    /// CPU milliseconds of nats-server, postgres and this process.
    nats_ms: f64,
    postgres_ms: f64,
    this_ms: f64,
}

impl Cpu {
    fn now() -> Self {
        let (busy, total) = procfs::machine_ticks().unwrap_or_default();
        let watched = [
            (Watched::This, vec![std::process::id()]),
            (Watched::Nats, procfs::pids_named("nats-server")),
            (Watched::Postgres, procfs::pids_named("postgres")),
        ];
        let processes = watched
            .into_iter()
            .flat_map(|(kind, pids)| pids.into_iter().map(move |pid| (kind, pid)))
            .filter_map(|(kind, pid)| Some((pid, (kind, procfs::cpu_ticks(pid)?))))
            .collect();
        Self {
            busy,
            total,
            processes,
        }
    }

    fn since(&self, earlier: &Self) -> CpuUse {
        let total = self.total.saturating_sub(earlier.total);
        // A process started in between counts from nothing.
        let ms = |watched: Watched| {
            let ticks: u64 = self
                .processes
                .iter()
                .filter(|(_, (kind, _))| *kind == watched)
                .map(|(pid, (_, now))| {
                    now.saturating_sub(earlier.processes.get(pid).map_or(0, |(_, then)| *then))
                })
                .sum();
            ticks as f64 * 1000.0 / procfs::ticks_per_second() as f64
        };
        CpuUse {
            busy_pct: if total == 0 {
                0.0
            } else {
                100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
            },
            nats_ms: ms(Watched::Nats),
            postgres_ms: ms(Watched::Postgres),
            this_ms: ms(Watched::This),
        }
    }
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
        "Outbox relay and event feed (lag at {} events/s for {} events)",
        scale.write_rate, scale.lag_events
    );
    println!(
        "| fsync | database | backlog | JetStream async publish /s | relay /s | relay / floor | every round's | all marked after ms | commit->apply p50 us | p99 us | max us | of which relay p50/p99 us | consumer p50/p99 us |"
    );
    println!("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:?} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
            sync_name(row.sync),
            row.backend,
            row.backlog,
            row.floor_per_s,
            row.drain.per_s,
            row.drain.per_s / row.floor_per_s,
            row.ratios
                .iter()
                .map(|ratio| format!("{ratio:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            row.drain.marked_after.as_millis(),
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
    println!(
        "Where the CPU went while each drained its backlog (/proc; ms of CPU per 1,000 events; each core gives 1,000 ms a second)"
    );
    println!(
        "| fsync | database | machine busy % floor / relay | nats-server floor / relay | postgres relay | bench process floor / relay |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for row in rows {
        let per_k = |ms: f64| ms * 1000.0 / row.backlog as f64;
        let (floor, relay) = (row.floor_cpu, row.drain.cpu);
        println!(
            "| {} | {:?} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} |",
            sync_name(row.sync),
            row.backend,
            floor.busy_pct,
            relay.busy_pct,
            per_k(floor.nats_ms),
            per_k(relay.nats_ms),
            per_k(relay.postgres_ms),
            per_k(floor.this_ms),
            per_k(relay.this_ms),
        );
    }
    println!();
    println!(
        "Aims: relay / floor >= 0.8 under lazy fsync; commit->apply p99 < 5000 us at 1000 events/s."
    );
}
