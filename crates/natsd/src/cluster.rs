//! A JetStream cluster of nats-servers on loopback: the event bus with redundancy, so that
//! losing one server (the leader of a stream included) loses neither events nor service.

use std::path::Path;

use crate::auth::Authorization;
use crate::server::{ClusterMember, NatsServer, NatsServerOptions, NatsdError, SyncPolicy};

/// The members of one cluster, each a [`NatsServer`] that can be killed and restarted on its
/// own (same ports, same store).
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers named `n1`, `n2`, ... with stores under `root/<name>`, routed to
    /// one another. Their JetStream elects a meta leader shortly after they are up; clients
    /// that create streams meanwhile are told to retry.
    pub async fn start(
        size: usize,
        sync: SyncPolicy,
        root: &Path,
        authorization: Option<Authorization>,
    ) -> Result<Self, NatsdError> {
        let ports = crate::free_loopback_ports(2 * size).map_err(|source| NatsdError::Config {
            dir: root.to_owned(),
            source,
        })?;
        let (client_ports, route_ports) = ports.split_at(size);
        let mut servers = Vec::with_capacity(size);
        for (index, (client_port, route_port)) in client_ports.iter().zip(route_ports).enumerate() {
            let server_name = Self::server_name(index);
            let options = NatsServerOptions {
                sync,
                store_dir: Some(root.join(&server_name)),
                port: Some(*client_port),
                cluster: Some(ClusterMember {
                    server_name,
                    cluster_name: "lab".to_owned(),
                    route_port: *route_port,
                    routes: route_ports.to_vec(),
                }),
                authorization: authorization.clone(),
            };
            servers.push(NatsServer::start(options).await?);
        }
        Ok(Self { servers })
    }

    /// The name JetStream knows the `index`th server by (from 0): `n1`, `n2`, ...
    pub fn server_name(index: usize) -> String {
        format!("n{}", index + 1)
    }

    /// Every member's client URL, comma-separated, for clients that fail over between them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// The member JetStream knows as `name`.
    pub fn server_mut(&mut self, name: &str) -> Option<&mut NatsServer> {
        let index = name
            .strip_prefix('n')?
            .parse::<usize>()
            .ok()?
            .checked_sub(1)?;
        self.servers.get_mut(index)
    }

    pub fn servers_mut(&mut self) -> &mut [NatsServer] {
        &mut self.servers
    }

    /// Switches every member to `authorization` (see [`NatsServer::reload_authorization`]).
    pub async fn reload_authorization(
        &mut self,
        authorization: Option<Authorization>,
    ) -> Result<(), NatsdError> {
        for server in &mut self.servers {
            server.reload_authorization(authorization.clone()).await?;
        }
        Ok(())
    }
}
