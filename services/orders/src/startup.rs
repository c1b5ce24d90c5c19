//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use consumer::{Consumer, ConsumerSpec};
use contracts::orders::v1::order_service_server::OrderServiceServer;
use outbox::Wakeup;
use platform::host::ServiceHost;
use platform::server::{MAX_REQUEST_BYTES, ServiceSet};

use crate::config::Config;
use crate::grpc::OrderApi;
use crate::replica::{self, ProductsReplica, UsersReplica};
use crate::store::{OrderStore, References};

/// The orders service with its database open and migrated and its port bound.
#[derive(Debug)]
pub struct Application {
    host: ServiceHost,
    wakeup: Wakeup,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let migrations = [
            crate::migrations(),
            outbox::migrations(),
            consumer::migrations(),
        ];
        let host = ServiceHost::build(
            "orders",
            config.listen,
            &config.database_url,
            &config.db,
            &config.common,
            migrations,
        )
        .await?;
        let nats = platform::nats::connect(&config.nats, "orders").await?;
        let wakeup = outbox::spawn_relay(&host, nats.clone(), "orders", &config.relay);
        let db = host.database().clone();
        let users = Consumer::new(
            db.clone(),
            nats.clone(),
            ConsumerSpec::new(replica::CONSUMER, "USERS"),
            UsersReplica,
        )
        .await
        .context("read the users replica's position")?;
        let products = Consumer::new(
            db,
            nats,
            ConsumerSpec::new(replica::CONSUMER, "PRODUCTS"),
            ProductsReplica,
        )
        .await
        .context("read the products replica's position")?;
        host.spawn(|cancel| users.run(cancel));
        host.spawn(|cancel| products.run(cancel));
        Ok(Self { host, wakeup })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let api = OrderApi::new(OrderStore::new(
            self.host.database().clone(),
            self.wakeup,
            References::Replica,
        ));
        let services = ServiceSet::new()
            .with(OrderServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        self.host
            .serve(services, contracts::FILE_DESCRIPTOR_SET, shutdown)
            .await
    }
}
