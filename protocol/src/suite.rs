//! The OPAQUE (RFC 9807) cipher suite fixed by authd. A registration record made
//! with one suite cannot be used with another, so the server and every client
//! must name this one.

/// The OPAQUE cipher suite fixed by authd: OPRF Ristretto255,
/// TripleDh<Ristretto255, Sha512>, KSF Argon2id (with [`ksf`]'s parameters).
pub struct Suite;

/// The key-stretching function type of [`Suite`] (Argon2id); its parameters are
/// chosen by the client: [`ksf`] for every real account, [`cheap_ksf`] for
/// benchmarks.
pub type Ksf = argon2::Argon2<'static>;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = Ksf;
}

const KSF_PARAMS: argon2::Params = match argon2::Params::new(65536, 3, 4, None) {
    Ok(p) => p,
    Err(_) => panic!("invalid Argon2 parameters"), // evaluated at compile time
};

/// Argon2id v0x13, t=3, m=65536 KiB, p=4 (opaque-ke's Argon2 KSF uses 16 zero
/// bytes of salt) — the parameters interoperable clients use. They are part of
/// the protocol: a client stretching with others derives another envelope key
/// and cannot sign in.
pub fn ksf() -> Ksf {
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        KSF_PARAMS,
    )
}

const CHEAP_KSF_PARAMS: argon2::Params = match argon2::Params::new(
    argon2::Params::MIN_M_COST,
    argon2::Params::MIN_T_COST,
    argon2::Params::MIN_P_COST,
    None,
) {
    Ok(p) => p,
    Err(_) => panic!("invalid Argon2 parameters"), // evaluated at compile time
};

/// FOR BENCHMARKS ONLY: Argon2id v0x13 with the smallest parameters Argon2
/// allows (m=8 KiB, t=1, p=1), so that a load generator spends next to nothing
/// on stretching and the numbers measure the server. The server's work is the
/// same with either KSF (stretching happens only on the client), but a record
/// made with this one opens only with this one, and it gives a password no
/// protection against an offline guess: never use it for a real account.
pub fn cheap_ksf() -> Ksf {
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        CHEAP_KSF_PARAMS,
    )
}

// Sizes of the OPAQUE messages of [`Suite`], so that each end can refuse a
// message of the wrong size before parsing it.

/// Bytes of a RegistrationRequest (sign-up, client → server).
pub const REGISTRATION_REQUEST_LEN: usize = 32;
/// Bytes of a RegistrationResponse (sign-up, server → client).
pub const REGISTRATION_RESPONSE_LEN: usize = 64;
/// Bytes of a registration record (RegistrationUpload, client → server).
pub const REGISTRATION_RECORD_LEN: usize = 192;
/// Bytes of KE1 (CredentialRequest, sign-in, client → server).
pub const KE1_LEN: usize = 96;
/// Bytes of KE2 (CredentialResponse, sign-in, server → client).
pub const KE2_LEN: usize = 320;
/// Bytes of KE3 (CredentialFinalization, sign-in, client → server).
pub const KE3_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use opaque_ke::{
        ClientLogin, ClientLoginFinishParameters, ClientRegistration,
        ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
        CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse,
        RegistrationUpload, ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
    };
    use rand::rngs::OsRng;

    /// Runs both ends of a registration and a login with [`Suite`] and [`ksf`],
    /// checking every message against its size constant on the way.
    #[test]
    fn the_suite_round_trips_with_the_documented_message_sizes() {
        let setup = ServerSetup::<Suite>::new(&mut OsRng);
        let ksf = ksf();
        let password = b"correct horse";

        let start = ClientRegistration::<Suite>::start(&mut OsRng, password).unwrap();
        let request = start.message.serialize();
        assert_eq!(request.len(), REGISTRATION_REQUEST_LEN);
        let response = ServerRegistration::<Suite>::start(
            &setup,
            RegistrationRequest::deserialize(&request).unwrap(),
            b"alice",
        )
        .unwrap()
        .message
        .serialize();
        assert_eq!(response.len(), REGISTRATION_RESPONSE_LEN);
        let record = start
            .state
            .finish(
                &mut OsRng,
                password,
                RegistrationResponse::deserialize(&response).unwrap(),
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .unwrap()
            .message
            .serialize();
        assert_eq!(record.len(), REGISTRATION_RECORD_LEN);
        let file = ServerRegistration::finish(RegistrationUpload::deserialize(&record).unwrap());

        let login = ClientLogin::<Suite>::start(&mut OsRng, password).unwrap();
        let ke1 = login.message.serialize();
        assert_eq!(ke1.len(), KE1_LEN);
        let server = ServerLogin::start(
            &mut OsRng,
            &setup,
            Some(file),
            CredentialRequest::deserialize(&ke1).unwrap(),
            b"alice",
            ServerLoginParameters::default(),
        )
        .unwrap();
        let ke2 = server.message.serialize();
        assert_eq!(ke2.len(), KE2_LEN);
        let client = login
            .state
            .finish(
                &mut OsRng,
                password,
                CredentialResponse::deserialize(&ke2).unwrap(),
                ClientLoginFinishParameters::new(None, Identifiers::default(), Some(&ksf)),
            )
            .unwrap();
        let ke3 = client.message.serialize();
        assert_eq!(ke3.len(), KE3_LEN);
        let done = server
            .state
            .finish(
                CredentialFinalization::deserialize(&ke3).unwrap(),
                ServerLoginParameters::default(),
            )
            .unwrap();
        assert_eq!(client.session_key, done.session_key, "both ends agree");
    }
}
