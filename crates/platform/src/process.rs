//! The life of a service process: parse configuration, start telemetry, run, report.

use std::future::Future;
use std::process::ExitCode;

use crate::config::{CommonArgs, EXIT_USAGE};

/// Runs a service binary: parses `C` from flags and environment (exiting with 64 and one
/// line naming the bad setting when it is invalid), starts a multi-threaded runtime, installs
/// telemetry (logs, and traces when an OTLP endpoint is given) and drives `run` on it. Errors
/// are logged once, with their cause chain; spans still waiting are sent before the exit.
pub fn run<C, F, Fut>(service: &'static str, run: F) -> ExitCode
where
    C: clap::Parser + AsRef<CommonArgs> + AsMut<CommonArgs>,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut config = match C::try_parse() {
        Ok(config) => config,
        Err(error) if !error.use_stderr() => {
            // --help and --version land here: print them and succeed.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(EXIT_USAGE).unwrap_or(2));
        }
    };
    // Always set, so tokio never reads TOKIO_WORKER_THREADS, which it panics on when invalid.
    let workers = config.as_ref().worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        |threads| usize::try_from(threads).unwrap_or(1),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        // The exporter's gRPC channel belongs to this runtime.
        let _entered = runtime.enter();
        let common = config.as_ref();
        crate::telemetry::init(service, common.log_format, &common.telemetry)
    };
    config.as_mut().sampling = telemetry.sampling();
    raise_open_files_limit();
    let outcome = runtime.block_on(run(config));
    let code = match outcome {
        Ok(()) => {
            tracing::info!(service, "stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(service, error = format!("{error:#}"), "failed");
            ExitCode::FAILURE
        }
    };
    {
        let _entered = runtime.enter();
        telemetry.shutdown();
    }
    code
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does at start: every
/// connection is a file, and the soft default (often 1,024) would let a burst of idle sockets
/// exhaust it below the server's own connection bound. A failure is logged, not fatal.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        ..limit
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(%error, "cannot raise the open-files limit; connections may run out of descriptors");
    }
}
