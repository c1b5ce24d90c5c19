//! The fault admin gRPC API (`fault.v1.FaultAdmin`): the wire form of [`Fault`] and the
//! service that sets faults through a [`Faults`] handle. Where it is served (a loopback
//! listener of its own, only when asked for) is the server's business, not this module's.

use std::time::Duration;

use contracts::fault::v1 as pb;
use contracts::fault::v1::fault_admin_server::{FaultAdmin, FaultAdminServer};
use tonic::{Code, Request, Response, Status};

use crate::{Fault, Faults, Latency, Target};

/// gRPC status codes by the names the gRPC spec gives them.
const CODES: [(&str, Code); 17] = [
    ("OK", Code::Ok),
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

/// A status code from its spec name, in any case ("unavailable" works too).
pub fn parse_code(name: &str) -> Option<Code> {
    CODES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
        .map(|(_, code)| *code)
}

pub fn code_name(code: Code) -> &'static str {
    CODES
        .iter()
        .find(|(_, known)| *known == code)
        .map_or("UNKNOWN", |(name, _)| name)
}

/// A fault from the wire, checked as [`Faults::add`] checks it. The error names the field.
pub fn from_wire(fault: pb::Fault) -> Result<Fault, Status> {
    let target = match fault.target.trim() {
        "" => Target::All,
        method if method.contains('/') => Target::Method(method.to_owned()),
        service => Target::Service(service.to_owned()),
    };
    let mut parsed = Fault::new(target);
    if fault.latency_ms > 0 || fault.jitter_ms > 0 {
        parsed = parsed.with_latency(Latency {
            fixed: Duration::from_millis(fault.latency_ms.into()),
            jitter: Duration::from_millis(fault.jitter_ms.into()),
            fraction: fault.latency_fraction.unwrap_or(1.0),
        });
    } else if fault.latency_fraction.is_some() {
        return Err(Status::invalid_argument(
            "latency_fraction needs a latency_ms or jitter_ms to apply",
        ));
    }
    if let Some(seed) = fault.seed {
        parsed = parsed.with_seed(seed);
    }
    if fault.failure_fraction != 0.0 || !fault.failure_code.is_empty() {
        let code = parse_code(&fault.failure_code).ok_or_else(|| {
            Status::invalid_argument(format!(
                "failure_code {:?} is not a gRPC status code name; use one such as UNAVAILABLE or DEADLINE_EXCEEDED",
                fault.failure_code
            ))
        })?;
        parsed = parsed.with_failure(fault.failure_fraction, code);
    }
    if fault.blackhole {
        parsed = parsed.with_blackhole();
    }
    parsed
        .validate()
        .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
    Ok(parsed)
}

pub fn to_wire(fault: &Fault) -> pb::Fault {
    let millis = |duration: Duration| u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
    pb::Fault {
        target: match &fault.target {
            Target::All => String::new(),
            Target::Service(name) | Target::Method(name) => name.clone(),
        },
        latency_ms: fault.latency.map_or(0, |latency| millis(latency.fixed)),
        jitter_ms: fault.latency.map_or(0, |latency| millis(latency.jitter)),
        failure_fraction: fault.failure.map_or(0.0, |failure| failure.fraction),
        failure_code: fault
            .failure
            .map(|failure| code_name(failure.code).to_owned())
            .unwrap_or_default(),
        blackhole: fault.blackhole,
        latency_fraction: fault
            .latency
            .map(|latency| latency.fraction)
            .filter(|fraction| *fraction < 1.0),
        seed: fault.seed,
    }
}

/// Most faults one service holds: each request walks the list, and a handful is all any
/// scenario needs.
pub const MAX_FAULTS: usize = 32;

/// `fault.v1.FaultAdmin` over one service's [`Faults`].
#[derive(Debug, Clone)]
pub struct AdminApi {
    faults: Faults,
}

impl AdminApi {
    pub fn new(faults: Faults) -> Self {
        Self { faults }
    }

    pub fn into_server(self) -> FaultAdminServer<Self> {
        FaultAdminServer::new(self)
    }

    fn listed(&self) -> Vec<pb::Fault> {
        self.faults.list().iter().map(to_wire).collect()
    }
}

fn too_many(count: usize) -> Status {
    Status::resource_exhausted(format!(
        "{count} faults is over the limit of {MAX_FAULTS}; clear some first"
    ))
}

#[tonic::async_trait]
impl FaultAdmin for AdminApi {
    async fn add_fault(
        &self,
        request: Request<pb::AddFaultRequest>,
    ) -> Result<Response<pb::AddFaultResponse>, Status> {
        let fault = request
            .into_inner()
            .fault
            .ok_or_else(|| Status::invalid_argument("fault is required"))?;
        let fault = from_wire(fault)?;
        let count = self.faults.list().len() + 1;
        if count > MAX_FAULTS {
            return Err(too_many(count));
        }
        self.faults
            .add(fault)
            .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
        Ok(Response::new(pb::AddFaultResponse {
            faults: self.listed(),
        }))
    }

    async fn set_faults(
        &self,
        request: Request<pb::SetFaultsRequest>,
    ) -> Result<Response<pb::SetFaultsResponse>, Status> {
        let wire = request.into_inner().faults;
        if wire.len() > MAX_FAULTS {
            return Err(too_many(wire.len()));
        }
        let faults = wire
            .into_iter()
            .enumerate()
            .map(|(index, fault)| {
                from_wire(fault).map_err(|status| {
                    Status::invalid_argument(format!("faults[{index}]: {}", status.message()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.faults
            .replace(faults)
            .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
        Ok(Response::new(pb::SetFaultsResponse {
            faults: self.listed(),
        }))
    }

    async fn clear_faults(
        &self,
        _request: Request<pb::ClearFaultsRequest>,
    ) -> Result<Response<pb::ClearFaultsResponse>, Status> {
        self.faults.clear();
        Ok(Response::new(pb::ClearFaultsResponse {}))
    }

    async fn list_faults(
        &self,
        _request: Request<pb::ListFaultsRequest>,
    ) -> Result<Response<pb::ListFaultsResponse>, Status> {
        Ok(Response::new(pb::ListFaultsResponse {
            faults: self.listed(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_faults_round_trip_and_bad_ones_name_the_field() {
        let wire = pb::Fault {
            target: "products.v1.ProductService/BatchGetProducts".into(),
            latency_ms: 50,
            jitter_ms: 10,
            failure_fraction: 0.2,
            failure_code: "unavailable".into(),
            blackhole: false,
            latency_fraction: Some(0.01),
            seed: Some(42),
        };
        let fault = from_wire(wire.clone()).expect("valid");
        assert_eq!(
            fault.target,
            Target::Method("products.v1.ProductService/BatchGetProducts".into())
        );
        assert_eq!(
            to_wire(&fault),
            pb::Fault {
                failure_code: "UNAVAILABLE".into(),
                ..wire
            }
        );
        assert_eq!(
            from_wire(pb::Fault {
                target: "users.v1.UserService".into(),
                blackhole: true,
                ..pb::Fault::default()
            })
            .expect("valid")
            .target,
            Target::Service("users.v1.UserService".into())
        );

        let refused = |fault: pb::Fault| from_wire(fault).expect_err("refused");
        let status = refused(pb::Fault {
            failure_fraction: 0.5,
            failure_code: "BROKEN".into(),
            ..pb::Fault::default()
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("failure_code"), "{status:?}");
        let status = refused(pb::Fault::default());
        assert!(status.message().contains("needs latency"), "{status:?}");
        let status = refused(pb::Fault {
            failure_code: "UNAVAILABLE".into(),
            failure_fraction: 2.0,
            ..pb::Fault::default()
        });
        assert!(status.message().contains("between 0 and 1"), "{status:?}");
    }

    #[test]
    fn every_code_has_its_spec_name() {
        for (name, code) in CODES {
            assert_eq!(parse_code(name), Some(code));
            assert_eq!(code_name(code), name);
        }
        assert_eq!(
            parse_code(" deadline_exceeded "),
            Some(Code::DeadlineExceeded)
        );
    }
}
