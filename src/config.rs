//! Configuration: command-line flags, each mirrored by an environment variable.
//! The variable names of the HTTP contract are kept exactly; the README lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "authd", version, about = "Event-sourced, password-blind (OPAQUE) authentication server")]
pub struct Cli {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the OpenAPI spec (YAML) the server serves.
    Openapi,
    /// Print a new OPAQUE server setup (base64url) for `AUTHD_SERVER_SETUP`.
    GenerateSetup,
    /// Fill a bucket with N new single-use tokens and print them (admin).
    Fill(FillArgs),
    /// Sign up with OPAQUE; the password is read from the terminal or stdin.
    SignUp(SignUpArgs),
    /// Sign in with OPAQUE and print the session (tokens) as JSON.
    SignIn(SignInArgs),
    /// Exchange a refresh token for a new session and print it as JSON.
    Refresh(RefreshArgs),
    /// Check an access token with the server and print who it belongs to.
    Verify(TokenArgs),
    /// End this session (or every session of the account with --all).
    SignOut(SignOutArgs),
    /// List the account's open sessions as JSON, or end one with --end.
    Sessions(SessionsArgs),
    /// Change the password of a recently signed-in session (OPAQUE; read like at
    /// sign-up): every other session of the account ends.
    ChangePassword(TokenArgs),
    /// Drive concurrent sign-ins, refreshes and verifications against a running
    /// server and print throughput and latency.
    Bench(BenchArgs),
    /// Forensics on the event log: export, account timelines, past state, read-model
    /// rebuilds, integrity checks.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "AUTHD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the embedded database, the OPAQUE server setup and other state.
    #[arg(long, env = "AUTHD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Event store: postgres://… or sqlite://… (default: sqlite file in the data directory).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Most connections to PostgreSQL this process keeps open.
    #[arg(long, env = "AUTHD_DB_POOL", default_value_t = crate::store::DEFAULT_POOL)]
    pub db_pool: u32,
    /// Secret that admin routes require as a Bearer token (unset: admin routes answer 403).
    #[arg(long, env = "AUTHD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Let anyone sign up without a `signup` token.
    #[arg(long, env = "AUTHD_OPEN_SIGNUP", default_value_t = false, action = clap::ArgAction::Set)]
    pub open_signup: bool,
    /// NATS server for the audit stream (unset: no audit relay).
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Per-address rate limits on sign-in, sign-up, password recovery and code
    /// validation: `on` (60 a minute per address and kind), `<n>/min`, `<n>/s`, or
    /// `off` for load tests and benchmarks — `off` also turns off the write and
    /// session limits below.
    #[arg(long, env = "AUTHD_RATE_LIMIT", default_value = "on")]
    pub rate_limit: crate::api::RateLimitSetting,
    /// Per-address rate limit on every other route that writes (any method but GET,
    /// HEAD, OPTIONS; not admin routes): `<n>/min`, `<n>/s` or `off`.
    #[arg(long, env = "AUTHD_WRITE_RATE_LIMIT", default_value = "120/min")]
    pub write_rate_limit: crate::api::RateLimitSetting,
    /// Per-session rate limit on every route that writes with an access token (keyed
    /// by the token's session): `<n>/min`, `<n>/s` or `off`.
    #[arg(long, env = "AUTHD_SESSION_RATE_LIMIT", default_value = "30/min")]
    pub session_rate_limit: crate::api::RateLimitSetting,
    /// The largest request body accepted, in bytes; larger ones are refused (413)
    /// before they are read.
    #[arg(long, env = "AUTHD_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `https://app.example.com`. Unset: none (no CORS headers).
    #[arg(long, env = "AUTHD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The OPAQUE server setup as base64url (128 bytes). Unset: kept in the data directory.
    #[arg(long, env = "AUTHD_SERVER_SETUP", hide_env_values = true)]
    pub server_setup: Option<String>,
    /// `iss` of access tokens.
    #[arg(long, env = "AUTHD_JWT_ISSUER", default_value = "authd")]
    pub jwt_issuer: String,
    /// `aud` of access tokens.
    #[arg(long, env = "AUTHD_JWT_AUDIENCE", default_value = "authd")]
    pub jwt_audience: String,
    /// Access token lifetime in seconds.
    #[arg(long, env = "AUTHD_ACCESS_TTL", default_value_t = 900)]
    pub access_ttl: u32,
    /// Refresh token lifetime in seconds.
    #[arg(long, env = "AUTHD_REFRESH_TTL", default_value_t = 30 * 24 * 3600)]
    pub refresh_ttl: u32,
    /// A session's absolute lifetime in seconds: refreshing never extends it.
    #[arg(long, env = "AUTHD_SESSION_MAX_AGE", default_value_t = 30 * 24 * 3600)]
    pub session_max_age: u32,
    /// Seconds a proof of presence counts as recent for sensitive routes (step-up).
    #[arg(long, env = "AUTHD_ELEVATION_MAX_AGE", default_value_t = 300)]
    pub elevation_max_age: u32,
    /// Seconds a passwordless sign-in code (email, SMS) or link is valid.
    #[arg(long, env = "AUTHD_SIGN_IN_CODE_TTL", default_value_t = 600)]
    pub sign_in_code_ttl: u32,
    /// The base URL of this server as browsers reach it: links in mail point there.
    #[arg(long, env = "AUTHD_PUBLIC_URL", default_value = "http://localhost:8080")]
    pub public_url: String,
    /// Comma-separated URLs a sign-in link may redirect to: a `redirect_to` must have
    /// the same scheme, host and port as one of them and a path at or below its path.
    #[arg(long, env = "AUTHD_ALLOWED_REDIRECT_URLS", value_delimiter = ',')]
    pub allowed_redirect_urls: Vec<String>,
    /// Comma-separated ways of signing in this server offers: password, passkey,
    /// email_code, sms_code, email_link, pat, idtoken. The routes of the others answer 403.
    #[arg(long, env = "AUTHD_SIGN_IN_METHODS", value_delimiter = ',', default_value = "password,passkey,email_code,sms_code,email_link,pat,idtoken")]
    pub sign_in_methods: Vec<String>,
    /// OpenID providers whose ID tokens sign in: a JSON list of `{"name", "issuer",
    /// "client_id"}` (keys found through the issuer's discovery document).
    #[arg(long, env = "AUTHD_OIDC_PROVIDERS")]
    pub oidc_providers: Option<String>,
    /// Anonymous sign-in (`/v1/sign/in/anonymous`): accounts for nobody in particular.
    #[arg(long, env = "AUTHD_ANONYMOUS", default_value_t = false, action = clap::ArgAction::Set)]
    pub anonymous: bool,
    /// Seconds an anonymous account may go unused (no session opened, refreshed or
    /// elevated) before the server removes it.
    #[arg(long, env = "AUTHD_ANONYMOUS_RETENTION", default_value_t = 30 * 24 * 3600)]
    pub anonymous_retention: u32,
    /// The WebAuthn relying party ID (passkeys): the domain the origins are on.
    #[arg(long, env = "AUTHD_WEBAUTHN_RP_ID", default_value = "localhost")]
    pub webauthn_rp_id: String,
    /// Comma-separated origins whose pages may register and use passkeys: each on the
    /// RP ID or a subdomain of it, https unless on localhost.
    #[arg(long, env = "AUTHD_WEBAUTHN_ORIGINS", value_delimiter = ',', default_value = "http://localhost:8080")]
    pub webauthn_origins: Vec<String>,
    /// Seconds a sign-in may take between KE1 and KE3.
    #[arg(long, env = "AUTHD_SIGN_IN_TTL", default_value_t = 120)]
    pub sign_in_ttl: u32,
    /// Seconds between catch-up passes of the read models.
    #[arg(long, env = "AUTHD_CATCH_UP_INTERVAL", default_value_t = 5)]
    pub catch_up_interval: u64,
    /// Log format.
    #[arg(long, env = "AUTHD_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Failed proofs from one client address (an IPv6 /64) for one account before
    /// that address is throttled for that account.
    #[arg(long, env = "AUTHD_LOCKOUT_THRESHOLD", default_value_t = 10)]
    pub lockout_threshold: u32,
    /// Seconds a throttled address waits first; each further failure doubles it.
    #[arg(long, env = "AUTHD_LOCKOUT_DURATION", default_value_t = 900)]
    pub lockout_duration: u32,
    /// Failed proofs for one account from all addresses together, within one
    /// throttling window, before every address is throttled.
    #[arg(long, env = "AUTHD_THROTTLE_CEILING", default_value_t = 100)]
    pub throttle_ceiling: u32,
    /// Seconds of one throttling window: failures count within it.
    #[arg(long, env = "AUTHD_THROTTLE_WINDOW", default_value_t = 3600)]
    pub throttle_window: u32,
    /// Proxies whose `X-Forwarded-For` is believed (comma-separated addresses or
    /// CIDR ranges); the client address is the last one before them.
    #[arg(long, env = "AUTHD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::api::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds an `mfa_ticket` from sign-in stays valid.
    #[arg(long, env = "AUTHD_MFA_TICKET_TTL", default_value_t = 300)]
    pub mfa_ticket_ttl: u32,
    /// Refuse sign-in (403 `email_not_verified`) until the account's email is verified.
    #[arg(long, env = "AUTHD_REQUIRE_VERIFIED_EMAIL", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_verified_email: bool,
    /// SMTP server for verification emails (`smtp://host:port`, `smtps://user:pass@host`).
    /// Unset: emails are written to `<data dir>/outbox`.
    #[arg(long, env = "AUTHD_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of verification emails.
    #[arg(long, env = "AUTHD_SMTP_FROM", default_value = "authd@localhost")]
    pub smtp_from: String,
    /// Endpoint that text messages (`phone` verifications) are posted to as JSON
    /// `{"to", "body"}`. Unset: `phone` verifications answer 503.
    #[arg(long, env = "AUTHD_SMS_WEBHOOK_URL", hide_env_values = true)]
    pub sms_webhook_url: Option<String>,
    /// Texted codes the whole server (all replicas together) sends in one hour (UTC,
    /// by the clock hour); past it, sign-in by text answers as usual but sends nothing
    /// and phone changes answer 429.
    #[arg(long, env = "AUTHD_SMS_HOURLY_LIMIT", default_value_t = 200)]
    pub sms_hourly_limit: u32,
    /// Wrong codes a verifier takes before it refuses every code (429).
    #[arg(long, env = "AUTHD_VERIFICATION_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub verification_max_attempts: u32,
    /// Seconds between seals of the event log's hash-chain heads (written only when the
    /// log grew); 0 turns sealing off.
    #[arg(long, env = "AUTHD_SEAL_INTERVAL", default_value_t = 60)]
    pub seal_interval: u64,
    /// Seconds between the seals that check every stream of the log (the others look
    /// only at what moved since the last seal); the first seal after start-up is one.
    #[arg(long, env = "AUTHD_SEAL_FULL_CHECK_INTERVAL", default_value_t = 3600)]
    pub seal_full_check_interval: u64,
    /// JetStream stream the audit relay publishes to (created if missing).
    #[arg(long, env = "AUTHD_NATS_STREAM", default_value = "AUTHD_EVENTS")]
    pub nats_stream: String,
    /// Subject prefix of audit events: `<prefix>.<aggregate_type>.<event_type>`.
    #[arg(long, env = "AUTHD_NATS_SUBJECT_PREFIX", default_value = "authd.events")]
    pub nats_subject_prefix: String,
}

impl ServerConfig {
    /// The event store URL: the configured one, or a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("authd.db").display()),
        }
    }
}

/// `authd bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: Target,
    /// Admin token of the server (to issue invitations for the bench accounts).
    #[arg(long, env = "AUTHD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Concurrent clients (one account each, unless --hot-account).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Complete sign-ins per client (unless --duration).
    #[arg(long, default_value_t = 8)]
    pub sign_ins: usize,
    /// Refreshes per client (unless --duration).
    #[arg(long, default_value_t = 200)]
    pub refreshes: usize,
    /// Access-token verifications, and /healthz calls, per client (unless --duration).
    #[arg(long, default_value_t = 500)]
    pub verifications: usize,
    /// Server-capacity mode: the bench accounts sign up and sign in with a minimal
    /// Argon2id (m=8 KiB, t=1; `protocol::cheap_ksf`) instead of the real one
    /// (m=64 MiB, t=3), so the client's CPU stays small and the numbers show the
    /// server, whose work is the same with either.
    #[arg(long)]
    pub capacity: bool,
    /// Run each phase for this many seconds instead of a count per client.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// All clients sign in to ONE account concurrently (contention on one account).
    #[arg(long)]
    pub hot_account: bool,
    /// Before measuring, give each bench account this many earlier sign-ins and
    /// its session this many earlier refreshes (compare with a run without).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub history: usize,
    /// Before measuring, sign up this many extra accounts (minimal Argon2id), so
    /// the bench runs against a populated store.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed_accounts: usize,
    /// Instead of the phases: a steady mixed load for this many seconds (each client
    /// signs in, refreshes 4 times and checks its token 20 times, over and over),
    /// printing each minute's rates (thirds of the run when shorter than 3 minutes)
    /// and the last against the first.
    #[arg(long, value_name = "SECS")]
    pub mixed: Option<f64>,
    /// Open loop: start this many complete sign-ins per second (whatever the answers'
    /// latency: a slow server does not slow the arrivals) for --duration seconds
    /// (default 10), over the --concurrency accounts, and print the rate reached and
    /// p50/p99. For latency at a given load, e.g. half the maximum rate.
    #[arg(long, value_name = "PER_SEC", conflicts_with = "mixed")]
    pub rate: Option<f64>,
    /// Iterations of the in-process measure of the server's OPAQUE steps alone
    /// (KE1 → KE2, KE3 check) on one core; 0 skips it.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub opaque_iterations: usize,
}

/// Where the CLI's client commands find the server.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Base URL of the authd server.
    #[arg(long, env = "AUTHD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct FillArgs {
    #[command(flatten)]
    pub target: Target,
    /// Admin token of the server.
    #[arg(long, env = "AUTHD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// `signup` or `profile`.
    #[arg(long, default_value = "signup")]
    pub bucket: String,
    /// How many tokens to generate.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
}

#[derive(Debug, Args)]
pub struct SignUpArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub username: String,
    /// Invitation token from the `signup` bucket.
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
}

#[derive(Debug, Args)]
pub struct SignInArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, required_unless_present_any = ["pat", "email_code"], default_value = "")]
    pub username: String,
    /// Private sign-in (`/v1/step/*`): the username travels only encrypted under an
    /// ephemeral key agreement, and the session comes back encrypted.
    #[arg(long, conflicts_with = "pat")]
    pub private: bool,
    /// Sign in with a personal access token (read like a password, never from an
    /// argument) instead of a username and password.
    #[arg(long, conflicts_with = "email_code")]
    pub pat: bool,
    /// Sign in with a code mailed to this (verified) address; the code is read like
    /// a password.
    #[arg(long, value_name = "EMAIL", conflicts_with = "private")]
    pub email_code: Option<String>,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, env = "AUTHD_REFRESH_TOKEN", hide_env_values = true)]
    pub refresh_token: String,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub target: Target,
    /// Access token (JWT).
    #[arg(long, env = "AUTHD_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: String,
}

#[derive(Debug, Args)]
pub struct SignOutArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// End this session (an id from the list) instead of listing.
    #[arg(long)]
    pub end: Option<String>,
}

/// `authd replay`: reads the store the server uses (same settings and defaults).
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Event store: postgres://… or sqlite://… (default: the server's, the SQLite file
    /// in the data directory).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// The server's data directory (the SQLite file, the OPAQUE server setup).
    #[arg(long, env = "AUTHD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The OPAQUE server setup (base64url), when it is not in the data directory.
    #[arg(long, env = "AUTHD_SERVER_SETUP", hide_env_values = true, global = true)]
    pub server_setup: Option<String>,
    #[command(subcommand)]
    pub command: ReplayCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Export events as JSON lines, in log order, optionally filtered.
    Events(EventsArgs),
    /// An account's history across all its aggregates, in log order.
    Timeline(TimelineArgs),
    /// An aggregate's state as it was at a log position or a time, as JSON.
    State(StateArgs),
    /// Rebuild every read model from the log into fresh tables, compare them with the
    /// live ones (exit 1 when they differ), and (with --swap) replace the live ones.
    Rebuild(RebuildArgs),
    /// Check the hash chain of every aggregate and the latest seal; exits non-zero
    /// naming the first broken link.
    Verify,
    /// Seal the current chain heads now (the server does this every AUTHD_SEAL_INTERVAL).
    Seal(SealArgs),
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this aggregate type (user, username, session, sign_in, mfa, mfa_challenge, invite_token).
    #[arg(long)]
    pub aggregate_type: Option<String>,
    /// Only this aggregate id.
    #[arg(long)]
    pub aggregate_id: Option<String>,
    /// Only this event type (e.g. SessionOpened).
    #[arg(long)]
    pub event_type: Option<String>,
    /// From this log position (inclusive).
    #[arg(long)]
    pub from: Option<i64>,
    /// Up to this log position (inclusive).
    #[arg(long)]
    pub to: Option<i64>,
    /// Recorded at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Recorded at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// A username (as typed at sign-up; normalised) or a profile id.
    pub account: String,
    /// JSON lines (each event's envelope plus its description) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// user, username, session, sign_in, mfa, mfa_challenge or invite_token.
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// A log position (folds events at or before it) or an RFC 3339 time (events
    /// recorded at or before it). Default: now.
    #[arg(long)]
    pub at: Option<At>,
}

/// A moment in the log.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Position(i64),
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for At {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<i64>() {
            Ok(position) => Ok(At::Position(position)),
            Err(_) => parse_time(text).map(At::Time),
        }
    }
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&chrono::Utc))
        .map_err(|error| format!("not a log position or an RFC 3339 time ({error}): {text:?}"))
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Replace the live read models with the rebuilt ones (in one transaction).
    #[arg(long)]
    pub swap: bool,
}

#[derive(Debug, Args)]
pub struct SealArgs {
    /// Seal the log as it is now even when it no longer extends the latest seal: a new
    /// baseline, after an investigation.
    #[arg(long)]
    pub accept_current: bool,
}
