//! Connecting to NATS the same way in every service: as the service's own NATS user (an nkey
//! seed file, a credentials file, or a user and password, by the NATS ecosystem's flags and
//! variables), receiving replies on inboxes of its own (`bus::inbox_prefix`, so its
//! permissions can be limited to them), with a connection that never blocks start-up (a
//! service starts and serves while NATS is down, and connects when it appears) and
//! reconnects forever, with its state changes and the server's refusals logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings for the NATS connection, flattened into each service's `Config`.
#[derive(Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream enabled), or several, comma-separated, for a cluster: the
    /// client fails over between them. The service starts without NATS and connects when it appears.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// File holding this service's nkey seed (`SU...`), as the nats CLI's --nkey takes it:
    /// the service proves who it is by signing the server's nonce; the seed never leaves it.
    #[arg(long, env = "NATS_NKEY", value_name = "FILE", conflicts_with_all = ["nats_creds", "nats_user"])]
    pub nats_nkey: Option<PathBuf>,

    /// NATS credentials file (a user JWT and its nkey seed, as `nsc` writes them), for a
    /// server in operator mode.
    #[arg(
        long,
        env = "NATS_CREDS",
        value_name = "FILE",
        conflicts_with = "nats_user"
    )]
    pub nats_creds: Option<PathBuf>,

    /// User name for a server that authenticates with passwords; the password comes from
    /// NATS_PASSWORD (an environment variable, so it stays out of the process list).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,

    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_creds", &self.nats_creds)
            .field("nats_user", &self.nats_user)
            .field(
                "nats_password",
                &self.nats_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why the connection could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("cannot read the NATS credentials in {path}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] async_nats::ConnectError),
}

impl NatsArgs {
    /// A server with no authentication (tests of mechanisms unrelated to access).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            ..Self::default()
        }
    }

    /// The same server, as the user whose nkey seed is in `seed_file`.
    #[must_use]
    pub fn with_nkey(mut self, seed_file: impl Into<PathBuf>) -> Self {
        self.nats_nkey = Some(seed_file.into());
        self
    }

    /// The servers of `--nats-url`, one per comma-separated entry.
    pub fn urls(&self) -> Vec<&str> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// Connection options carrying these credentials.
    async fn credentials(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, NatsConnectError> {
        let unreadable = |path: &Path| {
            let path = path.to_owned();
            move |source| NatsConnectError::Credentials { path, source }
        };
        if let Some(path) = &self.nats_nkey {
            let seed = std::fs::read_to_string(path).map_err(unreadable(path))?;
            return Ok(options.nkey(seed.trim().to_owned()));
        }
        if let Some(path) = &self.nats_creds {
            return options
                .credentials_file(path)
                .await
                .map_err(unreadable(path));
        }
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            return Ok(options.user_and_password(user.clone(), password.clone()));
        }
        Ok(options)
    }
}

/// Opens the connection named after the service, as its user. Returns at once even when the
/// server is unreachable: the client keeps retrying in the background, and publishes or
/// fetches made meanwhile fail or wait within their own timeouts. Unreadable credentials
/// fail at once: no retry would fix them.
pub async fn connect(
    args: &NatsArgs,
    service: &'static str,
) -> Result<async_nats::Client, NatsConnectError> {
    let options = async_nats::ConnectOptions::new()
        .name(service)
        .custom_inbox_prefix(bus::inbox_prefix(service))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // Reconnect quickly at first, then at most every 250 ms, so an outage ends for the
        // service soon after it ends for NATS. With a cap of 2 s, a service could stay away
        // for most of 2 s after NATS was back, and the bus way, which needs both the asker
        // and the owner reconnected, failed a third of its calls for that long after a
        // 5-second outage (`lab chaos nats-outage`). An attempt against a server that is down
        // is one refused connection: four a second per service cost nothing.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64.saturating_mul(1 << attempts.min(6))).min(250))
        })
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!(service, "connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!(service, "disconnected from NATS")
                }
                // Refused credentials and permission violations: something an operator must
                // fix, never a passing condition.
                async_nats::Event::ServerError(error) => {
                    tracing::error!(service, %error, "NATS refused something this service did")
                }
                other => tracing::debug!(service, event = %other, "NATS event"),
            }
        });
    let options = args.credentials(options).await?;
    Ok(options.connect(args.urls()).await?)
}
