use contracts::orders::v1 as pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use orders::{Application, Config};
use platform::config::CommonArgs;
use testkit::{Backend, RunningServer, TestDatabase};
use tonic::transport::Channel;

pub struct TestApp {
    pub _server: RunningServer,
    pub db: TestDatabase,
    pub client: OrderServiceClient<Channel>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    testkit::init_tracing();
    let db = TestDatabase::create(backend).await;
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        database_url: db.url().to_owned(),
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

    pub async fn outbox(&self) -> Vec<contracts::events::v1::EventEnvelope> {
        testkit::outbox_events(self.db.url()).await
    }
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
