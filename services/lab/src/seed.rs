//! A realistic data set loaded through the public gRPC APIs: the same plan (from one random
//! seed) applied to the microservices and to the monolith, so every mode answers over
//! identical data. What was created is written to `seed.json` for the demo and for scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// Writes in flight per system: enough to keep both cores busy without queueing for long.
const IN_FLIGHT: usize = 16;
/// How long an order may wait for orders' replica to learn of its user and product.
const REPLICA_WAIT: Duration = Duration::from_secs(30);
/// How long one PlaceOrder call may take.
const PLACE_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Users to register.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub users: u32,
    /// Products to create.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub products: u32,
    /// Orders to place (about one in twenty is cancelled afterwards).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub orders: u32,
    /// Random seed: the same seed plans the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What the seed planned: indexes into the users and products it creates.
#[derive(Debug, Clone)]
struct Plan {
    users: Vec<(String, String)>,
    products: Vec<(String, String, i64)>,
    orders: Vec<PlannedOrder>,
}

#[derive(Debug, Clone, Copy)]
struct PlannedOrder {
    user: usize,
    product: usize,
    quantity: i32,
    cancel: bool,
}

const GIVEN: [&str; 12] = [
    "Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Donald", "Margaret", "Ken", "Radia",
    "Leslie", "Tony",
];
const FAMILY: [&str; 12] = [
    "Lovelace", "Hopper", "Turing", "Liskov", "Dijkstra", "Allen", "Knuth", "Hamilton", "Thompson",
    "Perlman", "Lamport", "Hoare",
];
const ADJECTIVES: [&str; 10] = [
    "Ergonomic",
    "Compact",
    "Durable",
    "Wireless",
    "Vintage",
    "Modular",
    "Quiet",
    "Rugged",
    "Smart",
    "Classic",
];
const NOUNS: [&str; 10] = [
    "Keyboard",
    "Lamp",
    "Backpack",
    "Kettle",
    "Headphones",
    "Chair",
    "Notebook",
    "Bicycle",
    "Camera",
    "Teapot",
];

impl Plan {
    /// `run` tags the emails, which must be unique, so seeding a lab twice adds to it.
    fn new(args: &SeedArgs, run: &str) -> Self {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let users = (0..args.users as usize)
            .map(|index| {
                let given = GIVEN[rng.random_range(0..GIVEN.len())];
                let family = FAMILY[rng.random_range(0..FAMILY.len())];
                let email = format!(
                    "{}.{}.{index}.{run}@example.com",
                    given.to_lowercase(),
                    family.to_lowercase()
                );
                (email, format!("{given} {family}"))
            })
            .collect();
        let products = (0..args.products as usize)
            .map(|index| {
                let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
                let noun = NOUNS[rng.random_range(0..NOUNS.len())];
                let slug = format!(
                    "{}-{}-{index}",
                    adjective.to_lowercase(),
                    noun.to_lowercase()
                );
                (
                    format!("{adjective} {noun} {index}"),
                    format!("https://img.example.com/{slug}.png"),
                    rng.random_range(199..=49_999),
                )
            })
            .collect();
        // Skewed like real shops: a few users order a lot, most a little.
        let orders = (0..args.orders)
            .map(|_| {
                let skewed = rng.random::<f64>().powi(2);
                PlannedOrder {
                    user: ((skewed * f64::from(args.users)) as usize).min(args.users as usize - 1),
                    product: rng.random_range(0..args.products as usize),
                    quantity: rng.random_range(1..=3),
                    cancel: rng.random_ratio(1, 20),
                }
            })
            .collect();
        Self {
            users,
            products,
            orders,
        }
    }

    fn writes(&self) -> u64 {
        (self.users.len()
            + self.products.len()
            + self.orders.len()
            + self.orders.iter().filter(|order| order.cancel).count()) as u64
    }
}

/// One system to write to: the microservices (three channels) or the monolith (one).
#[derive(Debug, Clone)]
pub struct Target {
    pub users: Channel,
    pub products: Channel,
    pub orders: Channel,
}

/// A seeded user as each system knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeededUser {
    pub microservices: String,
    pub monolith: String,
    /// Orders placed for the user (cancelled ones included: they are still purchases).
    pub purchases: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seeded {
    pub users: Vec<SeededUser>,
    pub products: usize,
    /// A product of the microservices, to order more of.
    pub sample_product: String,
    /// The same product in the monolith.
    pub sample_monolith_product: String,
    pub orders: usize,
    pub cancelled: usize,
}

impl Seeded {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("seed.json")
    }
}

/// Applies the plan to both systems at once and records what was created.
pub async fn seed(
    args: &SeedArgs,
    microservices: Target,
    monolith: Target,
    data_dir: &Path,
) -> anyhow::Result<Seeded> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| format!("{:x}", elapsed.as_millis()))
        .unwrap_or_default();
    let plan = Plan::new(args, &run);
    let progress = ProgressBar::new(plan.writes() * 2);
    progress.set_style(
        ProgressStyle::with_template("seeding {bar:40} {pos}/{len} writes ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ((micro_users, micro_products), (mono_users, mono_products)) = tokio::try_join!(
        apply(&plan, microservices, &progress),
        apply(&plan, monolith, &progress)
    )?;
    progress.finish_and_clear();
    let mut purchases = vec![0; plan.users.len()];
    for order in &plan.orders {
        purchases[order.user] += 1;
    }
    let seeded = Seeded {
        users: micro_users
            .into_iter()
            .zip(mono_users)
            .zip(purchases)
            .map(|((microservices, monolith), purchases)| SeededUser {
                microservices,
                monolith,
                purchases,
            })
            .collect(),
        products: plan.products.len(),
        sample_product: micro_products.into_iter().next().unwrap_or_default(),
        sample_monolith_product: mono_products.into_iter().next().unwrap_or_default(),
        orders: plan.orders.len(),
        cancelled: plan.orders.iter().filter(|order| order.cancel).count(),
    };
    let path = Seeded::path(data_dir);
    std::fs::write(&path, serde_json::to_string_pretty(&seeded)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(seeded)
}

/// Writes the plan to one system; returns its user and product ids in plan order.
async fn apply(
    plan: &Plan,
    target: Target,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let users_client = UserServiceClient::new(target.users);
    let user_ids: Vec<String> = futures::stream::iter(plan.users.iter().cloned())
        .map(|(email, name)| {
            let mut client = users_client.clone();
            async move {
                let user = client
                    .create_user(users_pb::CreateUserRequest { email, name })
                    .await
                    .context("registering a user")?
                    .into_inner()
                    .user
                    .context("CreateUser answered without a user")?;
                progress.inc(1);
                anyhow::Ok(user.id)
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    let products_client = ProductServiceClient::new(target.products);
    let product_ids: Vec<String> = futures::stream::iter(plan.products.iter().cloned())
        .map(|(title, image_url, price_cents)| {
            let mut client = products_client.clone();
            async move {
                let product = client
                    .create_product(products_pb::CreateProductRequest {
                        title,
                        image_url,
                        price_cents,
                    })
                    .await
                    .context("creating a product")?
                    .into_inner()
                    .product
                    .context("CreateProduct answered without a product")?;
                progress.inc(1);
                anyhow::Ok(product.id)
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    let orders_client = OrderServiceClient::new(target.orders);
    futures::stream::iter(plan.orders.iter().copied())
        .map(|order| {
            let client = orders_client.clone();
            let user_id = user_ids[order.user].clone();
            let product_id = product_ids[order.product].clone();
            async move {
                let placed =
                    place(client.clone(), user_id, product_id, order.quantity, None).await?;
                progress.inc(1);
                if order.cancel {
                    client
                        .clone()
                        .cancel_order(orders_pb::CancelOrderRequest {
                            id: placed,
                            expected_version: None,
                        })
                        .await
                        .context("cancelling an order")?;
                    progress.inc(1);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok((user_ids, product_ids))
}

/// Why an order was not placed, with the status the orders service answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("placing an order failed: {code:?}: {message}")]
pub struct PlaceError {
    pub code: tonic::Code,
    pub message: String,
}

/// Places an order, waiting while orders' replica has not yet heard of a user or product
/// created a moment ago (FAILED_PRECONDITION): that is the event feed's delay, not an error.
/// With a W3C `traceparent`, every attempt continues that trace.
pub async fn place(
    mut client: OrderServiceClient<Channel>,
    user_id: String,
    product_id: String,
    quantity: i32,
    traceparent: Option<&str>,
) -> Result<String, PlaceError> {
    let traceparent = traceparent
        .map(|value| {
            tonic::metadata::MetadataValue::try_from(value).map_err(|_| PlaceError {
                code: tonic::Code::InvalidArgument,
                message: format!("not a traceparent: {value:?}"),
            })
        })
        .transpose()?;
    let deadline = tokio::time::Instant::now() + REPLICA_WAIT;
    loop {
        let mut request = tonic::Request::new(orders_pb::PlaceOrderRequest {
            user_id: user_id.clone(),
            product_id: product_id.clone(),
            quantity,
        });
        // A hung orders service fails the write instead of holding the writer forever.
        request.set_timeout(PLACE_DEADLINE);
        if let Some(traceparent) = &traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.clone());
        }
        match client.place_order(request).await {
            Ok(answer) => {
                return answer
                    .into_inner()
                    .order
                    .map(|order| order.id)
                    .ok_or_else(|| PlaceError {
                        code: tonic::Code::Internal,
                        message: "PlaceOrder answered without an order".to_owned(),
                    });
            }
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => {
                return Err(PlaceError {
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_data() {
        let args = SeedArgs {
            users: 20,
            products: 5,
            orders: 300,
            seed: 7,
        };
        let (first, second) = (Plan::new(&args, "a"), Plan::new(&args, "a"));
        assert_eq!(first.users, second.users);
        assert_eq!(first.products, second.products);
        assert!(
            first
                .orders
                .iter()
                .all(|order| order.user < 20 && order.product < 5)
        );
        let cancelled = first.orders.iter().filter(|order| order.cancel).count();
        assert!(
            cancelled > 0 && cancelled < 60,
            "about one in twenty: {cancelled}"
        );
        let emails: std::collections::HashSet<_> =
            first.users.iter().map(|(email, _)| email).collect();
        assert_eq!(emails.len(), 20, "emails are unique");
    }
}
