//! Leader election against a real 3-member etcd: one leader at a time, a successor within the
//! lease's TTL after the leader stops renewing, a stale leader fenced off the store, and a leader
//! that survives the death of an etcd member.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cutover_core::rollout::AppState;
use cutover_etcd::{Client, Election, EtcdStore};
use cutover_store::{Store, StoreError};
use cutover_test_support::etcd::EtcdCluster;

fn key(tag: &str) -> String {
    format!("/election-{}-{tag}", std::process::id())
}

/// Polls `attempt` every 100 ms for at most `within`.
fn acquire_within(election: &Election, within: Duration) -> (cutover_etcd::Leadership, Duration) {
    let start = Instant::now();
    loop {
        if let Some(leadership) = election.try_acquire().unwrap() {
            return (leadership, start.elapsed());
        }
        assert!(start.elapsed() < within, "no leadership within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_successor_once_the_lease_lapses() {
    let cluster = EtcdCluster::start(3).await;
    let client = Client::new(cluster.endpoints()).unwrap();
    let key = key("lapse");
    let a = Election::new(client.clone(), &key, "a", 2);
    let b = Election::new(client.clone(), &key, "b", 2);
    let leader = a.try_acquire().unwrap().expect("a free key is won");
    assert!(b.try_acquire().unwrap().is_none(), "two leaders");
    assert_eq!(b.leader().unwrap().as_deref(), Some("a"));
    assert!(leader.keep_alive().unwrap());

    // `a` dies (stops renewing): `b` leads within the TTL and a little.
    drop(leader);
    // A deadline for the condition, not a timing assertion: the figure is printed.
    let (b_leads, waited) = acquire_within(&b, Duration::from_secs(20));
    eprintln!(
        "a successor led {} ms after the leader stopped renewing (TTL 2 s)",
        waited.as_millis()
    );
    assert_eq!(a.leader().unwrap().as_deref(), Some("b"));

    // Resigning hands over at once.
    b_leads.resign().unwrap();
    let (a_again, waited) = acquire_within(&a, Duration::from_secs(20));
    eprintln!(
        "after a resignation the next candidate led {} ms later",
        waited.as_millis()
    );
    assert!(a_again.keep_alive().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_cannot_commit_and_the_new_one_can() {
    let cluster = EtcdCluster::start(3).await;
    let client = Client::new(cluster.endpoints()).unwrap();
    let key = key("fence");
    let prefix = format!("/fence-{}/", std::process::id());
    let a = Election::new(client.clone(), &key, "a", 1);
    let b = Election::new(client.clone(), &key, "b", 1);
    let a_store = EtcdStore::new(cluster.endpoints(), &prefix)
        .unwrap()
        .fenced(&key, "a");
    let b_store = EtcdStore::new(cluster.endpoints(), &prefix)
        .unwrap()
        .fenced(&key, "b");
    let state = AppState::new("web");

    let leadership = a.try_acquire().unwrap().unwrap();
    a_store.commit(&state, &[]).unwrap();
    // `a` stalls (a long GC pause, a partition): its lease lapses and `b` takes over.
    drop(leadership);
    let (_b_leads, _) = acquire_within(&b, Duration::from_secs(20));
    let err = a_store.commit(&state, &[]).unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    b_store.commit(&state, &[]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_keeps_its_leadership_when_an_etcd_member_dies() {
    let mut cluster = EtcdCluster::start(3).await;
    let client = Client::new(cluster.endpoints()).unwrap();
    let key = key("member");
    let a = Election::new(client.clone(), &key, "a", 3);
    let leadership = a.try_acquire().unwrap().unwrap();
    cluster.kill(0);
    // Bounded: a few renewals across the loss of a member.
    for _ in 0..5 {
        assert!(
            leadership.keep_alive().unwrap(),
            "the leadership was lost with one member"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(a.leader().unwrap().as_deref(), Some("a"));
}
