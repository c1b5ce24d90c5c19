//! Authorization for the servers this crate starts: every client is a NATS user identified
//! by an nkey (an Ed25519 key pair whose seed never leaves the client: the server holds only
//! the public key and checks a signature of a nonce it sends), with the permissions its
//! role allows, and cluster routes protected by a password of their own. No anonymous
//! client is admitted.
//!
//! [`provision`] makes the keys and writes each identity's seed to a file of its own (the
//! NATS convention for `--nkey`), readable by the owner only, beside the server's
//! configuration. Nothing secret is ever a literal in code: every run makes new keys.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use bus::access::{Permissions, Role};

/// A NATS user the server admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// Who it is, for people: the service name.
    pub name: String,
    /// Its public nkey (`U...`).
    pub nkey: String,
    /// What it may do; unrestricted when `None` (the lab's administrative identity).
    pub permissions: Option<Permissions>,
}

/// The `authorization` a server runs with, and the password its cluster routes use.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization {
    pub users: Vec<NatsUser>,
    route_password: String,
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorization")
            .field("users", &self.users)
            .field("route_password", &"<redacted>")
            .finish()
    }
}

/// The seed files of the identities [`provision`] made, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    seeds: BTreeMap<String, PathBuf>,
}

impl Credentials {
    /// The seed file of `name` (a service, or [`bus::access::ADMIN`]).
    pub fn seed_file(&self, name: &str) -> Option<&Path> {
        self.seeds.get(name).map(PathBuf::as_path)
    }

    /// Reads `name`'s seed, for a client in this process.
    pub fn seed(&self, name: &str) -> std::io::Result<String> {
        let path = self.seed_file(name).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no NATS identity named {name}"),
            )
        })?;
        Ok(std::fs::read_to_string(path)?.trim().to_owned())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.seeds.keys().map(String::as_str)
    }
}

/// Why credentials could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot make an nkey: {0}")]
    Key(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes a key pair for every role and for the unrestricted `admin`, writes each seed to
/// `<dir>/<name>.nk` (mode 0600), and returns the server's side (public keys and
/// permissions) with the files.
pub fn provision(
    dir: &Path,
    roles: &[Role],
    admin: &str,
) -> Result<(Authorization, Credentials), AuthError> {
    std::fs::create_dir_all(dir).map_err(|source| AuthError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut users = Vec::with_capacity(roles.len() + 1);
    let mut credentials = Credentials::default();
    let identities = roles
        .iter()
        .map(|role| (role.service.as_str(), Some(role.permissions())))
        .chain([(admin, None)]);
    for (name, permissions) in identities {
        let key = nkeys::KeyPair::new_user();
        let seed = key
            .seed()
            .map_err(|error| AuthError::Key(error.to_string()))?;
        let path = dir.join(format!("{name}.nk"));
        write_secret(&path, &seed)?;
        users.push(NatsUser {
            name: name.to_owned(),
            nkey: key.public_key(),
            permissions,
        });
        credentials.seeds.insert(name.to_owned(), path);
    }
    let route_password = nkeys::KeyPair::new_user()
        .public_key()
        .chars()
        .skip(1)
        .collect();
    Ok((
        Authorization {
            users,
            route_password,
        },
        credentials,
    ))
}

/// Writes `text` to a file only its owner can read.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")
    };
    write().map_err(|source| AuthError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A string as nats-server's configuration quotes it (JSON's quoting is a subset of it). Quoted,
/// `$JS...` is a subject, not a variable reference.
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
    format!("[{}]", quoted.join(", "))
}

impl Authorization {
    /// The user who routes between cluster members, and the password it uses.
    pub(crate) const ROUTE_USER: &'static str = "route";

    pub(crate) fn route_password(&self) -> &str {
        &self.route_password
    }

    /// The `authorization` block of a server's configuration.
    pub(crate) fn config(&self) -> String {
        let mut text = String::from("authorization {\n  users = [\n");
        for user in &self.users {
            text.push_str(&format!(
                "    # {}\n    {{ nkey: {}",
                user.name,
                quote(&user.nkey)
            ));
            if let Some(permissions) = &user.permissions {
                text.push_str(", permissions: {");
                text.push_str(&format!(
                    " publish: {{ allow: {}, deny: {} }}, subscribe: {{ allow: {}",
                    list(&permissions.publish_allow),
                    list(&permissions.publish_deny),
                    list(&permissions.subscribe_allow),
                ));
                if !permissions.subscribe_deny.is_empty() {
                    text.push_str(&format!(", deny: {}", list(&permissions.subscribe_deny)));
                }
                text.push_str(" }");
                if permissions.allow_responses {
                    text.push_str(", allow_responses: true");
                }
                text.push_str(" }");
            }
            text.push_str(" }\n");
        }
        text.push_str("  ]\n}\n");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_gets_a_key_and_a_private_seed_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let roles = bus::access::system_roles(&["purchases"]);
        let (authorization, credentials) =
            provision(dir.path(), &roles, "lab").expect("credentials");
        assert_eq!(authorization.users.len(), roles.len() + 1);
        let seed = credentials.seed("users").expect("users' seed");
        assert!(seed.starts_with("SU"), "a user seed: {seed}");
        let key = nkeys::KeyPair::from_seed(&seed).expect("a valid seed");
        let users = authorization
            .users
            .iter()
            .find(|user| user.name == "users")
            .expect("users is a user");
        assert_eq!(users.nkey, key.public_key());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(credentials.seed_file("users").expect("a file"))
            .expect("the seed file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the owner may read a seed");
        let lab = authorization
            .users
            .iter()
            .find(|user| user.name == "lab")
            .expect("the admin");
        assert_eq!(lab.permissions, None);
        let config = authorization.config();
        assert!(
            config.contains("\"$JS.API.STREAM.CREATE.USERS\""),
            "{config}"
        );
        assert!(
            !config.contains(&seed),
            "no seed in the server's configuration"
        );
    }
}
