//! What a deployment that runs its own nats-server (compose.yaml's) needs from the lab: the
//! server's configuration, with a NATS user per service and JetStream writing every
//! acknowledged event to disk, and each identity's nkey seed in a directory of its own, so
//! each service's container can be given its own and no other.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// `lab nats-auth`'s settings.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsAuthArgs {
    /// Where to write `nats/nats-server.conf` and `<identity>/<identity>.nk` for every
    /// identity (users, products, orders, purchases-async, lab). Files already there are
    /// kept, so running this again (a restart) changes no key.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Where the server listens for clients.
    #[arg(long, default_value = "0.0.0.0:4222")]
    pub listen: String,
    /// JetStream's store, as the server's container sees it.
    #[arg(long, default_value = "/data")]
    pub store_dir: PathBuf,
    /// Where the server answers health checks (its monitoring port); none when absent.
    #[arg(long, value_name = "ADDR")]
    pub monitor: Option<String>,
    /// Give every seed file this owner (`uid:gid`): the user the services' image runs as,
    /// when this runs as root to write into fresh volumes.
    #[arg(long, value_name = "UID:GID")]
    pub owner: Option<String>,
}

/// What was written, or found already there.
#[derive(Debug)]
pub struct Written {
    pub config: PathBuf,
    pub seeds: Vec<PathBuf>,
    pub kept: bool,
}

/// Writes the configuration and the seeds, unless a configuration is already there.
pub fn nats_auth(args: &NatsAuthArgs) -> anyhow::Result<Written> {
    let config = args.out.join("nats").join("nats-server.conf");
    let roles = crate::up::nats_roles();
    let identities: Vec<String> = roles
        .iter()
        .map(|role| role.service.clone())
        .chain([bus::access::ADMIN.to_owned()])
        .collect();
    let seed_path = |identity: &str| args.out.join(identity).join(format!("{identity}.nk"));
    if config.is_file() {
        return Ok(Written {
            config,
            seeds: identities
                .iter()
                .map(|identity| seed_path(identity))
                .collect(),
            kept: true,
        });
    }
    let staging = tempfile::Builder::new()
        .prefix("nats-auth-")
        .tempdir()
        .context("cannot make a staging directory")?;
    let (authorization, credentials) =
        natsd::auth::provision(staging.path(), &roles, bus::access::ADMIN)
            .context("cannot make the NATS credentials")?;
    let mut text = natsd::render_config(
        &args.listen,
        &args.store_dir,
        natsd::SyncPolicy::Always,
        Some(&authorization),
    );
    if let Some(monitor) = &args.monitor {
        text.push_str(&format!(
            "http: {}\n",
            serde_json::Value::String(monitor.clone())
        ));
    }
    let owner = args.owner.as_deref().map(parse_owner).transpose()?;
    let mut seeds = Vec::new();
    for identity in &identities {
        let seed = credentials.seed(identity)?;
        let path = seed_path(identity);
        write_owned(&path, &seed, owner)?;
        seeds.push(path);
    }
    // The configuration last: its presence says the rest is complete. It stays with whoever
    // wrote it (the server reads it as root); only the services' seeds change hands.
    write_owned(&config, &text, None)?;
    Ok(Written {
        config,
        seeds,
        kept: false,
    })
}

fn parse_owner(raw: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = raw
        .split_once(':')
        .with_context(|| format!("--owner {raw:?} is not uid:gid"))?;
    Ok((
        uid.parse().with_context(|| format!("uid {uid:?}"))?,
        gid.parse().with_context(|| format!("gid {gid:?}"))?,
    ))
}

/// Writes a secret readable by its owner only, in a directory of its own.
fn write_owned(path: &Path, text: &str, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().context("a file in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    if let Some((uid, gid)) = owner {
        for target in [dir, path] {
            rustix::fs::chown(
                target,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .with_context(|| format!("cannot give {} to {uid}:{gid}", target.display()))?;
        }
    }
    Ok(())
}
