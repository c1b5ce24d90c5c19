//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use platform::server::GrpcServer;
use purchases::Mode;
use purchases::fanout::FanOut;

use crate::config::Config;
use crate::owners::BusOwners;

/// The name purchases-bus goes by on NATS: its user, its connection and its inboxes.
pub const NATS_IDENTITY: &str = "purchases-bus";

/// purchases-bus with its port bound and its NATS connection under way.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    source: FanOut<BusOwners>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Returns at once while NATS is down: purchases-bus starts, and says what is missing.
        let nats = platform::nats::connect(&config.nats, NATS_IDENTITY).await?;
        let limit = usize::try_from(config.max_calls_per_dependency).unwrap_or(usize::MAX);
        let source = FanOut::new(
            BusOwners::new(nats, limit),
            config.fanout,
            Duration::from_millis(config.call_timeout_ms),
        );
        let server = GrpcServer::bind(config.listen, config.common.server_settings())
            .with_context(|| format!("bind {}", config.listen))?;
        tracing::info!(
            service = "purchases-bus",
            addr = %server.local_addr(),
            fanout = ?config.fanout,
            nats = %config.nats.nats_url,
            "listening"
        );
        Ok(Self { server, source })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        purchases::serve_without_state(self.server, self.source, Mode::Bus, shutdown)
            .await
            .context("serve purchases-bus over gRPC")
    }
}
