use contracts::orders::v1 as pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use orders::{Application, Config};
use std::time::{Duration, Instant};

use contracts::events::v1 as events;
use natsd::NatsServer;
use outbox::RelayArgs;
use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;
use uuid::Uuid;

pub const USERS: outbox::Producer = outbox::Producer::new("users", "user");
pub const PRODUCTS: outbox::Producer = outbox::Producer::new("products", "product");
use testkit::{Backend, RunningServer, TestDatabase};
use tonic::transport::Channel;

pub struct TestApp {
    pub _server: RunningServer,
    pub db: TestDatabase,
    pub client: OrderServiceClient<Channel>,
    pub _nats: NatsServer,
    pub js: async_nats::jetstream::Context,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    testkit::init_tracing();
    let db = TestDatabase::create(backend).await;
    let nats = testkit::start_nats().await;
    let js = testkit::connect(&nats).await;
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        database_url: db.url().to_owned(),
        nats: NatsArgs::new(nats.url()),
        relay: RelayArgs::default(),
        db: DatabaseArgs::default(),
        common: CommonArgs::default(),
    };
    let app = Application::build(config)
        .await
        .expect("the service starts");
    let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
    let client = OrderServiceClient::new(server.channel());
    TestApp {
        _server: server,
        db,
        client,
        _nats: nats,
        js,
    }
}

impl TestApp {
    pub async fn place(&self, user_id: &str, product_id: &str, quantity: i32) -> pb::Order {
        self.client
            .clone()
            .place_order(pb::PlaceOrderRequest {
                user_id: user_id.to_owned(),
                product_id: product_id.to_owned(),
                quantity,
            })
            .await
            .expect("the order is placed")
            .into_inner()
            .order
            .expect("a placed order is returned")
    }

    /// Registers a user as the users service would (an event on USERS) and returns its id
    /// once the orders replica has it.
    pub async fn user(&self) -> String {
        let id = Uuid::now_v7();
        let registered = events::UserRegistered {
            user_id: id.to_string(),
            email: format!("{id}@example.com"),
            name: "Ada".into(),
            ..Default::default()
        };
        self.publish(USERS, &id, 1, &registered).await;
        self.wait_until_known("known_users", &id).await;
        id.to_string()
    }

    /// Creates a product as the products service would and returns its id once the
    /// orders replica has it.
    pub async fn product(&self) -> String {
        let id = Uuid::now_v7();
        let created = events::ProductCreated {
            product_id: id.to_string(),
            title: "Teapot".into(),
            image_url: "https://example.com/teapot.png".into(),
            price_cents: 1999,
            ..Default::default()
        };
        self.publish(PRODUCTS, &id, 1, &created).await;
        self.wait_until_known("known_products", &id).await;
        id.to_string()
    }

    pub async fn publish<M: prost::Message + prost::Name>(
        &self,
        producer: outbox::Producer,
        id: &Uuid,
        version: u64,
        payload: &M,
    ) {
        let aggregate = outbox::Aggregate {
            producer: producer.service,
            kind: producer.kind,
            id,
            version,
        };
        let event = outbox::OutboxEvent::new(aggregate, platform::time::now_micros(), payload);
        testkit::publish_event(&self.js, &event).await;
    }

    /// Waits (bounded) until the replica table holds `id`.
    pub async fn wait_until_known(&self, table: &str, id: &Uuid) {
        let db = platform::db::Database::connect(&platform::db::DatabaseConfig::new(self.db.url()))
            .await
            .expect("open the orders database");
        let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE id = $1");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id.to_string())
                .fetch_one(db.pool())
                .await
                .expect("read the replica");
            if n == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never reached {table}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        db.close().await;
    }

    pub async fn outbox(&self) -> Vec<contracts::events::v1::EventEnvelope> {
        testkit::outbox_events(self.db.url()).await
    }
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
