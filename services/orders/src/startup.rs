//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;

use contracts::orders::v1::order_service_server::OrderServiceServer;
use platform::host::ServiceHost;
use platform::server::{MAX_REQUEST_BYTES, ServiceSet};

use crate::config::Config;
use crate::grpc::OrderApi;
use crate::store::OrderStore;

/// The orders service with its database open and migrated and its port bound.
#[derive(Debug)]
pub struct Application {
    host: ServiceHost,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let migrations = [crate::migrations(), outbox::migrations()];
        let host = ServiceHost::build(
            "orders",
            config.listen,
            &config.database_url,
            &config.common,
            migrations,
        )
        .await?;
        Ok(Self { host })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let api = OrderApi::new(OrderStore::new(self.host.database().clone()));
        let services = ServiceSet::new()
            .with(OrderServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        self.host
            .serve(services, contracts::FILE_DESCRIPTOR_SET, shutdown)
            .await
    }
}
