//! The service's settings, from flags or environment.

use std::net::SocketAddr;

use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;

/// purchases-async: Service D from an event-fed projection.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "purchases-async", version, about)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(
        long,
        env = "PURCHASES_ASYNC_LISTEN",
        default_value = "127.0.0.1:50062"
    )]
    pub listen: SocketAddr,

    /// sqlite:// path (created if absent) or postgres:// URL of the projection's own database.
    #[arg(long, env = "PURCHASES_ASYNC_DATABASE_URL", default_value = "sqlite://data/purchases-async.db", value_parser = platform::config::parse_database_url)]
    pub database_url: String,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Empty the projection and replay the USERS, PRODUCTS and ORDERS streams from their
    /// start before serving (the durable consumers are recreated).
    #[arg(long, env = "REBUILD", default_value_t = false)]
    pub rebuild: bool,

    /// Name of the durable consumers on USERS, PRODUCTS and ORDERS. Two projections with
    /// different names follow the streams independently (a second copy, a blue/green rebuild);
    /// two processes with the same name would split the events between them.
    #[arg(long, env = "PURCHASES_CONSUMER", default_value = crate::projection::CONSUMER, value_parser = parse_consumer_name)]
    pub consumer_name: String,

    /// Where reads are served from: `memory`, a copy of the projection kept in step with it
    /// after every commit (fast), or `database`, the projection's tables through SQL.
    #[arg(long, env = "READ_FROM", value_enum, default_value_t = ReadFrom::Memory)]
    pub read_from: ReadFrom,

    /// The newest event schema this projection reads: 2 uses the fields schema 2 adds (given
    /// and family name, currency); 1 reads events as a purchases-async built before them
    /// would, ignoring those fields, which is how an older reader meets newer events.
    #[arg(long, env = "READER_SCHEMA", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub reader_schema: u32,

    /// Most reads held at once waiting for an order (`wait_for_order_id`); past it such a
    /// read is refused at once with RESOURCE_EXHAUSTED, unless the order is already there.
    /// Waits hold a request slot for up to 10 s, so without this cap reads waiting for
    /// orders that never come could take every slot the server admits. Default: a quarter
    /// of `--max-concurrent-requests`, at most 64.
    #[arg(long, env = "MAX_WAITING_READS", value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_waiting_reads: Option<u64>,

    #[command(flatten)]
    pub db: DatabaseArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// JetStream consumer names: letters, digits, `-` and `_`, at most 64.
fn parse_consumer_name(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?} is not a consumer name: use 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

impl Config {
    /// The cap on waiting reads: the one given, which must leave room for other requests,
    /// or the default.
    pub fn waiting_reads(&self) -> Result<usize, String> {
        let slots = self.common.max_concurrent_requests;
        let cap = match self.max_waiting_reads {
            Some(cap) if cap >= slots => {
                return Err(format!(
                    "--max-waiting-reads ({cap}) must be below --max-concurrent-requests ({slots}), or waiting reads could take every request slot"
                ));
            }
            Some(cap) => cap,
            None => (slots / 4).clamp(1, 64),
        };
        Ok(usize::try_from(cap).unwrap_or(usize::MAX))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadFrom {
    Memory,
    Database,
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Config;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("purchases-async").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn waiting_reads_leave_room_for_other_requests() {
        assert_eq!(config(&[]).waiting_reads(), Ok(64), "a quarter of 256");
        assert_eq!(
            config(&["--max-concurrent-requests", "40"]).waiting_reads(),
            Ok(10)
        );
        assert_eq!(
            config(&["--max-concurrent-requests", "2"]).waiting_reads(),
            Ok(1)
        );
        assert_eq!(
            config(&["--max-waiting-reads", "200"]).waiting_reads(),
            Ok(200)
        );
        let error = config(&["--max-waiting-reads", "256"])
            .waiting_reads()
            .expect_err("as many as the server admits");
        assert!(error.contains("--max-concurrent-requests (256)"), "{error}");
    }
}
