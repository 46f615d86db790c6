use std::fmt::Write;
use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{Object, OpenApi};

use super::{context, AdminToken, ApiError, Tag};
use crate::app::App;
use crate::app::{RelayState, RelayStatus};

#[derive(Object)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

/// Readiness, with the audit relay's progress.
#[derive(Object)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    pub audit_relay: RelayReport,
}

/// The NATS audit relay as seen from this replica.
#[derive(Object)]
pub struct RelayReport {
    /// `disabled` (no `NATS_URL`), `publishing` (this replica publishes),
    /// `standby` (another replica does), `connecting`, or `retrying` (NATS or the
    /// store failed; the relay retries and loses nothing).
    pub state: String,
    /// Events in the log not yet acknowledged by JetStream (absent when disabled).
    #[oai(skip_serializing_if_is_none)]
    pub lag_events: Option<i64>,
    /// Last position JetStream acknowledged (absent when disabled).
    #[oai(skip_serializing_if_is_none)]
    pub published_position: Option<i64>,
    /// Newest position of the log (absent when disabled).
    #[oai(skip_serializing_if_is_none)]
    pub log_position: Option<i64>,
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

    /// Readiness: 200 when the event store answers, 503 otherwise. Reports the
    /// audit relay's lag, which does not change the answer.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, app: Data<&Arc<App>>, relay: Data<&RelayStatus>) -> Result<Json<Readiness>, ApiError> {
        if !app.store_ready().await {
            return Err(ApiError::new(503, "unavailable", "the event store does not answer"));
        }
        let state = relay.get();
        let lag = match state {
            RelayState::Disabled => None,
            _ => app.relay_lag().await.ok(),
        };
        Ok(Json(Readiness {
            status: "ready".into(),
            audit_relay: RelayReport {
                state: state.as_str().into(),
                lag_events: lag.map(|lag| lag.events()),
                published_position: lag.map(|lag| lag.published_position),
                log_position: lag.map(|lag| lag.log_position),
            },
        }))
    }

    /// Prometheus metrics (text exposition format): `authd_store_up`,
    /// `authd_event_log_position`, and with a relay `authd_audit_relay_lag_events`,
    /// `authd_audit_relay_position`, `authd_audit_relay_publishing`. Admin token
    /// only: the log's position would let a stranger count what others do.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        relay: Data<&RelayStatus>,
        auth: AdminToken,
    ) -> Result<PlainText<String>, ApiError> {
        app.admin(&auth.0.token, &context(request))?;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: i64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
        };
        let up = app.store_ready().await;
        gauge("authd_store_up", "1 when the event store answers.", i64::from(up));
        let state = relay.get();
        let log_position = app.log_head().await.ok();
        if let Some(position) = log_position {
            gauge("authd_event_log_position", "Position of the newest event in the global log.", position);
        }
        gauge(
            "authd_audit_relay_enabled",
            "1 when NATS_URL is set and the audit relay runs.",
            i64::from(state != RelayState::Disabled),
        );
        if state != RelayState::Disabled {
            if let Ok(lag) = app.relay_lag().await {
                gauge(
                    "authd_audit_relay_lag_events",
                    "Events in the log not yet acknowledged by NATS JetStream.",
                    lag.events(),
                );
                gauge(
                    "authd_audit_relay_position",
                    "Position of the last event NATS JetStream acknowledged.",
                    lag.published_position,
                );
            }
            gauge(
                "authd_audit_relay_publishing",
                "1 when this replica holds the relay lock and publishes.",
                i64::from(relay.leading()),
            );
        }
        Ok(PlainText(out))
    }
}
