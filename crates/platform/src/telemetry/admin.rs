//! The telemetry admin API (`ops.v1.TelemetryAdmin`): the share of new traces a service
//! records, changed while it runs (the lab measures what tracing costs that way, in one run).

use contracts::ops::v1 as contracts_ops;
use contracts::ops::v1::telemetry_admin_server::{TelemetryAdmin, TelemetryAdminServer};
use tonic::{Request, Response, Status};

use super::SamplingHandle;

#[derive(Debug, Clone)]
pub struct TelemetryApi {
    sampling: SamplingHandle,
}

impl TelemetryApi {
    pub fn new(sampling: SamplingHandle) -> Self {
        Self { sampling }
    }

    pub fn into_server(self) -> TelemetryAdminServer<Self> {
        TelemetryAdminServer::new(self)
    }
}

#[tonic::async_trait]
impl TelemetryAdmin for TelemetryApi {
    async fn set_trace_sampling(
        &self,
        request: Request<contracts_ops::SetTraceSamplingRequest>,
    ) -> Result<Response<contracts_ops::SetTraceSamplingResponse>, Status> {
        let ratio = request.into_inner().ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Status::invalid_argument(format!(
                "ratio: must be between 0 and 1, got {ratio}"
            )));
        }
        let previous = self.sampling.ratio();
        self.sampling.set_ratio(ratio);
        tracing::info!(previous, ratio, "trace sampling changed");
        Ok(Response::new(contracts_ops::SetTraceSamplingResponse {
            previous,
        }))
    }
}
