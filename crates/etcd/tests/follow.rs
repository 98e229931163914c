//! A follower of a prefix against a real 3-member etcd: every change in order, across the death
//! of the member it watches and a restart of the whole cluster, and a fresh list (never a stale
//! map) when the revision it would resume from was compacted away while it was cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_etcd::follow::{follow, Snapshot};
use cutover_etcd::Client;
use cutover_test_support::etcd::EtcdCluster;
use cutover_test_support::wait_until;

fn put(client: &Client, key: &str, value: &str) {
    assert!(client
        .txn(vec![], vec![cutover_etcd::client_ops::put(key, value)])
        .unwrap());
}

struct Seen(Arc<Mutex<Vec<Snapshot>>>);

impl Seen {
    fn start(endpoints: Vec<String>, prefix: &str) -> (Seen, tokio::task::JoinHandle<()>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let client = cutover_etcd::Client::new(endpoints).unwrap();
            follow(&client, &prefix, |s| {
                log.lock().unwrap().push(s.clone());
                true
            })
            .await;
        });
        (Seen(seen), task)
    }

    fn last(&self) -> Option<Snapshot> {
        self.0.lock().unwrap().last().cloned()
    }

    async fn wait_for(&self, keys: &[(&str, &str)]) -> Snapshot {
        let want: BTreeMap<String, String> =
            keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        wait_until("the follower to see the keys", Duration::from_secs(30), || {
            let ok = self.last().is_some_and(|s| s.keys == want);
            async move { ok }
        })
        .await;
        self.last().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_every_change_across_member_deaths_and_a_cluster_restart() {
    let mut cluster = EtcdCluster::start(3).await;
    let client = Client::new(cluster.endpoints()).unwrap();
    let prefix = "/follow-a/";
    put(&client, "/follow-a/web", "1");
    put(&client, "/other/web", "x");
    let (seen, task) = Seen::start(cluster.endpoints(), prefix);
    seen.wait_for(&[("web", "1")]).await;
    put(&client, "/follow-a/web", "2");
    put(&client, "/follow-a/shop", "1");
    seen.wait_for(&[("shop", "1"), ("web", "2")]).await;
    assert!(client
        .txn(vec![], vec![cutover_etcd::client_ops::delete("/follow-a/shop")])
        .unwrap());
    seen.wait_for(&[("web", "2")]).await;

    // The member the follower watches dies: it resumes on another, missing nothing.
    cluster.kill(0);
    put(&client, "/follow-a/web", "3");
    seen.wait_for(&[("web", "3")]).await;
    // Everything restarts.
    cluster.restart_all().await;
    put(&client, "/follow-a/web", "4");
    let last = seen.wait_for(&[("web", "4")]).await;
    assert_eq!(last.relists, 0);
    // Revisions only grow: no change applied out of order.
    let revisions: Vec<i64> = seen.0.lock().unwrap().iter().map(|s| s.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_past_a_compaction_lists_again() {
    let mut cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    // The follower knows only member 0; the writer the others.
    let writer = Client::new(endpoints[1..].to_vec()).unwrap();
    let prefix = "/follow-b/";
    put(&writer, "/follow-b/web", "1");
    let (seen, task) = Seen::start(vec![endpoints[0].clone()], prefix);
    seen.wait_for(&[("web", "1")]).await;
    cluster.kill(0);
    put(&writer, "/follow-b/web", "2");
    put(&writer, "/follow-b/shop", "1");
    put(&writer, "/other/key", "x");
    let (_, revision) = writer.range("/other/", "/other/", 1, false, 0).unwrap();
    writer
        .call(
            "/v3/kv/compaction",
            serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )
        .unwrap();
    cluster.restart(0).await;
    let last = seen.wait_for(&[("shop", "1"), ("web", "2")]).await;
    assert_eq!(last.relists, 1, "{last:?}");
    task.abort();
}
