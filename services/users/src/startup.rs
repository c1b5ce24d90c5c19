//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;

use contracts::users::v1::user_service_server::UserServiceServer;
use outbox::Wakeup;
use platform::host::ServiceHost;
use platform::server::{MAX_REQUEST_BYTES, ServiceSet};

use crate::config::Config;
use crate::grpc::UserApi;
use crate::store::UserStore;

/// The users service with its database open and migrated and its port bound.
#[derive(Debug)]
pub struct Application {
    host: ServiceHost,
    wakeup: Wakeup,
    event_schema: u32,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let migrations = [crate::migrations(), outbox::migrations()];
        let mut host = ServiceHost::build(
            "users",
            config.listen,
            &config.database_url,
            &config.db,
            &config.common,
            migrations,
        )
        .await?;
        let nats = platform::nats::connect(&config.nats, "users").await?;
        host.answer_on_bus(nats.clone());
        let wakeup = outbox::spawn_relay(&host, nats, "users", &config.relay);
        Ok(Self {
            host,
            wakeup,
            event_schema: config.events.event_schema,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.host.admin_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.host.metrics_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let db = self.host.database().clone();
        let store =
            UserStore::new(db.clone(), self.wakeup.clone()).with_event_schema(self.event_schema);
        let admin = ServiceSet::new()
            .with(outbox::admin::OutboxApi::new(db, self.wakeup, store.clone()).into_server());
        let api = UserApi::new(store);
        let services = ServiceSet::new()
            .with(UserServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        self.host
            .serve(services, admin, contracts::FILE_DESCRIPTOR_SET, shutdown)
            .await
    }
}
