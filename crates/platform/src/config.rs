//! Command-line and environment settings that every service takes in the same way.

use std::net::SocketAddr;
use std::time::Duration;

use crate::telemetry::{LogFormat, SamplingHandle, TelemetryArgs};

/// Settings shared by every service binary, flattened into each service's own `Config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log output: `pretty` for people, `json` for machines. Filter with RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Longest a request may run on the server, in milliseconds, whatever the caller's deadline.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = Self::DEFAULT_REQUEST_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// Most requests in the server at once across all connections, running or waiting for a
    /// worker thread (open connections count as requests); past it, requests are shed with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = Self::DEFAULT_MAX_CONCURRENT_REQUESTS, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_concurrent_requests: u64,

    /// Longest requests may go on waiting for a worker thread, in milliseconds: while the
    /// server's scheduling delay stays above it (for 100 ms), new requests are shed with
    /// RESOURCE_EXHAUSTED, so admitted ones keep a tighter latency under overload. Off unless
    /// given (it can shed on a stall of the machine rather than of the server; see the README).
    #[arg(long, env = "MAX_QUEUE_DELAY_MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub max_queue_delay_ms: Option<u64>,

    /// Serve the admin APIs on this loopback address: fault injection (fault.v1.FaultAdmin),
    /// and where the service has them, its consumers' dead letters and the re-emit of its
    /// state (ops.v1). Off unless given.
    #[arg(long, env = "ADMIN_LISTEN", alias = "fault-admin-listen", value_name = "ADDR", value_parser = parse_loopback_addr)]
    pub admin_listen: Option<SocketAddr>,

    /// Most connections open at once. Past it, a new connection takes the place of the
    /// oldest idle one (one that never sent a request first), or is refused when all are busy.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = Self::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// A connection that carries no request for this many milliseconds is closed.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_MS", default_value_t = Self::DEFAULT_CONNECTION_IDLE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub connection_idle_timeout_ms: u64,

    /// A connection older than this many milliseconds is asked to go away (HTTP/2 GOAWAY):
    /// its requests finish and the client opens a new one.
    #[arg(long, env = "MAX_CONNECTION_AGE_MS", default_value_t = Self::DEFAULT_MAX_CONNECTION_AGE_MS, value_parser = clap::value_parser!(u64).range(1_000..=604_800_000))]
    pub max_connection_age_ms: u64,

    /// Every connection is pinged this often (milliseconds); one whose peer does not answer
    /// within --keepalive-timeout-ms is closed.
    #[arg(long, env = "KEEPALIVE_INTERVAL_MS", default_value_t = Self::DEFAULT_KEEPALIVE_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub keepalive_interval_ms: u64,

    #[arg(long, env = "KEEPALIVE_TIMEOUT_MS", default_value_t = Self::DEFAULT_KEEPALIVE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub keepalive_timeout_ms: u64,

    /// Requests one connection may have open at once (HTTP/2 streams).
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = Self::DEFAULT_MAX_CONCURRENT_STREAMS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_streams: u32,

    /// Threads that run the service's tasks; one per CPU unless given.
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u64).range(1..=1_024))]
    pub worker_threads: Option<u64>,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// The handle of the server's fault layer: empty unless a test, a benchmark or the fault
    /// admin API sets faults through it.
    #[arg(skip)]
    pub faults: fault::Faults,

    /// The ratio of new traces kept, which the admin API may change (set by
    /// `process::run` once telemetry is installed).
    #[arg(skip)]
    pub sampling: SamplingHandle,
}

impl Default for CommonArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            request_timeout_ms: Self::DEFAULT_REQUEST_TIMEOUT_MS,
            max_concurrent_requests: Self::DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_queue_delay_ms: None,
            admin_listen: None,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            connection_idle_timeout_ms: Self::DEFAULT_CONNECTION_IDLE_TIMEOUT_MS,
            max_connection_age_ms: Self::DEFAULT_MAX_CONNECTION_AGE_MS,
            keepalive_interval_ms: Self::DEFAULT_KEEPALIVE_INTERVAL_MS,
            keepalive_timeout_ms: Self::DEFAULT_KEEPALIVE_TIMEOUT_MS,
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            worker_threads: None,
            telemetry: TelemetryArgs::default(),
            faults: fault::Faults::default(),
            sampling: SamplingHandle::default(),
        }
    }
}

impl CommonArgs {
    pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
    /// Enough for thousands of requests a second at millisecond latencies (Little's law). It
    /// bounds the requests in hand, and so their latency loosely; `--max-queue-delay-ms` bounds
    /// it tighter where the cores are the server's own.
    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u64 = 256;
    /// Far more than the system's own clients hold (a channel per client and service), and
    /// far below the open-file limit the process raises itself to.
    pub const DEFAULT_MAX_CONNECTIONS: u64 = 4_096;
    /// Long enough that a client's pooled connection survives the pauses between its
    /// calls; an abandoned or never-used one is gone within minutes (and sooner when
    /// the connection bound needs its place).
    pub const DEFAULT_CONNECTION_IDLE_TIMEOUT_MS: u64 = 300_000;
    pub const DEFAULT_MAX_CONNECTION_AGE_MS: u64 = 1_800_000;
    pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 30_000;
    pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
    /// The lab's load generator keeps up to 2,048 requests in flight on one channel; past
    /// the server's request bound (256) they are shed anyway, so this bounds the streams a
    /// connection can make the server track, not the work it does.
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 2_048;

    pub fn server_settings(&self) -> crate::server::ServerSettings {
        crate::server::ServerSettings {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_requests: usize::try_from(self.max_concurrent_requests)
                .unwrap_or(usize::MAX),
            max_queue_delay: self.max_queue_delay_ms.map(Duration::from_millis),
            shutdown_grace: Duration::from_secs(15),
            faults: self.faults.clone(),
            admin: self.admin_listen,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            idle_timeout: Duration::from_millis(self.connection_idle_timeout_ms),
            max_connection_age: Duration::from_millis(self.max_connection_age_ms),
            keepalive_interval: Duration::from_millis(self.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            max_concurrent_streams: self.max_concurrent_streams,
            metrics: self.telemetry.metrics_listen,
            sampling: self.sampling.clone(),
        }
    }
}

/// Settings of a service's own database, flattened into the `Config` of each service that
/// has one (the database URL stays with the service: its flag and variable carry its name).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Most database connections the service holds open.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = Self::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_max_connections: u32,
}

impl Default for DatabaseArgs {
    fn default() -> Self {
        Self {
            db_max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl DatabaseArgs {
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

    pub fn database_config(&self, url: &str) -> crate::db::DatabaseConfig {
        crate::db::DatabaseConfig {
            max_connections: self.db_max_connections,
            ..crate::db::DatabaseConfig::new(url)
        }
    }
}

/// The exit code for invalid configuration (EX_USAGE from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Checks a `--database-url` at parse time, so a typo is reported as a usage error naming
/// the flag rather than as a connection failure.
pub fn parse_database_url(raw: &str) -> Result<String, String> {
    crate::db::Backend::of_url(raw)
        .map(|_| raw.to_owned())
        .map_err(|error| error.to_string())
}

/// Checks `--admin-listen`: whoever reaches the admin APIs can break the service, so they
/// are only ever bound where nothing off this machine reaches them.
pub fn parse_loopback_addr(raw: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not an address such as 127.0.0.1:50151"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the admin APIs let whoever reaches them break the service, so they only listen on 127.0.0.1 or ::1"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_admin_api_only_listens_on_loopback() {
        assert_eq!(
            parse_loopback_addr("127.0.0.1:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(parse_loopback_addr("[::1]:50151").is_ok());
        let refused = parse_loopback_addr("0.0.0.0:50151").expect_err("refused");
        assert!(refused.contains("not a loopback address"), "{refused}");
        assert!(parse_loopback_addr("localhost").is_err());
    }
}
