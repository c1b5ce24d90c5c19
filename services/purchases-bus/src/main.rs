use std::process::ExitCode;

use purchases_bus::{Application, Config};

fn main() -> ExitCode {
    platform::process::run("purchases-bus", |config: Config| async move {
        let app = Application::build(config).await?;
        app.run_until_stopped(platform::server::shutdown_signal())
            .await
    })
}
