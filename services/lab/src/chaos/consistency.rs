//! The consistency check run after every scenario: once the load has stopped, the projection
//! is compared, user by user and order by order, with what orders, products and users hold.
//! Every acknowledged write must be there, once, with the right facts.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use super::round2;
use crate::seed::Seeded;
use crate::topology::{Endpoints, Service};

/// How the projection compares with the owning services once the load has stopped.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Consistency {
    pub users_checked: usize,
    /// Orders the orders service holds for those users: the ground truth.
    pub orders_in_owners: usize,
    pub purchases_in_projection: usize,
    /// In the owners, not in the projection.
    pub missing: usize,
    /// In the projection more than once.
    pub duplicated: usize,
    /// In the projection, unknown to the owners.
    pub unexpected: usize,
    /// Present in both with different facts (status, quantity, product, user name).
    pub mismatched: usize,
    /// Orders the orders service acknowledged during the scenario.
    pub writes_acknowledged: usize,
    /// Acknowledged, yet absent from the orders service's own data.
    pub writes_lost: usize,
    /// From the end of the load to the first check that found nothing wrong.
    pub converged_after_s: f64,
    pub ok: bool,
    /// The first few discrepancies of the last check, for a person to follow up.
    pub examples: Vec<String>,
}

/// How long the projection may take to agree with the owners once the load stops.
pub(super) const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

/// Checks the projection against the owners until they agree or [`CONVERGE_WITHIN`] passes.
pub(super) async fn converge(
    endpoints: &Endpoints,
    projection: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    acknowledged: &[String],
    since: Instant,
) -> Consistency {
    let owners = Owners::new(endpoints);
    loop {
        let mut checked = match check(&owners, projection, seeded, acknowledged).await {
            Ok(checked) => checked,
            Err(error) => Consistency {
                examples: vec![format!("{error:#}")],
                ..Consistency::default()
            },
        };
        checked.converged_after_s = round2(since.elapsed().as_secs_f64());
        if checked.ok || since.elapsed() > CONVERGE_WITHIN {
            return checked;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Clients of the owning services: the ground truth.
struct Owners {
    users: UserServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
    products: ProductServiceClient<Channel>,
}

impl Owners {
    fn new(endpoints: &Endpoints) -> Self {
        Self {
            users: UserServiceClient::new(endpoints.channel(Service::Users)),
            orders: OrderServiceClient::new(endpoints.channel(Service::Orders)),
            products: ProductServiceClient::new(endpoints.channel(Service::Products)),
        }
    }

    async fn orders_of(&self, user: &str) -> anyhow::Result<Vec<orders_pb::Order>> {
        let mut orders = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .orders
                .clone()
                .list_orders_by_user(orders_pb::ListOrdersByUserRequest {
                    user_id: user.to_owned(),
                    page_size: 1_000,
                    page_token,
                })
                .await
                .with_context(|| format!("orders: ListOrdersByUser({user})"))?
                .into_inner();
            orders.extend(page.orders);
            if page.next_page_token.is_empty() {
                return Ok(orders);
            }
            page_token = page.next_page_token;
        }
    }

    async fn name_of(&self, user: &str) -> anyhow::Result<String> {
        Ok(self
            .users
            .clone()
            .get_user(users_pb::GetUserRequest {
                id: user.to_owned(),
            })
            .await
            .with_context(|| format!("users: GetUser({user})"))?
            .into_inner()
            .user
            .context("GetUser answered without a user")?
            .name)
    }

    async fn products(
        &self,
        ids: &BTreeSet<String>,
    ) -> anyhow::Result<HashMap<String, products_pb::Product>> {
        let ids: Vec<String> = ids.iter().cloned().collect();
        let mut found = HashMap::new();
        for chunk in ids.chunks(1_000) {
            let answer = self
                .products
                .clone()
                .batch_get_products(products_pb::BatchGetProductsRequest {
                    ids: chunk.to_vec(),
                })
                .await
                .context("products: BatchGetProducts")?
                .into_inner();
            found.extend(
                answer
                    .products
                    .into_iter()
                    .map(|product| (product.id.clone(), product)),
            );
        }
        Ok(found)
    }
}

/// Every purchase purchases-async holds for a user, with the name it knows them by.
async fn projected(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
) -> anyhow::Result<(String, Vec<pb::Purchase>)> {
    let (known_as, purchases) = crate::measure::all_purchases(client, user)
        .await
        .with_context(|| format!("purchases-async: ListUserPurchases({user})"))?;
    Ok((
        known_as.map(|user| user.name).unwrap_or_default(),
        purchases,
    ))
}

/// The facts of one purchase that both sides must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    status: i32,
    quantity: i32,
    product_id: String,
    title: String,
    price_cents: i64,
}

/// How many discrepancies a check keeps as examples.
const EXAMPLES: usize = 5;

async fn check(
    owners: &Owners,
    projection: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    acknowledged: &[String],
) -> anyhow::Result<Consistency> {
    let mut truth: Vec<(String, String, Vec<orders_pb::Order>)> = Vec::new();
    let mut product_ids = BTreeSet::new();
    for user in &seeded.users {
        let orders = owners.orders_of(&user.microservices).await?;
        product_ids.extend(orders.iter().map(|order| order.product_id.clone()));
        let name = owners.name_of(&user.microservices).await?;
        truth.push((user.microservices.clone(), name, orders));
    }
    let products = owners.products(&product_ids).await?;

    let mut result = Consistency {
        users_checked: truth.len(),
        writes_acknowledged: acknowledged.len(),
        ..Consistency::default()
    };
    let mut known_orders = BTreeSet::new();
    for (user, name, orders) in &truth {
        let (projected_name, purchases) = projected(projection, user).await?;
        result.orders_in_owners += orders.len();
        result.purchases_in_projection += purchases.len();
        if !orders.is_empty() && projected_name != *name {
            result.mismatched += 1;
            note(
                &mut result,
                format!(
                    "user {user}: named {projected_name:?} in the projection, {name:?} by users"
                ),
            );
        }
        let expected: HashMap<&str, Facts> = orders
            .iter()
            .map(|order| {
                let product = products.get(&order.product_id);
                (
                    order.id.as_str(),
                    Facts {
                        status: order.status,
                        quantity: order.quantity,
                        product_id: order.product_id.clone(),
                        title: product.map(|p| p.title.clone()).unwrap_or_default(),
                        price_cents: product.map_or(0, |p| p.price_cents),
                    },
                )
            })
            .collect();
        known_orders.extend(orders.iter().map(|order| order.id.clone()));
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for purchase in &purchases {
            *seen.entry(purchase.order_id.as_str()).or_default() += 1;
            let Some(facts) = expected.get(purchase.order_id.as_str()) else {
                result.unexpected += 1;
                note(
                    &mut result,
                    format!(
                        "order {} is in the projection, not in orders",
                        purchase.order_id
                    ),
                );
                continue;
            };
            let got = Facts {
                status: purchase.status,
                quantity: purchase.quantity,
                product_id: purchase.product_id.clone(),
                title: purchase
                    .product
                    .as_ref()
                    .map(|p| p.title.clone())
                    .unwrap_or_default(),
                price_cents: purchase.product.as_ref().map_or(0, |p| p.price_cents),
            };
            if got != *facts {
                result.mismatched += 1;
                note(
                    &mut result,
                    format!(
                        "order {}: {got:?} in the projection, {facts:?} in the owners",
                        purchase.order_id
                    ),
                );
            }
        }
        for (order, count) in &seen {
            if *count > 1 {
                result.duplicated += count - 1;
                note(
                    &mut result,
                    format!("order {order} is in the projection {count} times"),
                );
            }
        }
        for order in expected.keys() {
            if !seen.contains_key(order) {
                result.missing += 1;
                note(
                    &mut result,
                    format!("order {order} is in orders, not in the projection"),
                );
            }
        }
    }
    for order in acknowledged {
        if !known_orders.contains(order) {
            result.writes_lost += 1;
            note(
                &mut result,
                format!("order {order} was acknowledged, and orders does not hold it"),
            );
        }
    }
    result.ok = result.missing == 0
        && result.duplicated == 0
        && result.unexpected == 0
        && result.mismatched == 0
        && result.writes_lost == 0;
    Ok(result)
}

fn note(result: &mut Consistency, example: String) {
    if result.examples.len() < EXAMPLES {
        result.examples.push(example);
    }
}
