//! The service's settings, from flags or environment.

use std::net::SocketAddr;

use platform::config::CommonArgs;
use platform::nats::NatsArgs;
use purchases::fanout::Order;

/// purchases-bus: Service D by asking users, orders and products on the NATS bus at request time.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "purchases-bus", version, about)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "PURCHASES_BUS_LISTEN", default_value = "127.0.0.1:50064")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// `parallel`: user and orders at once, then one batch for the products; `sequential`:
    /// the three questions one after another.
    #[arg(long, env = "FANOUT", value_enum, default_value_t = Order::Parallel)]
    pub fanout: Order,

    /// Longest a single question may wait for its answer, in milliseconds (the caller's
    /// deadline, when shorter, wins).
    #[arg(long, env = "CALL_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub call_timeout_ms: u64,

    /// Most questions in flight to each owner; past it, requests fail at once with UNAVAILABLE.
    #[arg(long, env = "MAX_CALLS_PER_DEPENDENCY", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_calls_per_dependency: u64,

    #[command(flatten)]
    pub common: CommonArgs,
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
