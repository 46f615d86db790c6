//! Which ways of signing in this server offers (`AUTHD_SIGN_IN_METHODS`). Each route
//! of a way in names its method with an [`Enabled`] parameter, its first: while that
//! method is off the route answers 403 `method_disabled` before it reads anything
//! else (whatever its body or token). The served spec's description lists the
//! methods that are on.

use std::marker::PhantomData;

use poem::{FromRequest, Request, RequestBody};

use super::ApiError;

/// A way of signing in that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    Password,
    Passkey,
    EmailCode,
    SmsCode,
    EmailLink,
    Pat,
    IdToken,
    Anonymous,
}

impl SignInMethod {
    /// Every method (`anonymous` is on only with `AUTHD_ANONYMOUS=true`).
    pub const ALL: [Self; 8] =
        [Self::Password, Self::Passkey, Self::EmailCode, Self::SmsCode, Self::EmailLink, Self::Pat, Self::IdToken, Self::Anonymous];

    /// Its name in `AUTHD_SIGN_IN_METHODS`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Passkey => "passkey",
            Self::EmailCode => "email_code",
            Self::SmsCode => "sms_code",
            Self::EmailLink => "email_link",
            Self::Pat => "pat",
            Self::IdToken => "idtoken",
            Self::Anonymous => "anonymous",
        }
    }
}

/// The methods that are on (shared: every request of a way in asks).
#[derive(Debug, Clone)]
pub struct Methods(std::sync::Arc<[SignInMethod]>);

impl Default for Methods {
    fn default() -> Self {
        Self(SignInMethod::ALL.iter().copied().filter(|m| *m != SignInMethod::Anonymous).collect::<Vec<_>>().into())
    }
}

impl Methods {
    /// The configured list (plus `anonymous` when `anonymous`), or which name is not
    /// a method.
    pub fn parse(names: &[String], anonymous: bool) -> Result<Self, String> {
        let mut on = Vec::new();
        if anonymous {
            on.push(SignInMethod::Anonymous);
        }
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let known = SignInMethod::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
                let all: Vec<&str> = SignInMethod::ALL.iter().map(|m| m.name()).collect();
                format!("AUTHD_SIGN_IN_METHODS: unknown method {name:?} (one of {})", all.join(", "))
            })?;
            on.push(known);
        }
        Ok(Self(on.into()))
    }

    pub fn is_on(&self, method: SignInMethod) -> bool {
        self.0.contains(&method)
    }

    /// One line for the spec's description.
    pub fn describe(&self) -> String {
        let names = |methods: &mut dyn Iterator<Item = SignInMethod>| methods.map(SignInMethod::name).collect::<Vec<_>>().join(", ");
        let off = names(&mut SignInMethod::ALL.into_iter().filter(|m| !self.is_on(*m)));
        let on = if self.0.is_empty() { "none".to_string() } else { names(&mut self.0.iter().copied()) };
        if off.is_empty() {
            format!("Sign-in methods on: {on}.")
        } else {
            format!("Sign-in methods on: {on}; off (their routes answer 403 `method_disabled`): {off}.")
        }
    }

    /// 403 `method_disabled` unless `method` is on.
    pub fn require(&self, method: SignInMethod) -> Result<(), ApiError> {
        if self.is_on(method) {
            Ok(())
        } else {
            let message = format!("sign-in by {} is switched off on this server (AUTHD_SIGN_IN_METHODS)", method.name());
            Err(ApiError::new(403, "method_disabled", message))
        }
    }
}

/// A way in, as a type a route names (`Enabled<Passkey>`).
pub trait WayIn: Send + Sync {
    const METHOD: SignInMethod;
}

macro_rules! ways_in {
    ($($way:ident),*) => {$(
        #[doc = concat!("The `", stringify!($way), "` way in, for [`Enabled`].")]
        pub struct $way;
        impl WayIn for $way {
            const METHOD: SignInMethod = SignInMethod::$way;
        }
    )*};
}
ways_in!(Password, Passkey, EmailCode, SmsCode, EmailLink, Pat, IdToken, Anonymous);

/// A route's first parameter: the route belongs to the way in `W`, and is refused
/// (403 `method_disabled`) while that is off.
pub struct Enabled<W>(PhantomData<W>);

impl<'a, W: WayIn> FromRequest<'a> for Enabled<W> {
    async fn from_request(request: &'a Request, _: &mut RequestBody) -> poem::Result<Self> {
        // No list (never so when served by `api::routes`): nothing is on.
        let off = || Methods(Vec::new().into());
        request.data::<Methods>().cloned().unwrap_or_else(off).require(W::METHOD)?;
        Ok(Self(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_parsed_named_and_described() {
        assert!(Methods::parse(&["password".into(), "nope".into()], false).is_err());
        let some = Methods::parse(&["password".into(), "pat".into()], false).expect("methods");
        assert!(some.is_on(SignInMethod::Pat) && !some.is_on(SignInMethod::Passkey));
        assert!(some.describe().contains("off (their routes answer 403 `method_disabled`): passkey, email_code"));
        assert!(some.require(SignInMethod::Passkey).is_err() && some.require(SignInMethod::Password).is_ok());
        assert!(!Methods::default().is_on(SignInMethod::Anonymous) && Methods::parse(&[], true).expect("methods").is_on(SignInMethod::Anonymous));
        for method in SignInMethod::ALL {
            assert_eq!(Methods::parse(&[method.name().into()], false).expect("known").0[..], [method]);
        }
    }
}
