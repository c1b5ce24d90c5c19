//! The `purchases-sync` binary as an operator meets it: its help and its refusal of bad
//! configuration.

use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_purchases-sync");

#[tokio::test]
async fn help_names_every_dependency_flag_and_no_database() {
    let output = Command::new(BINARY)
        .arg("--help")
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--users-url",
        "USERS_URL",
        "--orders-url",
        "--products-url",
        "--fanout",
        "sequential",
        "--call-timeout-ms",
        "--max-calls-per-dependency",
        "127.0.0.1:50061",
    ] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
    assert!(
        !help.contains("database"),
        "purchases-sync has no database:\n{help}"
    );
}

#[tokio::test]
async fn a_dependency_url_without_a_scheme_exits_64_naming_the_flag() {
    let output = Command::new(BINARY)
        .args(["--users-url", "127.0.0.1:50051"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--users-url"), "{stderr}");
    assert!(stderr.contains("http://"), "{stderr}");
}
