//! The audit envelope: one event of the log as auditors see it, on NATS and over
//! `GET /v1/admin/events` alike. Its JSON Schema is `openapi/audit-envelope.schema.json`.

use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::log::Event;

/// One event of the log, for auditors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
pub struct Envelope {
    /// Global position: strictly increasing in log order; pass it as `after` to
    /// read what follows.
    pub position: i64,
    /// `user`, `session`, `sign_in`, `invite_token`, …
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The event's number within its aggregate (1, 2, …).
    pub sequence: i64,
    /// Past-tense name (`UserRegistered`).
    pub event_type: String,
    pub event_version: String,
    /// Commit time, RFC 3339 UTC.
    pub recorded_at: String,
    /// The request that caused the event: `request_id`, `client_address`, `user_agent`.
    pub metadata: Value,
    /// The event, with the fields of [`withhold`] removed.
    pub payload: Value,
}

impl From<Event> for Envelope {
    fn from(event: Event) -> Self {
        Envelope {
            position: event.position,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            recorded_at: event.recorded_at,
            metadata: event.metadata,
            payload: withhold(event.payload),
        }
    }
}

impl Envelope {
    /// `Nats-Msg-Id`: names the event uniquely, so JetStream drops a re-publish.
    pub fn msg_id(&self) -> String {
        format!("{}:{}:{}", self.aggregate_type, self.aggregate_id, self.sequence)
    }

    /// `<prefix>.<aggregate_type>.<event_type>`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", token(&self.aggregate_type), token(&self.event_type))
    }
}

/// A subject token: no separators or wildcards, never empty.
fn token(text: &str) -> String {
    let token: String = text
        .chars()
        .map(|c| if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() { '_' } else { c })
        .collect();
    if token.is_empty() {
        "_".into()
    } else {
        token
    }
}

/// What of an event's payload an auditor gets: everything except these fields, at
/// any depth, in every event type (so a new event that reuses a name is covered):
///
/// - `registration_record`, and any field ending in `_record`: OPAQUE records.
///   Useless without the server's setup, but they are credentials all the same.
/// - `sealed_secret`, and any field starting with `sealed_`: sealed secrets
///   (the TOTP secret).
/// - `refresh_hash`, and any field ending in `_hash`: keyed hashes of tokens and
///   codes; an auditor follows a session by its aggregate id, not by its token.
/// - `username` and `email`: personal data. A published message cannot be erased
///   later; accounts are followed by their `profile_id` and aggregate ids, which
///   carry nothing in clear.
///
/// Everything else — ids, times, outcomes, reasons, counters, buckets — is kept.
/// `metadata` (request id, client address, user agent) is kept whole, as the relay
/// reads it: an account's client address and user agent encrypted under the
/// account's key (src/store/shred.rs), so a removal erases them on NATS as well.
pub fn withhold(payload: Value) -> Value {
    fn withheld(field: &str) -> bool {
        matches!(field, "username" | "email" | "consumer")
            || field.ends_with("_record")
            || field.starts_with("sealed_")
            || field.ends_with("_hash")
    }
    match payload {
        Value::Object(fields) => {
            Value::Object(fields.into_iter().filter(|(field, _)| !withheld(field)).map(|(k, v)| (k, withhold(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(withhold).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_and_personal_data_are_withheld_at_any_depth() {
        let payload = json!({"UserRegistered": {
            "username": "alice", "registration_record": "AAAA", "email": "a@example.com", "consumer": "+15550100",
            "registered_at": "2024-01-01T00:00:00Z", "nested": [{"refresh_hash": "h", "sealed_secret": "s", "amr": ["pwd"]}]
        }});
        assert_eq!(
            withhold(payload),
            json!({"UserRegistered": {"registered_at": "2024-01-01T00:00:00Z", "nested": [{"amr": ["pwd"]}]}})
        );
    }

    #[test]
    fn subjects_and_message_ids() {
        let envelope = Envelope {
            position: 7,
            aggregate_type: "invite_token".into(),
            aggregate_id: "abc".into(),
            sequence: 2,
            event_type: "Invite Token.Redeemed>".into(),
            event_version: "1".into(),
            recorded_at: "2024-01-01T00:00:00.000Z".into(),
            metadata: json!({}),
            payload: json!({}),
        };
        assert_eq!(envelope.subject("authd.events"), "authd.events.invite_token.Invite_Token_Redeemed_");
        assert_eq!(envelope.msg_id(), "invite_token:abc:2");
    }
}
