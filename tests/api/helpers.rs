//! Black-box harness: starts the real `authd` binary on a free port against a fresh
//! store (a SQLite file in a temporary data directory, or a new PostgreSQL database
//! on the server `TEST_DATABASE_URL` names) and talks to it over HTTP with the real
//! OPAQUE client.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use client::{b64, Api, Login, Registration, Session, SignInOutcome};
use serde_json::Value;
use sqlx::Connection;

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";
pub const PASSWORD: &[u8] = b"correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("TEST_DATABASE_URL has a database part");
    format!("{base}/{database}")
}

/// Runs `sql` on the admin database, failing loudly when PostgreSQL is not there.
fn postgres_admin(sql: String) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let url = postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {url} ({e}). Start it (see README: `scripts/test` starts it) \
                     or set TEST_DATABASE_URL"
                )
            });
            sqlx::query(&sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    })
    .join()
    .expect("postgres admin thread");
}

pub struct Server {
    pub backend: Backend,
    pub base: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pg_database: Option<String>,
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Self::start_with(backend, &[]).await
    }

    /// Starts a server with extra environment variables (these win over defaults).
    pub async fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Server {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let data_dir = std::env::temp_dir().join(format!("authd-test-{id}"));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let (database_url, pg_database) = match backend {
            Backend::Sqlite => (format!("sqlite://{}", data_dir.join("authd.db").display()), None),
            Backend::Postgres => {
                let name = format!("authd_test_{id}");
                postgres_admin(format!("CREATE DATABASE {name}"));
                (with_database(&postgres_admin_url(), &name), Some(name))
            }
        };
        let mut env: Vec<(String, String)> = vec![
            ("AUTHD_ADMIN_TOKEN".into(), ADMIN.into()),
            ("AUTHD_RATE_LIMIT".into(), "off".into()),
            ("RUST_LOG".into(), "info,sqlx=warn".into()),
        ];
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        let mut server = Server {
            backend,
            base: String::new(),
            data_dir,
            database_url,
            env,
            child: None,
            pg_database,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        self.base = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(self.data_dir.join(format!("authd-{port}.log"))).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_authd"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AUTHD_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUTHD_DATA_DIR", &self.data_dir)
            .env("DATABASE_URL", &self.database_url)
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start authd"));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = http.get(format!("{}/healthz", self.base)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("authd exited with {status} during start-up:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "authd did not start in time:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's resident memory, in KiB (Linux: /proc).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.data_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".log") {
                    all.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap_or_default()));
                }
            }
        }
        all
    }

    /// Kills the process (no graceful shutdown) and starts it again on the same store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A second authd process on the same store (PostgreSQL) with the same OPAQUE
    /// setup: another replica. Dropping it leaves the database alone.
    pub async fn replica(&self) -> Server {
        assert_eq!(self.backend, Backend::Postgres, "replicas share a PostgreSQL store");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let data_dir = std::env::temp_dir().join(format!("authd-test-{id}"));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        std::fs::copy(self.data_dir.join("server_setup"), data_dir.join("server_setup")).expect("copy the server setup");
        let mut replica = Server {
            backend: self.backend,
            base: String::new(),
            data_dir,
            database_url: self.database_url.clone(),
            env: self.env.clone(),
            child: None,
            pg_database: None,
        };
        replica.spawn().await;
        replica
    }

    /// Runs statements on the server's store, in order, on one connection.
    pub async fn sql(&self, statements: &[&str]) {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url).await.expect("sqlite");
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url).await.expect("postgres");
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
            }
        }
    }

    /// Every stored event, straight from the store in the order it was written
    /// (not waiting for the global order's horizon, which an open transaction
    /// elsewhere on a shared PostgreSQL holds back): (aggregate type, event type,
    /// payload as stored).
    pub async fn stored_events(&self) -> Vec<(String, String, Value)> {
        use sqlx::{Connection, Row};
        let rows: Vec<(String, String, String)> = match self.backend {
            Backend::Sqlite => {
                let sql = "SELECT aggregate_type, event_type, payload FROM events ORDER BY rowid";
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url).await.expect("sqlite");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect(sql);
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
            }
            Backend::Postgres => {
                let sql = "SELECT aggregate_type, event_type, payload::text FROM events ORDER BY position";
                let mut conn = sqlx::PgConnection::connect(&self.database_url).await.expect("postgres");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect(sql);
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
            }
        };
        rows.into_iter().map(|(kind, event, payload)| (kind, event, serde_json::from_str(&payload).expect("json"))).collect()
    }

    /// Waits until the read models, which fold off the request path, have folded
    /// every stored event.
    pub async fn read_models_caught_up(&self) {
        use sqlx::Connection;
        let sql = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_positions
                   WHERE global_position <= COALESCE((SELECT position FROM checkpoints WHERE name = 'read_models'), 0))";
        for _ in 0..100 {
            let (stored, folded): (i64, i64) = match self.backend {
                Backend::Sqlite => {
                    let mut conn = sqlx::SqliteConnection::connect(&self.database_url).await.expect("sqlite");
                    sqlx::query_as(sql).fetch_one(&mut conn).await.expect(sql)
                }
                Backend::Postgres => {
                    let mut conn = sqlx::PgConnection::connect(&self.database_url).await.expect("postgres");
                    sqlx::query_as(sql).fetch_one(&mut conn).await.expect(sql)
                }
            };
            if stored == folded {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the read models did not catch up within 10 s");
    }

    /// Every audit envelope of the log, paged through `GET /v1/admin/events` — every
    /// event committed so far: the log is numbered up to a horizon that an open
    /// transaction elsewhere on a shared PostgreSQL can hold back for a moment, so this
    /// waits (up to 10 s) until it has numbered as many events as the store holds.
    pub async fn events(&self) -> Vec<Value> {
        let stored = self.stored_events().await.len();
        for _ in 0..100 {
            let all = self.events_now().await;
            if all.len() >= stored {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.events_now().await
    }

    /// The audit envelopes the log has numbered by now.
    async fn events_now(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self.call("GET", &format!("/v1/admin/events?after={after}&limit=1000"), Some(ADMIN), None).await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().expect("events").clone();
            let next = page["next"].as_i64().expect("next");
            let done = events.len() < 1000;
            all.extend(events);
            after = next;
            if done {
                return all;
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs statements straight on the server's store (to simulate what the server
    /// itself cannot be made to do, like missing a read-model update).
    pub async fn execute_sql(&self, statements: &[&str]) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url).await.expect("sqlite");
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.expect(sql);
                }
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url).await.expect("postgres");
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.expect(sql);
                }
            }
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }

    /// One fresh invitation.
    pub async fn invitation(&self) -> String {
        let filled = self.api().fill_bucket(ADMIN, "signup", 1).await.expect("fill");
        filled.tokens[0].clone()
    }

    /// Signs a new account up with an invitation; returns its profile id.
    pub async fn sign_up(&self, username: &str) -> String {
        let token = self.invitation().await;
        self.api().sign_up(username, PASSWORD, Some(&token), None).await.expect("sign up")
    }

    pub async fn sign_in(&self, username: &str) -> Session {
        match self.api().sign_in(username, PASSWORD).await.expect("sign in") {
            SignInOutcome::Session(session) => session,
            other => panic!("expected a session, got {other:?}"),
        }
    }

    /// Raw call; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.api().raw(method, path, bearer, body.as_ref()).await.expect("transport")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(name) = self.pg_database.take() {
            postgres_admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A registration prepared up to the record, ready to finish.
pub async fn registration_record(server: &Server, username: &str, token: Option<&str>) -> String {
    let (registration, request) = Registration::start(PASSWORD).expect("registration start");
    let response = server.api().sign_up_start(username, token, &request).await.expect("sign up start");
    registration.finish(PASSWORD, &response).expect("registration finish")
}

/// A valid KE3 for `username`, with its sign-in id.
pub async fn ke3(server: &Server, username: &str) -> (String, String) {
    let (login, ke1) = Login::start(PASSWORD).expect("login start");
    let (sign_in_id, ke2) = server.api().sign_in_start(username, &ke1).await.expect("sign in start");
    let (ke3, _) = login.finish(PASSWORD, &ke2).expect("login finish");
    (sign_in_id, ke3)
}

pub fn bogus_ke3() -> String {
    b64(&[7u8; 64])
}

/// The `path`s of a 422's details.
pub fn detail_paths(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .map(|details| details.iter().filter_map(|d| d["path"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Declares each async test once per backend: `mod sqlite` and `mod postgres`.
macro_rules! both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )+
        }
    };
}

/// Every message in the server's outbox: (to, subject, body).
pub fn outbox(server: &Server) -> Vec<(String, String, String)> {
    let mut messages = Vec::new();
    for entry in std::fs::read_dir(server.data_dir.join("outbox")).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read outbox file");
        let (head, body) = text.split_once("\n\n").expect("headers, blank line, body");
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_string();
        messages.push((header("To: "), header("Subject: "), body.trim_end().to_string()));
    }
    messages
}

/// The one message to `to` whose subject passes `subject`: (subject, body). Waits a little.
pub async fn outbox_mail(server: &Server, to: &str, subject: impl Fn(&str) -> bool) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut found: Vec<(String, String)> = outbox(server)
            .into_iter()
            .filter(|(recipient, s, _)| recipient == to && subject(s))
            .map(|(_, s, body)| (s, body))
            .collect();
        match found.len() {
            0 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            1 => return found.remove(0),
            n => panic!("expected one message to {to}, found {n}"),
        }
    }
}

/// The one message to `to` in the outbox: (subject, body). Waits a little.
pub async fn outbox_message(server: &Server, to: &str) -> (String, String) {
    outbox_mail(server, to, |_| true).await
}

/// The TOTP of a base32 secret, as an authenticator app would have it.
pub fn authenticator(secret_base32: &str) -> totp_rs::TOTP {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_string()).to_bytes().expect("base32 secret");
    totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, secret, None, String::new())
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// Code for the step `offset` steps from now (the server accepts -1..=+1).
pub fn totp_code(totp: &totp_rs::TOTP, offset: i64) -> String {
    let time = now() as i64 + offset * 30;
    totp.generate(u64::try_from(time).expect("positive"))
}

/// Runs `authd replay <args>` on the server's store.
pub fn replay(server: &Server, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_authd"))
            .arg("replay")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &server.database_url)
            .env("AUTHD_DATA_DIR", &server.data_dir)
            .output()
            .expect("run authd replay")
    })
}

/// stdout of a replay that must succeed.
pub fn replay_ok(server: &Server, args: &[&str]) -> String {
    let output = replay(server, args);
    assert!(
        output.status.success(),
        "authd replay {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Each `(method, path, bearer, body, status, bad fields)` answers `status` in the
/// one error shape, naming exactly those fields.
pub async fn assert_error_answers<P: AsRef<str>>(server: &Server, cases: Vec<(&str, P, Option<&str>, Value, u16, Vec<&str>)>) {
    for (method, path, bearer, body, status, fields) in cases {
        let path = path.as_ref();
        let body = (!body.is_null()).then_some(body);
        let (got, answer) = server.call(method, path, bearer, body.clone()).await;
        let context = format!("{method} {path} {body:?} -> {got} {answer}");
        assert_eq!(got, status, "{context}");
        assert_eq!(answer["status"], status, "{context}");
        assert!(answer["error"].is_string() && answer["message"].is_string(), "{context}");
        let mut paths = detail_paths(&answer);
        let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        paths.sort();
        expected.sort();
        assert_eq!(paths, expected, "{context}");
    }
}

/// The verification id and code of an account message.
pub fn code_and_id(body: &str) -> (String, String) {
    let code = body.split(" code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code");
    let id = body.split("Verification id: ").nth(1).expect("id").trim();
    (id.to_string(), code.to_string())
}

/// The activation message sent to `email`: its verification id and code.
pub async fn activation_code(server: &Server, email: &str) -> (String, String) {
    let (_, body) = outbox_mail(server, email, |subject| subject == "Activate your account").await;
    code_and_id(&body)
}

/// A real SMTP server for a test: Python's aiosmtpd (scripts/test installs it),
/// delivering into a maildir; stopped and cleaned up when dropped.
pub struct SmtpServer {
    pub url: String,
    pub maildir: PathBuf,
    child: Child,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let python = std::process::Command::new("python3").args(["-c", "import aiosmtpd"]).status();
        assert!(
            python.is_ok_and(|status| status.success()),
            "this test needs Python's aiosmtpd: `python3 -m pip install aiosmtpd` (scripts/test installs it)"
        );
        let maildir = std::env::temp_dir().join(format!("authd-maildir-{}", uuid::Uuid::new_v4().simple()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "aiosmtpd did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        SmtpServer { url: format!("smtp://127.0.0.1:{port}"), maildir, child }
    }

    /// The messages delivered so far, as stored (headers, blank line, body).
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|file| std::fs::read_to_string(file.path()).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}
