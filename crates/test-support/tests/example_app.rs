#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cutover_test_support::{http_client, wait_until, ExampleApp};

#[tokio::test]
async fn spawned_example_app_answers_and_reports_its_version() {
    let mut app = ExampleApp::spawn("ts-1", &["--slot", "green"]);
    let client = http_client();

    let resp = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-app-version"], "ts-1");
    assert_eq!(resp.headers()["x-app-instance"], app.port().to_string().as_str());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["version"], "ts-1");
    assert_eq!(body["slot"], "green");
    assert_eq!(body["instance"], app.port());

    wait_until(
        "the request counter to see the request",
        Duration::from_secs(5),
        || {
            let client = client.clone();
            let url = app.url("/control/requests");
            async move {
                let body: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
                body["requests"] == 1
            }
        },
    )
    .await;

    assert!(app.terminate().success());
}

#[test]
fn killed_app_stops_listening() {
    let mut app = ExampleApp::spawn("ts-2", &[]);
    let addr = app.addr;
    assert!(std::net::TcpStream::connect(addr).is_ok());
    let status = app.kill();
    assert!(
        !status.success(),
        "SIGKILL should not look like a clean exit: {status}"
    );
    assert!(std::net::TcpStream::connect(addr).is_err());
}
