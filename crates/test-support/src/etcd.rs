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
    /// With TLS on the client URLs: the certificate (self-signed, for 127.0.0.1) in PEM, which
    /// clients trust as their CA, and the files the members read.
    tls: Option<Tls>,
}

struct Tls {
    pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until every member is healthy.
    pub async fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, false).await
    }

    /// [`EtcdCluster::start`] with TLS on the client URLs (`https://`), under a certificate
    /// [`EtcdCluster::ca_pem`] gives.
    pub async fn start_tls(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, true).await
    }

    /// The PEM a client must trust to reach a TLS cluster.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.pem.as_str())
    }

    async fn start_with(size: usize, tls: bool) -> EtcdCluster {
        let bin = find_bin("etcd", "etcd-server");
        let dir = TempDir::new("etcd");
        let tls = tls.then(|| {
            let generated =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                    .expect("generating etcd's certificate");
            let (cert, key) = (dir.path().join("etcd.pem"), dir.path().join("etcd-key.pem"));
            let pem = generated.cert.pem();
            std::fs::write(&cert, &pem).expect("writing etcd's certificate");
            std::fs::write(&key, generated.key_pair.serialize_pem()).expect("writing etcd's key");
            Tls { pem, cert, key }
        });
        let mut cluster = EtcdCluster {
            bin,
            dir,
            members: Vec::new(),
            token: String::new(),
            tls,
        };
        // A port free a moment ago may be taken meanwhile by another test's process (an
        // outgoing connection's ephemeral port, say): a member that cannot bind is started
        // again, with the whole cluster, on other ports.
        for attempt in 1..=5 {
            cluster.members = (0..size)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    process: None,
                })
                .collect();
            cluster.token = format!("cutover-test-{}-{}", std::process::id(), free_port());
            for i in 0..size {
                cluster.spawn(i);
            }
            let mut failed = None;
            for i in 0..size {
                if let Err(why) = cluster.try_wait_healthy(i).await {
                    failed = Some(why);
                    break;
                }
            }
            match failed {
                None => return cluster,
                Some(why) if why.contains("address already in use") && attempt < 5 => {
                    for i in 0..size {
                        cluster.kill(i);
                        let _ = std::fs::remove_dir_all(cluster.dir.path().join(&cluster.members[i].name));
                    }
                }
                Some(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
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
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let member = &mut self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", member.client_port);
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
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
        }
        member.process = Some(ChildProcess::spawn(&format!("etcd-{}", member.name), cmd));
    }

    async fn wait_healthy(&mut self, i: usize) {
        if let Err(why) = self.try_wait_healthy(i).await {
            panic!("{why}");
        }
    }

    /// Waits until member `i` is healthy; `Err` with its output if it exited.
    async fn try_wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let url = format!("{}/health", self.endpoints()[i]);
        let client = match &self.tls {
            Some(tls) => reqwest::Client::builder()
                .no_proxy()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(tls.pem.as_bytes()).expect("etcd's certificate"),
                )
                .build()
                .expect("a client of etcd over TLS"),
            None => http_client(),
        };
        let start = Instant::now();
        loop {
            let member = &mut self.members[i];
            if let Some(process) = member.process.as_mut() {
                if let Some(status) = process.try_exit_status() {
                    return Err(format!(
                        "etcd member {} exited with {status}: {}",
                        member.name,
                        process.stderr()
                    ));
                }
            }
            // A member without a quorum may hold the request: ask again rather than wait.
            let asked = tokio::time::timeout(Duration::from_secs(1), async {
                client.get(&url).send().await.ok()?.text().await.ok()
            });
            if let Ok(Some(body)) = asked.await {
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
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
            .map(|m| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://127.0.0.1:{}", m.client_port)
            })
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
