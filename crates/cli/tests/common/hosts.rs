#![allow(dead_code)] // not every test binary that shares `common` plays hosts
//! Hosts a test plays: the static platform's deploy hook (re)starts the example app on a slot's
//! fixed ports, the way a team's own deploy script would on its hosts.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The deploy hook: stops what runs on each of the slot's ports, then starts the new version
/// there in the background. A version whose name contains "bad" answers half its requests 500.
pub const DEPLOY_HOOK: &str = r#"#!/bin/sh
set -eu
for addr in $(echo "$CUTOVER_BACKENDS" | tr ',' ' '); do
  port="${addr##*:}"
  "$HOOK_DIR/stop-port.sh" "$port"
  extra=""
  case "$CUTOVER_VERSION" in *bad*) extra="--error-rate 0.5" ;; esac
  "$CUTOVER_BIN" example-app --port "$port" --version-label "$CUTOVER_VERSION" $extra \
    </dev/null >>"$HOOK_DIR/app-$port.log" 2>&1 &
  echo $! >"$HOOK_DIR/app-$port.pid"
done
echo "deployed $CUTOVER_VERSION to $CUTOVER_SLOT ($CUTOVER_BACKENDS)"
"#;

/// Stops the app on one port and waits (bounded) until it is gone, so the port is free again.
pub const STOP_PORT: &str = r#"#!/bin/sh
pidfile="$HOOK_DIR/app-$1.pid"
[ -f "$pidfile" ] || exit 0
pid="$(cat "$pidfile")"
kill "$pid" 2>/dev/null || true
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
kill -9 "$pid" 2>/dev/null || true
rm -f "$pidfile"
"#;

pub const STOP_HOOK: &str = r#"#!/bin/sh
for addr in $(echo "$CUTOVER_BACKENDS" | tr ',' ' '); do "$HOOK_DIR/stop-port.sh" "${addr##*:}"; done
"#;

/// Writes the hooks into `dir` (`deploy.sh`, `stop-port.sh`, `stop.sh`), executable.
pub fn write_hooks(dir: &Path) {
    for (name, text) in [
        ("deploy.sh", DEPLOY_HOOK),
        ("stop-port.sh", STOP_PORT),
        ("stop.sh", STOP_HOOK),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

/// The pid files of the apps the hooks started.
pub fn pid_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pid"))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every app the hooks started from `dir`.
pub fn kill_hook_apps(dir: &Path) {
    // The hook's apps run detached from this process: stop them by their pid files.
    for pidfile in pid_files(dir) {
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
    // And by the HOOK_DIR they inherited: a stop hook that the killed server left half done
    // may have removed a pid file of an app it did not get to stop (one was found running
    // after a CI run).
    let marker = format!("HOOK_DIR={}", dir.display());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if pid != std::process::id() && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}
