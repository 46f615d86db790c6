//! Two replicas on one PostgreSQL: what one does holds on the other — a sign-out on
//! one ends the session on the other within a second (token checks answer from each
//! replica's memory, which follows the log), and throttling counts across replicas.

use std::time::{Duration, Instant};

use client::Error;

use crate::helpers::{unique, Backend, Server, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_on_one_replica_ends_the_session_on_the_other_within_a_second() {
    let first = Server::start(Backend::Postgres).await;
    let second = first.replica().await;
    let username = unique("replicated");
    first.sign_up(&username).await;
    let one = first.sign_in(&username).await;
    let two = second.sign_in(&username).await;
    // Both replicas have both sessions in memory now.
    for server in [&first, &second] {
        for session in [&one, &two] {
            server.api().jwt_verify(&session.access_token).await.expect("live session");
        }
    }
    // Sign out everywhere, on the first replica.
    assert_eq!(first.api().sign_out(&one.access_token, true).await.expect("sign out"), 2);
    assert!(matches!(first.api().jwt_verify(&two.access_token).await, Err(Error::Http { status: 401, .. })), "at once here");
    let signed_out = Instant::now();
    loop {
        match second.api().jwt_verify(&two.access_token).await {
            Err(Error::Http { status: 401, .. }) => break,
            Ok(_) => assert!(signed_out.elapsed() < Duration::from_secs(1), "the other replica still accepts the session"),
            Err(other) => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(second.api().refresh(&two.refresh_token).await, Err(Error::Http { status: 401, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_count_across_replicas() {
    let first = Server::start_with(Backend::Postgres, &[("AUTHD_LOCKOUT_THRESHOLD", "4")]).await;
    let second = first.replica().await;
    let username = unique("spread");
    first.sign_up(&username).await;
    for server in [&first, &second, &first, &second] {
        assert_eq!(server.api().sign_in(&username, b"wrong").await.unwrap_err(), Error::InvalidLogin);
    }
    // Four failures from this address across both replicas: throttled on either.
    for server in [&first, &second] {
        assert_eq!(server.api().sign_in(&username, PASSWORD).await.unwrap_err(), Error::InvalidLogin);
    }
}
