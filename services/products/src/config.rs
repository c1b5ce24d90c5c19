//! The service's settings, from flags or environment.

use std::net::SocketAddr;

use outbox::{EventSchemaArgs, RelayArgs};
use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;

/// The products service: owns the product catalogue.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "products", version, about)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "PRODUCTS_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// sqlite:// path (created if absent) or postgres:// URL of this service's own database.
    #[arg(long, env = "PRODUCTS_DATABASE_URL", default_value = "sqlite://data/products.db", value_parser = platform::config::parse_database_url)]
    pub database_url: String,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub relay: RelayArgs,

    #[command(flatten)]
    pub events: EventSchemaArgs,

    #[command(flatten)]
    pub db: DatabaseArgs,

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
