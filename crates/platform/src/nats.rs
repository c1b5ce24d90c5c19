//! Connecting to NATS the same way in every service: a connection that never blocks start-up
//! (a service starts and serves while NATS is down, and connects when it appears) and
//! reconnects forever, with its state changes logged.

use std::time::Duration;

/// Settings for the NATS connection, flattened into each service's `Config`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream enabled), or several, comma-separated, for a cluster: the
    /// client fails over between them. The service starts without NATS and connects when it appears.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

impl NatsArgs {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
        }
    }

    /// The servers of `--nats-url`, one per comma-separated entry.
    pub fn urls(&self) -> Vec<&str> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }
}

/// Opens the connection named after the service. Returns at once even when the server is
/// unreachable: the client keeps retrying in the background, and publishes or fetches made
/// meanwhile fail or wait within their own timeouts.
pub async fn connect(
    args: &NatsArgs,
    service: &'static str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(service)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // Reconnect quickly at first, then at most every 2 s, so an outage ends for the
        // service soon after it ends for NATS.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64.saturating_mul(1 << attempts.min(6))).min(2_000))
        })
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!(service, "connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!(service, "disconnected from NATS")
                }
                other => tracing::debug!(service, event = %other, "NATS event"),
            }
        })
        .connect(args.urls())
        .await
}
