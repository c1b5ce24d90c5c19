use std::path::{Path, PathBuf};

/// The repository root, where provisioned tools are kept (under target/tools).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the testkit crate lives two levels below the workspace root")
}

/// The grpcurl binary (found, or provisioned at its pinned version).
pub fn grpcurl() -> PathBuf {
    natsd::grpcurl().unwrap_or_else(|error| panic!("{}", platform::status::error_chain(&error)))
}

/// Prometheus's promtool (found, or unpacked from Debian's package).
pub fn promtool() -> PathBuf {
    natsd::promtool().unwrap_or_else(|error| panic!("{}", platform::status::error_chain(&error)))
}

/// Scrapes `/metrics` at `addr` as Prometheus does, and returns the exposition after checking
/// the answer is a 200 in the Prometheus text format.
pub async fn scrape_metrics(addr: impl tokio::net::ToSocketAddrs) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .expect("ask for the metrics");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// Checks a metrics exposition with `promtool check metrics`, the Prometheus project's own
/// linter, and fails the test with what it said when it objects.
pub fn check_exposition(exposition: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("promtool's input")
        .write_all(exposition.as_bytes())
        .expect("write the exposition");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
