use contracts::users::v1 as pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use outbox::RelayArgs;
use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;
use testkit::{Backend, RunningServer, TestDatabase};
use tonic::transport::Channel;
use users::{Application, Config};

pub struct TestApp {
    pub server: RunningServer,
    /// Where the fault admin API listens, when it was asked for.
    pub fault_admin: Option<std::net::SocketAddr>,
    pub db: TestDatabase,
    pub client: UserServiceClient<Channel>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the service with `adjust` applied to its configuration.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    testkit::init_tracing();
    let db = TestDatabase::create(backend).await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        database_url: db.url().to_owned(),
        // The feed to NATS has tests of its own; these run without it, as a service must.
        nats: NatsArgs::new(testkit::UNREACHABLE_NATS),
        relay: RelayArgs::default(),
        events: outbox::EventSchemaArgs::default(),
        db: DatabaseArgs::default(),
        common: CommonArgs::default(),
    };
    adjust(&mut config);
    let app = Application::build(config)
        .await
        .expect("the service starts");
    let fault_admin = app.admin_addr();
    let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
    let client = UserServiceClient::new(server.channel());
    TestApp {
        server,
        fault_admin,
        db,
        client,
    }
}

impl TestApp {
    pub async fn create(&self, email: &str, name: &str) -> pb::User {
        self.client
            .clone()
            .create_user(pb::CreateUserRequest {
                email: email.to_owned(),
                name: name.to_owned(),
            })
            .await
            .expect("the user is created")
            .into_inner()
            .user
            .expect("a created user is returned")
    }

    pub async fn outbox(&self) -> Vec<contracts::events::v1::EventEnvelope> {
        testkit::outbox_events(self.db.url()).await
    }
}
