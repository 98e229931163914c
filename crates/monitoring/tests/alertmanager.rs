//! The alert gate against a real Alertmanager (started per test on an ephemeral loopback port).
//! `./scripts/test` installs Alertmanager; without it these tests fail rather than skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use cutover_monitoring::{AlertGate, AlertGateConfig, GateError, RequestFailure};
use cutover_test_support::monitoring::Alertmanager;
use cutover_test_support::{free_port, wait_until};

/// How long Alertmanager may take to apply a silence to its alerts' status.
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);

fn gate(url: &str, matchers: &[&str]) -> AlertGate {
    AlertGate::new(AlertGateConfig::new(url, matchers)).unwrap()
}

/// The names of the alerts `gate` reports as blocking.
async fn blocking(gate: &AlertGate) -> Vec<String> {
    gate.check().await.unwrap().into_iter().map(|a| a.name).collect()
}

#[tokio::test]
async fn page_alerts_block_until_silenced_and_tickets_never_do() {
    let am = Alertmanager::start().await;
    let pages = gate(&am.url, &[r#"severity="page""#]);
    assert!(
        pages.check().await.unwrap().is_empty(),
        "a fresh Alertmanager has alerts"
    );

    am.post_alert(
        &[
            ("alertname", "DiskAlmostFull"),
            ("severity", "ticket"),
            ("instance", "db1"),
        ],
        &[("summary", "disk 85 % full")],
    )
    .await;
    assert!(
        pages.check().await.unwrap().is_empty(),
        "a ticket alert blocked the rollout"
    );

    am.post_alert(
        &[
            ("alertname", "HighErrorRate"),
            ("severity", "page"),
            ("service", "api"),
        ],
        &[
            ("summary", "error rate 7 %"),
            ("runbook", "https://runbooks/errors"),
        ],
    )
    .await;
    let alerts = pages.check().await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert.name, "HighErrorRate");
    assert_eq!(alert.labels["service"], "api");
    assert_eq!(alert.labels["severity"], "page");
    assert_eq!(alert.summary.as_deref(), Some("error rate 7 %"));
    assert!(alert.starts_at.starts_with("20"), "{}", alert.starts_at);
    assert_eq!(
        pages.describe(&alerts),
        r#"1 firing alert matches severity="page": HighErrorRate{service=api} (error rate 7 %)"#
    );

    // Regex and negative matchers reach Alertmanager intact and are ANDed.
    let high = gate(&am.url, &[r#"alertname=~"High.*""#, r#"service!="batch""#]);
    assert_eq!(blocking(&high).await, ["HighErrorRate"]);
    let not_api = gate(&am.url, &[r#"alertname=~"High.*""#, r#"service!~"a.i""#]);
    assert!(blocking(&not_api).await.is_empty());
    // Without matchers every active alert blocks.
    assert_eq!(
        blocking(&gate(&am.url, &[])).await,
        ["DiskAlmostFull", "HighErrorRate"]
    );

    // A person silences the page: the rollout may go ahead.
    let id = am
        .silence(&[("alertname", "HighErrorRate")], Duration::from_secs(3600))
        .await;
    assert!(!id.is_empty());
    wait_until("the silenced alert to stop blocking", SETTLE_DEADLINE, || async {
        pages.check().await.unwrap().is_empty()
    })
    .await;
    assert_eq!(pages.describe(&[]), r#"no firing alerts match severity="page""#);
}

#[tokio::test]
async fn resolved_alerts_do_not_block() {
    let am = Alertmanager::start().await;
    let pages = gate(&am.url, &[r#"severity="page""#]);
    let now = SystemTime::now();

    // Posted already over: fired ten minutes ago for five minutes.
    am.post_alert_at(
        &[("alertname", "Flapping"), ("severity", "page")],
        &[],
        now - Duration::from_secs(600),
        now - Duration::from_secs(300),
    )
    .await;
    assert!(pages.check().await.unwrap().is_empty());

    // Firing, then resolved by its source.
    let labels = [("alertname", "HighLatency"), ("severity", "page")];
    am.post_alert(&labels, &[]).await;
    assert_eq!(blocking(&pages).await, ["HighLatency"]);
    let now = SystemTime::now();
    am.post_alert_at(
        &labels,
        &[],
        now - Duration::from_secs(60),
        now - Duration::from_secs(1),
    )
    .await;
    wait_until("the resolved alert to stop blocking", SETTLE_DEADLINE, || async {
        pages.check().await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn invalid_matchers_are_rejected_naming_the_matcher() {
    let err = AlertGate::new(AlertGateConfig::new(
        "http://127.0.0.1:9093",
        &[r#"severity="page""#, r#"team=="core""#],
    ))
    .unwrap_err();
    match &err {
        GateError::InvalidMatcher { matcher, .. } => assert_eq!(matcher, r#"team=="core""#),
        other => panic!("expected InvalidMatcher, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(r#"matcher "team==\"core\"" is invalid"#), "{text}");
    assert!(text.contains("= != =~ !~"), "{text}");
}

#[tokio::test]
async fn an_unreachable_alertmanager_is_an_error_not_an_open_gate() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut config = AlertGateConfig::new(&url, &[r#"severity="page""#]);
    config.retries = 1;
    config.retry_backoff_ms = 10;
    let err = AlertGate::new(config).unwrap().check().await.unwrap_err();
    match &err {
        GateError::Query {
            attempts,
            last_error: RequestFailure::Transport(_),
            ..
        } => assert_eq!(*attempts, 2),
        other => panic!("expected a transport failure, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&url) && text.contains("after 2 attempt(s)"),
        "{text}"
    );
}
