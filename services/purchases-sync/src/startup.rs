//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use platform::server::GrpcServer;
use purchases::Mode;
use purchases::fanout::FanOut;

use crate::config::Config;
use crate::owners::{Dependencies, GrpcOwners};

/// purchases-sync with its port bound and its dependency channels ready to connect.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    source: FanOut<GrpcOwners>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let owners = GrpcOwners::new(&Dependencies {
            users_url: config.users_url.clone(),
            orders_url: config.orders_url.clone(),
            products_url: config.products_url.clone(),
            max_calls_per_dependency: usize::try_from(config.max_calls_per_dependency)
                .unwrap_or(usize::MAX),
            hedge_after: config.hedge_after_ms.map(Duration::from_millis),
        })
        .context("set up the dependency channels")?;
        let source = FanOut::new(
            owners,
            config.fanout,
            Duration::from_millis(config.call_timeout_ms),
        );
        let server = GrpcServer::bind(config.listen, config.common.server_settings())
            .with_context(|| format!("bind {}", config.listen))?;
        tracing::info!(
            service = "purchases-sync",
            addr = %server.local_addr(),
            fanout = ?config.fanout,
            hedge_after_ms = ?config.hedge_after_ms,
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
        purchases::serve_without_state(self.server, self.source, Mode::Sync, shutdown)
            .await
            .context("serve purchases-sync over gRPC")
    }
}
