//! The service's settings, from flags or environment.

use std::net::SocketAddr;

use outbox::{EventSchemaArgs, RelayArgs};
use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;

/// The users service: owns user accounts.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "users", version, about)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "USERS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// sqlite:// path (created if absent) or postgres:// URL of this service's own database.
    #[arg(long, env = "USERS_DATABASE_URL", default_value = "sqlite://data/users.db", value_parser = platform::config::parse_database_url)]
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
