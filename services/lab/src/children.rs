//! One service as a child process of the lab: started with its output in a log file, in a
//! process group of its own (Ctrl-C reaches the lab, which then stops the services in order,
//! instead of every process at once), dying with the lab if the lab is killed, and stopped
//! gracefully (SIGTERM, then SIGKILL after a grace period).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long a service gets to drain and stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot open the log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name} ({binary})")]
    Spawn {
        name: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal {name}")]
    Signal {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    args: Vec<OsString>,
    /// Flags added after `args` from the next start on (an upgrade's new settings).
    extra: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    pub fn new(name: &str, binary: PathBuf, args: Vec<OsString>, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            binary,
            args,
            extra: Vec::new(),
            log,
            child: None,
        }
    }

    /// Flags to add at the next start, replacing any added before.
    pub fn set_extra_args(&mut self, extra: Vec<OsString>) {
        self.extra = extra;
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts the process (again, after a stop), appending to its log.
    pub fn start(&mut self) -> Result<(), ChildError> {
        let log_error = |source| ChildError::Log {
            path: self.log.clone(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_error)?;
        let log_too = log.try_clone().map_err(log_error)?;
        let mut command = Command::new(&self.binary);
        natsd::die_with_parent(&mut command);
        let child = command
            .args(&self.args)
            .args(&self.extra)
            // Only what the services need from the lab's environment: their settings all
            // come as flags.
            .env_clear()
            .envs(
                ["RUST_LOG", "RUST_BACKTRACE", "TZ"]
                    .into_iter()
                    .filter_map(|key| std::env::var_os(key).map(|value| (key, value))),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChildError::Spawn {
                name: self.name.clone(),
                binary: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Why the process is no longer running, if it is not.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("not started".to_owned()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(error)) => Some(error.to_string()),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub async fn stop(&mut self) -> Result<(), ChildError> {
        self.signal(rustix::process::Signal::TERM)?;
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.name, "did not stop within {STOP_GRACE:?}; killing it");
            self.kill().await?;
        }
        self.child = None;
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(&mut self) -> Result<(), ChildError> {
        self.signal(rustix::process::Signal::KILL)?;
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait().await;
        }
        self.child = None;
        Ok(())
    }

    fn signal(&mut self, signal: rustix::process::Signal) -> Result<(), ChildError> {
        let Some(pid) = self
            .pid()
            .and_then(|pid| rustix::process::Pid::from_raw(pid.cast_signed()))
        else {
            return Ok(());
        };
        match rustix::process::kill_process(pid, signal) {
            // Already gone: nothing to stop.
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(ChildError::Signal {
                name: self.name.clone(),
                source: errno.into(),
            }),
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
