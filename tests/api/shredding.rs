//! Crypto-shredding, black-box on SQLite and PostgreSQL (with the NATS audit relay):
//! an account's username and email are never in the store or the audit stream in
//! clear, and removing the account erases them for good while the log stays
//! complete and verifiable.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use crate::helpers::{replay_ok, unique, Backend, Server};
use serde_json::{json, Value};

both_stores!(removal_shreds_username_and_email, removal_leaves_nothing_personal);

fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}


/// Every text value of every table of the store, one string per cell.
async fn every_cell(server: &Server) -> Vec<String> {
    use sqlx::{Connection, Row};
    let mut cells = Vec::new();
    match server.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&mut conn)
            .await
            .expect("tables");
            assert!(tables.contains(&"events".to_string()) && tables.contains(&"verifiers_view".to_string()));
            for table in tables {
                // A whole row as text covers every column, json and bytea included.
                let rows = sqlx::query(&format!("SELECT CAST(t AS TEXT) FROM \"{table}\" t"))
                    .fetch_all(&mut conn)
                    .await
                    .expect("rows");
                cells.extend(rows.iter().map(|row| format!("{table}: {}", row.get::<String, _>(0))));
            }
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.expect("sqlite");
            let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut conn)
                .await
                .expect("tables");
            assert!(tables.contains(&"events".to_string()) && tables.contains(&"verifiers_view".to_string()));
            for table in tables {
                let columns: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                    .fetch_all(&mut conn)
                    .await
                    .expect("columns");
                for column in columns {
                    let values: Vec<Option<String>> =
                        sqlx::query_scalar(&format!(
                        "SELECT CASE WHEN typeof(\"{column}\") = 'blob' THEN hex(\"{column}\") ELSE CAST(\"{column}\" AS TEXT) END FROM \"{table}\""
                    ))
                            .fetch_all(&mut conn)
                            .await
                            .expect("values");
                    cells.extend(values.into_iter().flatten().map(|value| format!("{table}.{column}: {value}")));
                }
            }
        }
    }
    cells
}

/// Cells that hold any of `needles` (case-insensitive).
fn holding(cells: &[String], needles: &[&str]) -> Vec<String> {
    cells
        .iter()
        .filter(|cell| needles.iter().any(|needle| cell.to_lowercase().contains(&needle.to_lowercase())))
        .cloned()
        .collect()
}

/// Every message of the stream, as text; waits until it holds as many as the log.
async fn stream_messages(server: &Server, js: &jetstream::Context, stream: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let expected = server.events().await.len();
        let mut messages = Vec::new();
        if let Ok(mut handle) = js.get_stream(stream).await {
            let state = handle.info().await.expect("stream info").state.clone();
            for sequence in state.first_sequence.max(1)..=state.last_sequence {
                if let Ok(message) = handle.get_raw_message(sequence).await {
                    messages.push(String::from_utf8(message.payload.to_vec()).expect("utf-8 body"));
                }
            }
        }
        if messages.len() >= expected && expected > 0 {
            return messages;
        }
        assert!(Instant::now() < deadline, "the relay did not publish the log ({} of {expected})", messages.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn removal_shreds_username_and_email(backend: Backend) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let (stream, prefix) = (format!("AUTHD_TEST_SHRED_{id}"), format!("authd_test_shred_{id}.events"));
    let url = nats_url();
    let server = Server::start_with(
        backend,
        &[("NATS_URL", &url), ("AUTHD_NATS_STREAM", &stream), ("AUTHD_NATS_SUBJECT_PREFIX", &prefix)],
    )
    .await;
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach NATS at {url} ({e}); start it with JetStream (scripts/test does)"));
    let js = jetstream::new(client);

    // Sign up with an email, activate it, sign in.
    let username = unique("shredded");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    let profile_id = server.api().sign_up(&username, crate::helpers::PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (_, body) = crate::helpers::outbox_mail(&server, &email, |subject| subject == "Activate your account").await;
    let code = body.split(" code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code");
    let verification_id = body.split("Verification id: ").nth(1).expect("id").trim();
    let (status, _) = server
        .call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code})))
        .await;
    assert_eq!(status, 204);
    let session = server.sign_in(&username).await;

    // The decrypting read paths show the account in clear.
    let user = server.api().user(&session.access_token).await.expect("user");
    assert_eq!((user.username.as_str(), user.email.as_deref(), user.email_verified), (username.as_str(), Some(email.as_str()), true));

    // The log holds them only encrypted.
    let cells = every_cell(&server).await;
    let events = |cells: &[String]| cells.iter().filter(|c| c.starts_with("events")).cloned().collect::<Vec<_>>();
    assert_eq!(holding(&events(&cells), &[&username, &email]), Vec::<String>::new(), "no clear username/email in the log");
    let encrypted = format!("enc:v1:{profile_id}:");
    assert!(
        events(&cells).iter().filter(|c| c.contains(&encrypted)).count() >= 2,
        "the account's events carry enc:v1: values"
    );

    // Nor does the audit stream.
    let published = stream_messages(&server, &js, &stream).await;
    assert!(published.len() >= 5, "the relay published the account's events");
    assert_eq!(holding(&published, &[&username, &email]), Vec::<String>::new(), "no clear username/email on NATS");

    // Removal shreds.
    let (status, _) = server.call("POST", "/v1/account/remove", Some(&session.access_token), None).await;
    assert_eq!(status, 204);
    let cells = every_cell(&server).await;
    assert_eq!(holding(&cells, &[&username, &email]), Vec::<String>::new(), "no clear username/email anywhere in the store");
    assert!(cells.iter().any(|c| c.starts_with("subject_keys") && c.contains(&profile_id)), "the key's tombstone is kept");
    let published = stream_messages(&server, &js, &stream).await;
    assert_eq!(holding(&published, &[&username, &email]), Vec::<String>::new(), "no clear username/email on NATS");

    // The log is complete and verifiable; replay shows the data erased.
    replay_ok(&server, &["verify"]);
    let timeline = replay_ok(&server, &["timeline", &profile_id]);
    assert!(timeline.contains("[erased]"), "the timeline shows erased data:\n{timeline}");
    assert!(!timeline.to_lowercase().contains(&username.to_lowercase()), "{timeline}");
    let exported = replay_ok(&server, &["events", "--aggregate-type", "user", "--aggregate-id", &profile_id]);
    let lines: Vec<Value> = exported.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(lines[0]["event_type"], "UserRegistered");
    assert_eq!(lines[0]["payload"]["UserRegistered"]["username"], "[erased]", "{}", lines[0]);
    assert_eq!(lines[0]["payload"]["UserRegistered"]["email"], "[erased]");
    assert_eq!(lines[0]["metadata"]["client_address"], "[erased]");
    assert!(!exported.contains(&username) && !exported.contains(&email));
    let rebuilt = replay_ok(&server, &["rebuild"]);
    assert!(!rebuilt.contains(&username), "{rebuilt}");

    // The username is free again, for a new account with a key of its own.
    let again = server.sign_up(&username).await;
    assert_ne!(again, profile_id);
    let session = server.sign_in(&username).await;
    assert_eq!(server.api().user(&session.access_token).await.expect("user").username, username);

    if let Ok(client) = async_nats::connect(&url).await {
        let _ = jetstream::new(client).delete_stream(&stream).await;
    }
}

/// The stored value of the account's subject key (wrapped), if the row has one.
async fn stored_key(server: &Server, profile_id: &str) -> Option<Vec<u8>> {
    use sqlx::Connection;
    let sql = "SELECT key FROM subject_keys WHERE subject = $1";
    match server.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
            sqlx::query_scalar(sql).bind(profile_id).fetch_one(&mut conn).await.expect("key row")
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.expect("sqlite");
            sqlx::query_scalar(sql).bind(profile_id).fetch_one(&mut conn).await.expect("key row")
        }
    }
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Every request of the account comes from one client address and user agent; every
/// event it causes — session refreshes, MFA, verifiers, the removal's own — stores
/// them only encrypted under the account's key, NATS gets them only so, and after
/// removal nothing of them, nor the key, nor the account's mail, is left.
async fn removal_leaves_nothing_personal(backend: Backend) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let (stream, prefix) = (format!("AUTHD_TEST_SHRED_{id}"), format!("authd_test_shred_{id}.events"));
    let url = nats_url();
    let server = Server::start_with(
        backend,
        &[
            ("NATS_URL", &url),
            ("AUTHD_NATS_STREAM", &stream),
            ("AUTHD_NATS_SUBJECT_PREFIX", &prefix),
            ("AUTHD_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap_or_else(|e| panic!("cannot reach NATS at {url} ({e})")));

    // The account's own client: a recognisable address and user agent.
    let (address, agent) = (format!("203.0.113.{}", 1 + id.as_bytes()[0] % 250), format!("shred-agent-{id}"));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", address.parse().expect("header"));
    headers.insert("user-agent", agent.parse().expect("header"));
    let http = reqwest::Client::builder().default_headers(headers).build().expect("client");
    let api = client::Api::with_client(&server.base, http);
    let call = |method: &str, path: &str, bearer: Option<String>, body: Option<Value>| {
        let (api, method, path) = (&api, reqwest::Method::from_bytes(method.as_bytes()).expect("method"), path.to_string());
        async move { api.raw(method, &path, bearer.as_deref(), body.as_ref()).await.expect("transport") }
    };

    let username = unique("leaves-nothing");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    let profile_id = api.sign_up(&username, crate::helpers::PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = crate::helpers::activation_code(&server, &email).await;
    let (status, _) = call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204);
    let session = match api.sign_in(&username, crate::helpers::PASSWORD).await.expect("sign in") {
        client::SignInOutcome::Session(session) => session,
        other => panic!("{other:?}"),
    };
    let session = api.refresh(&session.refresh_token).await.expect("refresh");
    let bearer = Some(session.access_token.clone());
    let (status, enrollment) = call("POST", "/v1/mfa/totp/generate", bearer.clone(), None).await;
    assert_eq!(status, 200);
    let totp = crate::helpers::authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    let (status, _) = call("POST", "/v1/mfa/totp/enable", bearer.clone(), Some(json!({"code": crate::helpers::totp_code(&totp, -1)}))).await;
    assert_eq!(status, 204);
    // With TOTP on, what follows needs a TOTP step-up.
    let (status, elevated) = call("POST", "/v1/elevate/totp", bearer.clone(), Some(json!({"code": crate::helpers::totp_code(&totp, 0)}))).await;
    assert_eq!(status, 200, "{elevated}");
    let bearer = elevated["access_token"].as_str().map(str::to_string);
    let (status, _) = call("POST", "/v1/account/forgot", None, Some(json!({"username": username}))).await;
    assert_eq!(status, 204);
    crate::helpers::outbox_mail(&server, &email, |subject| subject != "Activate your account").await;
    // A passkey with a nickname, and a second address (the sign-in is recent: elevated).
    let nickname = format!("shred-nick-{id}");
    let mut device = crate::passkeys::SoftAuthenticator::new();
    let (status, started) = call("POST", "/v1/user/webauthn/add", bearer.clone(), Some(json!({"nickname": nickname}))).await;
    assert_eq!(status, 200, "{started}");
    let body = json!({"challenge_id": started["challenge_id"], "credential": device.create(&started["options"])});
    let (status, added) = call("POST", "/v1/user/webauthn/verify", bearer.clone(), Some(body)).await;
    assert_eq!(status, 200, "{added}");
    let second = format!("second-{username}@example.com");
    let (status, _) = call("POST", "/v1/user/email/change", bearer.clone(), Some(json!({"new_email": second}))).await;
    assert_eq!(status, 204);
    let (_, mail) = crate::helpers::outbox_mail(&server, &second, |subject| subject == "Confirm your new email address").await;
    let (verification_id, code) = crate::helpers::code_and_id(&mail);
    let body = json!({"verification_id": verification_id, "code": code});
    let (status, _) = call("POST", "/v1/user/email/verify", bearer.clone(), Some(body)).await;
    assert_eq!(status, 204);
    // Another account's mail, which the removal must leave alone.
    let other_email = format!("{}@example.com", unique("bystander"));
    let invitation = server.invitation().await;
    server.api().sign_up(&unique("bystander"), crate::helpers::PASSWORD, Some(&invitation), Some(&other_email)).await.expect("sign up");
    crate::helpers::outbox_message(&server, &other_email).await;

    let personal = [address.as_str(), agent.as_str(), username.as_str(), email.as_str(), nickname.as_str(), second.as_str()];
    // The log (the read models show a live account in clear, by design).
    let log: Vec<String> = every_cell(&server).await.into_iter().filter(|c| c.starts_with("events")).collect();
    assert!(!log.is_empty(), "the store has events");
    assert_eq!(holding(&log, &personal), Vec::<String>::new(), "the log holds the account's personal data only encrypted");
    let published = stream_messages(&server, &js, &stream).await;
    assert_eq!(holding(&published, &personal), Vec::<String>::new(), "NATS gets it only encrypted");
    let key = stored_key(&server, &profile_id).await.expect("a key");
    assert_eq!(key.len(), 24 + 32 + 16, "the subject key is stored wrapped (nonce, key, tag), never bare");

    let (status, _) = call("POST", "/v1/account/remove", bearer.clone(), None).await;
    assert_eq!(status, 204);

    // The removal's own events and everything before it: erased everywhere.
    let envelopes = server.events().await;
    let text = envelopes.iter().map(Value::to_string).collect::<Vec<_>>();
    assert_eq!(holding(&text, &personal), Vec::<String>::new(), "GET /v1/admin/events shows nothing personal");
    let sealed = format!("enc:v1:{profile_id}:");
    assert!(
        envelopes.iter().any(|e| e["event_type"] == "SessionSignedOut" && e["metadata"]["client_address"].as_str().is_some_and(|a| a.starts_with(&sealed))),
        "the removal's own sign-out carries the address only under the destroyed key"
    );
    assert_eq!(holding(&every_cell(&server).await, &personal), Vec::<String>::new());
    let published = stream_messages(&server, &js, &stream).await;
    assert_eq!(holding(&published, &personal), Vec::<String>::new());
    assert_eq!(stored_key(&server, &profile_id).await, None, "a tombstone without a key");
    assert!(crate::helpers::outbox(&server).iter().all(|(to, _, _)| to != &email && to != &second), "the account's mail is deleted");
    assert!(crate::helpers::outbox(&server).iter().any(|(to, _, _)| to == &other_email), "others' mail stays");

    // The deleted key left no bytes behind where the database keeps old data.
    match backend {
        Backend::Sqlite => {
            let db = server.data_dir.join("authd.db");
            for file in [db.clone(), server.data_dir.join("authd.db-wal")] {
                let bytes = std::fs::read(&file).unwrap_or_default();
                assert!(!bytes.windows(key.len()).any(|window| window == key.as_slice()), "the key's bytes are scrubbed from {}", file.display());
            }
            #[cfg(unix)]
            {
                assert_eq!(mode(&db), 0o600, "the database is private");
                assert_eq!(mode(&server.data_dir), 0o700, "the data directory is private");
            }
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
            let mut vacuumed = false;
            for _ in 0..50 {
                let done: bool =
                    sqlx::query_scalar("SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'subject_keys'")
                        .fetch_one(&mut conn)
                        .await
                        .expect("stats");
                if done {
                    vacuumed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(vacuumed, "the key table was vacuumed after the removal");
        }
    }
    #[cfg(unix)]
    {
        let outbox = server.data_dir.join("outbox");
        assert_eq!(mode(&outbox), 0o700);
        for entry in std::fs::read_dir(&outbox).expect("outbox").flatten() {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }

    if let Ok(client) = async_nats::connect(&url).await {
        let _ = jetstream::new(client).delete_stream(&stream).await;
    }
}
