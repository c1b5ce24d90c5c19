//! The `monolith` binary as an operator (and the lab, which starts it) meets it: its help and
//! its refusal of bad configuration. Being an integration test also makes `cargo test` build
//! the binary, which the lab's end-to-end tests start.

use testkit::cli::{assert_mentions, help_text, usage_error};

const BINARY: &str = env!("CARGO_BIN_EXE_monolith");

#[tokio::test]
async fn help_names_its_address_and_database_and_no_event_bus() {
    let help = help_text(BINARY).await;
    assert_mentions(
        &help,
        &[
            "--listen",
            "127.0.0.1:50060",
            "--database-url",
            "MONOLITH_DATABASE_URL",
        ],
    );
    assert!(
        !help.contains("--nats-url"),
        "the monolith shares data through its one database, not NATS:\n{help}"
    );
}

#[tokio::test]
async fn a_database_url_of_another_kind_exits_64_naming_the_flag() {
    let stderr = usage_error(BINARY, &["--database-url", "mysql://127.0.0.1/monolith"]).await;
    assert!(stderr.contains("--database-url"), "{stderr}");
}
