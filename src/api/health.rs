use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{ApiError, Tag};
use crate::app::App;

#[derive(Object)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

#[derive(Default)]
pub struct HealthApi;

#[OpenApi(tag = "Tag::Health")]
impl HealthApi {
    /// Liveness: 200 while the process runs.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<Status> {
        Json(Status { status: "ok".into() })
    }

    /// Readiness: 200 when the event store answers, 503 otherwise.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, app: Data<&Arc<App>>) -> Result<Json<Status>, ApiError> {
        if app.store.ready().await {
            Ok(Json(Status { status: "ready".into() }))
        } else {
            Err(ApiError::new(503, "unavailable", "the event store does not answer"))
        }
    }
}
