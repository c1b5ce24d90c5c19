use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// A server running as a task of the test's runtime. Dropping it asks it to shut down.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    /// Spawns `run`, handing it the shutdown future it must stop on. The server must already
    /// be bound to `addr`, so clients can connect at once.
    pub fn spawn<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (shutdown, stop) = oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = stop.await;
        });
        Self {
            addr,
            shutdown: Some(shutdown),
            task: Some(tokio::spawn(run(stop))),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the server that connects on first use.
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("a loopback URL is a valid endpoint")
            .connect_lazy()
    }

    /// Shuts the server down gracefully and returns how its run ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
