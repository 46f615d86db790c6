//! Which ways of signing in this server offers (`AUTHD_SIGN_IN_METHODS`). A route of a
//! method that is off answers 403 `method_disabled`, whatever its body; the served
//! spec's description lists the methods that are on.

use poem::{Endpoint, IntoResponse, Request, Response};

use super::ApiError;

/// Every method, by its configuration name (`anonymous` is on only with
/// `AUTHD_ANONYMOUS=true`).
pub const ALL: [&str; 8] = ["password", "passkey", "email_code", "sms_code", "email_link", "pat", "idtoken", "anonymous"];

/// The methods that are on (shared: every request asks).
#[derive(Debug, Clone)]
pub struct Methods(std::sync::Arc<[&'static str]>);

impl Default for Methods {
    fn default() -> Self {
        Self(ALL.iter().copied().filter(|m| *m != "anonymous").collect::<Vec<_>>().into())
    }
}

impl Methods {
    /// The configured list (plus `anonymous` when `anonymous`), or which name is not
    /// a method.
    pub fn parse(names: &[String], anonymous: bool) -> Result<Self, String> {
        let mut on = Vec::new();
        if anonymous {
            on.push("anonymous");
        }
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let known = ALL.iter().find(|m| **m == name).ok_or_else(|| format!("AUTHD_SIGN_IN_METHODS: unknown method {name:?} (one of {})", ALL.join(", ")))?;
            on.push(*known);
        }
        Ok(Self(on.into()))
    }

    pub fn is_on(&self, method: &str) -> bool {
        self.0.contains(&method)
    }

    /// One line for the spec's description.
    pub fn describe(&self) -> String {
        let off: Vec<&str> = ALL.iter().copied().filter(|m| !self.is_on(m)).collect();
        let on = if self.0.is_empty() { "none".to_string() } else { self.0.join(", ") };
        if off.is_empty() {
            format!("Sign-in methods on: {on}.")
        } else {
            format!("Sign-in methods on: {on}; off (their routes answer 403 `method_disabled`): {}.", off.join(", "))
        }
    }

    /// 403 `method_disabled` unless `method` is on (for a route that serves several,
    /// like deanonymize, once the body names one).
    pub fn require(&self, method: &str) -> Result<(), ApiError> {
        if self.is_on(method) {
            Ok(())
        } else {
            let message = format!("sign-in by {method} is switched off on this server (AUTHD_SIGN_IN_METHODS)");
            Err(ApiError::new(403, "method_disabled", message))
        }
    }

    pub async fn call<E: Endpoint>(&self, endpoint: E, request: Request) -> poem::Result<Response> {
        if let Some(method) = method_of(request.uri().path()) {
            self.require(method)?;
        }
        endpoint.call(request).await.map(IntoResponse::into_response)
    }
}

/// The method a route belongs to.
fn method_of(path: &str) -> Option<&'static str> {
    // No allocation: this runs on every request.
    let under = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if under("/v1/sign/in/webauthn") || under("/v1/sign/up/webauthn") || under("/v1/user/webauthn") || under("/v1/elevate/webauthn") {
        Some("passkey")
    } else if under("/v1/sign/in/otp/email") {
        Some("email_code")
    } else if under("/v1/sign/in/passwordless/sms") {
        Some("sms_code")
    } else if under("/v1/sign/in/passwordless/email") || path == "/v1/verify" {
        Some("email_link")
    } else if under("/v1/sign/in/idtoken") || under("/v1/link/idtoken") {
        Some("idtoken")
    } else if under("/v1/sign/in/anonymous") {
        Some("anonymous")
    } else if under("/v1/sign/in/pat") || under("/v1/pat") {
        Some("pat")
    } else if matches!(path, "/v1/sign/in" | "/v1/sign/in/finish" | "/v1/sign/up" | "/v1/sign/up/finish")
        || under("/v1/step")
        || under("/v1/elevate/password")
        || under("/v1/user/password")
    {
        Some("password")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_belong_to_their_method() {
        for (path, method) in [
            ("/v1/sign/in", Some("password")),
            ("/v1/step/two", Some("password")),
            ("/v1/elevate/password/finish", Some("password")),
            ("/v1/sign/in/webauthn/verify", Some("passkey")),
            ("/v1/user/webauthn/abc", Some("passkey")),
            ("/v1/sign/in/otp/email/verify", Some("email_code")),
            ("/v1/sign/in/passwordless/sms/otp", Some("sms_code")),
            ("/v1/verify", Some("email_link")),
            ("/v1/pat/123", Some("pat")),
            ("/v1/sign/in/mfa", None),
            ("/v1/user", None),
            ("/v1/token/refresh", None),
        ] {
            assert_eq!(method_of(path), method, "{path}");
        }
        assert!(Methods::parse(&["password".into(), "nope".into()], false).is_err());
        let some = Methods::parse(&["password".into(), "pat".into()], false).expect("methods");
        assert!(some.is_on("pat") && !some.is_on("passkey"));
        assert!(some.describe().contains("off (their routes answer 403 `method_disabled`): passkey, email_code"));
        assert!(!Methods::default().is_on("anonymous") && Methods::parse(&[], true).expect("methods").is_on("anonymous"));
    }
}
