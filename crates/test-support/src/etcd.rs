//! A real etcd cluster on loopback (Debian's `etcd-server`), one process per member, each on two
//! ports of its own, with its data in a temporary directory. Members can be killed and started
//! again; dropping the cluster kills them all.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{find_bin, free_port, http_client, ChildProcess, TempDir};

/// How long a member (or the whole cluster) gets to report itself healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<ChildProcess>,
}

/// A running etcd cluster; see the module docs.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: TempDir,
    members: Vec<Member>,
    token: String,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until every member is healthy.
    pub async fn start(size: usize) -> EtcdCluster {
        let bin = find_bin("etcd", "etcd-server");
        let dir = TempDir::new("etcd");
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let token = format!("cutover-test-{}-{}", std::process::id(), free_port());
        let mut cluster = EtcdCluster {
            bin,
            dir,
            members,
            token,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let member = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                &self.token,
            ])
            .args(["--initial-cluster-state", "new"])
            // Fast elections on loopback: a dead leader is replaced within about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        member.process = Some(ChildProcess::spawn(&format!("etcd-{}", member.name), cmd));
    }

    async fn wait_healthy(&mut self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client_port);
        let client = http_client();
        let start = Instant::now();
        loop {
            let member = &mut self.members[i];
            if let Some(process) = member.process.as_mut() {
                if let Some(status) = process.try_exit_status() {
                    panic!(
                        "etcd member {} exited with {status}: {}",
                        member.name,
                        process.stderr()
                    );
                }
            }
            // A member without a quorum may hold the request: ask again rather than wait.
            let asked = tokio::time::timeout(Duration::from_secs(1), async {
                client.get(&url).send().await.ok()?.text().await.ok()
            });
            if let Ok(Some(body)) = asked.await {
                if body.contains("\"health\":\"true\"") {
                    return;
                }
            }
            assert!(
                start.elapsed() < HEALTHY_WITHIN,
                "etcd member {} not healthy within {HEALTHY_WITHIN:?}",
                self.members[i].name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill();
        }
    }

    /// Starts member `i` again (with its data) and waits until it is healthy; the other members
    /// must be running (a member is healthy only with a quorum).
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// Kills every member and starts them all again with their data, as after a power cut.
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await;
        }
    }
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}
