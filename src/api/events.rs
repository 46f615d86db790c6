//! `GET /v1/admin/events`: the audit envelopes of the log, in log order, for
//! consumers without NATS — the same envelopes, in the same order, as the relay
//! publishes.

use std::borrow::Cow;
use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};
use poem_openapi::{Object, OpenApi};

use super::{context, AdminToken, ApiError, Tag};
use crate::app::{App, Fields};
use crate::app::AuditEnvelope as Envelope;
use crate::app::EventFilter as Filter;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
const MAX_FILTER_LEN: usize = 256;

#[derive(Object)]
pub struct EventPage {
    /// Envelopes in log order (ascending `position`).
    pub events: Vec<Envelope>,
    /// Pass as `after` to read on. When fewer than `limit` events came back, the
    /// head of the log as of this read.
    pub next: i64,
}

#[derive(Default)]
pub struct EventsApi;

#[OpenApi(tag = "Tag::Audit")]
impl EventsApi {
    /// The log's audit envelopes after a position, optionally only those of one
    /// aggregate type, aggregate or event type.
    #[oai(path = "/v1/admin/events", method = "get", operation_id = "list_events")]
    #[allow(clippy::too_many_arguments)] // one argument per query parameter, for the spec
    async fn list(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        /// Position to read after (integer ≥ 0; default 0: from the start).
        after: Query<Option<Lenient<i64>>>,
        /// Most events to return (integer 1 to 1000; default 100).
        limit: Query<Option<Lenient<i64>>>,
        /// Only events of this aggregate type (`user`, `session`, …).
        aggregate_type: Query<Option<String>>,
        /// Only events of this aggregate.
        aggregate_id: Query<Option<String>>,
        /// Only events of this type (`UserRegistered`, …).
        event_type: Query<Option<String>>,
    ) -> Result<Json<EventPage>, ApiError> {
        app.admin(&auth.0.token, &context(request))?;
        let mut fields = Fields::default();
        let after = match after.0 {
            None => Some(0),
            Some(value) => fields.check(
                "after",
                value.0.map_err(|_| "must be an integer".to_string()).and_then(|after| match after {
                    0.. => Ok(after),
                    _ => Err("must be at least 0".to_string()),
                }),
            ),
        };
        let limit = match limit.0 {
            None => Some(DEFAULT_LIMIT),
            Some(value) => fields.check(
                "limit",
                value.0.map_err(|_| "must be an integer".to_string()).and_then(|limit| match usize::try_from(limit) {
                    Ok(limit @ 1..=MAX_LIMIT) => Ok(limit),
                    _ => Err(format!("must be 1 to {MAX_LIMIT}")),
                }),
            ),
        };
        let mut filter_field = |name: &str, value: Option<String>| {
            value.and_then(|value| {
                fields.check(
                    name,
                    match value.chars().count() {
                        1..=MAX_FILTER_LEN => Ok(value),
                        _ => Err(format!("must be 1 to {MAX_FILTER_LEN} characters")),
                    },
                )
            })
        };
        let filter = Filter {
            aggregate_type: filter_field("aggregate_type", aggregate_type.0),
            aggregate_id: filter_field("aggregate_id", aggregate_id.0),
            event_type: filter_field("event_type", event_type.0),
        };
        let (Some(after), Some(limit)) = (after, limit) else {
            return Err(fields.error().into());
        };
        if !fields.is_empty() {
            return Err(fields.error().into());
        }
        let page = app.events(after, limit, &filter).await?;
        Ok(Json(EventPage { events: page.events.into_iter().map(Envelope::from).collect(), next: page.next }))
    }
}

/// A query parameter that reaches the handler even when it does not parse, so the
/// handler can name every bad parameter in one 422 (poem-openapi stops at the first
/// and answers 400). The spec shows `T`'s schema.
pub struct Lenient<T>(pub Result<T, String>);

impl<T: Type> Type for Lenient<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<T: ParseFromParameter> ParseFromParameter for Lenient<T> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Lenient(T::parse_from_parameter(value).map_err(|error| error.into_message())))
    }
}
