//! Prometheus text exposition (format 0.0.4) of every app's pools.

use std::fmt::Write;

use crate::app::AppProxy;
use crate::metrics::{MetricsSnapshot, PROMETHEUS_BOUNDS_SECS};

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `name{labels,code_class="1xx"} n` to `5xx`.
fn write_classes(out: &mut String, name: &str, labels: &str, s: &MetricsSnapshot) {
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{{labels},code_class=\"{class}\"}} {}",
            s.requests_by_class[i]
        );
    }
}

/// The latency histogram `name_bucket`, `name_sum`, `name_count`, in seconds.
fn write_histogram(out: &mut String, name: &str, labels: &str, s: &MetricsSnapshot) {
    for bound in PROMETHEUS_BOUNDS_SECS {
        let micros = (bound * 1e6).round() as u64;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{bound}\"}} {}",
            s.count_at_most_micros(micros)
        );
    }
    let total = s.total_requests();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}",
        s.latency_sum_micros as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

/// `name{labels,code="..."} n` for each code counted one by one.
fn write_codes(out: &mut String, name: &str, labels: &str, s: &MetricsSnapshot) {
    for (code, n) in cutover_core::TRACKED_CODES.iter().zip(s.codes) {
        let _ = writeln!(out, "{name}{{{labels},code=\"{code}\"}} {n}");
    }
}

/// Renders the metrics of `apps`.
pub fn render<'a>(apps: impl IntoIterator<Item = &'a AppProxy>) -> String {
    let mut families: Vec<(&str, &str, &str, String)> = vec![
        (
            "cutover_requests_total",
            "counter",
            "Requests answered, by status class.",
            String::new(),
        ),
        (
            "cutover_request_duration_seconds",
            "histogram",
            "Time to the response headers.",
            String::new(),
        ),
        (
            "cutover_requests_in_flight",
            "gauge",
            "Requests not yet finished.",
            String::new(),
        ),
        (
            "cutover_request_bytes_total",
            "counter",
            "Request body bytes received.",
            String::new(),
        ),
        (
            "cutover_response_bytes_total",
            "counter",
            "Response body bytes sent.",
            String::new(),
        ),
        (
            "cutover_upstream_connect_failures_total",
            "counter",
            "Failed connections to backends.",
            String::new(),
        ),
        (
            "cutover_upstream_retries_total",
            "counter",
            "Requests retried on another backend.",
            String::new(),
        ),
        (
            "cutover_traffic_weight",
            "gauge",
            "Share of users routed to the slot, 0 to 1.",
            String::new(),
        ),
        (
            "cutover_backend_up",
            "gauge",
            "1 when the backend takes new requests.",
            String::new(),
        ),
        (
            "cutover_responses_by_code_total",
            "counter",
            "Responses of the common 4xx and 5xx codes, code by code (also in cutover_requests_total).",
            String::new(),
        ),
        (
            "cutover_client_faults_total",
            "counter",
            "Requests that failed by the client's fault (malformed, aborted, too slow, too large); in no other count.",
            String::new(),
        ),
        (
            "cutover_failovers_total",
            "counter",
            "Requests the slot failed (a safe request its canary answered 4xx/5xx) or could not take (no backend reachable) that the other slot served instead.",
            String::new(),
        ),
        (
            "cutover_users",
            "gauge",
            "Distinct users the slot's release served, estimated.",
            String::new(),
        ),
    ];
    for app in apps {
        let table = app.table();
        for pool in &table.pools {
            let labels = format!(
                "app=\"{}\",slot=\"{}\",version=\"{}\"",
                escape(&app.name),
                pool.slot,
                escape(&pool.version)
            );
            let s: MetricsSnapshot = pool.metrics.snapshot();
            write_classes(&mut families[0].3, "cutover_requests_total", &labels, &s);
            write_histogram(
                &mut families[1].3,
                "cutover_request_duration_seconds",
                &labels,
                &s,
            );
            let _ = writeln!(
                families[2].3,
                "cutover_requests_in_flight{{{labels}}} {}",
                s.in_flight
            );
            let _ = writeln!(
                families[3].3,
                "cutover_request_bytes_total{{{labels}}} {}",
                s.bytes_in
            );
            let _ = writeln!(
                families[4].3,
                "cutover_response_bytes_total{{{labels}}} {}",
                s.bytes_out
            );
            let _ = writeln!(
                families[5].3,
                "cutover_upstream_connect_failures_total{{{labels}}} {}",
                s.connect_failures
            );
            let _ = writeln!(
                families[6].3,
                "cutover_upstream_retries_total{{{labels}}} {}",
                s.retries
            );
            let _ = writeln!(
                families[7].3,
                "cutover_traffic_weight{{app=\"{}\",slot=\"{}\"}} {}",
                escape(&app.name),
                pool.slot,
                f64::from(pool.weight_bp) / 10_000.0
            );
            write_codes(&mut families[9].3, "cutover_responses_by_code_total", &labels, &s);
            for (fault, n) in cutover_core::ClientFault::ALL.iter().zip(s.client_faults) {
                let _ = writeln!(
                    families[10].3,
                    "cutover_client_faults_total{{{labels},reason=\"{}\"}} {n}",
                    fault.as_str()
                );
            }
            let _ = writeln!(
                families[11].3,
                "cutover_failovers_total{{{labels}}} {}",
                s.failovers
            );
            let _ = writeln!(families[12].3, "cutover_users{{{labels}}} {}", s.users);
            for b in &pool.backends {
                let _ = writeln!(
                    families[8].3,
                    "cutover_backend_up{{{labels},backend=\"{}\"}} {}",
                    b.addr,
                    u8::from(b.is_available())
                );
            }
        }
    }
    let mut text = String::new();
    for (name, kind, help, body) in families {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        text.push_str(&body);
    }
    text
}

/// Renders the per flag and variant counters of the apps that forward flags
/// (`[app.flags] forward`): what a guarded ramp judges, and what a Prometheus-judged ramp queries.
pub fn render_flags<'a>(apps: impl IntoIterator<Item = &'a AppProxy>) -> String {
    let mut families: Vec<(&str, &str, &str, String)> = vec![
        (
            "cutover_flag_requests_total",
            "counter",
            "Requests of users given a variant of a forwarded flag, by status class.",
            String::new(),
        ),
        (
            "cutover_flag_request_duration_seconds",
            "histogram",
            "Time to the response headers, by flag variant.",
            String::new(),
        ),
        (
            "cutover_flag_responses_by_code_total",
            "counter",
            "Responses of the common 4xx and 5xx codes by flag variant.",
            String::new(),
        ),
        (
            "cutover_flag_users",
            "gauge",
            "Distinct users given the variant, estimated.",
            String::new(),
        ),
    ];
    let mut any = false;
    for app in apps {
        let Some(forwarding) = app.flag_forwarding() else {
            continue;
        };
        for (flag, variant, s) in forwarding.traffic.all() {
            any = true;
            let labels = format!(
                "app=\"{}\",flag=\"{}\",variant=\"{}\"",
                escape(&app.name),
                escape(&flag),
                escape(&variant)
            );
            write_classes(&mut families[0].3, "cutover_flag_requests_total", &labels, &s);
            write_histogram(
                &mut families[1].3,
                "cutover_flag_request_duration_seconds",
                &labels,
                &s,
            );
            write_codes(
                &mut families[2].3,
                "cutover_flag_responses_by_code_total",
                &labels,
                &s,
            );
            let _ = writeln!(families[3].3, "cutover_flag_users{{{labels}}} {}", s.users);
        }
    }
    let mut text = String::new();
    if !any {
        return text;
    }
    for (name, kind, help, body) in families {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        text.push_str(&body);
    }
    text
}
