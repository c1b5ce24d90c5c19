//! Catch-up: how fast purchases-async's projection of orders is rebuilt from a fixed stream
//! of 100,000 order events (a placement for every order, a cancellation for one in ten),
//! through the real consumer and the real projection, into a fresh database each time. The
//! floor beside it is JetStream alone: the same 100,000 messages pulled and acknowledged by a
//! consumer that writes nothing, in the same run.
//!
//! Run: `cargo bench -p benches --bench catch_up` (SQLite and PostgreSQL on 127.0.0.1:5432 or
//! `TEST_POSTGRES_URL`; a few minutes). `-- --test` runs each case once on 1,000 events.
//! Read events/s as 100,000 over the time per iteration; the aims are 60,000/s on SQLite and
//! 30,000/s on PostgreSQL (docs/benchmarks.md).

use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use consumer::{Consumer, ConsumerSpec};
use contracts::events::v1 as events;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use futures::StreamExt as _;
use natsd::{NatsServer, NatsServerOptions};
use outbox::{Aggregate, OutboxEvent, StreamArgs, StreamSpec};
use platform::db::{Database, DatabaseConfig};
use purchases_async::projection::Purchases;
use purchases_async::view::View;
use testkit::{Backend, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const EVENTS: usize = 100_000;
const SMOKE_EVENTS: usize = 1_000;

/// Fills the orders stream with `n` events: placements, and a cancellation after every
/// ninth placement.
async fn fill(js: &jetstream::Context, n: usize) -> anyhow::Result<()> {
    StreamSpec::for_producer("orders", &StreamArgs::default())
        .ensure(js)
        .await?;
    let users: Vec<Uuid> = (0..1_000).map(|_| Uuid::now_v7()).collect();
    let products: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut last_placed = None;
    for index in 0..n {
        let at = platform::time::now_micros();
        let event = match last_placed.take() {
            Some((order_id, user_id)) if index % 10 == 9 => {
                let cancelled = events::OrderCancelled {
                    order_id: Uuid::to_string(&order_id),
                    user_id: Uuid::to_string(&user_id),
                    cancelled_at: Some(platform::time::to_timestamp(at)),
                };
                order_event(&order_id, 2, at, &cancelled)
            }
            _ => {
                let (order_id, user_id) = (Uuid::now_v7(), users[index % users.len()]);
                let placed = events::OrderPlaced {
                    order_id: order_id.to_string(),
                    user_id: user_id.to_string(),
                    product_id: products[index % products.len()].to_string(),
                    quantity: 1,
                    placed_at: Some(platform::time::to_timestamp(at)),
                };
                last_placed = Some((order_id, user_id));
                order_event(&order_id, 1, at, &placed)
            }
        };
        let message = jetstream::message::PublishMessage::build()
            .payload(event.envelope.into())
            .message_id(event.event_id.to_string());
        acks.push(js.send_publish(event.subject, message).await?.into_future());
        // A window of acknowledgements in flight, as the relay keeps.
        if acks.len() >= 2_048 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    Ok(())
}

fn order_event<M: prost::Message + prost::Name>(
    id: &Uuid,
    version: u64,
    at: i64,
    payload: &M,
) -> OutboxEvent {
    let aggregate = Aggregate {
        producer: "orders",
        kind: "order",
        id,
        version,
    };
    OutboxEvent::new(aggregate, at, payload)
}

/// The time one fresh purchases-async projection takes to apply all `n` events.
async fn rebuild(nats: &NatsServer, backend: Backend, n: usize) -> anyhow::Result<Duration> {
    let test_db = TestDatabase::create(backend).await;
    let db = Database::connect(&DatabaseConfig::new(test_db.url())).await?;
    db.migrate([purchases_async::migrations(), consumer::migrations()])
        .await?;
    let view = View::load(db.clone()).await?;
    let client = async_nats::connect(nats.url()).await?;
    let spec = ConsumerSpec::new(format!("catch-up-{}", Uuid::now_v7().simple()), bus::ORDERS);
    let name = spec.name.clone();
    let projection = Purchases::prepare(db.clone(), view).await?;
    let consumer = Consumer::new(db.clone(), client.clone(), spec, projection).await?;
    let mut status = consumer.status();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    let deadline = Duration::from_secs(600);
    let target = u64::try_from(n)?;
    tokio::time::timeout(
        deadline,
        status.wait_for(|position| position.stream_sequence >= target),
    )
    .await??;
    let took = started.elapsed();
    cancel.cancel();
    task.await?;
    jetstream::new(client)
        .get_stream(bus::ORDERS)
        .await?
        .delete_consumer(&name)
        .await?;
    db.close().await;
    Ok(took)
}

/// The floor: the same events pulled and acknowledged a batch at a time, nothing written.
async fn pull_only(nats: &NatsServer, n: usize) -> anyhow::Result<Duration> {
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream(bus::ORDERS).await?;
    let name = format!("floor-{}", Uuid::now_v7().simple());
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::All,
            max_ack_pending: 4_096,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1_024)
        .messages()
        .await?;
    let mut seen = 0;
    while seen < n {
        let message = messages
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the pull ended"))??;
        seen += 1;
        if seen % 256 == 0 || seen == n {
            message
                .ack()
                .await
                .map_err(|error| anyhow::anyhow!(error))?;
        }
    }
    let took = started.elapsed();
    stream.delete_consumer(&name).await?;
    Ok(took)
}

fn catch_up(c: &mut Criterion) {
    let smoke = std::env::args().any(|arg| arg == "--test");
    let n = if smoke { SMOKE_EVENTS } else { EVENTS };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let nats = runtime
        .block_on(async {
            let nats = NatsServer::start(NatsServerOptions::default()).await?;
            let js = jetstream::new(async_nats::connect(nats.url()).await?);
            fill(&js, n).await?;
            anyhow::Ok(nats)
        })
        .expect("a nats-server holding the orders stream");
    let mut group = c.benchmark_group("catch_up");
    // One rebuild per sample: each takes seconds, and criterion's default sampling would run
    // 55 of them.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(u64::try_from(n).unwrap_or(0)));
    group.bench_function(BenchmarkId::new("pull-only", n), |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let nats = &nats;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += pull_only(nats, n).await.expect("pull the stream");
                }
                total
            }
        });
    });
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let label = format!("{backend:?}").to_lowercase();
        group.bench_function(BenchmarkId::new(label, n), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let nats = &nats;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += rebuild(nats, backend, n).await.expect("rebuild");
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, catch_up);
criterion_main!(benches);
