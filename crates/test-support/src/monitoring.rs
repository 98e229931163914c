//! Real Prometheus and Alertmanager servers for tests, each a child process on an ephemeral
//! loopback port with its configuration and storage in a temporary directory, killed (and the
//! directory removed) on drop.
//!
//! They run Debian's `prometheus` and `prometheus-alertmanager` binaries, which
//! `./scripts/test` installs. When a binary is missing the helpers panic saying so: a test that
//! needs them fails rather than skips, so a missing dependency cannot pass for working code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{find_bin, free_port, http_client, tail, write_file, ChildProcess, TempDir};

/// How long a server may take to report ready on `/-/ready`.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often readiness and `wait_for` conditions are re-checked.
const POLL: Duration = Duration::from_millis(50);
/// Starts retried when the port picked turned out to be taken by the time the server bound it.
const START_ATTEMPTS: usize = 3;

/// A running Prometheus scraping the given targets.
#[derive(Debug)]
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    pub addr: SocketAddr,
    // Declared before `dir`: the process must be dead before its storage is removed.
    process: ChildProcess,
    dir: TempDir,
}

/// One sample of an instant query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    /// As Prometheus formats it (`NaN`, `+Inf` parse to the float values).
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping each `(job, address, metrics path)` every `scrape_interval`
    /// (sub-second intervals work), and waits until it is ready.
    pub async fn start(scrape_targets: &[(&str, SocketAddr, &str)], scrape_interval: Duration) -> Prometheus {
        let bin = find_bin("prometheus", "prometheus");
        let dir = TempDir::new("prometheus");
        let interval = prom_duration(scrape_interval);
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n"
        );
        for (job, addr, path) in scrape_targets {
            config.push_str(&format!(
                "  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: [{}]\n",
                json_string(job),
                json_string(path),
                json_string(&addr.to_string())
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        write_file(&config_path, &config);
        let data = dir.path().join("data");

        let (process, addr) = start_server("prometheus", |port| {
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null());
            cmd
        })
        .await;
        Prometheus {
            url: format!("http://{addr}"),
            addr,
            process,
            dir,
        }
    }

    /// The result of instant query `query` evaluated now, or why there is none.
    pub async fn query(&self, query: &str) -> Result<Vec<PromSample>, String> {
        let response = http_client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {body}"));
        }
        parse_instant_result(&body).map_err(|e| format!("{e}; body: {body}"))
    }

    /// Polls `query` until `predicate` holds for its result and returns that result. Panics
    /// with the last result (or error) and Prometheus' log tail after `deadline`.
    pub async fn wait_for(
        &self,
        query: &str,
        mut predicate: impl FnMut(&[PromSample]) -> bool,
        deadline: Duration,
    ) -> Vec<PromSample> {
        let start = Instant::now();
        loop {
            let last = self.query(query).await;
            if let Ok(samples) = &last {
                if predicate(samples) {
                    return samples.clone();
                }
            }
            if start.elapsed() >= deadline {
                panic!(
                    "timed out after {deadline:?} waiting for Prometheus query {query:?} to satisfy the \
                     condition; last result: {last:?}\n--- prometheus stderr ---\n{}",
                    tail(&self.process.stderr())
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The underlying process (logs, signals).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// The directory holding `prometheus.yml` and the TSDB.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A running Alertmanager with one receiver that drops everything, clustering off.
#[derive(Debug)]
pub struct Alertmanager {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    pub addr: SocketAddr,
    process: ChildProcess,
    dir: TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager and waits until it is ready.
    pub async fn start() -> Alertmanager {
        let bin = find_bin("prometheus-alertmanager", "prometheus-alertmanager");
        let dir = TempDir::new("alertmanager");
        let config_path = dir.path().join("alertmanager.yml");
        write_file(
            &config_path,
            "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
        );
        let storage = dir.path().join("data");
        let (process, addr) = start_server("alertmanager", |port| {
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // Empty: no gossip listener, so parallel tests' instances never find each other.
                .arg("--cluster.listen-address=")
                .stdin(Stdio::null());
            cmd
        })
        .await;
        Alertmanager {
            url: format!("http://{addr}"),
            addr,
            process,
            dir,
        }
    }

    /// Posts a firing alert: started now, ending in an hour.
    pub async fn post_alert(&self, labels: &[(&str, &str)], annotations: &[(&str, &str)]) {
        let now = SystemTime::now();
        self.post_alert_at(labels, annotations, now, now + Duration::from_secs(3600))
            .await;
    }

    /// Posts an alert with explicit times; an `ends_at` in the past posts a resolved alert
    /// (and resolves an earlier one with the same labels).
    pub async fn post_alert_at(
        &self,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        starts_at: SystemTime,
        ends_at: SystemTime,
    ) {
        let body = format!(
            "[{{\"labels\":{},\"annotations\":{},\"startsAt\":{},\"endsAt\":{}}}]",
            json_object(labels),
            json_object(annotations),
            json_string(&rfc3339(starts_at)),
            json_string(&rfc3339(ends_at))
        );
        self.post("/api/v2/alerts", body).await;
    }

    /// Silences alerts whose labels equal all `matchers` for `duration` from now; returns the
    /// silence's id.
    pub async fn silence(&self, matchers: &[(&str, &str)], duration: Duration) -> String {
        let now = SystemTime::now();
        let matchers: Vec<String> = matchers
            .iter()
            .map(|(name, value)| {
                format!(
                    "{{\"name\":{},\"value\":{},\"isRegex\":false,\"isEqual\":true}}",
                    json_string(name),
                    json_string(value)
                )
            })
            .collect();
        let body = format!(
            "{{\"matchers\":[{}],\"startsAt\":{},\"endsAt\":{},\"createdBy\":\"cutover-test\",\"comment\":\"test\"}}",
            matchers.join(","),
            json_string(&rfc3339(now)),
            json_string(&rfc3339(now + duration))
        );
        let response = self.post("/api/v2/silences", body).await;
        Json::parse(&response)
            .ok()
            .and_then(|j| j.get("silenceID").and_then(Json::as_str).map(str::to_owned))
            .unwrap_or_else(|| panic!("Alertmanager's answer to a new silence has no silenceID: {response}"))
    }

    /// The underlying process (logs, signals).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// The directory holding `alertmanager.yml` and its storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn post(&self, path: &str, body: String) -> String {
        let url = format!("{}{path}", self.url);
        let response = http_client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url} failed: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            panic!("POST {url} answered {status}: {text}\nrequest body: {body}");
        }
        text
    }
}

/// Starts a server binding the port given to `command`, waits for `/-/ready`, and retries on
/// another port if the one picked was taken in the meantime.
async fn start_server(name: &str, command: impl Fn(u16) -> Command) -> (ChildProcess, SocketAddr) {
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = ChildProcess::spawn(&format!("{name}-{port}"), command(port));
        let ready_url = format!("http://{addr}/-/ready");
        let client = http_client();
        let start = Instant::now();
        loop {
            if let Some(status) = process.try_exit_status() {
                let stderr = process.stderr();
                if stderr.contains("address already in use") && attempt < START_ATTEMPTS {
                    break;
                }
                panic!(
                    "{name} exited ({status}) before it was ready on {addr}\n--- stderr ---\n{}",
                    tail(&stderr)
                );
            }
            let ready = client
                .get(&ready_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return (process, addr);
            }
            if start.elapsed() >= READY_DEADLINE {
                panic!(
                    "{name} on {addr} was not ready within {READY_DEADLINE:?}\n--- stderr ---\n{}",
                    tail(&process.stderr())
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    unreachable!("the last start attempt either returns or panics")
}

/// A duration for Prometheus' configuration: whole seconds as `Ns`, otherwise milliseconds.
fn prom_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A JSON string literal (also a valid YAML double-quoted scalar).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_object(pairs: &[(&str, &str)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// The samples of a Prometheus instant query response (vector or scalar).
fn parse_instant_result(body: &str) -> Result<Vec<PromSample>, String> {
    let json = Json::parse(body)?;
    if json.get("status").and_then(Json::as_str) != Some("success") {
        return Err("status is not success".to_owned());
    }
    let data = json.get("data").ok_or("no data")?;
    let result = data.get("result").ok_or("no result")?;
    let value_of = |pair: &Json| -> Result<f64, String> {
        let v = pair
            .as_array()
            .and_then(|a| a.get(1))
            .and_then(Json::as_str)
            .ok_or("a value is not [time, \"number\"]")?;
        match v {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            v => v.parse().map_err(|e| format!("value {v:?}: {e}")),
        }
    };
    match data.get("resultType").and_then(Json::as_str) {
        Some("scalar") => Ok(vec![PromSample {
            labels: BTreeMap::new(),
            value: value_of(result)?,
        }]),
        Some("vector") => result
            .as_array()
            .ok_or("result is not an array")?
            .iter()
            .map(|s| {
                let labels = match s.get("metric") {
                    Some(Json::Object(fields)) => fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect(),
                    _ => BTreeMap::new(),
                };
                Ok(PromSample {
                    labels,
                    value: value_of(s.get("value").ok_or("a sample has no value")?)?,
                })
            })
            .collect(),
        other => Err(format!("result type {other:?} is not vector or scalar")),
    }
}

/// Just enough JSON to read Prometheus and Alertmanager answers (this crate has no serde).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            chars: text.char_indices().peekable(),
            text,
        };
        let value = p.value()?;
        p.skip_ws();
        match p.chars.peek() {
            None => Ok(value),
            Some((i, _)) => Err(format!("trailing characters at byte {i}")),
        }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
}

impl JsonParser<'_> {
    fn skip_ws(&mut self) {
        while self.chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        match self.chars.next() {
            Some((_, c)) if c == want => Ok(()),
            Some((i, c)) => Err(format!("expected {want:?} at byte {i}, found {c:?}")),
            None => Err(format!("expected {want:?}, found the end")),
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_ws();
        let Some(&(start, c)) = self.chars.peek() else {
            return Err("unexpected end".to_owned());
        };
        match c {
            '{' => {
                self.chars.next();
                let mut fields = Vec::new();
                self.skip_ws();
                if self.chars.peek().is_some_and(|(_, c)| *c == '}') {
                    self.chars.next();
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.skip_ws();
                    let key = self.string()?;
                    self.skip_ws();
                    self.expect(':')?;
                    fields.push((key, self.value()?));
                    self.skip_ws();
                    match self.chars.next() {
                        Some((_, ',')) => {}
                        Some((_, '}')) => return Ok(Json::Object(fields)),
                        other => return Err(format!("expected , or }} in an object, found {other:?}")),
                    }
                }
            }
            '[' => {
                self.chars.next();
                let mut items = Vec::new();
                self.skip_ws();
                if self.chars.peek().is_some_and(|(_, c)| *c == ']') {
                    self.chars.next();
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.skip_ws();
                    match self.chars.next() {
                        Some((_, ',')) => {}
                        Some((_, ']')) => return Ok(Json::Array(items)),
                        other => return Err(format!("expected , or ] in an array, found {other:?}")),
                    }
                }
            }
            '"' => self.string().map(Json::String),
            't' => self.word("true", Json::Bool(true)),
            'f' => self.word("false", Json::Bool(false)),
            'n' => self.word("null", Json::Null),
            _ => {
                let mut end = start;
                while let Some(&(i, c)) = self.chars.peek() {
                    if c.is_ascii_digit() || "+-.eE".contains(c) {
                        end = i + c.len_utf8();
                        self.chars.next();
                    } else {
                        break;
                    }
                }
                self.text[start..end]
                    .parse()
                    .map(Json::Number)
                    .map_err(|_| format!("unexpected {c:?} at byte {start}"))
            }
        }
    }

    fn word(&mut self, word: &str, value: Json) -> Result<Json, String> {
        for want in word.chars() {
            self.expect(want)?;
        }
        Ok(value)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None => return Err("unterminated string".to_owned()),
                Some((_, '"')) => return Ok(out),
                Some((_, '\\')) => match self.chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, 'b')) => out.push('\u{8}'),
                    Some((_, 'f')) => out.push('\u{c}'),
                    Some((_, 'u')) => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let digit = self
                                .chars
                                .next()
                                .and_then(|(_, c)| c.to_digit(16))
                                .ok_or("bad \\u escape")?;
                            code = code * 16 + digit;
                        }
                        // Surrogate pairs are not needed for these APIs' ASCII payloads.
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    Some((_, c)) => out.push(c),
                    None => return Err("unterminated escape".to_owned()),
                },
                Some((_, c)) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // a leap day
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn parses_prometheus_results() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"a","le":"+Inf"},"value":[1700000000.5,"42"]},
            {"metric":{},"value":[1700000000.5,"NaN"]}]}}"#;
        let samples = parse_instant_result(body).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["le"], "+Inf");
        assert_eq!(samples[0].value, 42.0);
        assert!(samples[1].value.is_nan());
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"-2.5e3"]}}"#;
        assert_eq!(parse_instant_result(scalar).unwrap()[0].value, -2500.0);
        assert!(parse_instant_result(r#"{"status":"error"}"#).is_err());
    }

    #[test]
    fn json_round_trips_strings() {
        let s = "a\"b\\c\nd\u{1}é";
        assert_eq!(Json::parse(&json_string(s)).unwrap(), Json::String(s.to_owned()));
        assert_eq!(
            Json::parse(r#" {"a": [true, false, null, -1.5e2], "b": {}} "#).unwrap(),
            Json::Object(vec![
                (
                    "a".into(),
                    Json::Array(vec![
                        Json::Bool(true),
                        Json::Bool(false),
                        Json::Null,
                        Json::Number(-150.0)
                    ])
                ),
                ("b".into(), Json::Object(vec![])),
            ])
        );
        assert!(Json::parse("[1,]").is_err());
        assert!(Json::parse("{} x").is_err());
    }

    #[test]
    #[should_panic(expected = "run ./scripts/test, which installs the Debian package cutover-pkg")]
    fn a_missing_binary_fails_saying_how_to_install_it() {
        find_bin("cutover-no-such-binary", "cutover-pkg");
    }

    #[test]
    fn prometheus_durations() {
        assert_eq!(prom_duration(Duration::from_secs(1)), "1s");
        assert_eq!(prom_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(prom_duration(Duration::ZERO), "1ms");
    }
}
