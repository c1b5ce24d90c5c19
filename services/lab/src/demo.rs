//! `lab demo`: up and seed on an empty data dir, then the comparison — latency per mode,
//! freshness of the projection, and one fault — printed and written as a report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::measure::{self, Clients, Mode};
use crate::report::{DataSet, Fault, Report};
use crate::seed::{SeedArgs, Seeded, SeededUser, Target};
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Requests per mode for the latency comparison.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub requests: u32,
    /// New orders timed from PlaceOrder to their appearance in purchases-async.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub freshness_samples: u32,
    /// Calls per mode while the users service is stopped, and again after it is back.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub fault_calls: u32,
}

/// How long the projection may take to hold every seeded purchase.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(120);

pub fn clients(endpoints: &Endpoints) -> Clients {
    Clients {
        echo: HealthClient::new(endpoints.channel(Service::PurchasesAsync)),
        sync: PurchaseServiceClient::new(endpoints.channel(Service::PurchasesSync)),
        sync_sequential: PurchaseServiceClient::new(
            endpoints.channel(Service::PurchasesSyncSequential),
        ),
        bus: PurchaseServiceClient::new(endpoints.channel(Service::PurchasesBus)),
        asynchronous: PurchaseServiceClient::new(endpoints.channel(Service::PurchasesAsync)),
        monolith: PurchaseServiceClient::new(endpoints.channel(Service::Monolith)),
    }
}

pub fn targets(endpoints: &Endpoints) -> (Target, Target) {
    let monolith = endpoints.channel(Service::Monolith);
    (
        Target {
            users: endpoints.channel(Service::Users),
            products: endpoints.channel(Service::Products),
            orders: endpoints.channel(Service::Orders),
        },
        Target {
            users: monolith.clone(),
            products: monolith.clone(),
            orders: monolith,
        },
    )
}

/// The demo's steps on a running lab; the caller brings the lab up and down.
pub async fn run(
    lab: &mut RunningLab,
    seed_args: &SeedArgs,
    args: &DemoArgs,
    storage: &str,
) -> anyhow::Result<Report> {
    let endpoints = lab.endpoints.clone();
    let clients = clients(&endpoints);

    let (seeded, data) = seed_and_wait(lab, seed_args).await?;
    let mut latency = BTreeMap::new();
    for mode in std::iter::once(Mode::Echo).chain(Mode::COMPARED) {
        println!("Measuring {} ({} requests)...", mode.name(), args.requests);
        latency.insert(
            mode,
            measure::latency(&clients, mode, &seeded.users, args.requests).await,
        );
    }

    println!(
        "Timing {} new orders until purchases-async shows them...",
        args.freshness_samples
    );
    let freshness = measure::freshness(
        OrderServiceClient::new(endpoints.channel(Service::Orders)),
        &clients.asynchronous,
        &seeded.users,
        &seeded.sample_product,
        args.freshness_samples,
    )
    .await?;

    let fault = if lab.is_attached() {
        println!("Not stopping the users service: the lab did not start it (--endpoints).");
        Fault {
            what: "not run: stopping users needs a lab that started it (the demo ran with --endpoints)"
                .to_owned(),
            during: BTreeMap::new(),
            after: BTreeMap::new(),
        }
    } else {
        println!("Stopping the users service...");
        lab.stop_service(Service::Users).await?;
        let during = measure::during_fault(&clients, &seeded.users, args.fault_calls).await;
        println!("Starting it again...");
        lab.restart_service(Service::Users).await?;
        let after = measure::during_fault(&clients, &seeded.users, args.fault_calls).await;
        Fault {
            what: "the users service stopped (SIGTERM), then started again".to_owned(),
            during,
            after,
        }
    };
    let traces = collected_traces(lab, &freshness.trace_ids).await?;

    Ok(Report {
        generated_at: crate::report::now_rfc3339(),
        machine: crate::report::machine(),
        storage: storage.to_owned(),
        data,
        latency,
        freshness,
        fault,
        traces,
    })
}

/// The traces the report shows, once the services have sent their last spans.
async fn collected_traces(
    lab: &RunningLab,
    timed_orders: &[String],
) -> anyhow::Result<Vec<crate::traces::views::TraceView>> {
    if lab.endpoints.otlp_endpoint.is_none() {
        return Ok(Vec::new());
    }
    // Spans leave a service at most half a second after they end.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let spans = crate::traces::Spans::load(&lab.data_dir)?;
    Ok(crate::traces::views::demo_views(&spans, timed_orders))
}

/// Seeds both systems and waits until purchases-async holds every seeded purchase.
pub async fn seed_and_wait(
    lab: &RunningLab,
    seed_args: &SeedArgs,
) -> anyhow::Result<(Seeded, DataSet)> {
    let (microservices, monolith) = targets(&lab.endpoints);
    let asynchronous = PurchaseServiceClient::new(lab.endpoints.channel(Service::PurchasesAsync));
    println!(
        "Seeding {} users, {} products and {} orders into the microservices and the monolith...",
        seed_args.users, seed_args.products, seed_args.orders
    );
    let started = Instant::now();
    let seeded = crate::seed::seed(seed_args, microservices, monolith, &lab.data_dir).await?;
    let seconds_to_seed = started.elapsed().as_secs_f64();
    let caught_up_at = Instant::now();
    wait_until_projected(&asynchronous, &seeded.users).await?;
    let seconds_for_projection_to_catch_up = caught_up_at.elapsed().as_secs_f64();
    println!(
        "Seeded in {seconds_to_seed:.1} s; purchases-async held every purchase {seconds_for_projection_to_catch_up:.2} s later."
    );
    let data = DataSet {
        users: seeded.users.len(),
        products: seeded.products,
        orders: seeded.orders,
        cancelled: seeded.cancelled,
        seconds_to_seed,
        seconds_for_projection_to_catch_up,
    };
    Ok((seeded, data))
}

/// Waits until purchases-async answers every seeded user with all of their purchases.
async fn wait_until_projected(
    client: &PurchaseServiceClient<Channel>,
    users: &[SeededUser],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    for user in users {
        loop {
            let count = count_purchases(client, &user.microservices).await;
            if count.as_ref().is_ok_and(|count| *count == user.purchases) {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "purchases-async did not catch up within {CATCH_UP_WITHIN:?}: user {} has {:?} of {} purchases; see its log",
                    user.microservices,
                    count.map_err(|status| status.message().to_owned()),
                    user.purchases
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// How many purchases a user has, all pages.
pub async fn count_purchases(
    client: &PurchaseServiceClient<Channel>,
    user_id: &str,
) -> Result<usize, tonic::Status> {
    measure::all_purchases(client, user_id)
        .await
        .map(|(_, purchases)| purchases.len())
}

/// The demo starts from nothing: an absent or empty data dir, or one only a lab has written
/// (it holds the lab's marker), which is emptied. Anything else is refused, not deleted.
pub fn prepare_empty(data_dir: &Path) -> anyhow::Result<()> {
    let Ok(mut entries) = std::fs::read_dir(data_dir) else {
        return Ok(());
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if !crate::up::is_lab_data_dir(data_dir) {
        anyhow::bail!(
            "{} holds files the lab did not write: the demo needs an empty data dir; pass another --data-dir",
            data_dir.display()
        );
    }
    crate::up::refuse_if_running(data_dir)?;
    std::fs::remove_dir_all(data_dir)
        .with_context(|| format!("cannot empty the data dir {}", data_dir.display()))?;
    println!(
        "Emptied {} (data from an earlier lab run).",
        data_dir.display()
    );
    Ok(())
}
