//! The purchases question answered by each mode, on identical data, in one run: a bare tonic
//! round trip (grpc.health.v1 Check, no database: the floor), purchases-sync with the
//! parallel and the sequential fan-out, purchases-bus (the owners asked over NATS),
//! purchases-async and the monolith, for users with 1,
//! 10 and 100 purchases. Everything runs in this process on loopback over SQLite.
//!
//! `async-sql` is purchases-async reading its projection through SQL (`--read-from
//! database`) instead of its in-memory view: the view's gain, measured in the same run.
//!
//! `injected/<ms>` adds that much latency to every call the owning services answer (their
//! fault layer), for the user with 10 purchases: purchases-sync and purchases-bus pay it once
//! per stage of their fan-out (twice in parallel, three times in sequence), purchases-async
//! not at all.
//!
//! Run: `cargo bench -p benches --bench modes`; `-- --test` runs each case once.
//! How to read it: compare each mode with `echo` in the same group. purchases-sync needs at
//! least three sequential round trips (caller -> D, then users and orders together, then
//! products); purchases-bus the same, each call through the broker (two more hops);
//! purchases-async and the monolith one plus a local read.

use std::time::Duration;

use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use harness::{Lab, Monolith, Writers};
use testkit::Backend;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PURCHASES_PER_USER: [usize; 3] = [1, 10, 100];
const INJECTED_MS: [u64; 3] = [0, 1, 5];

struct Fixture {
    lab: Lab,
    _second_async: (testkit::TestDatabase, testkit::RunningServer),
    _monolith: Monolith,
    echo: HealthClient<Channel>,
    modes: Vec<(&'static str, PurchaseServiceClient<Channel>)>,
    /// Per size: the user in the microservices, the user in the monolith.
    users: Vec<(usize, String, String)>,
}

/// A user with `n` purchases spread over a few products.
async fn user_with_purchases(writers: &Writers, n: usize) -> String {
    let user = writers.register(&format!("Buyer of {n}")).await.id;
    let mut products = Vec::new();
    for product_idx in 0..n.min(10) {
        let price = 100 + i64::try_from(product_idx).unwrap_or(0);
        products.push(
            writers
                .create_product(&format!("Product {product_idx}"), price)
                .await
                .id,
        );
    }
    for order_idx in 0..n {
        writers
            .place(&user, &products[order_idx % products.len()], 1)
            .await;
    }
    user
}

async fn fixture() -> Fixture {
    let lab = Lab::start(Backend::Sqlite).await;
    let monolith = Monolith::start(Backend::Sqlite).await;
    let mut users = Vec::new();
    for n in PURCHASES_PER_USER {
        let user = user_with_purchases(&lab.writers, n).await;
        let monolith_user = user_with_purchases(&monolith.writers, n).await;
        users.push((n, user, monolith_user));
    }
    lab.caught_up().await;
    // The same projection read through SQL instead of memory: a second purchases-async with
    // its own database and consumers, waited for until it has every purchase.
    let (second_db, second_server, async_sql) = lab
        .start_second_async("purchases-sql", purchases_async::ReadFrom::Database)
        .await;
    for (n, user, _) in &users {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answered = async_sql
                .clone()
                .list_user_purchases(pb::ListUserPurchasesRequest {
                    user_id: user.clone(),
                    page_size: 100,
                    page_token: String::new(),
                    ..Default::default()
                })
                .await
                .map(|answer| answer.into_inner().purchases.len());
            if answered.is_ok_and(|len| len == *n) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second projection never caught up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let echo = HealthClient::new(lab.sync_server.channel());
    let modes = vec![
        ("sync", lab.sync.clone()),
        ("sync-sequential", lab.sync_sequential.clone()),
        ("bus", lab.bus.clone()),
        ("async", lab.asynchronous.clone()),
        ("async-sql", async_sql),
        ("monolith", monolith.purchases.clone()),
    ];
    Fixture {
        lab,
        _second_async: (second_db, second_server),
        _monolith: monolith,
        echo,
        modes,
        users,
    }
}

fn modes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let fixture = runtime.block_on(fixture());
    for (n, user, monolith_user) in &fixture.users {
        let mut group = c.benchmark_group(format!("purchases/{n}"));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("echo", |b| {
            b.to_async(&runtime).iter(|| {
                let mut echo = fixture.echo.clone();
                async move {
                    echo.check(HealthCheckRequest::default())
                        .await
                        .expect("the echo answers")
                }
            });
        });
        for (mode, client) in &fixture.modes {
            let user = if *mode == "monolith" {
                monolith_user
            } else {
                user
            };
            bench_mode(&mut group, &runtime, mode, client, user, *n, &n.to_string());
        }
        group.finish();
    }

    let (n, user, _) = fixture
        .users
        .iter()
        .find(|(n, _, _)| *n == 10)
        .expect("a user with 10 purchases");
    for ms in INJECTED_MS {
        fixture.lab.faults.set_latency(Duration::from_millis(ms));
        let mut group = c.benchmark_group(format!("injected/{ms}ms"));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        for (mode, client) in fixture
            .modes
            .iter()
            .filter(|(mode, _)| ["sync", "sync-sequential", "bus", "async"].contains(mode))
        {
            bench_mode(
                &mut group,
                &runtime,
                mode,
                client,
                user,
                *n,
                &format!("{ms}ms"),
            );
        }
        group.finish();
    }
    drop(fixture);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// One mode answering `user`'s `n` purchases, checked on every call.
fn bench_mode(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    mode: &str,
    client: &PurchaseServiceClient<Channel>,
    user: &str,
    n: usize,
    parameter: &str,
) {
    let request = pb::ListUserPurchasesRequest {
        user_id: user.to_owned(),
        page_size: 100,
        page_token: String::new(),
        ..Default::default()
    };
    group.bench_with_input(BenchmarkId::new(mode, parameter), &request, |b, request| {
        b.to_async(runtime).iter(|| {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                let answer = client
                    .list_user_purchases(request)
                    .await
                    .expect("the mode answers")
                    .into_inner();
                assert_eq!(answer.purchases.len(), n, "every purchase is answered");
                answer
            }
        });
    });
}

criterion_group!(benches, modes);
criterion_main!(benches);
