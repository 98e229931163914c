//! Sessions shared between instances through a real `redis-server`, started by each
//! test on a port of its own. `./scripts/test` installs redis-server; without it these
//! tests fail rather than skip, so a missing store cannot pass for a working one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover_test_support::{free_port, http_client, wait_until, wait_until_sync, ChildProcess, ExampleApp};
use serde_json::json;

/// How long redis-server may take to listen, and the app to notice a change in it.
const REDIS_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` without persistence, killed when dropped.
struct RedisServer {
    port: u16,
    process: ChildProcess,
}

impl RedisServer {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts redis-server on `port` and waits until it accepts connections.
    fn start_on(port: u16) -> Self {
        let mut cmd = Command::new(redis_server_bin());
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // Nothing to keep: no RDB snapshots, no append-only file.
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null());
        let mut process = ChildProcess::spawn(&format!("redis-server-{port}"), cmd);
        wait_until_sync(
            &format!("redis-server to listen on 127.0.0.1:{port}"),
            REDIS_DEADLINE,
            || {
                // Checked first, so a port taken in the meantime is reported as such
                // rather than as a timeout.
                if let Some(status) = process.try_exit_status() {
                    panic!(
                        "redis-server on port {port} exited ({status}) before listening; \
                         its log:\n{}",
                        process.stdout()
                    );
                }
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
        Self { port, process }
    }

    /// The `--session-store` URL for database `db`.
    fn url(&self, db: u32) -> String {
        redis_url(self.port, db)
    }

    /// A direct connection, to look at what the app stored.
    fn connect(&self, db: u32) -> redis::Connection {
        redis::Client::open(self.url(db))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }
}

fn redis_url(port: u16, db: u32) -> String {
    format!("redis://127.0.0.1:{port}/{db}")
}

fn redis_server_bin() -> PathBuf {
    // PATH first, then where Debian's package puts it, for a trimmed PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed, and the Redis session tests need a real one: \
                 run ./scripts/test, which installs it (Debian package redis-server)"
            )
        })
}

fn spawn(version: &str, store: &str, extra: &[&str]) -> ExampleApp {
    let mut args = vec!["--session-store", store];
    args.extend_from_slice(extra);
    ExampleApp::spawn_bin(
        Path::new(env!("CARGO_BIN_EXE_cutover-example-app")),
        version,
        &args,
    )
}

/// Logs `user` in through `app`'s JSON API; the session id.
async fn login(client: &reqwest::Client, app: &ExampleApp, user: &str) -> String {
    let resp = client
        .post(app.url("/login"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "login on {}", app.version);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["user"], user);
    body["session"].as_str().unwrap().to_owned()
}

async fn me(client: &reqwest::Client, app: &ExampleApp, session: &str) -> (u16, serde_json::Value) {
    let resp = client
        .get(app.url("/api/me"))
        .header("cookie", format!("example_session={session}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn logout(client: &reqwest::Client, app: &ExampleApp, session: &str) -> serde_json::Value {
    let resp = client
        .post(app.url("/logout"))
        .header("cookie", format!("example_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn ready(client: &reqwest::Client, app: &ExampleApp) -> (u16, String) {
    let resp = client.get(app.url("/health/ready")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn wait_for_ready_status(client: &reqwest::Client, app: &ExampleApp, what: &str, status: u16) {
    wait_until(what, REDIS_DEADLINE, || {
        let (client, url) = (client.clone(), app.url("/health/ready"));
        async move { client.get(url).send().await.unwrap().status() == status }
    })
    .await;
}

fn stored_session(conn: &mut redis::Connection, id: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(format!("example:session:{id}"))
        .query(conn)
        .unwrap()
}

#[tokio::test]
async fn users_stay_logged_in_across_versions_sharing_redis() {
    let redis = RedisServer::start();
    // A database other than 0, so the test also shows the URL's /DB is used.
    let store = redis.url(2);
    let blue = spawn("v1", &store, &["--slot", "blue"]);
    let green = spawn("v2", &store, &["--slot", "green"]);
    let client = http_client();

    let alice = login(&client, &blue, "alice").await;
    assert_eq!(
        me(&client, &blue, &alice).await,
        (
            200,
            json!({"user": "alice", "issued_by": "v1", "served_by": "v1"})
        )
    );
    assert_eq!(
        me(&client, &green, &alice).await,
        (
            200,
            json!({"user": "alice", "issued_by": "v1", "served_by": "v2"})
        )
    );

    let mut db2 = redis.connect(2);
    let stored = stored_session(&mut db2, &alice);
    assert_eq!(stored["user"], "alice", "{stored:?}");
    assert_eq!(stored["issued_by_version"], "v1", "{stored:?}");
    let created_at: u64 = stored["created_at"].parse().unwrap();
    assert!(created_at > 1_600_000_000, "{stored:?}");
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored_session(&mut redis.connect(0), &alice).is_empty());

    let not_logged_in = (401, json!({"error": "not logged in"}));
    assert_eq!(
        me(&client, &green, "0123456789abcdef0123456789abcdef").await,
        not_logged_in
    );

    // Logging out on one slot logs out on both.
    assert_eq!(logout(&client, &green, &alice).await, json!({"logged_out": true}));
    assert_eq!(me(&client, &blue, &alice).await, not_logged_in);
    assert_eq!(me(&client, &green, &alice).await, not_logged_in);
    assert!(stored_session(&mut db2, &alice).is_empty());
    assert_eq!(logout(&client, &blue, &alice).await, json!({"logged_out": false}));

    for app in [&blue, &green] {
        assert_eq!(ready(&client, app).await, (200, "ready".to_owned()));
    }
}

#[tokio::test]
async fn reject_old_sessions_logs_out_users_of_the_other_version_with_redis() {
    let redis = RedisServer::start();
    let store = redis.url(0);
    let blue = spawn("v1", &store, &[]);
    let green = spawn("v2", &store, &["--reject-old-sessions"]);
    let client = http_client();

    let alice = login(&client, &blue, "alice").await;
    assert_eq!(me(&client, &blue, &alice).await.0, 200);
    assert_eq!(
        me(&client, &green, &alice).await,
        (
            401,
            json!({"error": "session issued by v1 is not accepted by v2"})
        )
    );

    let bob = login(&client, &green, "bob").await;
    assert_eq!(
        me(&client, &green, &bob).await,
        (200, json!({"user": "bob", "issued_by": "v2", "served_by": "v2"}))
    );
}

#[tokio::test]
async fn readiness_follows_redis_going_down_and_coming_back() {
    // The app starts first, against a port where nothing listens yet.
    let port = free_port();
    let store = redis_url(port, 0);
    let app = spawn("v1", &store, &[]);
    let client = http_client();

    let (status, body) = ready(&client, &app).await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with(&format!("not ready: session store: connecting to {store}: ")),
        "{body}"
    );
    let resp = client
        .post(app.url("/login"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("session store: connecting to {store}: ")),
        "{err}"
    );
    // Routes without sessions do not depend on the store.
    for path in ["/", "/health/live"] {
        assert_eq!(
            client.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }

    // Redis comes up: the app connects on its own, no restart.
    let mut redis = RedisServer::start_on(port);
    wait_for_ready_status(&client, &app, "readiness once redis is up", 200).await;
    let alice = login(&client, &app, "alice").await;
    assert_eq!(me(&client, &app, &alice).await.0, 200);

    // Redis goes away: the connection the app holds breaks, and it says so.
    redis.process.kill();
    wait_for_ready_status(&client, &app, "readiness to fail once redis is gone", 503).await;
    let (status, body) = ready(&client, &app).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: session store: "), "{body}");
    assert!(body.contains(&store), "{body}");
    let (status, err) = me(&client, &app, &alice).await;
    assert_eq!(status, 503, "{err}");
    assert!(
        err["error"].as_str().unwrap().starts_with("session store: "),
        "{err}"
    );

    // And back again. It kept nothing, so alice has to log in anew.
    let _redis = RedisServer::start_on(port);
    wait_for_ready_status(&client, &app, "readiness once redis is back", 200).await;
    assert_eq!(
        me(&client, &app, &alice).await,
        (401, json!({"error": "not logged in"}))
    );
    let alice = login(&client, &app, "alice").await;
    assert_eq!(me(&client, &app, &alice).await.0, 200);
}

#[tokio::test]
async fn readiness_gives_up_on_a_stuck_redis_after_a_second() {
    let redis = RedisServer::start();
    let app = spawn("v1", &redis.url(0), &[]);
    let client = http_client();
    assert_eq!(ready(&client, &app).await, (200, "ready".to_owned()));

    // A stopped server still completes TCP handshakes in the kernel but never
    // answers, like one that hangs.
    redis.process.send_signal("STOP");
    let started = Instant::now();
    let (status, body) = ready(&client, &app).await;
    let took = started.elapsed();
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: session store: "), "{body}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}: {body}"
    );

    redis.process.send_signal("CONT");
    wait_for_ready_status(&client, &app, "readiness once redis answers again", 200).await;
    login(&client, &app, "alice").await;
}
