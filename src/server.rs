//! `authd serve`: open the store, load the keys, catch the read models up, listen.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::TcpListener;
use poem::{EndpointExt, Server};

use crate::app::{App, Policy};
use crate::config::ServerConfig;
use crate::delivery::Delivery;
use crate::crypto::keys::Keys;
use crate::relay;
use crate::store::{self, Store};

pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    // Refused before anything is touched.
    let webauthn = crate::app::relying_party(&config.webauthn_rp_id, &config.webauthn_origins).map_err(anyhow::Error::msg)?;
    let methods = crate::api::Methods::parse(&config.sign_in_methods, config.anonymous).map_err(anyhow::Error::msg)?;
    let oidc = crate::app::OidcProviders::parse(config.oidc_providers.as_deref()).map_err(anyhow::Error::msg)?;
    let url = config.database_url();
    if url.starts_with("sqlite:") || !config.data_dir.exists() {
        create_private_dir(&config.data_dir)?;
    }
    let db = store::connect_with(&url, config.db_pool).await?;
    let configured_setup = config.server_setup.as_deref().filter(|setup| !setup.trim().is_empty());
    let keys = Keys::load(configured_setup, &config.data_dir)?;
    let kek = crate::store::shred::Kek::new(keys.subject_keys_secret());
    let wrapped = crate::store::shred::wrap_bare_keys(&db, &kek).await.context("cannot wrap the subject keys")?;
    if wrapped > 0 {
        tracing::info!(keys = wrapped, "subject keys wrapped with the key-encryption key");
    }
    let store = Store::new(db.clone(), kek);

    // Fold whatever the read models missed (a crash between commit and fold).
    let caught_up = store.catch_up().await.context("read model catch-up failed")?;
    tracing::info!(events = caught_up, "read models caught up");
    spawn_catch_up(store.clone(), Duration::from_secs(config.catch_up_interval.max(1)));
    // Token checks answer from memory; other replicas' sign-outs reach it within this.
    store.follow(Duration::from_millis(250)).await.context("cannot follow the event log")?;

    let relay = match config.nats_url.as_deref().filter(|url| !url.trim().is_empty()) {
        Some(nats_url) => {
            let settings = relay::Settings {
                nats_url: nats_url.to_string(),
                stream: config.nats_stream.clone(),
                subject_prefix: config.nats_subject_prefix.clone(),
                database_url: url.clone(),
            };
            settings.validate().map_err(anyhow::Error::msg)?;
            let status = relay::Status::new(relay::State::Connecting);
            relay::spawn(store.clone(), settings, status.clone());
            tracing::info!(stream = %config.nats_stream, subjects = %format!("{}.>", config.nats_subject_prefix), "audit relay started");
            status
        }
        None => relay::Status::new(relay::State::Disabled),
    };
    let policy = Policy {
        open_signup: config.open_signup,
        admin_token: admin_token(config.admin_token.as_deref())?,
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        access_ttl: chrono::Duration::seconds(config.access_ttl.into()),
        refresh_ttl: chrono::Duration::seconds(config.refresh_ttl.into()),
        session_max_age: chrono::Duration::seconds(config.session_max_age.into()),
        elevation_max_age: chrono::Duration::seconds(config.elevation_max_age.into()),
        sign_in_ttl: chrono::Duration::seconds(config.sign_in_ttl.into()),
        throttle: domain::throttle::ThrottlePolicy {
            threshold: config.lockout_threshold.max(1),
            backoff: chrono::Duration::seconds(config.lockout_duration.into()),
            ceiling: config.throttle_ceiling.max(config.lockout_threshold.max(1)),
            window: chrono::Duration::seconds(config.throttle_window.max(1).into()),
        },
        mfa_ticket_ttl: chrono::Duration::seconds(config.mfa_ticket_ttl.into()),
        require_verified_email: config.require_verified_email,
        sign_in_code_ttl: chrono::Duration::seconds(config.sign_in_code_ttl.max(1).into()),
        public_url: config.public_url.clone(),
        allowed_redirects: config
            .allowed_redirect_urls
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
            .map(|url| url.parse().map_err(|e| anyhow::anyhow!("AUTHD_ALLOWED_REDIRECT_URLS: {url}: {e}")))
            .collect::<anyhow::Result<_>>()?,
        sms_hourly_limit: config.sms_hourly_limit,
    };
    let delivery = Delivery::new(
        config.smtp_url.as_deref().filter(|url| !url.trim().is_empty()),
        &config.smtp_from,
        config.data_dir.join("outbox"),
        config.sms_webhook_url.as_deref().filter(|url| !url.trim().is_empty()),
    )?;
    tracing::info!(delivery = %delivery.describe(), "verification messages");
    let app = Arc::new(App::new(store, keys, policy).with_verifications(delivery, config.verification_max_attempts).with_webauthn(webauthn).with_oidc(oidc));
    app.backfill_email_owners().await.context("cannot record the owners of verified email addresses")?;
    if config.anonymous {
        spawn_anonymous_retention(app.clone(), Duration::from_secs(config.anonymous_retention.max(1).into()));
    }
    if config.seal_interval > 0 {
        let full_check = Duration::from_secs(config.seal_full_check_interval);
        spawn_sealer(db, crate::store::chain::SealKey::new(app.keys.chain_seals_secret()), Duration::from_secs(config.seal_interval), full_check);
    }
    let limits = crate::api::RateLimits::new(config.rate_limit, config.write_rate_limit, config.session_rate_limit);
    tracing::info!(listen = %config.listen, store = %store::redact(&url), "authd listening");
    Server::new(TcpListener::bind(config.listen))
        .run_with_graceful_shutdown(crate::api::routes(app, limits, crate::api::TrustedProxies::new(config.trusted_proxies.clone()), crate::api::BodyLimit(config.max_body_bytes), &config.cors_origins, methods).data(relay), shutdown(), Some(Duration::from_secs(10)))
        .await
        .with_context(|| format!("cannot serve on {}", config.listen))
}

/// Folds the log into the read models off the request path: shortly after this
/// process's commits (waiting [`FOLD_DELAY`] gathers a burst into one pass), and every
/// `every` for other replicas'. Answers read from a read model catch up themselves.
fn spawn_catch_up(store: Store, every: Duration) {
    const FOLD_DELAY: Duration = Duration::from_millis(100);
    tokio::spawn(async move {
        let mut commits = store.commits();
        loop {
            if tokio::time::timeout(every, commits.changed()).await.is_ok() {
                tokio::time::sleep(FOLD_DELAY).await;
            }
            if let Err(error) = store.catch_up().await {
                tracing::warn!(%error, "read model catch-up failed; retrying");
                tokio::time::sleep(every).await;
            }
        }
    });
}

/// Seals the event log's chain heads whenever it grew (see `chain.rs`): what moved
/// since the last seal, and every `full_check` (and first after start-up) every
/// stream, which also finds a tail deleted since. A log that no longer extends the
/// latest seal is never sealed over: that is logged as an error on every pass until
/// someone investigates (`authd replay verify`).
fn spawn_sealer(db: projections::Db, keys: crate::store::chain::SealKey, every: Duration, full_check: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        let mut last_full_check: Option<tokio::time::Instant> = None;
        loop {
            ticker.tick().await;
            let full = last_full_check.is_none_or(|at| at.elapsed() >= full_check);
            if !full {
                match crate::store::chain::log_changed_since_seal(&db).await {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot check the event log for a seal; retrying");
                        continue;
                    }
                }
            }
            let outcome = crate::store::chain::seal(&db, &keys, false, full).await;
            if full && !matches!(outcome, Err(crate::store::chain::SealError::Log(_))) {
                last_full_check = Some(tokio::time::Instant::now());
            }
            match outcome {
                Ok(crate::store::chain::SealOutcome::Sealed(seal)) => tracing::info!(
                    seal = seal.id,
                    streams = seal.streams,
                    events = seal.events,
                    digest = %seal.digest,
                    mac = %seal.mac,
                    "event log sealed"
                ),
                Ok(_) => {}
                Err(error @ crate::store::chain::SealError::Refused(_)) => {
                    tracing::error!(%error, "tamper evidence: run `authd replay verify`")
                }
                Err(error) => tracing::warn!(%error, "cannot seal the event log; retrying"),
            }
        }
    });
}

/// Removes unused anonymous accounts, a tenth of the retention time apart (at most an
/// hour, at least a second).
fn spawn_anonymous_retention(app: Arc<App>, retention: Duration) {
    tokio::spawn(async move {
        let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            match app.remove_unused_anonymous(retention).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "unused anonymous accounts removed"),
                Err(error) => tracing::warn!(%error, "cannot remove unused anonymous accounts; retrying"),
            }
        }
    });
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The admin token, refused when it is too short to resist guessing.
fn admin_token(configured: Option<&str>) -> anyhow::Result<Option<String>> {
    match configured.filter(|token| !token.is_empty()) {
        Some(token) if token.chars().count() < crate::app::MIN_ADMIN_TOKEN_LEN => anyhow::bail!(
            "AUTHD_ADMIN_TOKEN is {} characters; it must be at least {} (for example: openssl rand -hex 32)",
            token.chars().count(),
            crate::app::MIN_ADMIN_TOKEN_LEN
        ),
        token => Ok(token.map(str::to_string)),
    }
}

/// The data directory, readable by this user only (0700): it holds the store, the
/// server's secret and the outbox.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict data directory {}", dir.display()))?;
    }
    Ok(())
}
