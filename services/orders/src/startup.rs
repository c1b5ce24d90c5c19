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
    /// Replay the replica consumers' dead letters, for the admin API.
    replayers: Vec<std::sync::Arc<dyn consumer::Replayer>>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let migrations = [
            crate::migrations(),
            outbox::migrations(),
            consumer::migrations(),
        ];
        let mut host = ServiceHost::build(
            "orders",
            config.listen,
            &config.database_url,
            &config.db,
            &config.common,
            migrations,
        )
        .await?;
        let nats = platform::nats::connect(&config.nats, "orders").await?;
        host.answer_on_bus(nats.clone());
        let wakeup = outbox::spawn_relay(&host, nats.clone(), "orders", &config.relay);
        let db = host.database().clone();
        let users = Consumer::new(
            db.clone(),
            nats.clone(),
            ConsumerSpec::new(replica::CONSUMER, bus::USERS),
            UsersReplica,
        )
        .await
        .context("read the users replica's position")?;
        let products = Consumer::new(
            db,
            nats,
            ConsumerSpec::new(replica::CONSUMER, bus::PRODUCTS),
            ProductsReplica,
        )
        .await
        .context("read the products replica's position")?;
        let replayers = vec![users.replayer(), products.replayer()];
        host.spawn(|cancel| users.run(cancel));
        host.spawn(|cancel| products.run(cancel));
        Ok(Self {
            host,
            wakeup,
            replayers,
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
        let store = OrderStore::new(db.clone(), self.wakeup.clone(), References::Replica);
        let admin = ServiceSet::new()
            .with(
                outbox::admin::OutboxApi::new(db.clone(), self.wakeup, store.clone()).into_server(),
            )
            .with(consumer::admin::DeadLetterApi::new(db, self.replayers).into_server());
        let api = OrderApi::new(store);
        let services = ServiceSet::new()
            .with(OrderServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        self.host
            .serve(services, admin, contracts::FILE_DESCRIPTOR_SET, shutdown)
            .await
    }
}
