//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use contracts::purchases::v1::purchase_service_server::PurchaseServiceServer;
use platform::server::{GrpcServer, MAX_REQUEST_BYTES, ServiceSet};
use purchases::{Mode, PurchaseApi};

use crate::config::Config;
use crate::fanout::{Dependencies, FanoutSource};

/// purchases-sync with its port bound and its dependency channels ready to connect.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    source: FanoutSource,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let source = FanoutSource::new(&Dependencies {
            users_url: config.users_url.clone(),
            orders_url: config.orders_url.clone(),
            products_url: config.products_url.clone(),
            fanout: config.fanout,
            call_timeout: Duration::from_millis(config.call_timeout_ms),
            max_calls_per_dependency: usize::try_from(config.max_calls_per_dependency)
                .unwrap_or(usize::MAX),
        })
        .context("set up the dependency channels")?;
        let server = GrpcServer::bind(config.listen, config.common.server_settings())
            .with_context(|| format!("bind {}", config.listen))?;
        tracing::info!(
            service = "purchases-sync",
            addr = %server.local_addr(),
            fanout = ?config.fanout,
            users = %config.users_url,
            orders = %config.orders_url,
            products = %config.products_url,
            "listening"
        );
        Ok(Self { server, source })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let api = PurchaseApi::new(self.source, Mode::Sync);
        let services = ServiceSet::new()
            .with(PurchaseServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        self.server
            .serve(
                services,
                ServiceSet::new(),
                contracts::FILE_DESCRIPTOR_SET,
                shutdown,
            )
            .await
            .context("serve purchases-sync over gRPC")
    }
}
