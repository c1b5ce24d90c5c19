//! A unary answer of a few KiB leaves the server in one write, headers, message and trailers
//! together, as an empty one does (`platform::one_write`). Counted as the server's write
//! system calls (`syscw` in /proc/self/task/<tid>/io) over many calls on one connection; its
//! runtime has threads of its own, named so they can be found.

use std::net::SocketAddr;

use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use contracts::purchases::v1::purchase_service_server::{PurchaseService, PurchaseServiceServer};
use platform::server::{GrpcServer, ServerSettings, ServiceSet};
use tonic::{Request, Response, Status};

/// The server's threads, by name (15 bytes at most: the kernel cuts longer ones).
const SERVER_THREADS: &str = "one-write-srv";
const CALLS: u64 = 60;

/// Answers with a user whose name is as long as the request's page size says.
#[derive(Debug)]
struct SizedAnswers;

#[tonic::async_trait]
impl PurchaseService for SizedAnswers {
    async fn list_user_purchases(
        &self,
        request: Request<pb::ListUserPurchasesRequest>,
    ) -> Result<Response<pb::ListUserPurchasesResponse>, Status> {
        let length = usize::try_from(request.get_ref().page_size).unwrap_or(0);
        Ok(Response::new(pb::ListUserPurchasesResponse {
            user: Some(pb::User {
                name: "n".repeat(length),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// Starts the server on a runtime of its own (one worker thread) and returns its address.
fn start() -> SocketAddr {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let server = GrpcServer::bind(
                "127.0.0.1:0".parse().expect("an address"),
                ServerSettings::default(),
            )
            .expect("bound");
            let _ = ready_tx.send(server.local_addr());
            let services = ServiceSet::new().with(PurchaseServiceServer::new(SizedAnswers));
            server
                .serve(
                    services,
                    ServiceSet::new(),
                    contracts::FILE_DESCRIPTOR_SET,
                    std::future::pending(),
                )
                .await
                .expect("served");
        });
    });
    ready_rx.recv().expect("the server is bound")
}

/// Write system calls made so far by the server's threads.
fn server_writes() -> u64 {
    let mut writes = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end() != SERVER_THREADS {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io")).expect("the thread's io counters");
        writes += io
            .lines()
            .find_map(|line| line.strip_prefix("syscw: "))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .expect("a syscw line");
    }
    writes
}

/// The server's writes over `CALLS` calls whose answer carries `length` bytes of name, and
/// the encoded answer's size.
async fn writes_per_answer(
    client: &mut PurchaseServiceClient<tonic::transport::Channel>,
    length: i32,
) -> (u64, usize) {
    let request = || pb::ListUserPurchasesRequest {
        user_id: "u".to_owned(),
        page_size: length,
        ..Default::default()
    };
    // The connection's settings and window updates are behind us before counting.
    let answer = client
        .list_user_purchases(request())
        .await
        .expect("answered")
        .into_inner();
    let size = prost::Message::encoded_len(&answer);
    let before = server_writes();
    for _ in 0..CALLS {
        let answer = client
            .list_user_purchases(request())
            .await
            .expect("answered")
            .into_inner();
        let name = answer.user.map(|user| user.name).unwrap_or_default();
        assert_eq!(
            name.len(),
            usize::try_from(length).unwrap_or(0),
            "the whole answer arrives"
        );
    }
    (server_writes() - before, size)
}

#[tokio::test]
async fn an_answer_of_a_few_kib_leaves_in_one_write_as_an_empty_one_does() {
    let addr = start();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connected");
    let mut client = PurchaseServiceClient::new(channel);
    let (empty, _) = writes_per_answer(&mut client, 0).await;
    let (small, small_size) = writes_per_answer(&mut client, 2_000).await;
    let (large, large_size) = writes_per_answer(&mut client, 20_000).await;
    assert!(
        small_size > platform::one_write::H2_CHAIN_THRESHOLD
            && small_size <= platform::one_write::COALESCED_UP_TO
    );
    assert!(large_size > platform::one_write::COALESCED_UP_TO);
    // A write per call, and a few to spare for anything else the connection sends.
    let one_each = CALLS + CALLS / 10;
    assert!(
        empty <= one_each,
        "{empty} writes for {CALLS} empty answers"
    );
    assert!(
        small <= one_each,
        "{small} writes for {CALLS} answers of {small_size} bytes (one each for empty answers: {empty})"
    );
    // The count sees a second write where there is one: the large answer's trailers, which
    // follow its message in a write of their own.
    assert!(
        large >= 2 * CALLS - CALLS / 10,
        "{large} writes for {CALLS} answers of {large_size} bytes"
    );
}
