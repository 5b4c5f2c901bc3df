//! Liveness and readiness probes, outside `/api/` as load balancers and Kubernetes expect.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use std::sync::Arc;

use ringline_domain::ErrorCode;
use ringline_metrics::BuildInfo;
use ringline_signaling::BusStatus;
use ringline_storage::Storage;

use crate::ApiTags;
use crate::error::ErrorBody;

#[derive(Debug, Object)]
pub struct HealthStatus {
    /// `ok` (alive) or `ready` (can take traffic).
    pub status: String,
    /// With several instances: `ok`, or `unavailable` while Redis cannot be reached (this
    /// instance still serves its own sockets; events from and to other instances are lost
    /// meanwhile, and its sockets are told to resync when Redis is back).
    #[oai(skip_serializing_if_is_none)]
    pub bus: Option<String>,
    /// `/readyz`: this build's version.
    #[oai(skip_serializing_if_is_none)]
    pub version: Option<String>,
    /// `/readyz`: the source commit of this build (`unknown` outside a git checkout).
    #[oai(skip_serializing_if_is_none)]
    pub commit: Option<String>,
}

#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(Json<HealthStatus>),
    /// The database does not answer; do not route traffic here.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

#[derive(Debug)]
pub struct HealthApi {
    storage: Storage,
    bus: Option<Arc<dyn BusStatus>>,
    build: BuildInfo,
}

impl HealthApi {
    pub fn new(storage: Storage, bus: Option<Arc<dyn BusStatus>>, build: BuildInfo) -> Self {
        Self { storage, bus, build }
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is up
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<HealthStatus> {
        Json(HealthStatus { status: "ok".into(), bus: None, version: None, commit: None })
    }

    /// Readiness: the database answers
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self) -> ReadyResponse {
        match self.storage.ping().await {
            Ok(()) => {
                // Redis down does not make this instance unready: it still serves its own
                // sockets, and every instance shares the outage (the log says it loudly).
                let bus = self.bus.as_ref().map(|bus| if bus.connected() { "ok" } else { "unavailable" }.to_owned());
                ReadyResponse::Ready(Json(HealthStatus {
                    status: "ready".into(),
                    bus,
                    version: Some(self.build.version.to_owned()),
                    commit: Some(self.build.commit.to_owned()),
                }))
            }
            Err(error) => {
                // The cause goes to the log only: a probe response is readable by anyone.
                tracing::warn!(%error, "readiness check failed: the database does not answer");
                ReadyResponse::Unavailable(
                    Json(ErrorBody {
                        detail: "The database is not reachable.".into(),
                        code: ErrorCode::DatabaseUnavailable.as_str().into(),
                    }),
                    crate::error::RETRY_AFTER_SECS,
                )
            }
        }
    }
}
