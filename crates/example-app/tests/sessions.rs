//! Sessions shared between instances through one store file, and readiness checks of
//! the store and of a `--ready-dependency`. The Redis store has its own file,
//! `redis_sessions.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_test_support::{free_port, http_client, wait_until, ExampleApp};
use serde_json::json;

fn spawn(version: &str, args: &[&str]) -> ExampleApp {
    ExampleApp::spawn_bin(
        Path::new(env!("CARGO_BIN_EXE_cutover-example-app")),
        version,
        args,
    )
}

fn with_store(version: &str, store: &Path, extra: &[&str]) -> ExampleApp {
    let store = store.to_str().unwrap();
    let mut args = vec!["--session-store", store];
    args.extend_from_slice(extra);
    spawn(version, &args)
}

/// Logs `user` in through `app`'s JSON API; the session id from the cookie.
async fn login(client: &reqwest::Client, app: &ExampleApp, user: &str) -> String {
    let resp = client
        .post(app.url("/login"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "login on {}", app.version);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["user"], user);
    let id = body["session"].as_str().unwrap().to_owned();
    assert_eq!(
        cookie,
        format!("example_session={id}; Path=/; HttpOnly; SameSite=Lax")
    );
    id
}

async fn me(client: &reqwest::Client, app: &ExampleApp, session: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client.get(app.url("/api/me"));
    if let Some(id) = session {
        // Another cookie first: the app must pick its own out of the header.
        req = req.header("cookie", format!("theme=dark; example_session={id}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["x-app-version"], app.version.as_str());
    (status, resp.json().await.unwrap())
}

async fn ready(client: &reqwest::Client, app: &ExampleApp) -> (u16, String) {
    let resp = client.get(app.url("/health/ready")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn users_stay_logged_in_across_versions_sharing_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("sessions.db");
    let blue = with_store("v1", &store, &["--slot", "blue"]);
    let green = with_store("v2", &store, &["--slot", "green"]);
    let client = http_client();

    let alice = login(&client, &blue, "alice").await;
    assert_eq!(
        me(&client, &blue, Some(&alice)).await,
        (
            200,
            json!({"user": "alice", "issued_by": "v1", "served_by": "v1"})
        )
    );
    assert_eq!(
        me(&client, &green, Some(&alice)).await,
        (
            200,
            json!({"user": "alice", "issued_by": "v1", "served_by": "v2"})
        )
    );

    let page = client
        .get(green.url("/page"))
        .header("cookie", format!("example_session={alice}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Logged in as <b id=\"user\">alice</b>, session issued by v1, served by v2"),
        "{page}"
    );

    let not_logged_in = (401, json!({"error": "not logged in"}));
    assert_eq!(me(&client, &green, None).await, not_logged_in);
    assert_eq!(
        me(&client, &green, Some("0123456789abcdef0123456789abcdef")).await,
        not_logged_in
    );
    assert_eq!(me(&client, &green, Some("' OR 1=1 --")).await, not_logged_in);

    // Logging out on one slot logs out on both.
    let resp = client
        .post(green.url("/logout"))
        .header("cookie", format!("example_session={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("example_session=; "),
        "logout does not clear the cookie: {:?}",
        resp.headers()["set-cookie"]
    );
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"logged_out": true})
    );
    assert_eq!(me(&client, &blue, Some(&alice)).await, not_logged_in);
    assert_eq!(me(&client, &green, Some(&alice)).await, not_logged_in);

    for app in [&blue, &green] {
        assert_eq!(ready(&client, app).await, (200, "ready".to_owned()));
    }
}

#[tokio::test]
async fn reject_old_sessions_logs_out_users_of_the_other_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("sessions.db");
    let blue = with_store("v1", &store, &[]);
    let green = with_store("v2", &store, &["--reject-old-sessions"]);
    let client = http_client();

    let alice = login(&client, &blue, "alice").await;
    assert_eq!(me(&client, &blue, Some(&alice)).await.0, 200);
    assert_eq!(
        me(&client, &green, Some(&alice)).await,
        (
            401,
            json!({"error": "session issued by v1 is not accepted by v2"})
        )
    );

    // Logging in again on the new version works.
    let bob = login(&client, &green, "bob").await;
    assert_eq!(
        me(&client, &green, Some(&bob)).await,
        (200, json!({"user": "bob", "issued_by": "v2", "served_by": "v2"}))
    );
}

#[tokio::test]
async fn the_page_logs_in_and_out_without_javascript() {
    let dir = tempfile::tempdir().unwrap();
    let app = with_store("v1", &dir.path().join("sessions.db"), &["--slot", "blue"]);
    // No redirects followed and no cookie jar: each step is checked by hand.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let page = client
        .get(app.url("/page"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<b id=\"slot\">blue</b>"), "{page}");
    assert!(page.contains("action=\"/login\""), "{page}");

    let resp = client
        .post(app.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=Bob+Smith")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/page");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();

    let page = client
        .get(app.url("/page"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Logged in as <b id=\"user\">Bob Smith</b>"),
        "{page}"
    );
    assert!(page.contains("action=\"/logout\""), "{page}");

    let resp = client
        .post(app.url("/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let (status, _) = me(&client, &app, cookie.strip_prefix("example_session=")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn login_rejects_bad_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let app = with_store("v1", &dir.path().join("sessions.db"), &[]);
    let client = http_client();

    for (body, status) in [
        (json!({"user": ""}), 400),
        (json!({"user": "x".repeat(65)}), 400),
        (json!({"user": "a\nb"}), 400),
        (json!({"name": "alice"}), 422),
    ] {
        let resp = client.post(app.url("/login")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert!(err["error"].is_string(), "{body}: {err}");
    }
    let resp = client
        .post(app.url("/login"))
        .body("user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
}

#[tokio::test]
async fn session_routes_answer_503_without_a_store() {
    let app = spawn("v1", &[]);
    let client = http_client();
    let no_store = json!({"error": "no session store configured"});

    let resp = client
        .post(app.url("/login"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), no_store);
    assert_eq!(me(&client, &app, None).await, (503, no_store.clone()));
    let resp = client.post(app.url("/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 503);

    let page = client
        .get(app.url("/page"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sessions are off"), "{page}");
    assert_eq!(ready(&client, &app).await, (200, "ready".to_owned()));
}

#[tokio::test]
async fn api_me_takes_the_api_faults() {
    let dir = tempfile::tempdir().unwrap();
    let app = with_store(
        "v1",
        &dir.path().join("sessions.db"),
        &["--error-rate", "1", "--latency-ms", "150"],
    );
    let client = http_client();

    // /login is not an /api/* route, so it is spared.
    let alice = login(&client, &app, "alice").await;
    let started = Instant::now();
    let resp = client
        .get(app.url("/api/me"))
        .header("cookie", format!("example_session={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["x-app-version"], "v1");
    assert_eq!(resp.text().await.unwrap(), "injected error\n");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn concurrent_logins_on_two_instances_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("sessions.db");
    let blue = with_store("v1", &store, &[]);
    let green = with_store("v2", &store, &[]);
    let client = http_client();

    // Both processes write the file at once; WAL plus the busy timeout must turn
    // that into waiting, not into SQLITE_BUSY errors.
    let logins = (0..40).map(|i| {
        let (app, other) = if i % 2 == 0 {
            (&blue, &green)
        } else {
            (&green, &blue)
        };
        let client = client.clone();
        async move {
            let user = format!("user-{i}");
            let id = login(&client, app, &user).await;
            let (status, body) = me(&client, other, Some(&id)).await;
            assert_eq!(status, 200, "{user}: {body}");
            assert_eq!(body["user"], user.as_str());
        }
    });
    futures_util::future::join_all(logins).await;
}

#[tokio::test]
async fn readiness_reports_an_unreachable_store_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: SQLite cannot create the file, whoever we
    // run as (permission bits would not stop root).
    let store_dir = dir.path().join("not-yet");
    let app = with_store("v1", &store_dir.join("sessions.db"), &[]);
    let client = http_client();

    let (status, body) = ready(&client, &app).await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: session store: opening") && body.contains("not-yet"),
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
        err["error"].as_str().unwrap().starts_with("session store: "),
        "{err}"
    );
    assert_eq!(
        client.get(app.url("/health/live")).send().await.unwrap().status(),
        200
    );

    // The store is retried on every use, so the instance recovers without a restart.
    std::fs::create_dir(&store_dir).unwrap();
    wait_until(
        "readiness once the store directory exists",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let url = app.url("/health/ready");
            async move { client.get(url).send().await.unwrap().status() == 200 }
        },
    )
    .await;
    login(&client, &app, "alice").await;
}

#[tokio::test]
async fn readiness_follows_the_dependency() {
    let upstream = spawn("up", &[]);
    let client = http_client();

    // Nothing listens on a port that was free a moment ago.
    let closed = format!("http://127.0.0.1:{}/health/live", free_port());
    let app = spawn("v1", &["--ready-dependency", &closed]);
    let (status, body) = ready(&client, &app).await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with(&format!("not ready: dependency {closed}: connecting to ")),
        "{body}"
    );
    assert_eq!(
        client.get(app.url("/health/live")).send().await.unwrap().status(),
        200
    );

    let live = upstream.url("/health/live");
    let app = spawn("v1", &["--ready-dependency", &live]);
    assert_eq!(ready(&client, &app).await, (200, "ready".to_owned()));

    // Checked on every probe: the dependency's own readiness carries through.
    let app = spawn("v1", &["--ready-dependency", &upstream.url("/health/ready")]);
    assert_eq!(ready(&client, &app).await.0, 200);
    client
        .post(upstream.url("/control/ready?value=false"))
        .send()
        .await
        .unwrap();
    let (status, body) = ready(&client, &app).await;
    assert_eq!(status, 503);
    assert!(body.ends_with(": answered 503"), "{body}");
    client
        .post(upstream.url("/control/ready?value=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready(&client, &app).await.0, 200);

    // Failing checks are all named, the app's own first.
    let app = spawn("v1", &["--fail-ready", "--ready-dependency", &closed]);
    let (status, body) = ready(&client, &app).await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with(&format!("not ready: --fail-ready is set; dependency {closed}: ")),
        "{body}"
    );
}

#[tokio::test]
async fn readiness_gives_up_on_a_silent_dependency_after_a_second() {
    // The kernel completes connections to a listening socket that never accepts,
    // so the request goes out and no answer ever comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let app = spawn("v1", &["--ready-dependency", &url]);
    let client = http_client();

    let started = Instant::now();
    let (status, body) = ready(&client, &app).await;
    let took = started.elapsed();
    assert_eq!(status, 503);
    assert_eq!(body, format!("not ready: dependency {url}: no answer within 1s"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[test]
fn unsupported_settings_are_rejected_naming_the_flag() {
    let bin = env!("CARGO_BIN_EXE_cutover-example-app");
    for (args, env, wanted) in [
        (
            &["--session-store", "rediss://127.0.0.1:6379"][..],
            None,
            &["--session-store", "rediss:// (TLS) is not supported"][..],
        ),
        (
            &[][..],
            Some("redis://user:secret@127.0.0.1:6379"),
            &["--session-store", "credentials in the URL are not supported"][..],
        ),
        (
            &["--session-store", "redis://127.0.0.1:6379/zero"][..],
            None,
            &["--session-store", "expected redis://HOST[:PORT][/DB]"][..],
        ),
        (
            &["--session-store", "postgres://db/sessions"][..],
            None,
            &["--session-store", "postgres:// session stores are not supported"][..],
        ),
        (
            &["--reject-old-sessions"][..],
            None,
            &["--reject-old-sessions", "--session-store"][..],
        ),
        (
            &["--ready-dependency", "https://127.0.0.1/health"][..],
            None,
            &["--ready-dependency", "only http:// is supported"][..],
        ),
        (
            &["--ready-dependency", "127.0.0.1:8080"][..],
            None,
            &["--ready-dependency", "http://"][..],
        ),
    ] {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--port", "0"]).args(args);
        match env {
            Some(v) => cmd.env("EXAMPLE_SESSION_STORE", v),
            None => cmd.env_remove("EXAMPLE_SESSION_STORE"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} {env:?} started serving");
        for w in wanted {
            assert!(
                stderr.contains(w),
                "error for {args:?} {env:?} lacks {w:?}: {stderr}"
            );
        }
    }
}
