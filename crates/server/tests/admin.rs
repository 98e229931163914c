#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin API and the server around it, in process, with real backends.

use std::net::SocketAddr;
use std::sync::Arc;

use cutover_core::{Pool, RouteTable, Slot};
use cutover_server::config::{AdminConfig, AppConfig, ServerConfig, TlsConfig};
use cutover_server::{Config, Running, StartOptions};
use cutover_test_support::{get_json, http_client, ExampleApp};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn config(v1: &ExampleApp, v2: &ExampleApp, tls: Option<TlsConfig>) -> Config {
    let routes = RouteTable {
        live: Slot::Blue,
        canary_weight_bp: 0,
        blue: Pool {
            version: "v1".into(),
            backends: vec![v1.addr],
        },
        green: Pool {
            version: "v2".into(),
            backends: vec![v2.addr],
        },
    };
    Config {
        server: ServerConfig::default(),
        admin: AdminConfig {
            listen: loopback(),
            ..AdminConfig::default()
        },
        apps: vec![AppConfig {
            tls,
            ..AppConfig::static_routes("web", loopback(), routes)
        }],
        flags: None,
        store: Default::default(),
    }
}

struct Server {
    running: Option<Running>,
    admin: String,
    public: SocketAddr,
}

impl Server {
    async fn start(config: Config) -> Server {
        let running = cutover_server::start(config, TOKEN.into(), StartOptions::new("."))
            .await
            .unwrap();
        let admin = format!("http://{}", running.bound.admin);
        let public = running.bound.apps["web"].listen;
        Server {
            running: Some(running),
            admin,
            public,
        }
    }

    async fn routes(&self) -> Value {
        get_json(&format!("{}/v1/apps/web/routes", self.admin)).await
    }

    async fn put(&self, body: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = http_client()
            .put(format!("{}/v1/apps/web/routes", self.admin))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            tokio::spawn(running.shutdown());
        }
    }
}

#[tokio::test]
async fn route_changes_need_the_token_and_valid_input_and_change_nothing_otherwise() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let server = Server::start(config(&v1, &v2, None)).await;
    let before = server.routes().await;
    assert_eq!(before["generation"], 1);

    let mut good = before["route"].clone();
    good["canary_weight_bp"] = json!(2500);
    let good = good.to_string();
    let (status, body) = server.put(&good, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Authorization: Bearer"),
        "{body}"
    );
    assert_eq!(server.put(&good, Some("wrong")).await.0, 401);
    // The scheme is case-insensitive; the token is not.
    for (authorization, want) in [
        (format!("bearer {TOKEN}"), 200),
        (format!("BEARER {TOKEN}"), 200),
        (format!("Basic {TOKEN}"), 401),
        (format!("Bearer {}", TOKEN.to_uppercase()), 401),
    ] {
        let r = http_client()
            .put(format!("{}/v1/apps/web/routes", server.admin))
            .header("content-type", "application/json")
            .header("authorization", &authorization)
            .body(before["route"].to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{authorization}");
    }
    // The accepted ones put the same table again: only its generation moved.
    let before = server.routes().await;

    let cases = [
        (
            r#"{"live":"blue","canary_weight_bp":20000,"blue":{"backends":["127.0.0.1:1"]},"green":{}}"#,
            "canary_weight_bp",
        ),
        (r#"{"live":"purple","blue":{},"green":{}}"#, "live"),
        (
            r#"{"live":"blue","blue":{"backends":["not-an-address"]},"green":{}}"#,
            "blue.backends[0]",
        ),
        (
            r#"{"live":"blue","canary_wieght_bp":1,"blue":{},"green":{}}"#,
            "canary_wieght_bp",
        ),
        (r#"{"live":"blue","#, "body"),
        (
            r#"{"live":"blue","canary_weight_bp":100,"blue":{"backends":["127.0.0.1:1"]},"green":{"version":"v2","backends":[]}}"#,
            "green.backends",
        ),
    ];
    for (input, field) in cases {
        let (status, body) = server.put(input, Some(TOKEN)).await;
        assert_eq!(status, 400, "{input} -> {body}");
        let errors = body["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e["field"].as_str().unwrap().contains(field)
                || e["message"].as_str().unwrap().contains(field)),
            "{input}: expected an error about {field}, got {body}"
        );
        assert_eq!(
            server.routes().await,
            before,
            "a refused change must change nothing"
        );
    }

    let (status, body) = server.put(&good, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], before["generation"].as_u64().unwrap() + 1);
    assert_eq!(server.routes().await["route"]["canary_weight_bp"], 2500);

    let r = http_client()
        .get(format!("{}/v1/apps/nope/routes", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("known apps: web"),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text_labelled_by_app_slot_and_version() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let server = Server::start(config(&v1, &v2, None)).await;
    let client = http_client();
    for _ in 0..5 {
        assert_eq!(
            client
                .get(format!("http://{}/", server.public))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let r = client
        .get(format!("{}/metrics", server.admin))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let count = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "cutover_request_duration_seconds_count"
                && s.labels.get("app") == Some("web")
                && s.labels.get("slot") == Some("blue")
                && s.labels.get("version") == Some("v1")
        })
        .unwrap_or_else(|| panic!("no duration count for blue in:\n{text}"));
    assert!(
        matches!(count.value, prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) if v == 5.0),
        "{:?}",
        count.value
    );
    // Every metric the Grafana dashboard queries is one cutover exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dashboards/grafana.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("dashboards/grafana.json is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(exprs.len() >= 7);
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("cutover_"))
        {
            assert!(
                text.contains(&format!("# TYPE {} ", name.trim_end_matches("_bucket"))),
                "{name} (in {expr}) is not exported"
            );
        }
    }
    let weight = scrape
        .samples
        .iter()
        .find(|s| s.metric == "cutover_traffic_weight" && s.labels.get("slot") == Some("blue"))
        .unwrap();
    assert!(matches!(weight.value, prometheus_parse::Value::Gauge(v) if v == 1.0));

    let slots = get_json(&format!("{}/v1/apps/web/metrics", server.admin)).await;
    assert_eq!(slots[0]["slot"], "blue");
    assert_eq!(slots[0]["metrics"]["requests"], 5);
    assert_eq!(slots[0]["backends"][0]["healthy"], true);
}

#[tokio::test]
async fn tls_listeners_serve_http1_and_http2() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = Server::start(config(&v1, &v2, Some(TlsConfig { cert_path, key_path }))).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(server.public).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let request = hyper::Request::get(format!("https://localhost:{}/headers", server.public.port()))
            .header("host", format!("localhost:{}", server.public.port()))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = if alpn == b"h2" {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let mut request = request;
            request.headers_mut().remove("host");
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        };
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-app-version"], "v1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    }
}

/// Two servers on one state directory would fight over its apps and instances: the second is
/// refused, naming the first, until the first has stopped.
#[tokio::test]
async fn a_state_directory_serves_one_server_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
state_dir = "{}"

[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"
platform = "local"

[app.release]
command = "exec sleep 60"
"#,
        dir.path().join("state").display()
    );
    let config = || Config::parse(&text, "cutover.toml").unwrap();
    let options = || StartOptions::new(dir.path());
    let first = cutover_server::start(config(), "t".into(), options())
        .await
        .unwrap();
    let refused = match cutover_server::start(config(), "t".into(), options()).await {
        Ok(_) => panic!("a second server started on the same state directory"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("is in use by another cutover serve")
            && refused.contains(&format!("pid {}", std::process::id())),
        "{refused}"
    );
    first.shutdown().await;
    let again = cutover_server::start(config(), "t".into(), options())
        .await
        .unwrap();
    again.shutdown().await;
}

/// A bad query string gets a JSON error naming it, like every other API error.
#[tokio::test]
async fn query_string_errors_are_json() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let server = Server::start(config(&v1, &v2, None)).await;
    for path in [
        "/v1/apps/web/events?after=yesterday",
        "/v1/apps/web/history?limit=-1",
    ] {
        let r = http_client()
            .get(format!("{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid query string", "{body}");
        assert_eq!(body["errors"][0]["field"], "query", "{body}");
    }
}

/// A client that trickles its request head cannot hold an admin connection: after the header
/// read timeout the server closes it, and serves others all along.
#[tokio::test]
async fn a_trickled_request_head_is_cut_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let mut config = config(&v1, &v2, None);
    config.admin.header_read_timeout_ms = 300;
    let server = Server::start(config).await;
    let addr = server.admin.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    // Bounded: 100 header lines, one every 50 ms (5 s); the head never ends.
    for i in 0..100 {
        if slow
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(std::time::Duration::from_millis(50), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            // hyper may answer 408 before closing
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
        // Meanwhile a well-behaved client is served.
        if i == 2 {
            let ok = get_json(&format!("{}/v1/apps", server.admin)).await;
            assert!(ok.is_array() || ok.is_object(), "{ok}");
        }
    }
    assert!(
        closed,
        "the trickling connection was still open after {:?}",
        started.elapsed()
    );
}

/// The app listener's accept queue is the configured backlog (as the kernel reports it), not the
/// 128 of a plain bind.
#[tokio::test]
async fn the_listen_backlog_is_the_configured_one() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let mut config = config(&v1, &v2, None);
    config.apps[0].listen_backlog = 1000;
    let server = Server::start(config).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", server.public.port())])
        .output()
        .expect("ss (iproute2) is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog.
    let send_q: u32 = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("ss output: {text:?}"))
        .parse()
        .unwrap();
    assert_eq!(send_q, 1000.min(somaxconn), "{text}");
}

/// A table larger than a slot may hold is refused whole with a 400 that says the limit.
#[tokio::test]
async fn a_route_table_over_the_backend_cap_is_a_400_and_changes_nothing() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let server = Server::start(config(&v1, &v2, None)).await;
    let before = server.routes().await;
    let mut huge = before["route"].clone();
    huge["green"]["backends"] = (0..10_000u32)
        .map(|i| json!(format!("127.1.{}.{}:8000", i / 250, i % 250)))
        .collect::<Vec<_>>()
        .into();
    let (status, body) = server.put(&huge.to_string(), Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("a slot holds at most 1024"), "{body}");
    assert_eq!(server.routes().await, before);
}

/// An unknown path is a JSON 404 that says where the API is, like every other error.
#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let server = Server::start(config(&v1, &v2, None)).await;
    let r = http_client()
        .get(format!("{}/v2/nope", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("/v2/nope"), "{body}");
}

/// A service without `/health/ready` that sets `[app.readiness] path` alone is health checked on
/// that path too, so the proxy keeps its backends; an app that also names the health check's path
/// is checked on that one (here the failing `/health/ready`, which shows the checks ran).
#[tokio::test]
async fn the_proxy_health_checks_the_readiness_path_unless_told_otherwise() {
    let (follows, explicit) = (
        ExampleApp::spawn("v1", &["--fail-ready"]),
        ExampleApp::spawn("v1", &["--fail-ready"]),
    );
    let app = |name: &str, backend: SocketAddr, health_path: Option<&str>| {
        format!(
            "\n[[app]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n\
             [app.readiness]\npath = \"/\"\n\
             [app.proxy.health_check]\ninterval_ms = 50\nunhealthy_threshold = 1\n{}\
             [app.routes]\nlive = \"blue\"\nblue = {{ version = \"v1\", backends = [\"{backend}\"] }}\n",
            health_path
                .map(|p| format!("path = \"{p}\"\n"))
                .unwrap_or_default()
        )
    };
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
        app("follows", follows.addr, None),
        app("explicit", explicit.addr, Some("/health/ready"))
    );
    let config = Config::parse(&text, "cutover.toml").unwrap();
    let running = cutover_server::start(config, TOKEN.into(), StartOptions::new("."))
        .await
        .unwrap();
    let status = |app: &str| {
        let url = format!("http://{}/", running.bound.apps[app].listen);
        async move { http_client().get(url).send().await.unwrap().status().as_u16() }
    };
    cutover_test_support::wait_until(
        "the app checked on /health/ready loses its backend",
        std::time::Duration::from_secs(10),
        || async { status("explicit").await == 503 },
    )
    .await;
    // Checks of both apps run on the same schedule: a few more rounds of them.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_eq!(
            status("follows").await,
            200,
            "the backend passes its readiness path"
        );
    }
    running.shutdown().await;
}
