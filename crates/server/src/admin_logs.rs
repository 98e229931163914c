//! `GET /v1/apps/{app}/logs`: what the app's instances printed (stdout and stderr), read through
//! its platform, with a cursor to follow new lines by polling.
//!
//! Logs may hold secrets a program printed, so this read, unlike the others, needs the admin
//! token (`Authorization: Bearer <token>`); without it: 401.
//!
//! Query parameters (all optional):
//!
//! | name | what | default |
//! |---|---|---|
//! | `slot` | `blue` or `green` | the slots with running instances, the live one first (the live slot when none runs) |
//! | `lines` | the last lines of each instance to return, `0` to `10000`; ignored with `after` | `100` |
//! | `after` | the `cursor` of the previous answer: only the lines written since | none: the last `lines` |
//!
//! The answer:
//!
//! ```json
//! {
//!   "app": "web",
//!   "cursor": "blue~1.0-803-2f1a-1c4-9e3779b97f4a7c15-0",
//!   "slots": [
//!     {
//!       "slot": "blue",
//!       "live": true,
//!       "version": "v1",
//!       "instances": 1,
//!       "lines": [{ "instance": 0, "text": "listening on http://127.0.0.1:41234" }],
//!       "truncated": false,
//!       "restarted": false,
//!       "notes": []
//!     }
//!   ]
//! }
//! ```
//!
//! - `cursor` is opaque (URL-safe as it is): pass it back as `after`, with the same `slot`, for the
//!   lines written since. It covers every slot of the answer; a slot it does not cover (a canary
//!   that started since) is read from the start of its logs.
//! - `lines` come instance by instance, each instance's in the order it wrote them (the files
//!   have no timestamps to interleave them by). Only complete lines: a line being written
//!   shows once its newline is there. Lines over 16 KiB are cut and end with `… [line cut at
//!   16 KiB]`; bytes that are not UTF-8 show as U+FFFD.
//! - `version` is the version whose logs these are (`null` when the slot has none); `instances`
//!   how many instances' logs were read.
//! - `truncated`: one answer holds at most 10 000 lines and about 1 MiB per slot. In a tail,
//!   earlier lines were left out; after a cursor, more lines wait: ask again at once.
//! - `restarted`: the cursor did not fit a log (a new version's instance, a file truncated or
//!   replaced by log rotation), which was read from its start; `notes` say which and why, and
//!   which logs could not be read.
//!
//! A child module of `admin` (declared there with `#[path]`), so it shares the API's error type,
//! token check and query parsing without widening their visibility.
//!
//! Errors: 401 without the token, 404 for an unknown app, 400 naming the parameter for a bad
//! `slot`, `lines` or `after`, 409 for an app without a platform or on one that keeps no logs
//! (static hosts: read them on the hosts).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cutover_core::rollout::AppState;
use cutover_core::{FieldError, Slot};
use cutover_platform::logs::MAX_LINES_PER_CALL;
use cutover_platform::{LogChunk, LogCursor, LogRequest, PlatformError};
use serde::{Deserialize, Serialize};

use super::{authorize, find_controller, query, AdminState, ApiError};

/// The tail when `lines` is not given.
const DEFAULT_LINES: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    // Strings, checked here: serde's own errors would not say what is allowed.
    slot: Option<String>,
    lines: Option<String>,
    after: Option<String>,
}

/// The answer of `GET /v1/apps/{app}/logs`; see the module's documentation.
#[derive(Debug, Serialize)]
pub(super) struct LogsView {
    app: String,
    cursor: String,
    slots: Vec<SlotLogs>,
}

#[derive(Debug, Serialize)]
struct SlotLogs {
    slot: Slot,
    live: bool,
    version: Option<String>,
    instances: usize,
    lines: Vec<LineView>,
    truncated: bool,
    restarted: bool,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LineView {
    instance: u32,
    text: String,
}

pub(super) async fn app_logs(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogsView>, ApiError> {
    authorize(&state, &headers)?;
    if !state.apps.contains_key(&app) {
        let count = state.apps.len();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no app named {app:?}: this server has {count} app{}; list them with `cutover apps` \
                 (GET /v1/apps)",
                if count == 1 { "" } else { "s" }
            ),
        ));
    }
    let controller = find_controller(&state, &app)?;
    let q = query(q)?;
    let slot = q.slot.as_deref().map(parse_slot).transpose()?;
    let tail_lines = q.lines.as_deref().map_or(Ok(DEFAULT_LINES), parse_lines)?;
    let after = q.after.as_deref().map(parse_cursor).transpose()?;

    let app_state = controller.state().await;
    let slots = match slot {
        Some(slot) => vec![slot],
        None => default_slots(&app_state),
    };
    let platform = Arc::clone(controller.platform());
    let name = app.clone();
    // Reading files blocks: kept off the runtime's worker threads, which serve the proxy.
    let read = tokio::task::spawn_blocking(move || {
        slots
            .into_iter()
            .map(|slot| {
                let request = LogRequest {
                    tail_lines,
                    after: after.as_ref().map(|cursors| cursor_of(cursors, slot)),
                };
                platform
                    .read_logs(&name, slot, &request)
                    .map(|chunk| (slot, chunk))
            })
            .collect::<Result<Vec<(Slot, LogChunk)>, PlatformError>>()
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the logs of app {app} failed: {e} (a bug in cutover)"),
        )
    })?;
    let chunks = read.map_err(|e| platform_error(&app, e))?;
    let cursor = chunks
        .iter()
        .map(|(slot, chunk)| format!("{slot}~{}", chunk.cursor))
        .collect::<Vec<_>>()
        .join("_");
    let slots = chunks
        .into_iter()
        .map(|(slot, chunk)| SlotLogs {
            slot,
            live: slot == app_state.live,
            version: chunk.version,
            instances: chunk.instances,
            lines: chunk
                .lines
                .into_iter()
                .map(|l| LineView {
                    instance: l.instance,
                    text: l.text,
                })
                .collect(),
            truncated: chunk.truncated,
            restarted: chunk.restarted,
            notes: chunk.notes,
        })
        .collect();
    Ok(Json(LogsView { app, cursor, slots }))
}

/// The slots that run instances, the live one first; the live slot when none does, so that an
/// app whose instances all died still shows why.
fn default_slots(state: &AppState) -> Vec<Slot> {
    let slots: Vec<Slot> = [state.live, state.live.other()]
        .into_iter()
        .filter(|s| state.slot(*s).is_running())
        .collect();
    if slots.is_empty() {
        vec![state.live]
    } else {
        slots
    }
}

/// The cursor of `slot` in a combined cursor; an empty one (every log read from its start)
/// when it has none: the slot started since.
fn cursor_of(cursors: &[(Slot, LogCursor)], slot: Slot) -> LogCursor {
    cursors
        .iter()
        .find(|(s, _)| *s == slot)
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

fn bad_parameter(name: &str, message: String) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("invalid query parameter `{name}`; nothing was read"),
    );
    error.errors.push(FieldError::new(name, message));
    error
}

fn parse_slot(text: &str) -> Result<Slot, ApiError> {
    text.parse().map_err(|_| {
        bad_parameter(
            "slot",
            format!("{text:?} is not a slot: use blue or green, or leave it out for the slots that run"),
        )
    })
}

fn parse_lines(text: &str) -> Result<usize, ApiError> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_LINES_PER_CALL)
        .ok_or_else(|| {
            bad_parameter(
                "lines",
                format!(
                    "{text:?} is not allowed: give a whole number of lines from 0 to {MAX_LINES_PER_CALL} \
                     (default {DEFAULT_LINES})"
                ),
            )
        })
}

/// `blue~<cursor>_green~<cursor>`, as [`app_logs`] writes it.
fn parse_cursor(text: &str) -> Result<Vec<(Slot, LogCursor)>, ApiError> {
    let bad = |reason: String| {
        bad_parameter(
            "after",
            format!(
                "{reason}; pass the `cursor` of the previous answer unchanged, or leave `after` out \
                 to start again from the last lines"
            ),
        )
    };
    let mut cursors: Vec<(Slot, LogCursor)> = Vec::new();
    for part in text.split('_') {
        let (slot, cursor) = part
            .split_once('~')
            .ok_or_else(|| bad("it is not a cursor of this API".to_string()))?;
        let slot: Slot = slot
            .parse()
            .map_err(|_| bad(format!("it names no slot ({slot:?})")))?;
        let cursor: LogCursor = cursor.parse().map_err(|e: PlatformError| bad(e.to_string()))?;
        if cursors.iter().any(|(s, _)| *s == slot) {
            return Err(bad(format!("it names slot {slot} twice")));
        }
        cursors.push((slot, cursor));
    }
    Ok(cursors)
}

fn platform_error(app: &str, e: PlatformError) -> ApiError {
    match e {
        PlatformError::BadCursor { .. } => bad_parameter("after", e.to_string()),
        PlatformError::LogsNotKept { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        e => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the logs of app {app}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_cursors_round_trip_and_bad_ones_name_the_parameter() {
        let parsed = parse_cursor("blue~1_green~1").unwrap();
        assert_eq!(
            parsed,
            vec![
                (Slot::Blue, LogCursor::default()),
                (Slot::Green, LogCursor::default())
            ]
        );
        assert_eq!(cursor_of(&parsed[..1], Slot::Green), LogCursor::default());
        for bad in ["", "blue", "red~1", "blue~x", "blue~1_blue~1"] {
            let err = parse_cursor(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.errors[0].field, "after", "{bad}");
        }
    }

    #[test]
    fn lines_and_slot_say_what_is_allowed() {
        assert_eq!(parse_lines("0").unwrap(), 0);
        assert_eq!(parse_lines("10000").unwrap(), 10_000);
        for bad in ["-1", "10001", "ten", ""] {
            let err = parse_lines(bad).unwrap_err();
            assert!(err.errors[0].message.contains("from 0 to 10000"), "{bad}");
        }
        assert_eq!(parse_slot("green").unwrap(), Slot::Green);
        let err = parse_slot("purple").unwrap_err();
        assert!(err.errors[0].message.contains("blue or green"));
    }
}
