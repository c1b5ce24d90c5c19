//! The `monolith` binary as an operator (and the lab, which starts it) meets it: its help and
//! its refusal of bad configuration. Being an integration test also makes `cargo test` build
//! the binary, which the lab's end-to-end tests start.

use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_monolith");

#[tokio::test]
async fn help_names_its_address_and_database_and_no_event_bus() {
    let output = Command::new(BINARY)
        .arg("--help")
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--listen",
        "127.0.0.1:50060",
        "--database-url",
        "MONOLITH_DATABASE_URL",
    ] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
    assert!(
        !help.contains("--nats-url"),
        "the monolith shares data through its one database, not NATS:\n{help}"
    );
}

#[tokio::test]
async fn a_database_url_of_another_kind_exits_64_naming_the_flag() {
    let output = Command::new(BINARY)
        .args(["--database-url", "mysql://127.0.0.1/monolith"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}
