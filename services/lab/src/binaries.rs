//! Finding the service binaries the lab starts: beside the lab's own executable, where cargo
//! puts every binary of the workspace. When the lab runs through cargo (`cargo run -p lab`
//! builds only the lab), the missing ones are built first with the same profile, so the
//! README's first command works on a fresh clone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::topology::Service;

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("cannot tell where the lab's executable is")]
    CurrentExe(#[source] std::io::Error),
    #[error(
        "{} not found beside the lab in {dir}: build them with `cargo build --release --workspace --bins` (or run the lab with `cargo run --release -p lab -- ...`, which builds them)",
        missing.join(", ")
    )]
    Missing { dir: PathBuf, missing: Vec<String> },
    #[error("`{command}` failed ({status}); its output above says why")]
    Build { command: String, status: String },
    #[error("cannot run cargo ({cargo})")]
    Cargo {
        cargo: String,
        #[source]
        source: std::io::Error,
    },
}

/// The path of each service's binary.
pub async fn locate() -> Result<BTreeMap<Service, PathBuf>, BinariesError> {
    let exe = std::env::current_exe().map_err(BinariesError::CurrentExe)?;
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let paths = |dir: &Path| -> BTreeMap<Service, PathBuf> {
        Service::ALL
            .into_iter()
            .map(|service| (service, dir.join(service.binary())))
            .collect()
    };
    let missing = |found: &BTreeMap<Service, PathBuf>| -> Vec<String> {
        found
            .iter()
            .filter(|(_, path)| !path.is_file())
            .map(|(service, _)| service.binary().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let found = paths(&dir);
    let absent = missing(&found);
    if absent.is_empty() {
        return Ok(found);
    }
    // Cargo sets CARGO for the programs it runs; without it, building is the user's call.
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Err(BinariesError::Missing {
            dir,
            missing: absent,
        });
    };
    build(&cargo, &dir, &absent).await?;
    let found = paths(&dir);
    let absent = missing(&found);
    if absent.is_empty() {
        Ok(found)
    } else {
        Err(BinariesError::Missing {
            dir,
            missing: absent,
        })
    }
}

async fn build(
    cargo: &std::ffi::OsStr,
    dir: &Path,
    missing: &[String],
) -> Result<(), BinariesError> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut command = tokio::process::Command::new(cargo);
    command.arg("build").arg("--manifest-path").arg(&manifest);
    // target/<profile>/lab: the lab's own profile, so the binaries land beside it.
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("release") => {
            command.arg("--release");
        }
        Some("debug") | None => {}
        Some(profile) => {
            command.arg("--profile").arg(profile);
        }
    }
    let packages: std::collections::BTreeSet<&str> =
        Service::ALL.into_iter().map(Service::binary).collect();
    for package in packages {
        command.arg("-p").arg(package);
    }
    let shown = format!("cargo build ({} missing)", missing.join(", "));
    eprintln!("lab: building the services first: {}", missing.join(", "));
    let status = command
        .status()
        .await
        .map_err(|source| BinariesError::Cargo {
            cargo: cargo.to_string_lossy().into_owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BinariesError::Build {
            command: shown,
            status: status.to_string(),
        })
    }
}
