//! The lab's own trace collector: an OTLP/gRPC receiver (opentelemetry-proto's generated
//! `TraceService`) every service the lab starts exports its spans to, which keeps them in the
//! data dir (`traces/spans.jsonl`, a span a line), and the reading of them back: a trace
//! with the batches linked to it, for `lab trace`, the reports' waterfalls and the bench's
//! split of freshness.

pub mod views;
pub mod waterfall;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1 as collector;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// One span as the lab keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root.
    #[serde(default)]
    pub parent_span_id: String,
    pub name: String,
    /// The resource's service.name.
    pub service: String,
    /// server, client, producer, consumer or internal.
    pub kind: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// ok, error or unset.
    pub status: String,
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub links: Vec<LinkRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: BTreeMap<String, String>,
}

impl SpanRecord {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A new sampled W3C trace context for a request the lab makes: its trace id and the
/// `traceparent` to send.
pub fn new_trace() -> (String, String) {
    // W3C trace context forbids all-zero ids; one set bit rules them out.
    let mut trace_id: [u8; 16] = rand::random();
    trace_id[0] |= 1;
    let trace_id = hex(&trace_id);
    let traceparent = traceparent_in(&trace_id);
    (trace_id, traceparent)
}

/// A sampled `traceparent` for another request of the trace `trace_id` (32 hex digits, as
/// [`new_trace`] makes them), under a span id of its own.
pub fn traceparent_in(trace_id: &str) -> String {
    let mut span_id: [u8; 8] = rand::random();
    span_id[0] |= 1;
    format!("00-{trace_id}-{}-01", hex(&span_id))
}

/// Has every service keep `ratio` of the traces that start in it from now on, through its
/// telemetry admin API (`ops.v1.TelemetryAdmin`).
pub async fn set_sampling(
    endpoints: &crate::topology::Endpoints,
    ratio: f64,
) -> anyhow::Result<()> {
    use contracts::ops::v1::SetTraceSamplingRequest;
    use contracts::ops::v1::telemetry_admin_client::TelemetryAdminClient;
    let calls = crate::topology::Service::ALL.map(|service| async move {
        TelemetryAdminClient::new(endpoints.fault_admin_channel(service))
            .set_trace_sampling(SetTraceSamplingRequest { ratio })
            .await
            .with_context(|| format!("{service}: cannot set its trace sampling to {ratio}"))
    });
    futures::future::try_join_all(calls).await?;
    Ok(())
}

/// Where a data dir's spans are kept.
pub fn spans_file(data_dir: &Path) -> PathBuf {
    data_dir.join("traces").join("spans.jsonl")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(
    pairs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), text(pair.value.as_ref())))
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

/// The spans of one export request, as the lab keeps them.
fn records(request: collector::ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut records = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|pair| pair.key == "service.name")
            })
            .map(|pair| text(pair.value.as_ref()))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                records.push(SpanRecord {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    kind: kind_name(span.kind).to_owned(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    status: match span.status.map(|status| status.code) {
                        Some(1) => "ok",
                        Some(2) => "error",
                        _ => "unset",
                    }
                    .to_owned(),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| LinkRecord {
                            trace_id: hex(&link.trace_id),
                            span_id: hex(&link.span_id),
                            attributes: attributes(&link.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    records
}

/// The receiver: appends every span it is sent to the spans file.
#[derive(Debug, Clone)]
struct Receiver {
    file: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<collector::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<collector::ExportTraceServiceResponse>, tonic::Status> {
        let records = records(request.into_inner());
        let mut file = self
            .file
            .lock()
            .map_err(|_| tonic::Status::internal("the spans file's lock is poisoned"))?;
        for record in &records {
            let line = serde_json::to_string(record)
                .map_err(|error| tonic::Status::internal(error.to_string()))?;
            writeln!(file, "{line}").map_err(|error| {
                tonic::Status::unavailable(format!("cannot keep the spans: {error}"))
            })?;
        }
        file.flush().map_err(|error| {
            tonic::Status::unavailable(format!("cannot keep the spans: {error}"))
        })?;
        Ok(tonic::Response::new(
            collector::ExportTraceServiceResponse::default(),
        ))
    }
}

/// A running receiver; dropping it stops it.
#[derive(Debug)]
pub struct TraceCollector {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl TraceCollector {
    /// Starts a receiver on a free loopback port, keeping spans in `data_dir`.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let path = spans_file(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let receiver = Receiver {
            file: Arc::new(Mutex::new(std::io::BufWriter::new(file))),
        };
        let incoming =
            tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .map_err(|error| anyhow::anyhow!("cannot bind the trace receiver: {error}"))?;
        let addr = incoming
            .local_addr()
            .context("the trace receiver's address")?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(receiver).max_decoding_message_size(64 * 1024 * 1024),
                )
                .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned())
                .await;
            if let Err(error) = served {
                eprintln!("lab: the trace receiver failed: {error}");
            }
        });
        Ok(Self { addr, stop })
    }

    /// The OTLP endpoint services export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TraceCollector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every span kept in `data_dir` (lines that do not parse, such as a last one cut short by
/// a kill, are passed over).
pub fn read_spans(data_dir: &Path) -> anyhow::Result<Vec<SpanRecord>> {
    read_spans_from(data_dir, 0)
}

/// How far the spans file has grown: [`read_spans_from`] that offset reads only the spans
/// kept after now.
pub fn spans_kept_so_far(data_dir: &Path) -> u64 {
    std::fs::metadata(spans_file(data_dir)).map_or(0, |metadata| metadata.len())
}

/// The spans kept from byte `offset` of the spans file on (a line cut by the offset is
/// passed over with the ones that do not parse).
pub fn read_spans_from(data_dir: &Path, offset: u64) -> anyhow::Result<Vec<SpanRecord>> {
    use std::io::Seek as _;
    let path = spans_file(data_dir);
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "no spans in {}: run the lab with tracing on (the default)",
            path.display()
        )
    })?;
    file.seek(std::io::SeekFrom::Start(offset))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect())
}

/// All the spans kept, indexed for following traces and links.
#[derive(Debug, Default)]
pub struct Spans {
    by_trace: BTreeMap<String, Vec<SpanRecord>>,
    /// The traces of spans that link to a span, by the linked (trace, span).
    linked_from: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Spans {
    pub fn new(spans: Vec<SpanRecord>) -> Self {
        let mut index = Self::default();
        for span in spans {
            for link in &span.links {
                index
                    .linked_from
                    .entry((link.trace_id.clone(), link.span_id.clone()))
                    .or_default()
                    .insert(span.trace_id.clone());
            }
            index
                .by_trace
                .entry(span.trace_id.clone())
                .or_default()
                .push(span);
        }
        index
    }

    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self::new(read_spans(data_dir)?))
    }

    /// The spans of one trace, earliest first.
    pub fn trace(&self, trace_id: &str) -> Vec<SpanRecord> {
        let mut spans = self.by_trace.get(trace_id).cloned().unwrap_or_default();
        spans.sort_by_key(|span| span.start_ns);
        spans
    }

    /// The traces (batches) that link to a span of `trace_id`, each with its spans.
    pub fn linked_to(&self, trace_id: &str) -> Vec<Vec<SpanRecord>> {
        let mut linked = BTreeSet::new();
        for span in self.by_trace.get(trace_id).into_iter().flatten() {
            if let Some(traces) = self
                .linked_from
                .get(&(span.trace_id.clone(), span.span_id.clone()))
            {
                linked.extend(traces.iter().cloned());
            }
        }
        linked.iter().map(|trace| self.trace(trace)).collect()
    }

    /// Every trace whose root is a span named `name` served by `service`, with the root.
    pub fn roots(&self, service: &str, name: &str) -> Vec<SpanRecord> {
        self.by_trace
            .values()
            .filter_map(|spans| {
                spans
                    .iter()
                    .find(|span| {
                        span.parent_span_id.is_empty()
                            && span.service == service
                            && span.name == name
                    })
                    .cloned()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_trace.values().map(Vec::len).sum()
    }
}
