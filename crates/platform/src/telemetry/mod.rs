//! What a service tells about itself: logs (one line per request, pretty or JSON, with the
//! trace and span ids), traces by OpenTelemetry's conventions exported over OTLP/gRPC when
//! an endpoint is given (and nothing spent on them when not), and metrics in the Prometheus
//! text format when a listen address is given.
//!
//! - [`propagation`]: W3C trace context in and out of gRPC metadata, NATS headers and event
//!   envelopes.
//! - [`rpc`]: the server's per-request span, log line and metrics (through tower-http's gRPC
//!   classifier), and the client span an outgoing call carries.
//! - [`metrics`]: the Prometheus recorder and its `/metrics` endpoint, and the names.
//!
//! The standard variables are read where the configuration is parsed (`TelemetryArgs`), not
//! here; the OpenTelemetry SDK and exporter also read their own `OTEL_*` tuning variables, as
//! the specification says they do.

pub mod admin;
mod json_fields;
mod json_line;
pub mod metrics;
pub mod propagation;
pub mod rpc;
mod sampler;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use sampler::{SamplerKind, SamplingHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Traces and metrics, by the OpenTelemetry and Prometheus conventions, flattened into every
/// service's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Export spans over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317: Jaeger, an
    /// OpenTelemetry Collector, or the lab's own receiver). No spans are exported without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otel_endpoint: Option<String>,

    /// The service's name in its spans (service.name); the binary's name when absent.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// Which traces to keep, by OpenTelemetry's names.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value_t = SamplerKind::ParentBasedAlwaysOn)]
    pub otel_traces_sampler: SamplerKind,

    /// The share of traces the ratio samplers keep, from 0 to 1 (default 1).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio)]
    pub otel_traces_sampler_arg: Option<f64>,

    /// More resource attributes for every span: key=value,key=value.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", value_parser = parse_attributes, default_value = "")]
    pub otel_resource_attributes: ResourceAttributes,

    /// Serve metrics in the Prometheus text format on this address, at /metrics. Off unless
    /// given.
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            otel_endpoint: None,
            otel_service_name: None,
            otel_traces_sampler: SamplerKind::ParentBasedAlwaysOn,
            otel_traces_sampler_arg: None,
            otel_resource_attributes: ResourceAttributes::default(),
            metrics_listen: None,
        }
    }
}

/// `key=value` pairs of `OTEL_RESOURCE_ATTRIBUTES`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes(pub Vec<(String, String)>);

fn parse_attributes(raw: &str) -> Result<ResourceAttributes, String> {
    let mut pairs = Vec::new();
    for pair in raw
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        pairs.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(ResourceAttributes(pairs))
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .ok_or_else(|| format!("{raw:?} is not a ratio from 0 to 1"))
}

/// How long finished spans wait before they are sent: short, so a trace is complete at the
/// collector within about a second of its last span.
const EXPORT_DELAY: Duration = Duration::from_millis(500);

/// What [`init`] set up; dropping it sends the spans still waiting.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    sampling: SamplingHandle,
}

impl Telemetry {
    /// Changes the share of new traces kept (the admin API's `SetTraceSampling`).
    pub fn sampling(&self) -> SamplingHandle {
        self.sampling.clone()
    }

    /// Sends what is waiting and stops exporting.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("cannot send the last spans: {error}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process's subscriber: `RUST_LOG` filters (the default shows every crate of
/// this workspace at info and dependencies at warn), logs in `format`, and spans exported to
/// the OTLP endpoint when one is given. Must run inside the runtime that will serve (the
/// exporter's gRPC channel lives there). A second call (tests that start several services in
/// one process) changes nothing.
pub fn init(service: &'static str, format: LogFormat, args: &TelemetryArgs) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter()));
    let (sampler, sampling) =
        sampler::sampler(args.otel_traces_sampler, args.otel_traces_sampler_arg);
    let provider = match &args.otel_endpoint {
        Some(endpoint) => match exporting_provider(service, endpoint, args, sampler) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("{service}: not exporting spans to {endpoint}: {error}");
                None
            }
        },
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_threads(false)
    });
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed_dyn(),
        LogFormat::Json => json_log_layer(std::io::stdout).boxed_dyn(),
    };
    // A second init (tests that start several services) is harmless; its error is dropped.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider, sampling }
}

/// The JSON log layer, writing its lines to `writer`: tracing-subscriber's JSON layout
/// (`timestamp`, `level`, `fields`, `target`, `span`, `spans`), at less cost per line (see
/// the `json_line` module).
pub fn json_log_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .event_format(json_line::JsonLine)
        .fmt_fields(json_fields::AppendingJsonFields)
        .with_writer(writer)
}

/// Boxing the two log formats into one type.
trait BoxedDyn<S> {
    fn boxed_dyn(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;
}

impl<S, L> BoxedDyn<S> for L
where
    L: tracing_subscriber::Layer<S> + Send + Sync + 'static,
    S: tracing::Subscriber,
{
    fn boxed_dyn(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync> {
        Box::new(self)
    }
}

fn exporting_provider(
    service: &'static str,
    endpoint: &str,
    args: &TelemetryArgs,
    sampler: Box<dyn opentelemetry_sdk::trace::ShouldSample>,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_DELAY)
                .build(),
        )
        .build();
    let name = args
        .otel_service_name
        .clone()
        .unwrap_or_else(|| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(name)
        .with_attributes(
            args.otel_resource_attributes
                .0
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build())
}

/// Every crate of this workspace, whose info lines the default filter shows.
const WORKSPACE_CRATES: [&str; 16] = [
    "bus",
    "consumer",
    "contracts",
    "fault",
    "lab",
    "monolith",
    "natsd",
    "orders",
    "outbox",
    "platform",
    "products",
    "purchases",
    "purchases_async",
    "purchases_sync",
    "system",
    "users",
];

/// `warn`, and `info` for every crate of the workspace (and the request lines' target).
pub fn default_filter() -> String {
    let mut filter = String::from("warn,rpc=info");
    for name in WORKSPACE_CRATES {
        filter.push_str(&format!(",{name}=info"));
    }
    filter
}

/// A span made by `make` when there is a current span to make it a child of, else none: work
/// done on behalf of a traced request or batch shows in its trace, the same work done alone
/// starts no trace of its own.
pub fn child_span(make: impl FnOnce() -> Span) -> Span {
    if Span::current().is_none() {
        Span::none()
    } else {
        make()
    }
}

/// Records `span`'s trace and span ids in its `trace_id` and `span_id` fields (which it must
/// declare), so its log lines can be found from a trace and the trace from a log line. No-op
/// when spans are not exported.
pub fn record_ids(span: &Span) {
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_are_key_value_pairs() {
        assert_eq!(
            parse_attributes("deployment.environment=lab, host.name = vm1"),
            Ok(ResourceAttributes(vec![
                ("deployment.environment".into(), "lab".into()),
                ("host.name".into(), "vm1".into())
            ]))
        );
        assert_eq!(parse_attributes(""), Ok(ResourceAttributes::default()));
        assert!(parse_attributes("novalue").is_err());
        assert!(parse_ratio("0.25").is_ok());
        assert!(parse_ratio("1.5").is_err());
    }

    #[test]
    fn the_default_filter_shows_every_workspace_crate() {
        let filter = default_filter();
        for name in ["purchases_sync", "purchases_async", "consumer", "monolith"] {
            assert!(filter.contains(&format!("{name}=info")), "{filter}");
        }
        assert!(filter.starts_with("warn,"));
    }
}
