//! A request's telemetry on its own, per request: the span that every service's tracing layer
//! (`platform::telemetry::rpc::server_layer`) opens, the values it records, and its one log
//! line, around a service that answers at once. In one run:
//!
//! - `none`: no subscriber, the floor (the layer's own work, and the metrics calls, which
//!   reach no recorder here);
//! - `tracing-subscriber-json`: tracing-subscriber's own JSON format (`.json()`, with the
//!   current span and the span list), as the services wrote their lines before;
//! - `platform-json`: the services' JSON log layer (`platform::telemetry::json_log_layer`).
//!
//! Both formats write the same line, value for value (a unit test holds them to it), to
//! `io::sink`, under the services' default filter. The OpenTelemetry layer is not installed:
//! what is measured is the log layer.
//!
//! Run: `cargo bench -p benches --bench log_line`; `-- --test` runs each case once.
//! How to read it: each format's time less `none`'s is what a request pays for its line.

use std::convert::Infallible;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer as _, ServiceExt as _};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;

/// A request as a client's call arrives, with a `traceparent` to continue.
fn request() -> http::Request<tonic::body::Body> {
    http::Request::builder()
        .method("POST")
        .uri("/purchases.v1.PurchaseService/ListUserPurchases")
        .header("content-type", "application/grpc")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(tonic::body::Body::empty())
        .expect("a valid request")
}

/// The server layer around a service that answers OK at once, as the method router would.
fn served() -> impl tower::Service<http::Request<tonic::body::Body>, Error = Infallible> {
    platform::telemetry::rpc::server_layer().layer(tower::service_fn(
        |_request: http::Request<tonic::body::Body>| async {
            let mut response = http::Response::new(tonic::body::Body::empty());
            response
                .extensions_mut()
                .insert(platform::telemetry::rpc::RpcMethod(
                    "purchases.v1.PurchaseService/ListUserPurchases".to_owned(),
                ));
            Ok(response)
        },
    ))
}

fn one_request<S>(service: &mut S)
where
    S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>,
{
    let answered =
        futures::executor::block_on(async { service.ready().await?.call(request()).await });
    let Ok(response) = answered;
    std::hint::black_box(response);
}

fn filter() -> EnvFilter {
    EnvFilter::new(platform::telemetry::default_filter())
}

fn log_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("request telemetry");
    let mut service = served();
    group.bench_function("none", |b| b.iter(|| one_request(&mut service)));
    let theirs = tracing_subscriber::registry().with(filter()).with(
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::sink),
    );
    tracing::subscriber::with_default(theirs, || {
        group.bench_function("tracing-subscriber-json", |b| {
            b.iter(|| one_request(&mut service));
        });
    });
    let ours = tracing_subscriber::registry()
        .with(filter())
        .with(platform::telemetry::json_log_layer(std::io::sink));
    tracing::subscriber::with_default(ours, || {
        group.bench_function("platform-json", |b| b.iter(|| one_request(&mut service)));
    });
    group.finish();
}

criterion_group!(benches, log_line);
criterion_main!(benches);
