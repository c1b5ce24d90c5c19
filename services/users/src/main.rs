use std::process::ExitCode;

use users::{Application, Config};

fn main() -> ExitCode {
    platform::process::run("users", |config: Config| async move {
        let app = Application::build(config).await?;
        app.run_until_stopped(platform::server::shutdown_signal())
            .await
    })
}
