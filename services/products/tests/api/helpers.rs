use contracts::products::v1 as pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use outbox::RelayArgs;
use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;
use products::{Application, Config};
use testkit::{Backend, RunningServer, TestDatabase};
use tonic::transport::Channel;

pub struct TestApp {
    pub _server: RunningServer,
    pub db: TestDatabase,
    pub client: ProductServiceClient<Channel>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    testkit::init_tracing();
    let db = TestDatabase::create(backend).await;
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        database_url: db.url().to_owned(),
        // The feed to NATS has tests of its own; these run without it, as a service must.
        nats: NatsArgs::new(testkit::UNREACHABLE_NATS),
        relay: RelayArgs::default(),
        events: outbox::EventSchemaArgs::default(),
        db: DatabaseArgs::default(),
        common: CommonArgs::default(),
    };
    let app = Application::build(config)
        .await
        .expect("the service starts");
    let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
    let client = ProductServiceClient::new(server.channel());
    TestApp {
        _server: server,
        db,
        client,
    }
}

pub fn new_product(title: &str, price_cents: i64) -> pb::CreateProductRequest {
    pb::CreateProductRequest {
        title: title.to_owned(),
        image_url: format!("https://img.example.com/{}.png", title.replace(' ', "-")),
        price_cents,
    }
}

impl TestApp {
    pub async fn create(&self, title: &str, price_cents: i64) -> pb::Product {
        self.client
            .clone()
            .create_product(new_product(title, price_cents))
            .await
            .expect("the product is created")
            .into_inner()
            .product
            .expect("a created product is returned")
    }

    pub async fn outbox(&self) -> Vec<contracts::events::v1::EventEnvelope> {
        testkit::outbox_events(self.db.url()).await
    }
}
