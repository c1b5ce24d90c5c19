//! The `purchases-sync` binary as an operator meets it: its help and its refusal of bad
//! configuration.

use testkit::cli::{assert_mentions, help_text, usage_error};

const BINARY: &str = env!("CARGO_BIN_EXE_purchases-sync");

#[tokio::test]
async fn help_names_every_dependency_flag_and_no_database() {
    let help = help_text(BINARY).await;
    assert_mentions(
        &help,
        &[
            "--users-url",
            "USERS_URL",
            "--orders-url",
            "--products-url",
            "--fanout",
            "sequential",
            "--call-timeout-ms",
            "--max-calls-per-dependency",
            "127.0.0.1:50061",
        ],
    );
    assert!(
        !help.contains("database"),
        "purchases-sync has no database:\n{help}"
    );
}

#[tokio::test]
async fn a_dependency_url_without_a_scheme_exits_64_naming_the_flag() {
    let stderr = usage_error(BINARY, &["--users-url", "127.0.0.1:50051"]).await;
    assert!(stderr.contains("--users-url"), "{stderr}");
    assert!(stderr.contains("http://"), "{stderr}");
}
