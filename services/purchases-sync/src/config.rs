//! The service's settings, from flags or environment.

use std::net::SocketAddr;

use platform::config::CommonArgs;
use purchases::fanout::Order;

/// purchases-sync: Service D by calling users, orders and products at request time.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "purchases-sync", version, about)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "PURCHASES_SYNC_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,

    /// The users service.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:50051", value_parser = parse_url)]
    pub users_url: String,

    /// The orders service.
    #[arg(long, env = "ORDERS_URL", default_value = "http://127.0.0.1:50053", value_parser = parse_url)]
    pub orders_url: String,

    /// The products service.
    #[arg(long, env = "PRODUCTS_URL", default_value = "http://127.0.0.1:50052", value_parser = parse_url)]
    pub products_url: String,

    /// `parallel`: user and orders at once, then one batch for the products; `sequential`:
    /// the three calls one after another; `per-item`: user and orders at once, then one
    /// GetProduct per product of the page, concurrently (the naive wide fan-out).
    #[arg(long, env = "FANOUT", value_enum, default_value_t = Order::Parallel)]
    pub fanout: Order,

    /// Longest a single call to a dependency may take, in milliseconds (the caller's
    /// deadline, when shorter, wins).
    #[arg(long, env = "CALL_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub call_timeout_ms: u64,

    /// Sends a call to a dependency again when it has not answered within this many
    /// milliseconds, and takes whichever answer comes first (a hedged request); off when
    /// absent. Each hedge is one more call the dependency serves.
    #[arg(long, env = "HEDGE_AFTER_MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub hedge_after_ms: Option<u64>,

    /// Most calls in flight to each dependency; past it, requests fail at once with UNAVAILABLE.
    #[arg(long, env = "MAX_CALLS_PER_DEPENDENCY", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_calls_per_dependency: u64,

    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_url(raw: &str) -> Result<String, String> {
    match raw.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(raw.to_owned())
        }
        _ => Err(format!(
            "{raw:?} is not an http:// or https:// URL with a host, e.g. http://127.0.0.1:50051"
        )),
    }
}

impl AsRef<CommonArgs> for Config {
    fn as_ref(&self) -> &CommonArgs {
        &self.common
    }
}

impl AsMut<CommonArgs> for Config {
    fn as_mut(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}
