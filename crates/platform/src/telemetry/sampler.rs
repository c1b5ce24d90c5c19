//! Which traces are kept: the sampler named by `OTEL_TRACES_SAMPLER`, whose ratio can be
//! changed while the service runs (the lab measures the cost of tracing by switching it, in
//! one run, through the admin API).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{Link, SpanKind, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

/// The samplers of the OpenTelemetry specification, by their `OTEL_TRACES_SAMPLER` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

/// The ratio of new traces kept, shared by the sampler and whoever may change it.
#[derive(Debug, Clone)]
pub struct SamplingHandle(Arc<AtomicU64>);

impl SamplingHandle {
    fn new(ratio: f64) -> Self {
        Self(Arc::new(AtomicU64::new(ratio.clamp(0.0, 1.0).to_bits())))
    }

    /// Keeps this share of the traces that start here from now on (0 to 1).
    pub fn set_ratio(&self, ratio: f64) {
        self.0
            .store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

impl Default for SamplingHandle {
    fn default() -> Self {
        Self::new(1.0)
    }
}

/// Keeps a trace by its id with the handle's current ratio, as `traceidratio` does, and
/// always keeps a span linked to a kept trace: a consumer's batch starts a trace of its own,
/// linked to the publishes of its events, and a write's trace is only whole with it.
#[derive(Debug, Clone)]
struct AdjustableRatio(SamplingHandle);

impl ShouldSample for AdjustableRatio {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if links.iter().any(|link| link.span_context.is_sampled()) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        Sampler::TraceIdRatioBased(self.0.ratio()).should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

/// The sampler `kind` names, with `arg` its ratio, and the handle that changes it.
pub(crate) fn sampler(
    kind: SamplerKind,
    arg: Option<f64>,
) -> (Box<dyn ShouldSample>, SamplingHandle) {
    let ratio = match kind {
        SamplerKind::AlwaysOn | SamplerKind::ParentBasedAlwaysOn => 1.0,
        SamplerKind::AlwaysOff | SamplerKind::ParentBasedAlwaysOff => 0.0,
        SamplerKind::TraceIdRatio | SamplerKind::ParentBasedTraceIdRatio => arg.unwrap_or(1.0),
    };
    let handle = SamplingHandle::new(ratio);
    let root = AdjustableRatio(handle.clone());
    let sampler: Box<dyn ShouldSample> = match kind {
        // Decided by the trace id alone, whatever the parent decided.
        SamplerKind::AlwaysOn | SamplerKind::AlwaysOff | SamplerKind::TraceIdRatio => {
            Box::new(root)
        }
        // A trace is kept whole or not at all: the caller's decision stands.
        SamplerKind::ParentBasedAlwaysOn
        | SamplerKind::ParentBasedAlwaysOff
        | SamplerKind::ParentBasedTraceIdRatio => Box::new(Sampler::ParentBased(Box::new(root))),
    };
    (sampler, handle)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};

    use super::*;

    fn decide(sampler: &dyn ShouldSample, links: &[Link]) -> SamplingDecision {
        let trace_id = TraceId::from_bytes([0xff; 16]);
        sampler
            .should_sample(None, trace_id, "process", &SpanKind::Consumer, &[], links)
            .decision
    }

    fn link(flags: TraceFlags) -> Link {
        let context = SpanContext::new(
            TraceId::from_bytes([7; 16]),
            SpanId::from_bytes([3; 8]),
            flags,
            true,
            TraceState::default(),
        );
        Link::new(context, Vec::new(), 0)
    }

    #[test]
    fn a_span_linked_to_a_kept_trace_is_kept_whatever_the_ratio() {
        let (sampler, handle) = sampler(SamplerKind::ParentBasedTraceIdRatio, Some(0.0));
        assert_eq!(decide(&*sampler, &[]), SamplingDecision::Drop);
        let unsampled = link(TraceFlags::default());
        assert_eq!(
            decide(&*sampler, std::slice::from_ref(&unsampled)),
            SamplingDecision::Drop
        );
        let sampled = link(TraceFlags::SAMPLED);
        assert_eq!(
            decide(&*sampler, &[unsampled, sampled]),
            SamplingDecision::RecordAndSample
        );
        handle.set_ratio(1.0);
        assert_eq!(decide(&*sampler, &[]), SamplingDecision::RecordAndSample);
    }
}
