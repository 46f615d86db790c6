//! The server side of OPAQUE (RFC 9807) with authd's suite (`protocol::Suite`).
//! Messages arrive and leave as raw bytes; base64url lives in the API layer.

use protocol::Suite;
use domain::services::LoginVerifier;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload, ServerLogin,
    ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand::rngs::OsRng;

/// A protocol message that does not decode (wrong length, not a group element).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid OPAQUE message")]
pub struct BadMessage;

/// The server's answer to a `RegistrationRequest`.
pub fn registration_response(
    setup: &ServerSetup<Suite>,
    request: &[u8],
    credential_id: &[u8],
) -> Result<Vec<u8>, BadMessage> {
    let request = RegistrationRequest::<Suite>::deserialize(request).map_err(|_| BadMessage)?;
    let start = ServerRegistration::<Suite>::start(setup, request, credential_id).map_err(|_| BadMessage)?;
    Ok(start.message.serialize().to_vec())
}

/// Checks that a registration record decodes, before it is stored.
pub fn check_record(record: &[u8]) -> Result<(), BadMessage> {
    RegistrationUpload::<Suite>::deserialize(record).map(|_| ()).map_err(|_| BadMessage)
}

/// KE2 for the client and the server's login state, which must be kept secret
/// until KE3 arrives.
pub struct LoginStart {
    pub ke2: Vec<u8>,
    pub state: Vec<u8>,
}

/// Answers KE1. With no record (unknown username) opaque-ke builds a dummy KE2 of
/// the same shape, so the answer does not reveal whether the account exists.
pub fn login_start(
    setup: &ServerSetup<Suite>,
    record: Option<&[u8]>,
    ke1: &[u8],
    credential_id: &[u8],
) -> Result<LoginStart, BadMessage> {
    let ke1 = CredentialRequest::<Suite>::deserialize(ke1).map_err(|_| BadMessage)?;
    let password_file = match record {
        Some(bytes) => Some(ServerRegistration::<Suite>::deserialize(bytes).map_err(|_| BadMessage)?),
        None => None,
    };
    let start = ServerLogin::start(
        &mut OsRng,
        setup,
        password_file,
        ke1,
        credential_id,
        ServerLoginParameters::default(),
    )
    .map_err(|_| BadMessage)?;
    Ok(LoginStart { ke2: start.message.serialize().to_vec(), state: start.state.serialize().to_vec() })
}

/// Finishes a login: true only when KE3 proves the client knew the password.
pub struct OpaqueVerifier;

impl LoginVerifier for OpaqueVerifier {
    fn verify(&self, login_state: &[u8], ke3: &[u8]) -> bool {
        session_key(login_state, ke3).is_some()
    }
}

/// The OPAQUE session key (64 bytes) when KE3 proves the client knew the
/// password; `None` otherwise. The client derives the same key from KE2.
pub fn session_key(login_state: &[u8], ke3: &[u8]) -> Option<Vec<u8>> {
    let state = ServerLogin::<Suite>::deserialize(login_state).ok()?;
    let ke3 = CredentialFinalization::<Suite>::deserialize(ke3).ok()?;
    let finished = state.finish(ke3, ServerLoginParameters::default()).ok()?;
    Some(finished.session_key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::{Login, Registration};
    use protocol::{b64, unb64};

    #[test]
    fn a_registered_password_signs_in_and_a_wrong_one_does_not() {
        let setup = ServerSetup::<Suite>::new(&mut OsRng);
        let (registration, request) = Registration::start(b"hunter2").expect("start");
        let response = registration_response(&setup, &unb64(&request).expect("b64"), b"alice").expect("response");
        let record = unb64(&registration.finish(b"hunter2", &b64(&response)).expect("finish")).expect("b64");
        check_record(&record).expect("record decodes");

        let (login, ke1) = Login::start(b"hunter2").expect("login");
        let start = login_start(&setup, Some(&record), &unb64(&ke1).expect("b64"), b"alice").expect("ke2");
        assert_eq!(start.ke2.len(), 320);
        let (ke3, client_key) = login.finish(b"hunter2", &b64(&start.ke2)).expect("client finish");
        assert!(OpaqueVerifier.verify(&start.state, &unb64(&ke3).expect("b64")));
        assert!(!OpaqueVerifier.verify(&start.state, &[0u8; 64]));
        assert_eq!(session_key(&start.state, &unb64(&ke3).expect("b64")), Some(client_key), "both ends agree");
        assert_eq!(session_key(&start.state, &[0u8; 64]), None);

        let (wrong, ke1) = Login::start(b"hunter3").expect("login");
        let start = login_start(&setup, Some(&record), &unb64(&ke1).expect("b64"), b"alice").expect("ke2");
        assert!(wrong.finish(b"hunter3", &b64(&start.ke2)).is_err());
    }

    #[test]
    fn garbage_messages_are_refused() {
        let setup = ServerSetup::<Suite>::new(&mut OsRng);
        assert_eq!(registration_response(&setup, &[1u8; 31], b"a"), Err(BadMessage));
        assert_eq!(check_record(&[0u8; 192]), Err(BadMessage));
        assert!(login_start(&setup, None, &[0xffu8; 96], b"a").is_err());
    }
}
