//! The whole system in the caller's runtime, for integration tests and benchmarks:
//! nats-server, users, products, orders, purchases-sync, purchases-bus and purchases-async
//! ([`Lab`]), and
//! the monolith ([`Monolith`]), each on port 0 with a database of its own. Clients for the
//! writes a workload makes ([`Writers`]) and for reading every page of an answer.
//!
//! Test support: failures to start panic with the reason, as a test harness should.

use std::time::Duration;

use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use outbox::RelayArgs;
use platform::config::{CommonArgs, DatabaseArgs};
use purchases::fanout::Order;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use testkit::{Backend, DelayProxy, RunningServer, SecureNats, TestDatabase};
use tonic::transport::Channel;

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("a socket address")
}

/// Clients for the writes a workload makes: the three owning services, or the monolith.
#[derive(Debug, Clone)]
pub struct Writers {
    pub users: UserServiceClient<Channel>,
    pub products: ProductServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
}

impl Writers {
    pub async fn register(&self, name: &str) -> users_pb::User {
        let id = uuid::Uuid::now_v7();
        self.users
            .clone()
            .create_user(users_pb::CreateUserRequest {
                email: format!("{id}@example.com"),
                name: name.to_owned(),
            })
            .await
            .expect("the user is registered")
            .into_inner()
            .user
            .expect("a user")
    }

    pub async fn create_product(&self, title: &str, price_cents: i64) -> products_pb::Product {
        self.products
            .clone()
            .create_product(products_pb::CreateProductRequest {
                title: title.to_owned(),
                image_url: format!("https://img.example.com/{price_cents}.png"),
                price_cents,
            })
            .await
            .expect("the product is created")
            .into_inner()
            .product
            .expect("a product")
    }

    /// Places an order once orders' replica knows the user and product (bounded wait).
    pub async fn place(&self, user_id: &str, product_id: &str, quantity: i32) -> orders_pb::Order {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let placed = self
                .orders
                .clone()
                .place_order(orders_pb::PlaceOrderRequest {
                    user_id: user_id.to_owned(),
                    product_id: product_id.to_owned(),
                    quantity,
                })
                .await;
            match placed {
                Ok(response) => return response.into_inner().order.expect("an order"),
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "orders never learned of the user or product: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(status) => panic!("placing an order failed: {status:?}"),
            }
        }
    }

    pub fn new(users: Channel, products: Channel, orders: Channel) -> Self {
        Self {
            users: UserServiceClient::new(users),
            products: ProductServiceClient::new(products),
            orders: OrderServiceClient::new(orders),
        }
    }
}

/// The fault handles of the three owning services.
#[derive(Debug, Clone, Default)]
pub struct OwnerFaults {
    pub users: fault::Faults,
    pub products: fault::Faults,
    pub orders: fault::Faults,
}

impl OwnerFaults {
    /// The same latency on every application call of all three (replacing other faults).
    pub fn set_latency(&self, latency: Duration) {
        for faults in [&self.users, &self.products, &self.orders] {
            let set = if latency.is_zero() {
                Vec::new()
            } else {
                vec![
                    fault::Fault::new(fault::Target::All)
                        .with_latency(fault::Latency::fixed(latency)),
                ]
            };
            faults
                .replace(set)
                .expect("a fixed latency under a minute is a valid fault");
        }
    }
}

/// Settings of a service in the lab: the given fault handle, and the admin APIs on a
/// loopback port of their own.
fn with_faults(faults: &fault::Faults) -> CommonArgs {
    CommonArgs {
        faults: faults.clone(),
        admin_listen: Some(any_port()),
        ..CommonArgs::default()
    }
}

/// Where each service's admin APIs (faults, dead letters, re-emit) listen.
#[derive(Debug, Clone, Copy)]
pub struct AdminAddrs {
    pub users: std::net::SocketAddr,
    pub products: std::net::SocketAddr,
    pub orders: std::net::SocketAddr,
}

/// A lazily connected channel to an admin API.
pub fn admin_channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes an endpoint")
        .connect_lazy()
}

#[derive(Debug)]
pub struct Lab {
    pub backend: Backend,
    /// With authorization, as the system runs: every service connects as its own NATS user.
    pub nats: SecureNats,
    pub users_server: Option<RunningServer>,
    pub _products_server: RunningServer,
    pub products_proxy: DelayProxy,
    pub orders_server: RunningServer,
    pub sync_server: RunningServer,
    pub _sequential_server: RunningServer,
    pub bus_server: RunningServer,
    pub async_server: Option<RunningServer>,
    pub async_db: TestDatabase,
    /// The fault layers of users, products and orders, e.g. to add latency to every call.
    pub faults: OwnerFaults,
    /// The owners' admin APIs.
    pub admin: AdminAddrs,
    /// purchases-async's admin API (its dead letters), while it runs.
    pub async_admin: Option<std::net::SocketAddr>,
    _dbs: Vec<TestDatabase>,
    pub writers: Writers,
    /// purchases-sync with the parallel fan-out.
    pub sync: PurchaseServiceClient<Channel>,
    /// purchases-sync with the sequential fan-out.
    pub sync_sequential: PurchaseServiceClient<Channel>,
    /// purchases-bus: the owners asked on NATS.
    pub bus: PurchaseServiceClient<Channel>,
    /// users, orders and products (through the proxy), as purchases-sync reaches them.
    owner_urls: [String; 3],
    pub asynchronous: PurchaseServiceClient<Channel>,
}

impl Lab {
    pub async fn start(backend: Backend) -> Self {
        testkit::init_tracing();
        let nats = SecureNats::start().await;
        let faults = OwnerFaults::default();

        let users_db = TestDatabase::create(backend).await;
        let users_app = users::Application::build(users::Config {
            listen: any_port(),
            database_url: users_db.url().to_owned(),
            nats: nats.args("users"),
            relay: RelayArgs::default(),
            events: outbox::EventSchemaArgs::default(),
            db: DatabaseArgs::default(),
            common: with_faults(&faults.users),
        })
        .await
        .expect("users starts");
        let users_admin = users_app.admin_addr().expect("users serves its admin APIs");
        let users_server = RunningServer::spawn(users_app.local_addr(), |stop| {
            users_app.run_until_stopped(stop)
        });

        let products_db = TestDatabase::create(backend).await;
        let products_app = products::Application::build(products::Config {
            listen: any_port(),
            database_url: products_db.url().to_owned(),
            nats: nats.args("products"),
            relay: RelayArgs::default(),
            events: outbox::EventSchemaArgs::default(),
            db: DatabaseArgs::default(),
            common: with_faults(&faults.products),
        })
        .await
        .expect("products starts");
        let products_admin = products_app
            .admin_addr()
            .expect("products serves its admin APIs");
        let products_server = RunningServer::spawn(products_app.local_addr(), |stop| {
            products_app.run_until_stopped(stop)
        });

        let orders_db = TestDatabase::create(backend).await;
        let orders_app = orders::Application::build(orders::Config {
            listen: any_port(),
            database_url: orders_db.url().to_owned(),
            nats: nats.args("orders"),
            relay: RelayArgs::default(),
            db: DatabaseArgs::default(),
            common: with_faults(&faults.orders),
        })
        .await
        .expect("orders starts");
        let orders_admin = orders_app
            .admin_addr()
            .expect("orders serves its admin APIs");
        let orders_server = RunningServer::spawn(orders_app.local_addr(), |stop| {
            orders_app.run_until_stopped(stop)
        });

        // purchases-sync reaches products through a proxy a test can slow down.
        let products_proxy = DelayProxy::start(products_server.addr()).await;
        let sync_config = |fanout| purchases_sync::Config {
            listen: any_port(),
            users_url: users_server.url(),
            orders_url: orders_server.url(),
            products_url: products_proxy.url(),
            fanout,
            call_timeout_ms: 2_000,
            max_calls_per_dependency: 64,
            hedge_after_ms: None,
            common: CommonArgs::default(),
        };
        let owner_urls = [
            users_server.url(),
            orders_server.url(),
            products_proxy.url(),
        ];
        let sync_app = purchases_sync::Application::build(sync_config(Order::Parallel))
            .await
            .expect("purchases-sync starts");
        let sync_server = RunningServer::spawn(sync_app.local_addr(), |stop| {
            sync_app.run_until_stopped(stop)
        });
        let sequential_app = purchases_sync::Application::build(sync_config(Order::Sequential))
            .await
            .expect("purchases-sync (sequential) starts");
        let sequential_server = RunningServer::spawn(sequential_app.local_addr(), |stop| {
            sequential_app.run_until_stopped(stop)
        });
        let bus_app = purchases_bus::Application::build(purchases_bus::Config {
            listen: any_port(),
            nats: nats.args(bus::access::ASKER),
            fanout: Order::Parallel,
            call_timeout_ms: 2_000,
            max_calls_per_dependency: 64,
            common: CommonArgs::default(),
        })
        .await
        .expect("purchases-bus starts");
        let bus_server =
            RunningServer::spawn(bus_app.local_addr(), |stop| bus_app.run_until_stopped(stop));

        let async_db = TestDatabase::create(backend).await;
        let mut lab = Self {
            backend,
            writers: Writers::new(
                users_server.channel(),
                products_server.channel(),
                orders_server.channel(),
            ),
            owner_urls,
            sync: PurchaseServiceClient::new(sync_server.channel()),
            sync_sequential: PurchaseServiceClient::new(sequential_server.channel()),
            bus: PurchaseServiceClient::new(bus_server.channel()),
            // Replaced by start_async below.
            asynchronous: PurchaseServiceClient::new(sync_server.channel()),
            nats,
            users_server: Some(users_server),
            _products_server: products_server,
            products_proxy,
            orders_server,
            sync_server,
            _sequential_server: sequential_server,
            bus_server,
            async_server: None,
            async_db,
            faults,
            admin: AdminAddrs {
                users: users_admin,
                products: products_admin,
                orders: orders_admin,
            },
            async_admin: None,
            _dbs: vec![users_db, products_db, orders_db],
        };
        lab.start_async(false).await;
        lab.owners_answer_on_the_bus().await;
        lab
    }

    /// Another purchases-sync on the same owners (products behind the same proxy), with the
    /// fan-out and hedging given: the per-item fan-out, say.
    pub async fn start_sync(
        &self,
        fanout: Order,
        hedge_after_ms: Option<u64>,
    ) -> (RunningServer, PurchaseServiceClient<Channel>) {
        let [users_url, orders_url, products_url] = self.owner_urls.clone();
        let app = purchases_sync::Application::build(purchases_sync::Config {
            listen: any_port(),
            users_url,
            orders_url,
            products_url,
            fanout,
            call_timeout_ms: 2_000,
            max_calls_per_dependency: 256,
            hedge_after_ms,
            common: CommonArgs::default(),
        })
        .await
        .expect("purchases-sync starts");
        let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
        let client = PurchaseServiceClient::new(server.channel());
        (server, client)
    }

    /// Waits until every owner answers the services API's PING on the bus: its questions'
    /// endpoints are registered with the same subscription batch.
    pub async fn owners_answer_on_the_bus(&self) {
        let admin = self.nats.client(bus::access::ADMIN).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for owner in ["users", "products", "orders"] {
            loop {
                let ping = tokio::time::timeout(
                    Duration::from_secs(1),
                    admin.request(format!("$SRV.PING.{owner}"), "".into()),
                )
                .await;
                if matches!(ping, Ok(Ok(_))) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{owner} never registered its endpoints on the bus"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Starts purchases-async on its database (again, after a stop).
    pub async fn start_async(&mut self, rebuild: bool) {
        self.start_async_reading_from(rebuild, purchases_async::ReadFrom::Memory)
            .await;
    }

    pub async fn start_async_reading_from(
        &mut self,
        rebuild: bool,
        read_from: purchases_async::ReadFrom,
    ) {
        self.start_async_with(rebuild, read_from, None).await;
    }

    /// Starts purchases-async with a cap of its own on reads waiting for an order.
    pub async fn start_async_with(
        &mut self,
        rebuild: bool,
        read_from: purchases_async::ReadFrom,
        max_waiting_reads: Option<u64>,
    ) {
        let app = purchases_async::Application::build(purchases_async::Config {
            max_waiting_reads,
            read_from,
            reader_schema: 2,
            consumer_name: "purchases".into(),
            listen: any_port(),
            database_url: self.async_db.url().to_owned(),
            nats: self.nats.args("purchases-async"),
            rebuild,
            db: DatabaseArgs::default(),
            common: CommonArgs {
                admin_listen: Some(any_port()),
                ..CommonArgs::default()
            },
        })
        .await
        .expect("purchases-async starts");
        self.async_admin = app.admin_addr();
        let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
        self.asynchronous = PurchaseServiceClient::new(server.channel());
        self.async_server = Some(server);
    }

    /// A second purchases-async with a projection of its own (own database, own durable
    /// consumers), e.g. to compare read paths side by side.
    pub async fn start_second_async(
        &self,
        consumer_name: &str,
        read_from: purchases_async::ReadFrom,
    ) -> (TestDatabase, RunningServer, PurchaseServiceClient<Channel>) {
        self.start_second_async_reading(consumer_name, read_from, 2)
            .await
    }

    /// The same, reading events of at most `reader_schema` (1 behaves as a purchases-async
    /// built before schema 2 would).
    pub async fn start_second_async_reading(
        &self,
        consumer_name: &str,
        read_from: purchases_async::ReadFrom,
        reader_schema: u32,
    ) -> (TestDatabase, RunningServer, PurchaseServiceClient<Channel>) {
        let db = TestDatabase::create(self.backend).await;
        let app = purchases_async::Application::build(purchases_async::Config {
            listen: any_port(),
            database_url: db.url().to_owned(),
            nats: self.nats.args("purchases-async"),
            rebuild: false,
            consumer_name: consumer_name.to_owned(),
            read_from,
            reader_schema,
            max_waiting_reads: None,
            db: DatabaseArgs::default(),
            common: CommonArgs::default(),
        })
        .await
        .expect("a second purchases-async starts");
        let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
        let client = PurchaseServiceClient::new(server.channel());
        (db, server, client)
    }

    pub async fn stop_async(&mut self) {
        if let Some(server) = self.async_server.take() {
            server.stop().await.expect("purchases-async stops cleanly");
        }
    }

    /// Waits (bounded) until purchases-async has applied every event now in the streams.
    pub async fn caught_up(&self) {
        let js = self.nats.admin().await;
        let mut targets = Vec::new();
        for stream in bus::SYSTEM_STREAMS {
            let last = match js.get_stream(stream).await {
                Ok(stream) => {
                    stream
                        .get_info()
                        .await
                        .expect("stream info")
                        .state
                        .last_sequence
                }
                Err(_) => 0,
            };
            targets.push((stream, last));
        }
        let db = platform::db::Database::connect(&platform::db::DatabaseConfig::new(
            self.async_db.url(),
        ))
        .await
        .expect("open the projection database");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut positions = Vec::new();
            for (stream, _) in &targets {
                let position = consumer::load_position(&db, "purchases", stream)
                    .await
                    .expect("read a position")
                    .map_or(0, |position| position.stream_sequence);
                positions.push((*stream, position));
            }
            if positions
                .iter()
                .zip(&targets)
                .all(|((_, at), (_, last))| at >= last)
            {
                // The in-memory view is refreshed just after each commit, so what the API
                // answers can trail the stored positions for a moment: wait for the
                // positions it reports too (any user's answer carries them).
                let someone: Option<String> = sqlx::query_scalar("SELECT id FROM p_users LIMIT 1")
                    .fetch_optional(db.pool())
                    .await
                    .expect("read the projection's users");
                db.close().await;
                if let Some(user) = someone {
                    self.answers_caught_up(&user, &targets, deadline).await;
                }
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "purchases-async did not catch up: at {positions:?}, streams at {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until purchases-async's answers report every stream at or past its target.
    async fn answers_caught_up(
        &self,
        user: &str,
        targets: &[(&str, u64)],
        deadline: tokio::time::Instant,
    ) {
        loop {
            let reported: Vec<(String, u64)> = self
                .asynchronous
                .clone()
                .list_user_purchases(list(user, 1, ""))
                .await
                .ok()
                .and_then(|answer| answer.into_inner().freshness)
                .map(|freshness| {
                    freshness
                        .streams
                        .into_iter()
                        .map(|stream| (stream.stream, stream.sequence))
                        .collect()
                })
                .unwrap_or_default();
            let caught_up = targets.iter().all(|(stream, last)| {
                reported
                    .iter()
                    .any(|(name, sequence)| name == stream && sequence >= last)
            });
            if caught_up {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "purchases-async's answers did not catch up: they report {reported:?}, streams at {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn list(user_id: &str, page_size: i32, page_token: &str) -> pb::ListUserPurchasesRequest {
    pb::ListUserPurchasesRequest {
        user_id: user_id.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
        ..Default::default()
    }
}

/// Every page of a user's purchases, walked with `page_size`.
pub async fn all_pages(
    client: &PurchaseServiceClient<Channel>,
    user_id: &str,
    page_size: i32,
) -> Result<(Option<pb::User>, Vec<pb::Purchase>, Vec<String>), tonic::Status> {
    let mut purchases = Vec::new();
    let mut tokens = Vec::new();
    let mut token = String::new();
    for _ in 0..1_000 {
        let page = client
            .clone()
            .list_user_purchases(list(user_id, page_size, &token))
            .await?
            .into_inner();
        let user = page.user;
        purchases.extend(page.purchases);
        token = page.next_page_token;
        if token.is_empty() {
            return Ok((user, purchases, tokens));
        }
        tokens.push(token.clone());
    }
    panic!("paging never ended");
}

/// The monolith on a database of its own.
#[derive(Debug)]
pub struct Monolith {
    pub _db: TestDatabase,
    pub server: RunningServer,
    pub writers: Writers,
    pub purchases: PurchaseServiceClient<Channel>,
}

impl Monolith {
    pub async fn start(backend: Backend) -> Self {
        let db = TestDatabase::create(backend).await;
        let app = monolith::Application::build(monolith::Config {
            listen: any_port(),
            database_url: db.url().to_owned(),
            db: DatabaseArgs::default(),
            common: CommonArgs::default(),
        })
        .await
        .expect("the monolith starts");
        let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
        let channel = server.channel();
        Self {
            _db: db,
            writers: Writers::new(channel.clone(), channel.clone(), channel.clone()),
            purchases: PurchaseServiceClient::new(channel),
            server,
        }
    }
}

/// Registrations, product creations and updates, orders, cancellations and a deleted user,
/// chosen by a seeded generator so a failure can be replayed.
pub async fn random_workload(writers: &Writers, seed: u64) -> (Vec<String>, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut users = Vec::new();
    for user_idx in 0..5 {
        users.push(writers.register(&format!("User {user_idx}")).await.id);
    }
    let mut products = Vec::new();
    for product_idx in 0..6 {
        products.push(
            writers
                .create_product(&format!("Product {product_idx}"), 100 + product_idx)
                .await
                .id,
        );
    }
    let mut orders: Vec<orders_pb::Order> = Vec::new();
    for _ in 0..30 {
        let user = &users[rng.random_range(0..users.len())];
        let product = &products[rng.random_range(0..products.len())];
        orders.push(writers.place(user, product, rng.random_range(1..=5)).await);
    }
    for product in products.iter().take(3) {
        writers
            .products
            .clone()
            .update_product(products_pb::UpdateProductRequest {
                id: product.clone(),
                title: Some(format!("Renamed {}", rng.random_range(0..1000))),
                image_url: None,
                price_cents: Some(rng.random_range(1..100_000)),
                expected_version: None,
            })
            .await
            .expect("the product is updated");
    }
    for _ in 0..5 {
        let order = &orders[rng.random_range(0..orders.len())];
        // Picking one twice is fine: the second cancellation is refused.
        let _ = writers
            .orders
            .clone()
            .cancel_order(orders_pb::CancelOrderRequest {
                id: order.id.clone(),
                expected_version: None,
            })
            .await;
    }
    let deleted = users.pop().expect("five users");
    writers
        .users
        .clone()
        .delete_user(users_pb::DeleteUserRequest {
            id: deleted.clone(),
            expected_version: None,
        })
        .await
        .expect("the user is deleted");
    (users, deleted)
}
