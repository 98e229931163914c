//! [`PrometheusSource`]: slot measurements from PromQL instant queries.
//!
//! Each metric is a PromQL template. Before a query is sent, these placeholders are replaced:
//!
//! | placeholder | replaced by |
//! |---|---|
//! | `{app}` | the app's name (escaped for a PromQL string literal) |
//! | `{slot}` | `blue` or `green` |
//! | `{version}` | the release version (escaped for a PromQL string literal) |
//! | `{interval}` | the window's length as a PromQL duration (`30s`, `1500ms`; at least `1s`) |
//!
//! The query is evaluated at the window's end (`time=` the window's `to`), so
//! `increase(x[{interval}])` covers exactly the window. Any other `{name}` made only of letters
//! and underscores is rejected when the source is built: PromQL has no such syntax, so it is a
//! misspelt placeholder.
//!
//! The defaults read cutover's own metrics (see the proxy's `/metrics`):
//! [`DEFAULT_REQUESTS_QUERY`], [`DEFAULT_ERRORS_QUERY`], [`DEFAULT_CLIENT_ERRORS_QUERY`],
//! [`DEFAULT_CODES_QUERY`], [`DEFAULT_P99_MS_QUERY`].

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::custom::CustomMetric;
use crate::http::{self, Exhausted, RequestFailure, RetryPolicy};
use crate::{MetricError, MetricSource, SlotMeasurement, WindowQuery};

/// Requests the slot answered in the window, from cutover's `cutover_requests_total`.
pub const DEFAULT_REQUESTS_QUERY: &str =
    r#"sum(increase(cutover_requests_total{app="{app}",slot="{slot}",version="{version}"}[{interval}]))"#;
/// 5xx responses of the slot in the window.
pub const DEFAULT_ERRORS_QUERY: &str = r#"sum(increase(cutover_requests_total{app="{app}",slot="{slot}",version="{version}",code_class="5xx"}[{interval}]))"#;
/// 4xx responses of the slot in the window (requests that failed by the client's own fault are
/// not among them: cutover counts those in `cutover_client_faults_total`).
pub const DEFAULT_CLIENT_ERRORS_QUERY: &str = r#"sum(increase(cutover_requests_total{app="{app}",slot="{slot}",version="{version}",code_class="4xx"}[{interval}]))"#;
/// Responses of the common 4xx and 5xx codes in the window, one series per `code` label.
pub const DEFAULT_CODES_QUERY: &str = r#"sum by (code) (increase(cutover_responses_by_code_total{app="{app}",slot="{slot}",version="{version}"}[{interval}]))"#;
/// p99 time to response headers in the window, in milliseconds, from cutover's histogram.
pub const DEFAULT_P99_MS_QUERY: &str = r#"1000 * histogram_quantile(0.99, sum by (le) (increase(cutover_request_duration_seconds_bucket{app="{app}",slot="{slot}",version="{version}"}[{interval}])))"#;

/// What a source's templates measure, and so which placeholders they may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Templates {
    /// A slot of an app: `{app}`, `{slot}`, `{version}`, `{interval}` (rollouts).
    Slot,
    /// The users of a flag in one variant, or in every other: `{flag}`, `{variant}`, `{op}` (`=`
    /// for the variant's users, `!=` for the others), `{interval}` (guarded ramps).
    Flag,
}

impl Templates {
    fn placeholders(self) -> &'static [&'static str] {
        match self {
            Templates::Slot => &["app", "slot", "version", "interval"],
            Templates::Flag => &["flag", "variant", "op", "interval"],
        }
    }
}

/// Requests of the users given (`{op}` `=`) or not given (`!=`) a flag's variant, from the
/// counters cutover's proxy keeps for forwarded flags (`[app.flags] forward`), all apps together.
pub const DEFAULT_FLAG_REQUESTS_QUERY: &str =
    r#"sum(increase(cutover_flag_requests_total{flag="{flag}",variant{op}"{variant}"}[{interval}]))"#;
/// Their 5xx responses.
pub const DEFAULT_FLAG_ERRORS_QUERY: &str = r#"sum(increase(cutover_flag_requests_total{flag="{flag}",variant{op}"{variant}",code_class="5xx"}[{interval}]))"#;
/// Their 4xx responses.
pub const DEFAULT_FLAG_CLIENT_ERRORS_QUERY: &str = r#"sum(increase(cutover_flag_requests_total{flag="{flag}",variant{op}"{variant}",code_class="4xx"}[{interval}]))"#;
/// Their responses of the common 4xx and 5xx codes, one series per `code`.
pub const DEFAULT_FLAG_CODES_QUERY: &str = r#"sum by (code) (increase(cutover_flag_responses_by_code_total{flag="{flag}",variant{op}"{variant}"}[{interval}]))"#;
/// Their p99 time to response headers, in milliseconds.
pub const DEFAULT_FLAG_P99_MS_QUERY: &str = r#"1000 * histogram_quantile(0.99, sum by (le) (increase(cutover_flag_request_duration_seconds_bucket{flag="{flag}",variant{op}"{variant}"}[{interval}])))"#;

/// `[flags.prometheus]`: guarded ramps judged from Prometheus. The same settings as
/// [`PrometheusConfig`], with the flag placeholders and defaults over cutover's `cutover_flag_*`
/// series; write your own templates to judge from an app's own metrics with the variant as a
/// label, e.g. `sum(rate(http_requests_total{feature_variant{op}"{variant}"}[{interval}]))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagPrometheusConfig {
    pub url: String,
    #[serde(default = "default_flag_requests_query")]
    pub requests_query: String,
    #[serde(default = "default_flag_errors_query")]
    pub errors_query: String,
    #[serde(default = "default_flag_client_errors_query")]
    pub client_errors_query: Option<String>,
    #[serde(default = "default_flag_codes_query")]
    pub codes_query: Option<String>,
    #[serde(default = "default_flag_p99_ms_query")]
    pub p99_ms_query: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
}

fn default_flag_requests_query() -> String {
    DEFAULT_FLAG_REQUESTS_QUERY.to_owned()
}
fn default_flag_errors_query() -> String {
    DEFAULT_FLAG_ERRORS_QUERY.to_owned()
}
fn default_flag_client_errors_query() -> Option<String> {
    Some(DEFAULT_FLAG_CLIENT_ERRORS_QUERY.to_owned())
}
fn default_flag_codes_query() -> Option<String> {
    Some(DEFAULT_FLAG_CODES_QUERY.to_owned())
}
fn default_flag_p99_ms_query() -> Option<String> {
    Some(DEFAULT_FLAG_P99_MS_QUERY.to_owned())
}

impl FlagPrometheusConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        FlagPrometheusConfig {
            url: url.into(),
            requests_query: default_flag_requests_query(),
            errors_query: default_flag_errors_query(),
            client_errors_query: default_flag_client_errors_query(),
            codes_query: default_flag_codes_query(),
            p99_ms_query: default_flag_p99_ms_query(),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
        }
    }

    fn general(&self) -> PrometheusConfig {
        PrometheusConfig {
            url: self.url.clone(),
            requests_query: self.requests_query.clone(),
            errors_query: self.errors_query.clone(),
            client_errors_query: self.client_errors_query.clone(),
            codes_query: self.codes_query.clone(),
            p99_ms_query: self.p99_ms_query.clone(),
            custom: Vec::new(),
            timeout_ms: self.timeout_ms,
            retries: self.retries,
            retry_backoff_ms: self.retry_backoff_ms,
        }
    }

    /// Every problem with the settings, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<MetricError>> {
        self.general().validate_for(Templates::Flag)
    }

    /// The source, or the first problem of the settings.
    pub fn source(&self) -> Result<PrometheusSource, MetricError> {
        PrometheusSource::with_templates(self.general(), Templates::Flag)
    }
}

/// Where and what to query. Deserialized from cutover's configuration; every field but `url`
/// has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API, e.g. `http://127.0.0.1:9090` (with the path prefix
    /// if Prometheus runs under one).
    pub url: String,
    /// Template of the number of requests in the window.
    #[serde(default = "default_requests_query")]
    pub requests_query: String,
    /// Template of the number of failed requests in the window.
    #[serde(default = "default_errors_query")]
    pub errors_query: String,
    /// Template of the number of 4xx responses in the window, judged against the baseline's own
    /// share. An empty string turns the 4xx comparison off.
    #[serde(default = "default_client_errors_query")]
    pub client_errors_query: Option<String>,
    /// Template of responses by code in the window: a vector with one series per `code` label.
    /// Lets decisions name codes and `ignore_status` leave some out. Empty turns it off.
    #[serde(default = "default_codes_query")]
    pub codes_query: Option<String>,
    /// Template of the p99 latency in milliseconds. An empty string turns latency off: the
    /// measurement's `p99_ms` is then always `None`.
    #[serde(default = "default_p99_ms_query")]
    pub p99_ms_query: Option<String>,
    /// Further metrics, checked with [`crate::judge_custom`].
    #[serde(default)]
    pub custom: Vec<CustomMetric>,
    /// Timeout of one attempt at one query.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first for a query that failed in a way another attempt may fix.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause before the first retry; doubles for each further one (10 s at most).
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
}

fn default_requests_query() -> String {
    DEFAULT_REQUESTS_QUERY.to_owned()
}
fn default_errors_query() -> String {
    DEFAULT_ERRORS_QUERY.to_owned()
}
fn default_client_errors_query() -> Option<String> {
    Some(DEFAULT_CLIENT_ERRORS_QUERY.to_owned())
}
fn default_codes_query() -> Option<String> {
    Some(DEFAULT_CODES_QUERY.to_owned())
}
fn default_p99_ms_query() -> Option<String> {
    Some(DEFAULT_P99_MS_QUERY.to_owned())
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff_ms() -> u64 {
    200
}

impl PrometheusConfig {
    /// The defaults (cutover's own metrics, 2 s timeout, 2 retries from 200 ms) for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            requests_query: default_requests_query(),
            errors_query: default_errors_query(),
            client_errors_query: default_client_errors_query(),
            codes_query: default_codes_query(),
            p99_ms_query: default_p99_ms_query(),
            custom: Vec::new(),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
        }
    }

    /// Every problem with the settings, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<MetricError>> {
        self.validate_for(Templates::Slot)
    }

    /// [`PrometheusConfig::validate`] for templates of `kind`.
    pub fn validate_for(&self, kind: Templates) -> Result<(), Vec<MetricError>> {
        let mut errors = Vec::new();
        let mut bad = |field: &str, reason: String| {
            errors.push(MetricError::Config {
                field: field.to_owned(),
                reason,
            })
        };
        if let Err(reason) = http::base_url(&self.url) {
            bad("url", reason);
        }
        let mut templates = vec![
            ("requests_query".to_owned(), &self.requests_query),
            ("errors_query".to_owned(), &self.errors_query),
        ];
        for (field, optional) in [
            ("p99_ms_query", &self.p99_ms_query),
            ("client_errors_query", &self.client_errors_query),
            ("codes_query", &self.codes_query),
        ] {
            if let Some(template) = optional.as_ref().filter(|t| !t.trim().is_empty()) {
                templates.push((field.to_owned(), template));
            }
        }
        for (i, m) in self.custom.iter().enumerate() {
            templates.push((format!("custom[{i}].query"), &m.query));
        }
        for (field, template) in templates {
            if let Err(reason) = check_template(template, kind) {
                bad(&field, reason);
            }
        }
        for (i, m) in self.custom.iter().enumerate() {
            for reason in m.problems() {
                bad(&format!("custom[{i}]"), reason);
            }
            if self.custom[..i].iter().any(|o| o.name == m.name) {
                bad(
                    &format!("custom[{i}].name"),
                    format!("{:?} is used twice; give each custom metric its own name", m.name),
                );
            }
        }
        if self.timeout_ms == 0 {
            bad("timeout_ms", "must be at least 1".to_owned());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Measures slots with PromQL instant queries; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    config: PrometheusConfig,
    templates: Templates,
    /// `config.url` without a trailing slash.
    base: String,
    client: reqwest::Client,
}

impl PrometheusSource {
    /// Checks `config` (every template, bound and URL) and builds the client. An empty
    /// `p99_ms_query` is stored as `None`. On error, the first problem; use
    /// [`PrometheusConfig::validate`] to get all of them.
    pub fn new(config: PrometheusConfig) -> Result<Self, MetricError> {
        Self::with_templates(config, Templates::Slot)
    }

    /// [`PrometheusSource::new`] for templates of `templates`.
    pub fn with_templates(mut config: PrometheusConfig, templates: Templates) -> Result<Self, MetricError> {
        if config.p99_ms_query.as_ref().is_some_and(|q| q.trim().is_empty()) {
            config.p99_ms_query = None;
        }
        if let Err(mut errors) = config.validate_for(templates) {
            return Err(errors.remove(0));
        }
        let base = http::base_url(&config.url).map_err(|reason| config_error("url", reason))?;
        let client = http::client(Duration::from_millis(config.timeout_ms))
            .map_err(|reason| config_error("url", reason))?;
        Ok(Self {
            config,
            templates,
            base,
            client,
        })
    }

    pub fn config(&self) -> &PrometheusConfig {
        &self.config
    }

    /// One instant query at `at`: all samples of the result (a scalar result is one sample
    /// without labels). Retried as configured.
    pub async fn query_instant(
        &self,
        metric: &str,
        query: &str,
        at: Timestamp,
    ) -> Result<Vec<Sample>, MetricError> {
        let url = format!("{}/api/v1/query", self.base);
        let time = prom_time(at);
        let data = self
            .get_data(metric, query, &url, &[("query", query), ("time", &time)])
            .await?;
        match data {
            Data::Vector(samples) => samples
                .into_iter()
                .map(|s| match s.value {
                    Some((_, v)) => Ok(Sample {
                        labels: s.metric,
                        value: parse_value(&v),
                    }),
                    None => Err(MetricError::UnexpectedResult {
                        metric: metric.to_owned(),
                        query: query.to_owned(),
                        result_type: "native histogram".to_owned(),
                    }),
                })
                .collect(),
            Data::Scalar((_, v)) => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: parse_value(&v),
            }]),
            Data::Matrix(_) => Err(unexpected(metric, query, "range vector (matrix)")),
            Data::String(_) => Err(unexpected(metric, query, "string")),
        }
    }

    /// The single number `query` evaluates to at `at`: `None` for an empty result or a value
    /// that is not finite (NaN, ±Inf); an error if there are several series. `metric` names the
    /// query in errors.
    pub async fn query_value(
        &self,
        metric: &str,
        query: &str,
        at: Timestamp,
    ) -> Result<Option<f64>, MetricError> {
        let samples = self.query_instant(metric, query, at).await?;
        let value = match samples.as_slice() {
            [] => None,
            [one] => one.value.filter(|v| v.is_finite()),
            [first, ..] => {
                return Err(MetricError::NotOneSeries {
                    metric: metric.to_owned(),
                    query: query.to_owned(),
                    series: samples.len(),
                    example: format_labels(&first.labels),
                })
            }
        };
        tracing::debug!(metric, query, ?value, "prometheus query");
        Ok(value)
    }

    /// A range query (`/api/v1/query_range`) from `start` to `end` every `step`, for charts and
    /// tests. Points whose value is not a number come back as `None`.
    pub async fn query_range(
        &self,
        query: &str,
        start: Timestamp,
        end: Timestamp,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, MetricError> {
        let url = format!("{}/api/v1/query_range", self.base);
        let step = format!("{:.3}", step.as_secs_f64().max(0.001));
        let (start_s, end_s) = (prom_time(start), prom_time(end));
        let params = [
            ("query", query),
            ("start", &start_s),
            ("end", &end_s),
            ("step", &step),
        ];
        match self.get_data("range query", query, &url, &params).await? {
            Data::Matrix(series) => Ok(series
                .into_iter()
                .map(|s| RangeSeries {
                    labels: s.metric,
                    points: s
                        .values
                        .into_iter()
                        .map(|(t, v)| {
                            (
                                Timestamp::from_millis((t * 1000.0).round() as u64),
                                parse_value(&v),
                            )
                        })
                        .collect(),
                })
                .collect()),
            Data::Vector(_) => Err(unexpected("range query", query, "vector")),
            Data::Scalar(_) => Err(unexpected("range query", query, "scalar")),
            Data::String(_) => Err(unexpected("range query", query, "string")),
        }
    }

    /// GETs `url` with `params`, retrying as configured, and returns the `data` of a successful
    /// API response.
    async fn get_data(
        &self,
        metric: &str,
        query: &str,
        url: &str,
        params: &[(&str, &str)],
    ) -> Result<Data, MetricError> {
        let policy = RetryPolicy {
            retries: self.config.retries,
            backoff: Duration::from_millis(self.config.retry_backoff_ms),
        };
        let what = format!("Prometheus query for {metric}");
        http::with_retries(policy, &what, || async {
            let (status, body) =
                http::send(self.client.get(url).query(params), self.config.timeout_ms).await?;
            parse_response(status, &body)
        })
        .await
        .map_err(|Exhausted { attempts, failure }| MetricError::Query {
            metric: metric.to_owned(),
            url: self.base.clone(),
            query: query.to_owned(),
            attempts,
            last_error: failure,
        })
    }
}

#[async_trait]
impl MetricSource for PrometheusSource {
    /// Runs every configured query at once, evaluated at `q.to`. The first failing query's
    /// error fails the whole measurement: a half-read window would compare unlike with like.
    async fn measure(&self, q: &WindowQuery) -> Result<SlotMeasurement, MetricError> {
        self.measure_rendered(&|t| render(t, q), q.to).await
    }
}

impl PrometheusSource {
    /// The users of `flag` given `variant` (`flagged`) or not given it, over `(from, to]`, from
    /// a source built for [`Templates::Flag`].
    pub async fn measure_flag(
        &self,
        flag: &str,
        variant: &str,
        flagged: bool,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<SlotMeasurement, MetricError> {
        debug_assert_eq!(self.templates, Templates::Flag);
        let values = |name: &str| match name {
            "flag" => Some(escape_promql(flag)),
            "variant" => Some(escape_promql(variant)),
            "op" => Some(if flagged { "=" } else { "!=" }.to_owned()),
            "interval" => Some(promql_duration(to.millis_since(from))),
            _ => None,
        };
        self.measure_rendered(&|t| substitute(t, values), to).await
    }

    /// Every configured query, rendered by `render`, evaluated at `at`.
    async fn measure_rendered(
        &self,
        render: &(dyn Fn(&str) -> String + Sync),
        at: Timestamp,
    ) -> Result<SlotMeasurement, MetricError> {
        let q_to = at;
        let requests = render(&self.config.requests_query);
        let errors = render(&self.config.errors_query);
        let optional = |t: &Option<String>| t.as_deref().filter(|t| !t.trim().is_empty()).map(render);
        let p99 = optional(&self.config.p99_ms_query);
        let client_errors = optional(&self.config.client_errors_query);
        let codes = optional(&self.config.codes_query);
        let custom: Vec<(String, String)> = self
            .config
            .custom
            .iter()
            .map(|m| (m.name.clone(), render(&m.query)))
            .collect();

        let (requests, errors, p99_ms, client_errors, codes, custom) = tokio::join!(
            self.query_value("requests", &requests, q_to),
            self.query_value("errors", &errors, q_to),
            async {
                match &p99 {
                    Some(query) => self.query_value("p99_ms", query, q_to).await,
                    None => Ok(None),
                }
            },
            async {
                match &client_errors {
                    Some(query) => self.query_value("client_errors", query, q_to).await,
                    None => Ok(None),
                }
            },
            async {
                let Some(query) = &codes else { return Ok(None) };
                let samples = self.query_instant("codes", query, q_to).await?;
                Ok::<_, MetricError>(Some(
                    samples
                        .into_iter()
                        .filter_map(|s| {
                            let code = s.labels.get("code")?.parse::<u16>().ok()?;
                            Some((code, s.value.filter(|v| v.is_finite())?))
                        })
                        .collect::<BTreeMap<u16, f64>>(),
                ))
            },
            futures_util::future::join_all(custom.iter().map(|(name, query)| async move {
                let value = self
                    .query_value(&format!("custom metric {name}"), query, q_to)
                    .await?;
                Ok::<_, MetricError>((name.clone(), value))
            })),
        );
        Ok(SlotMeasurement {
            requests: requests?,
            errors: errors?,
            client_errors: client_errors?,
            codes: codes?,
            users: None,
            users_with_client_errors: None,
            p99_ms: p99_ms?,
            custom: custom.into_iter().collect::<Result<_, _>>()?,
            latency_buckets: None,
        })
    }
}

/// One sample of an instant query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    /// `None` if Prometheus sent something that is not a number.
    pub value: Option<f64>,
}

/// One series of a range query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(Timestamp, Option<f64>)>,
}

/// `template` with the placeholders of `q` substituted (see the module docs). Unknown
/// placeholders are left as they are; [`PrometheusSource::new`] refuses templates with any.
pub fn render(template: &str, q: &WindowQuery) -> String {
    substitute(template, |name| match name {
        "app" => Some(escape_promql(&q.app)),
        "slot" => Some(q.slot.as_str().to_owned()),
        "version" => Some(escape_promql(&q.version)),
        "interval" => Some(promql_duration(q.to.millis_since(q.from))),
        _ => None,
    })
}

/// The window length as a PromQL duration: whole seconds as `30s`, otherwise milliseconds;
/// never under `1s`, because a shorter range holds too few scrapes for `increase` to mean
/// anything.
pub fn promql_duration(millis: u64) -> String {
    let millis = millis.max(1000);
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// Checks that every `{name}` in `template` is a known placeholder.
fn check_template(template: &str, kind: Templates) -> Result<(), String> {
    if template.trim().is_empty() {
        return Err("is empty; give a PromQL query".to_owned());
    }
    let known = kind.placeholders();
    let mut unknown = Vec::new();
    substitute(template, |name| {
        if !known.contains(&name) {
            unknown.push(format!("{{{name}}}"));
        }
        None
    });
    if unknown.is_empty() {
        Ok(())
    } else {
        let known: Vec<String> = known.iter().map(|k| format!("{{{k}}}")).collect();
        Err(format!(
            "unknown placeholder(s) {} in {template:?}; the known ones are {}",
            unknown.join(", "),
            known.join(", ")
        ))
    }
}

/// Replaces each `{name}` (name: ASCII letters and `_`) for which `value` returns `Some`.
/// Anything else, such as PromQL's `{label="x"}`, passes through untouched.
fn substitute(template: &str, mut value: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if name_len > 0 && after[name_len..].starts_with('}') {
            match value(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            }
            rest = &after[name_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Escapes a value for use inside a double-quoted PromQL string literal.
fn escape_promql(value: &str) -> String {
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

/// A timestamp as the API's `time` parameter: seconds with millisecond precision.
fn prom_time(t: Timestamp) -> String {
    format!("{}.{:03}", t.as_millis() / 1000, t.as_millis() % 1000)
}

/// A sample value as Prometheus formats it (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn config_error(field: &str, reason: String) -> MetricError {
    MetricError::Config {
        field: field.to_owned(),
        reason,
    }
}

fn unexpected(metric: &str, query: &str, result_type: &str) -> MetricError {
    MetricError::UnexpectedResult {
        metric: metric.to_owned(),
        query: query.to_owned(),
        result_type: result_type.to_owned(),
    }
}

/// The envelope of every Prometheus API response.
#[derive(Debug, Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<VectorSample>),
    Matrix(Vec<MatrixSeries>),
    Scalar((f64, String)),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// Absent for native histogram samples, which carry `histogram` instead.
    value: Option<(f64, String)>,
}

#[derive(Debug, Deserialize)]
struct MatrixSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// Turns one HTTP answer into the API's `data` or the reason it is not usable.
fn parse_response(status: u16, body: &str) -> Result<Data, RequestFailure> {
    let parsed: Result<ApiResponse, _> = serde_json::from_str(body);
    match parsed {
        Ok(r) if r.status == "success" && (200..300).contains(&status) => r
            .data
            .ok_or_else(|| RequestFailure::Decode("a successful response without data".to_owned())),
        Ok(r) if r.status == "error" => Err(RequestFailure::Api {
            status,
            error_type: r.error_type.unwrap_or_else(|| "unknown".to_owned()),
            error: r.error.unwrap_or_default(),
        }),
        Ok(r) if (200..300).contains(&status) => {
            Err(RequestFailure::Decode(format!("unknown status {:?}", r.status)))
        }
        Err(e) if (200..300).contains(&status) => Err(RequestFailure::Decode(format!(
            "{e}; body starts with {:?}",
            body.chars().take(120).collect::<String>()
        ))),
        _ => Err(http::status_failure(status, body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::Slot;

    fn window(ms: u64) -> WindowQuery {
        WindowQuery {
            app: "web".into(),
            slot: Slot::Green,
            version: "v2".into(),
            from: Timestamp::from_millis(1_000_000),
            to: Timestamp::from_millis(1_000_000 + ms),
        }
    }

    #[test]
    fn default_templates_render_to_cutover_metrics() {
        assert_eq!(
            render(DEFAULT_REQUESTS_QUERY, &window(30_000)),
            r#"sum(increase(cutover_requests_total{app="web",slot="green",version="v2"}[30s]))"#
        );
        assert_eq!(
            render(DEFAULT_ERRORS_QUERY, &window(30_000)),
            r#"sum(increase(cutover_requests_total{app="web",slot="green",version="v2",code_class="5xx"}[30s]))"#
        );
        assert_eq!(
            render(DEFAULT_P99_MS_QUERY, &window(2_500)),
            r#"1000 * histogram_quantile(0.99, sum by (le) (increase(cutover_request_duration_seconds_bucket{app="web",slot="green",version="v2"}[2500ms])))"#
        );
    }

    #[test]
    fn values_are_escaped_for_promql_strings() {
        let mut q = window(1000);
        q.version = r#"v"2\x"#.into();
        assert_eq!(render(r#"x{version="{version}"}"#, &q), r#"x{version="v\"2\\x"}"#);
    }

    #[test]
    fn intervals_are_promql_durations_of_at_least_one_second() {
        assert_eq!(promql_duration(0), "1s");
        assert_eq!(promql_duration(999), "1s");
        assert_eq!(promql_duration(1000), "1s");
        assert_eq!(promql_duration(1001), "1001ms");
        assert_eq!(promql_duration(600_000), "600s");
        // A window that ends before it starts is as short as it can be, not negative.
        let mut q = window(0);
        q.from = q.to.plus_ms(5);
        assert_eq!(render("{interval}", &q), "1s");
    }

    #[test]
    fn only_known_placeholders_are_accepted() {
        let slot = Templates::Slot;
        assert!(check_template(DEFAULT_P99_MS_QUERY, slot).is_ok());
        assert!(check_template(r#"sum(x{job=~"a|b"}) / {interval}"#, slot).is_ok());
        let err = check_template(r#"x{app="{ap}",slot="{slot}"}"#, slot).unwrap_err();
        assert!(err.contains("{ap}"), "{err}");
        assert!(err.contains("{app}, {slot}, {version}, {interval}"), "{err}");
        assert!(check_template("  ", slot).unwrap_err().contains("empty"));
        // Flag templates have their own placeholders, and not the slot's.
        for q in [
            DEFAULT_FLAG_REQUESTS_QUERY,
            DEFAULT_FLAG_ERRORS_QUERY,
            DEFAULT_FLAG_CLIENT_ERRORS_QUERY,
            DEFAULT_FLAG_CODES_QUERY,
            DEFAULT_FLAG_P99_MS_QUERY,
        ] {
            assert!(check_template(q, Templates::Flag).is_ok(), "{q}");
            assert!(check_template(q, slot).is_err(), "{q}");
        }
        assert!(check_template(DEFAULT_REQUESTS_QUERY, Templates::Flag).is_err());
        // Braces that are not placeholders pass through.
        assert_eq!(render("{ {} {a=b} {", &window(1000)), "{ {} {a=b} {");
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: PrometheusConfig = serde_json::from_str(r#"{"url": "http://127.0.0.1:9090"}"#).unwrap();
        assert_eq!(c, PrometheusConfig::new("http://127.0.0.1:9090"));
        assert_eq!(c.timeout_ms, 2000);
        assert_eq!(c.retries, 2);
        assert_eq!(c.retry_backoff_ms, 200);
        let err = serde_json::from_str::<PrometheusConfig>(r#"{"url": "http://x", "retry": 3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `retry`"), "{err}");
    }

    #[test]
    fn validation_names_every_bad_field() {
        let mut c = PrometheusConfig::new("localhost:9090");
        c.errors_query = "x{bogus}".into();
        c.timeout_ms = 0;
        c.custom = vec![
            CustomMetric::lower_is_better("cpu", "x{oops}"),
            CustomMetric::lower_is_better("cpu", "y"),
        ];
        let fields: Vec<String> = c
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| match e {
                MetricError::Config { field, .. } => field,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "url",
                "errors_query",
                "custom[0].query",
                "custom[1].name",
                "timeout_ms"
            ]
        );
    }

    #[test]
    fn an_empty_p99_query_turns_latency_off() {
        let mut c = PrometheusConfig::new("http://127.0.0.1:9090");
        c.p99_ms_query = Some(" ".into());
        assert_eq!(PrometheusSource::new(c).unwrap().config().p99_ms_query, None);
    }

    #[test]
    fn values_parse_like_prometheus_formats_them() {
        assert_eq!(parse_value("1.5"), Some(1.5));
        assert_eq!(parse_value("1e3"), Some(1000.0));
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_value("pony"), None);
    }

    #[test]
    fn responses_are_classified() {
        let ok = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#;
        assert!(matches!(parse_response(200, ok), Ok(Data::Scalar(_))));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(
            parse_response(400, bad).unwrap_err(),
            RequestFailure::Api {
                status: 400,
                error_type: "bad_data".into(),
                error: "parse error".into()
            }
        );
        assert!(matches!(
            parse_response(503, "Service Unavailable"),
            Err(RequestFailure::Status { status: 503, .. })
        ));
        assert!(matches!(
            parse_response(200, "<html>"),
            Err(RequestFailure::Decode(_))
        ));
    }
}
