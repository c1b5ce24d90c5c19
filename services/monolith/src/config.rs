//! The service's settings, from flags or environment.

use std::net::SocketAddr;

use platform::config::{CommonArgs, DatabaseArgs};

/// The monolith: users, products, orders and purchases in one process and one database.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "monolith", version, about)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "MONOLITH_LISTEN", default_value = "127.0.0.1:50060")]
    pub listen: SocketAddr,

    /// sqlite:// path (created if absent) or postgres:// URL of the one database.
    #[arg(long, env = "MONOLITH_DATABASE_URL", default_value = "sqlite://data/monolith.db", value_parser = platform::config::parse_database_url)]
    pub database_url: String,

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
