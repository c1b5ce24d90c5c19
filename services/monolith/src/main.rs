use std::process::ExitCode;

use monolith::{Application, Config};

fn main() -> ExitCode {
    platform::process::run("monolith", |config: Config| async move {
        let app = Application::build(config).await?;
        app.run_until_stopped(platform::server::shutdown_signal())
            .await
    })
}
