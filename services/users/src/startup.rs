//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use contracts::users::v1::user_service_server::UserServiceServer;
use platform::db::Database;
use platform::server::{GrpcServer, MAX_REQUEST_BYTES, ServiceSet};

use crate::config::Config;
use crate::grpc::UserApi;
use crate::store::UserStore;

/// A users service with its database open and migrated and its port bound.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    db: Database,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = Database::connect(&config.common.database_config(&config.database_url))
            .await
            .context("open the users database")?;
        db.migrate([crate::migrations(), outbox::migrations()])
            .await
            .context("migrate the users database")?;
        let server = GrpcServer::bind(config.listen, config.common.server_settings())
            .with_context(|| format!("bind {}", config.listen))?;
        tracing::info!(addr = %server.local_addr(), backend = ?db.backend(), "users service listening");
        Ok(Self { server, db })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let api = UserApi::new(UserStore::new(self.db.clone()));
        let services = ServiceSet::new()
            .add(UserServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        let served = self
            .server
            .serve(services, contracts::FILE_DESCRIPTOR_SET, shutdown)
            .await;
        self.db.close().await;
        served.context("serve gRPC")
    }
}
