//! The harness every integration test uses: a fresh database per test (an SQLite file in a
//! temporary directory, or a new database on the local PostgreSQL), a server running in the
//! test's runtime on port 0 that stops when dropped, and real external tools (grpcurl) found
//! or provisioned without manual steps. A missing tool fails the test with instructions; it
//! never skips it.

pub mod cli;
mod database;
mod nats;
mod outbox;
mod proxy;
pub mod raw;
mod server;
mod tools;

pub use database::{TestDatabase, postgres_admin_url};
pub use nats::{
    SecureNats, TEST_PROJECTIONS, UNREACHABLE_NATS, connect, publish_event, publish_raw,
    start_nats, stream_events,
};
pub use outbox::{outbox_events, payload};
pub use platform::db::Backend;
pub use proxy::DelayProxy;
pub use server::RunningServer;
pub use tools::{check_exposition, grpcurl, promtool, run_grpcurl, scrape_metrics, workspace_root};

/// Turns on log output for a test run when `TEST_LOG` is set; tests stay silent otherwise.
pub fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Asserts that a call failed with `code` and a message that mentions `needle`, and returns
/// the status for further checks.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> tonic::Status {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
    status
}

/// Declares each named `async fn(Backend)` test once per backend, as
/// `sqlite::<name>` and `postgres::<name>`, so one body proves both storage paths.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}
