//! The JetStream stream an owning service publishes to, provisioned idempotently at start.

use std::time::Duration;

use async_nats::jetstream;

/// Limits of a producer's stream, from flags or environment.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Oldest event the stream keeps, in hours (0 keeps events until the byte limit).
    #[arg(long, env = "STREAM_MAX_AGE_HOURS", default_value_t = 24 * 7)]
    pub stream_max_age_hours: u64,
    /// Most bytes the stream keeps before discarding its oldest events (-1 for no limit).
    #[arg(long, env = "STREAM_MAX_BYTES", default_value_t = 1 << 30, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,
    /// Copies of each event kept by a JetStream cluster (1 on a single server).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub stream_replicas: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        Self {
            stream_max_age_hours: 24 * 7,
            stream_max_bytes: 1 << 30,
            stream_replicas: 1,
        }
    }
}

/// A producer's stream: named after the service in capitals (USERS), capturing every subject
/// under the service's name (`users.>`).
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop re-published events. It must exceed
    /// the longest time the relay may take to learn whether a publish landed.
    pub duplicate_window: Duration,
}

/// How long JetStream remembers event ids for deduplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

impl StreamSpec {
    pub fn for_producer(service: &str, args: &StreamArgs) -> Self {
        let stream = bus::Stream::of_producer(service);
        Self {
            subjects: vec![stream.subjects()],
            name: stream.name,
            max_age: Duration::from_secs(args.stream_max_age_hours * 3600),
            max_bytes: args.stream_max_bytes,
            replicas: usize::try_from(args.stream_replicas).unwrap_or(1),
            duplicate_window: DUPLICATE_WINDOW,
        }
    }

    pub fn config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: jetstream::stream::StorageType::File,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        }
    }

    /// Creates the stream, or brings an existing one to this configuration, and says which
    /// stream it is.
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
    ) -> Result<StreamIdentity, jetstream::context::CreateStreamError> {
        let info = js.create_or_update_stream(self.config()).await?;
        Ok(StreamIdentity {
            created: created_nanos(&info),
            last_sequence: info.state.last_sequence,
        })
    }
}

/// Which incarnation of a stream a client deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIdentity {
    /// When JetStream created it, in nanoseconds since the epoch: a stream deleted and made
    /// again under the same name has another.
    pub created: i64,
    /// The sequence of the last message it ever stored (0: it never stored one).
    pub last_sequence: u64,
}

/// When JetStream created the stream, in nanoseconds since the epoch (0 if out of range).
pub fn created_nanos(info: &jetstream::stream::Info) -> i64 {
    i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0)
}

/// The stream a service publishes to: its name in capitals.
pub fn stream_name(service: &str) -> String {
    bus::Stream::of_producer(service).name
}
