//! The event log's entries, typed: one variant per kind with the numbers behind it.
//!
//! The JSON is the documented contract of `docs/events.md` and does not change with these types:
//! `{"at", "rollout_id", "kind", "message", "data"}`, where `kind` is the variant's snake_case
//! name and `data` its payload, or `null` for kinds without one. Readers match on
//! [`EventDetail`]; nothing parses kinds or messages as strings.
//!
//! An entry this build does not understand (a kind written by a newer cutover, or data of an
//! older shape) reads back as [`EventDetail::Unrecognized`] with its kind and data untouched, so a
//! state file always loads and its log is served as it was written.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::judge::Verdict;
use crate::slot::Slot;
use crate::time::Timestamp;

/// Something that happened, for the event log: a sentence for people and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "EventWire", from = "EventWire")]
pub struct Event {
    pub at: Timestamp,
    pub rollout_id: Option<u64>,
    /// A sentence for people; its wording may change. Read [`Event::detail`] instead.
    pub message: String,
    pub detail: EventDetail,
}

impl Event {
    /// The kind's name, as in the JSON (`"rolled_back"`).
    pub fn kind(&self) -> &str {
        self.detail.kind()
    }

    /// The `data` of the JSON form: the payload as documented, `null` for kinds without one.
    pub fn data(&self) -> serde_json::Value {
        match &self.detail {
            EventDetail::Unrecognized { data, .. } => data.clone(),
            detail => match serde_json::to_value(detail) {
                Ok(serde_json::Value::Object(mut map)) => map.remove("data").unwrap_or_default(),
                _ => serde_json::Value::Null,
            },
        }
    }
}

/// What happened, with its data. `docs/events.md` says when each is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum EventDetail {
    Deploy(Deployed),
    WindowClosed,
    Migrated,
    MigrationRetry,
    MigrationCancelled,
    NotReadyYet {
        slot: Slot,
        waited_ms: u64,
    },
    Ready,
    Verified,
    Gating {
        /// 0-based.
        step: usize,
        weight_bp: u16,
    },
    GatesPassed,
    Step {
        /// 0-based.
        step: usize,
        weight_bp: u16,
        duration_ms: u64,
    },
    Decision {
        verdict: Box<Verdict>,
        window_started_at: Timestamp,
    },
    StepExtended {
        step: usize,
        /// Evidence of a regression is building.
        hold: bool,
        step_requests: u64,
    },
    /// `Some` when the judge paused the rollout (inconclusive windows, a step held too long);
    /// `None` for a pause step or a person.
    Paused(Option<JudgePause>),
    Resumed,
    AwaitingConfirmation,
    ConfirmationTimedOut,
    Promoted(PromotedData),
    Succeeded,
    RolledBack(BackData),
    Aborted(BackData),
    Failed,
    Recovered {
        target_ready: bool,
        live_ready: bool,
    },
    Restarted {
        slot: Slot,
        version: String,
        instances: usize,
    },
    RestartFailed {
        slot: Slot,
        version: String,
    },
    Adopted {
        adopted: Vec<AdoptedSlot>,
    },
    Contracted {
        applied: Vec<AppliedMigration>,
    },
    ContractRefused,
    MigrationRepaired {
        migration: String,
    },
    /// A kind this build does not know, or data that does not fit its kind: kept as written.
    #[serde(skip)]
    Unrecognized {
        kind: String,
        data: serde_json::Value,
    },
}

impl EventDetail {
    /// The kind's name, as in the JSON.
    pub fn kind(&self) -> &str {
        match self {
            EventDetail::Deploy(_) => "deploy",
            EventDetail::WindowClosed => "window_closed",
            EventDetail::Migrated => "migrated",
            EventDetail::MigrationRetry => "migration_retry",
            EventDetail::MigrationCancelled => "migration_cancelled",
            EventDetail::NotReadyYet { .. } => "not_ready_yet",
            EventDetail::Ready => "ready",
            EventDetail::Verified => "verified",
            EventDetail::Gating { .. } => "gating",
            EventDetail::GatesPassed => "gates_passed",
            EventDetail::Step { .. } => "step",
            EventDetail::Decision { .. } => "decision",
            EventDetail::StepExtended { .. } => "step_extended",
            EventDetail::Paused(_) => "paused",
            EventDetail::Resumed => "resumed",
            EventDetail::AwaitingConfirmation => "awaiting_confirmation",
            EventDetail::ConfirmationTimedOut => "confirmation_timed_out",
            EventDetail::Promoted(_) => "promoted",
            EventDetail::Succeeded => "succeeded",
            EventDetail::RolledBack(_) => "rolled_back",
            EventDetail::Aborted(_) => "aborted",
            EventDetail::Failed => "failed",
            EventDetail::Recovered { .. } => "recovered",
            EventDetail::Restarted { .. } => "restarted",
            EventDetail::RestartFailed { .. } => "restart_failed",
            EventDetail::Adopted { .. } => "adopted",
            EventDetail::Contracted { .. } => "contracted",
            EventDetail::ContractRefused => "contract_refused",
            EventDetail::MigrationRepaired { .. } => "migration_repaired",
            EventDetail::Unrecognized { kind, .. } => kind,
        }
    }

    /// The detail of a `kind` with its `data` as stored: [`EventDetail::Unrecognized`] when
    /// this build does not know the kind or the data does not fit it.
    pub fn from_parts(kind: String, data: serde_json::Value) -> EventDetail {
        // Read from text with the kind first: serde then reads the data straight into its type.
        // Given the data first (as a JSON value, whose keys are sorted), it buffers it in a form
        // that loses what the text knew, and maps keyed by numbers (a verdict's status codes)
        // no longer read back.
        let tagged = format!(
            "{{\"kind\":{},\"data\":{}}}",
            serde_json::Value::String(kind.clone()),
            data
        );
        match serde_json::from_str::<EventDetail>(&tagged) {
            Ok(detail) => detail,
            // Kept as written, so that nothing read is lost when it is served again.
            Err(_) => EventDetail::Unrecognized { kind, data },
        }
    }

    /// Does this event end its rollout (promoted is not an end: its rollback window follows)?
    pub fn ends_rollout(&self) -> bool {
        matches!(
            self,
            EventDetail::Succeeded
                | EventDetail::RolledBack(_)
                | EventDetail::Aborted(_)
                | EventDetail::Failed
        )
    }

    /// The exposure an outcome event carries: promoted, rolled back, aborted.
    pub fn exposure(&self) -> Option<&ExposureData> {
        match self {
            EventDetail::Promoted(p) => Some(&p.exposure),
            EventDetail::RolledBack(b) | EventDetail::Aborted(b) => Some(&b.exposure),
            _ => None,
        }
    }
}

/// `deploy`: a rollout starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub version: String,
    /// The live version, or `"nothing"`.
    pub from: String,
    /// The target slot.
    pub slot: Slot,
    /// A deploy freeze was overridden with `--force`.
    pub forced: bool,
}

/// `paused` by the judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgePause {
    /// The statistics behind the decision (the `verdict.reason` of the decision before it).
    pub statistics: String,
}

/// What users saw of the new release before the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureData {
    /// From the start of the first window in which the canary served a request to the decision.
    pub first_canary_request_to_decision_ms: Option<u64>,
    pub canary_requests: u64,
    /// 5xx, and 4xx that count.
    pub canary_failed_requests: u64,
    /// An estimate; `None` where the metric source does not count users.
    pub users_exposed: Option<u64>,
}

/// `promoted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotedData {
    #[serde(flatten)]
    pub exposure: ExposureData,
    /// The end of the rollback window.
    pub until: Timestamp,
}

/// `rolled_back` and `aborted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackData {
    #[serde(flatten)]
    pub exposure: ExposureData,
    /// From the start of the first failed window; `None` if none failed.
    pub detection_to_rollback_ms: Option<u64>,
}

/// One slot found running at start and adopted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedSlot {
    pub slot: Slot,
    pub version: String,
    pub backends: Vec<SocketAddr>,
}

/// One migration half a contract applied (the history record of `cutover-migrate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMigration {
    pub name: String,
    /// `expand` or `contract`.
    pub phase: String,
    pub checksum: String,
    pub applied_at: Timestamp,
    pub rollout_id: Option<u64>,
    pub duration_ms: u64,
}

/// The JSON form of an event, as documented.
#[derive(Serialize, Deserialize)]
struct EventWire {
    at: Timestamp,
    rollout_id: Option<u64>,
    kind: String,
    message: String,
    #[serde(default)]
    data: serde_json::Value,
}

impl From<Event> for EventWire {
    fn from(e: Event) -> Self {
        let (kind, data) = match &e.detail {
            EventDetail::Unrecognized { kind, data } => (kind.clone(), data.clone()),
            // Every known variant's payload is plain data (strings, numbers, maps with string
            // keys): turning it into a JSON value cannot fail.
            _ => (e.kind().to_string(), e.data()),
        };
        EventWire {
            at: e.at,
            rollout_id: e.rollout_id,
            kind,
            message: e.message,
            data,
        }
    }
}

impl From<EventWire> for Event {
    fn from(w: EventWire) -> Self {
        Event {
            at: w.at,
            rollout_id: w.rollout_id,
            message: w.message,
            detail: EventDetail::from_parts(w.kind, w.data),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn event(detail: EventDetail) -> Event {
        Event {
            at: Timestamp(1_764_640_800_000),
            rollout_id: Some(7),
            message: "m".into(),
            detail,
        }
    }

    #[test]
    fn the_json_is_the_documented_one() {
        let e = event(EventDetail::RolledBack(BackData {
            exposure: ExposureData {
                first_canary_request_to_decision_ms: Some(21_000),
                canary_requests: 980,
                canary_failed_requests: 40,
                users_exposed: Some(96),
            },
            detection_to_rollback_ms: Some(20_000),
        }));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({
                "at": 1_764_640_800_000u64, "rollout_id": 7, "kind": "rolled_back", "message": "m",
                "data": {
                    "first_canary_request_to_decision_ms": 21000, "canary_requests": 980,
                    "canary_failed_requests": 40, "users_exposed": 96, "detection_to_rollback_ms": 20000
                }
            })
        );
        let ready = serde_json::to_value(event(EventDetail::Ready)).unwrap();
        assert_eq!(ready["kind"], "ready");
        assert!(ready.as_object().unwrap().contains_key("data"));
        assert_eq!(ready["data"], serde_json::Value::Null);
        let paused = serde_json::to_value(event(EventDetail::Paused(None))).unwrap();
        assert_eq!(paused["data"], serde_json::Value::Null);
    }

    #[test]
    fn every_kind_reads_back_as_itself() {
        let details = [
            EventDetail::Deploy(Deployed {
                version: "v2".into(),
                from: "nothing".into(),
                slot: Slot::Green,
                forced: false,
            }),
            EventDetail::WindowClosed,
            EventDetail::Migrated,
            EventDetail::MigrationRetry,
            EventDetail::MigrationCancelled,
            EventDetail::NotReadyYet {
                slot: Slot::Blue,
                waited_ms: 10_000,
            },
            EventDetail::Ready,
            EventDetail::Verified,
            EventDetail::Gating {
                step: 1,
                weight_bp: 2500,
            },
            EventDetail::GatesPassed,
            EventDetail::Step {
                step: 0,
                weight_bp: 500,
                duration_ms: 60_000,
            },
            EventDetail::StepExtended {
                step: 0,
                hold: true,
                step_requests: 12,
            },
            EventDetail::Paused(None),
            EventDetail::Paused(Some(JudgePause {
                statistics: "e-value 3".into(),
            })),
            EventDetail::Resumed,
            EventDetail::AwaitingConfirmation,
            EventDetail::ConfirmationTimedOut,
            EventDetail::Promoted(PromotedData {
                exposure: ExposureData::default(),
                until: Timestamp(5),
            }),
            EventDetail::Succeeded,
            EventDetail::RolledBack(BackData {
                exposure: ExposureData::default(),
                detection_to_rollback_ms: None,
            }),
            EventDetail::Aborted(BackData {
                exposure: ExposureData::default(),
                detection_to_rollback_ms: Some(3),
            }),
            EventDetail::Failed,
            EventDetail::Recovered {
                target_ready: true,
                live_ready: false,
            },
            EventDetail::Restarted {
                slot: Slot::Blue,
                version: "v1".into(),
                instances: 2,
            },
            EventDetail::RestartFailed {
                slot: Slot::Blue,
                version: "v1".into(),
            },
            EventDetail::Adopted {
                adopted: vec![AdoptedSlot {
                    slot: Slot::Blue,
                    version: "v1".into(),
                    backends: vec!["127.0.0.1:4000".parse().unwrap()],
                }],
            },
            EventDetail::Contracted {
                applied: vec![AppliedMigration {
                    name: "0002_drop".into(),
                    phase: "contract".into(),
                    checksum: "abc".into(),
                    applied_at: Timestamp(9),
                    rollout_id: None,
                    duration_ms: 4,
                }],
            },
            EventDetail::ContractRefused,
            EventDetail::MigrationRepaired {
                migration: "0001_add".into(),
            },
        ];
        for detail in details {
            let e = event(detail);
            let text = serde_json::to_string(&e).unwrap();
            let back: Event = serde_json::from_str(&text).unwrap();
            assert!(
                !matches!(back.detail, EventDetail::Unrecognized { .. }),
                "{text} read back as unrecognized"
            );
            assert_eq!(back, e, "{text}");
        }
    }

    /// A decision that counted status codes (a map with numbers for keys) read back from the
    /// store as an unrecognized event: the demo counted no failed decision for v3.
    #[test]
    fn a_decision_with_status_codes_reads_back_as_a_decision() {
        let mut codes = std::collections::BTreeMap::new();
        codes.insert(500u16, 6u64);
        codes.insert(401u16, 2u64);
        let verdict = Verdict {
            outcome: crate::judge::Outcome::Fail,
            reason: "5xx: canary 6.1 %".into(),
            summary: "v3 fails 6.1 % of requests with a 5xx, v2 0 %: rolling back".into(),
            stats: crate::judge::WindowStats {
                canary: crate::judge::SlotWindow {
                    requests: 98,
                    errors: 6,
                    codes: Some(codes),
                    ..Default::default()
                },
                baseline: Some(crate::judge::SlotWindow::new(900, 0, Some(3.5))),
                duration_ms: 1000,
                ..Default::default()
            },
            checks: Vec::new(),
            conclusive: true,
            complete_step: false,
            sequential: Vec::new(),
            evidence_share: 1.0,
            hold: false,
        };
        let e = event(EventDetail::Decision {
            verdict: Box::new(verdict),
            window_started_at: Timestamp(3),
        });
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e, "{text}");
        // As the store reads it: kind and data apart.
        let data: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["data"].clone();
        assert_eq!(EventDetail::from_parts("decision".into(), data), e.detail);
        // Status and history carry verdicts too, read from a JSON value by the CLI.
        if let EventDetail::Decision { verdict, .. } = &e.detail {
            let value = serde_json::to_value(verdict.as_ref()).unwrap();
            assert_eq!(
                &serde_json::from_value::<Verdict>(value).unwrap(),
                verdict.as_ref()
            );
        }
    }

    #[test]
    fn unknown_kinds_and_data_of_another_shape_are_kept_as_written() {
        for text in [
            r#"{"at":1,"rollout_id":null,"kind":"from_the_future","message":"m","data":{"x":[1,2]}}"#,
            r#"{"at":1,"rollout_id":2,"kind":"step","message":"m","data":{"step":0}}"#,
            r#"{"at":1,"rollout_id":2,"kind":"ready","message":"m","data":{"new_field":1}}"#,
        ] {
            let e: Event = serde_json::from_str(text).unwrap();
            assert!(matches!(e.detail, EventDetail::Unrecognized { .. }), "{text}");
            assert_eq!(
                serde_json::to_value(&e).unwrap(),
                serde_json::from_str::<serde_json::Value>(text).unwrap()
            );
        }
        // `data` may be missing altogether in old entries of kinds without data.
        let e: Event =
            serde_json::from_str(r#"{"at":1,"rollout_id":2,"kind":"ready","message":"m"}"#).unwrap();
        assert_eq!(e.detail, EventDetail::Ready);
    }
}
