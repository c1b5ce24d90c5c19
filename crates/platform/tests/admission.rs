//! A server whose worker threads are saturated sheds new requests, instead of letting each
//! wait behind all the others: past a bound on the requests in hand, and while requests keep
//! waiting too long for a worker thread.

use std::net::SocketAddr;
use std::time::Duration;

use platform::server::{GrpcServer, ServerSettings, ServiceSet};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A server on a runtime of its own with one worker thread, so that a test can occupy that
/// thread as a saturating load would, and the runtime's tasks are the server's alone.
struct Server {
    addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(settings: ServerSettings) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Built on a thread of its own: a runtime cannot be started from inside the test's.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let server = GrpcServer::bind("127.0.0.1:0".parse().expect("an address"), settings)
                    .expect("bound");
                let _ = ready_tx.send((server.local_addr(), tokio::runtime::Handle::current()));
                let shutdown = async move {
                    let _ = stopped.await;
                };
                server
                    .serve(ServiceSet::new(), ServiceSet::new(), &[], shutdown)
                    .await
                    .expect("served");
            });
        });
        let (addr, runtime) = ready_rx.recv().expect("the server is bound");
        Self {
            addr,
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn client(&self) -> HealthClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connected");
        HealthClient::new(channel)
    }

    /// Takes the server's only worker thread for `total`, in slices of `slice` between which
    /// it yields, as a load that saturates the server does.
    fn occupy(&self, total: Duration, slice: Duration) {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
        self.runtime.spawn(async move {
            let _ = busy_tx.send(());
            let until = std::time::Instant::now() + total;
            while std::time::Instant::now() < until {
                std::thread::sleep(slice);
                tokio::task::yield_now().await;
            }
        });
        busy_rx.recv().expect("the worker is busy");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn check(client: &HealthClient<Channel>) -> Result<(), tonic::Status> {
    client
        .clone()
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// Sends `n` checks at once and counts the answers: (served, shed).
async fn burst(client: &HealthClient<Channel>, n: usize) -> (usize, usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { check(&client).await })
        })
        .collect();
    let (mut served, mut shed) = (0, 0);
    for call in calls {
        match call.await.expect("the call ran") {
            Ok(()) => served += 1,
            Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
            Err(status) => panic!("a request failed otherwise than by shedding: {status:?}"),
        }
    }
    (served, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_accepted_past_the_bound_while_the_worker_is_busy_are_shed() {
    const BOUND: usize = 8;
    const REQUESTS: usize = 40;
    let server = Server::start(ServerSettings {
        max_concurrent_requests: BOUND,
        // Only the bound on requests in hand is under test here.
        max_queue_delay: None,
        ..ServerSettings::default()
    });
    let client = server.client().await;
    check(&client).await.expect("an idle server answers");

    // Every request sent while the worker is taken is accepted (a task each) when it frees.
    server.occupy(Duration::from_millis(500), Duration::from_millis(500));
    let (served, shed) = burst(&client, REQUESTS).await;
    // Health checks answer without yielding, so the concurrency limit alone (taken at a
    // request's first poll) would have admitted every one of them, one after another.
    assert!(
        shed >= REQUESTS - BOUND - 2,
        "only {shed} of {REQUESTS} requests were shed with at most {BOUND} admitted"
    );
    assert!(served > 0, "the requests within the bound are served");
    check(&client)
        .await
        .expect("once the backlog is gone, requests are admitted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_shed_while_the_wait_for_a_worker_stays_above_the_limit() {
    let server = Server::start(ServerSettings {
        max_concurrent_requests: 10_000,
        max_queue_delay: Some(Duration::from_millis(5)),
        ..ServerSettings::default()
    });
    let client = server.client().await;
    check(&client).await.expect("an idle server answers");

    // Slices of 20 ms: every task that becomes ready waits up to 20 ms for the worker, for
    // longer than the 100 ms the delay must last before shedding starts.
    server.occupy(Duration::from_millis(1_500), Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, shed) = burst(&client, 20).await;
    // Not necessarily all: between two slices the worker is idle, and a sample taken then
    // rightly finds no delay.
    assert!(
        shed >= 15,
        "only {shed} of 20 requests arriving while the worker stays saturated were shed"
    );

    // Past the occupation and the second after it in which a late sample would resume
    // shedding at once. On a loaded machine the operating system alone can hold the delay
    // over 5 ms for a while, so a few more tries are allowed.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut answers = burst(&client, 20).await;
    for _ in 0..10 {
        if answers == (20, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        answers = burst(&client, 20).await;
    }
    assert_eq!(
        answers,
        (20, 0),
        "once the worker keeps up, every request is served"
    );
}
