#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fleet's router against a real 3-member etcd: a slot is never called free of traffic
//! while a registered proxy is behind the stored table, a table is "applied" only once every
//! proxy routes by it, and the counters are read from every proxy or not at all.

use std::time::Duration;

use cutover_core::route::Pool;
use cutover_core::{RouteTable, Slot};
use cutover_etcd::{Client, Election};
use cutover_router::Router;
use cutover_server::fleet::{FleetRouter, Keys, ProxyRecord};
use cutover_test_support::etcd::EtcdCluster;

fn table(live: Slot, canary_weight_bp: u16) -> RouteTable {
    let pool = |version: &str, port: u16| Pool {
        version: version.into(),
        backends: vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
    };
    RouteTable {
        live,
        canary_weight_bp,
        blue: pool("v1", 9001),
        green: pool("v2", 9002),
    }
}

fn register(client: &Client, keys: &Keys, id: &str, generation: u64) {
    let record = ProxyRecord {
        id: id.into(),
        // Nothing listens there: the counters of this proxy cannot be read.
        admin: "http://127.0.0.1:9".into(),
        pid: 1,
        contact_ms: 0,
        generations: [("web".to_string(), generation)].into(),
        confirmed_ms: None,
        stale: false,
    };
    let key = format!("{}{id}", keys.proxies_prefix());
    let value = serde_json::to_string(&record).unwrap();
    assert!(client
        .txn(vec![], vec![cutover_etcd::client_ops::put(&key, &value)])
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_free_of_traffic_only_when_every_proxy_has_moved_on() {
    let cluster = EtcdCluster::start(3).await;
    let client = Client::new(cluster.endpoints()).unwrap();
    let keys = Keys::new("/router-test/");
    let identity = "controller-a";
    let election = Election::new(client.clone(), &keys.leader(), identity, 10);
    let _leadership = tokio::task::spawn_blocking(move || election.try_acquire())
        .await
        .unwrap()
        .unwrap()
        .expect("the key is free");
    let router = FleetRouter::new(
        client.clone(),
        keys.clone(),
        "web",
        identity,
        Duration::from_millis(100),
        "token-0123456789abcdef",
    );
    // Everyone on blue, then everyone on green.
    router.apply(&table(Slot::Blue, 0)).await.unwrap();
    let (c, k) = (client.clone(), keys.clone());
    tokio::task::spawn_blocking(move || register(&c, &k, "p1", 1))
        .await
        .unwrap();
    assert_eq!(router.applied().await.unwrap(), table(Slot::Blue, 0));
    router.apply(&table(Slot::Green, 0)).await.unwrap();
    // The stored table gives blue nothing, but p1 still routes by generation 1: blue may still
    // have traffic, and the table is not applied yet.
    assert!(router.still_routes(Slot::Blue).await);
    let behind = router.applied().await.unwrap_err().to_string();
    assert!(
        behind.contains("proxy p1 still routes by generation 1, not 2"),
        "{behind}"
    );
    // Once p1 routes by generation 2, blue is free and the table is applied.
    let (c, k) = (client.clone(), keys.clone());
    tokio::task::spawn_blocking(move || register(&c, &k, "p1", 2))
        .await
        .unwrap();
    assert!(!router.still_routes(Slot::Blue).await);
    assert!(router.still_routes(Slot::Green).await);
    assert_eq!(router.applied().await.unwrap(), table(Slot::Green, 0));
    // The same table again writes nothing (the generation stays).
    router.apply(&table(Slot::Green, 0)).await.unwrap();
    assert!(!router.reconcile(&table(Slot::Green, 0)).await.unwrap());
    assert!(!router.still_routes(Slot::Blue).await);
    // A proxy whose counters cannot be read makes the reading fail: no sum of part of the fleet.
    let error = router.counters().await.unwrap_err().to_string();
    assert!(error.contains("proxy p1 did not report"), "{error}");
}
