//! The etcd store against a real 3-member etcd cluster on loopback: the store conformance suite
//! that SQLite and memory pass, compare-and-swap between writers, fencing of a writer that is not
//! the leader, and a member's death.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cutover_core::rollout::{AppState, Event};
use cutover_core::Timestamp;
use cutover_etcd::EtcdStore;
use cutover_store::{Store, StoreError};
use cutover_test_support::etcd::EtcdCluster;

static PREFIX: AtomicU64 = AtomicU64::new(0);

fn store(cluster: &EtcdCluster) -> EtcdStore {
    let n = PREFIX.fetch_add(1, Ordering::Relaxed);
    EtcdStore::new(cluster.endpoints(), &format!("/test-{}-{n}/", std::process::id())).unwrap()
}

fn event(n: u64) -> Event {
    Event {
        at: Timestamp(n),
        rollout_id: None,
        message: format!("event {n}"),
        detail: cutover_core::event::EventDetail::Unrecognized {
            kind: "test".into(),
            data: serde_json::json!({ "n": n }),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_passes_the_store_conformance_suite() {
    let cluster = EtcdCluster::start(3).await;
    cutover_store::conformance::run_all(&|| Box::new(store(&cluster)) as Box<dyn Store>);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_app_lose_no_event() {
    let cluster = EtcdCluster::start(3).await;
    let shared = Arc::new(store(&cluster));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = Arc::clone(&shared);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let state = AppState::new("web");
                    store.commit(&state, &[event(t * 100 + i)]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let events = shared.events("web", None, 0, 1000).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_is_not_the_leader_commits_nothing() {
    let cluster = EtcdCluster::start(3).await;
    let base = store(&cluster);
    let leader_key = "/test-leader";
    base.client()
        .txn(vec![], vec![cutover_etcd::client_ops::put(leader_key, "a")])
        .unwrap();
    let prefix = format!("/fenced-{}/", std::process::id());
    let a = EtcdStore::new(cluster.endpoints(), &prefix)
        .unwrap()
        .fenced(leader_key, "a");
    let b = EtcdStore::new(cluster.endpoints(), &prefix)
        .unwrap()
        .fenced(leader_key, "b");
    let state = AppState::new("web");
    a.commit(&state, &[event(1)]).unwrap();
    let err = b.commit(&state, &[event(2)]).unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    assert!(
        err.to_string().contains("leader key /test-leader holds \"a\""),
        "{err}"
    );
    assert_eq!(
        a.events("web", None, 0, 10).unwrap().len(),
        1,
        "the stale writer wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_a_member_and_says_when_none_answers() {
    let mut cluster = EtcdCluster::start(3).await;
    let store = store(&cluster);
    let state = AppState::new("web");
    store.commit(&state, &[event(1)]).unwrap();
    cluster.kill(0);
    store.commit(&state, &[event(2)]).unwrap();
    assert_eq!(store.events("web", None, 0, 10).unwrap().len(), 2);
    cluster.kill(1);
    cluster.kill(2);
    let err = store.load("web").unwrap_err().to_string();
    assert!(err.contains("etcd at http://127.0.0.1:"), "{err}");
    cluster.restart_all().await;
    assert_eq!(
        store.events("web", None, 0, 10).unwrap().len(),
        2,
        "nothing lost across a restart"
    );
}

/// A cluster with authentication on: the store authenticates as its user, and a wrong password
/// is refused with a message that names the user and the settings to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_authentication_is_used_as_its_user() {
    let cluster = EtcdCluster::start(3).await;
    let admin = cutover_etcd::Client::new(cluster.endpoints()).unwrap();
    for (path, body) in [
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": "root-password"}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        admin.call(path, body).unwrap();
    }
    // Without credentials, etcd refuses.
    let anonymous = EtcdStore::new(cluster.endpoints(), "/auth-test/").unwrap();
    assert!(anonymous.apps().is_err());
    let client = |password: &str| {
        cutover_etcd::Client::with_options(
            cluster.endpoints(),
            &cutover_etcd::ClientOptions {
                credentials: Some(("root".into(), password.into())),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let store = EtcdStore::with_client(client("root-password"), "/auth-test/");
    let state = AppState::new("web");
    store.commit(&state, &[event(1)]).unwrap();
    assert_eq!(store.apps().unwrap(), vec!["web".to_string()]);
    let wrong = EtcdStore::with_client(client("not-it"), "/auth-test/");
    let error = wrong.apps().unwrap_err().to_string();
    assert!(
        error.contains("\"root\"") && error.contains("password_file"),
        "{error}"
    );
    assert!(!error.contains("not-it"), "the password is never shown: {error}");
}

/// A cluster with TLS on its client URLs: the store (and a follower) reach it through the CA
/// they were given; a client without it is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_tls_is_reached_through_its_ca() {
    let cluster = EtcdCluster::start_tls(3).await;
    assert!(cluster.endpoints()[0].starts_with("https://"));
    let options = cutover_etcd::ClientOptions {
        ca_pem: Some(cluster.ca_pem().unwrap().as_bytes().to_vec()),
        ..Default::default()
    };
    let client = cutover_etcd::Client::with_options(cluster.endpoints(), &options).unwrap();
    let store = EtcdStore::with_client(client.clone(), "/tls-test/");
    store.commit(&AppState::new("web"), &[event(1)]).unwrap();
    assert_eq!(store.apps().unwrap(), vec!["web".to_string()]);
    // The follower goes through the same TLS settings.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let follower = tokio::spawn(async move {
        let mut tx = Some(tx);
        cutover_etcd::follow::follow(&client, "/tls-test/appnames/", |s| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(s.keys.keys().cloned().collect::<Vec<_>>());
            }
            false
        })
        .await;
    });
    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec!["web".to_string()]);
    follower.await.unwrap();
    // Without the CA, the certificate is not trusted.
    let untrusting = EtcdStore::new(cluster.endpoints(), "/tls-test/").unwrap();
    let error = untrusting.apps().unwrap_err().to_string();
    assert!(error.contains("https://127.0.0.1"), "{error}");
}
