#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What scripts and CI jobs rely on: how the CLI finds its server, its exit codes, and its JSON.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cutover_test_support::ChildProcess;
use serde_json::Value;

use common::CUTOVER;

/// A directory with a cutover.toml whose admin API and app listen on ports the server picks, a
/// per-version release directory, and a first step that waits for a person.
fn project(dir: &Path) {
    for v in ["v1", "v2", "v3"] {
        std::fs::create_dir_all(dir.join("releases").join(v)).unwrap();
    }
    std::fs::write(
        dir.join("cutover.toml"),
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"
platform = "local"

[app.release]
command = "{CUTOVER} example-app --port {{port}}"
workdir = "{}/releases/{{version}}"

[app.rollout]
steps = [{{ weight_bp = 500, pause = true }}, {{ weight_bp = 10000 }}]
"#,
            dir.display()
        ),
    )
    .unwrap();
}

/// `cutover serve` as a user starts it: no token in the environment, so it generates the token
/// file beside the configuration.
fn serve(dir: &Path) -> ChildProcess {
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["serve", "--config"])
        .arg(dir.join("cutover.toml"))
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .env_remove("NO_COLOR");
    let mut process = ChildProcess::spawn("cutover-serve", cmd);
    process.wait_for_stdout_line(Duration::from_secs(30), |line| {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|v| v["event"] == "ready")
    });
    process
}

/// `cutover ARGS` in `cwd` with nothing in the environment that points it anywhere.
fn cutover(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = common::unpointed(CUTOVER, cwd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every line of `text` as JSON; fails naming the line that is not.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{text}")))
        .collect()
}

#[test]
fn the_cli_finds_its_server_from_the_configuration_and_keeps_its_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let elsewhere = elsewhere.path();
    project(&dir);
    let _instances = common::KillProcessesIn(dir.clone());
    let _server = serve(&dir);

    // Beside cutover.toml nothing is needed: the address (port 0: from the state directory) and
    // the token file are read from it.
    let (code, out, err) = cutover(&dir, &["apps", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let apps: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(apps[0]["app"], "web");
    assert_eq!(apps[0]["managed"], true);

    // The first version: followed as JSON, one object per line, the last the result, whose
    // exit code is the process's.
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v1", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["kind"], "started");
    assert!(lines.iter().any(|l| l["kind"] == "deploy"), "{out}");
    let last = lines.last().unwrap();
    assert_eq!(last["kind"], "result");
    assert_eq!(last["phase"], "promoted");
    assert_eq!(last["exit_code"], 0);
    assert!(
        last["rollout"].get("sequential").is_none(),
        "the judge's memory stays out: {last}"
    );

    // The event log as JSON lines, as docs/events.md describes them.
    let (code, out, err) = cutover(&dir, &["events", "web", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let events = json_lines(&out);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "promoted" && e["rollout_id"] == 1),
        "{out}"
    );
    for e in &events {
        for field in ["seq", "app", "at", "kind", "message"] {
            assert!(!e[field].is_null(), "{field} missing: {e}");
        }
    }

    // Elsewhere: with --config, with CUTOVER_CONFIG; with neither, an error that says where
    // it looked and how to point the CLI at the server.
    let config = dir.join("cutover.toml");
    let config = config.to_str().unwrap();
    let (code, out, err) = cutover(
        elsewhere,
        &["status", "web", "--config", config, "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["rollout"]["release"]["version"], "v1");
    let (code, out, err) = cutover(
        elsewhere,
        &["history", "web", "--output", "json"],
        &[("CUTOVER_CONFIG", config)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history[0]["release"]["version"], "v1");
    // (Through CUTOVER_ADMIN at a dead port: the default one may be another test's server.)
    let (code, out, err) = cutover(
        elsewhere,
        &["status", "web"],
        &[("CUTOVER_ADMIN", "http://127.0.0.1:1")],
    );
    assert_eq!(code, 1, "{out}{err}");
    for hint in [
        "no cutover.toml in",
        "from CUTOVER_ADMIN",
        "--admin URL",
        "--config",
    ] {
        assert!(err.contains(hint), "{hint:?} missing: {err}");
    }

    // The second version waits for a person at its pause step: 13, with the result in JSON.
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v2", "--output", "json"], &[]);
    assert_eq!(code, 13, "{out}{err}");
    let last = json_lines(&out).pop().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["exit_code"].as_u64()),
        (Some("result"), Some(13))
    );
    assert_eq!(last["phase"], "paused");

    // Refused by the server: 3 (another rollout running, an unknown app, a version whose
    // directory is missing), 4 for a wrong token, 2 for a usage error, 1 when unreachable.
    let (code, _, err) = cutover(&dir, &["deploy", "web", "v3"], &[]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = cutover(&dir, &["status", "nope"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no app named \"nope\""), "{err}");
    let (code, _, err) = cutover(
        &dir,
        &["abort", "web"],
        &[("CUTOVER_ADMIN_TOKEN", "a-wrong-token-of-some-length")],
    );
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cutover(&dir, &["deploy", "web", "v3", "--timeout", "soon"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a duration"), "{err}");
    let (code, _, err) = cutover(&dir, &["deploy", "web", "v3", "--timeout", "0"], &[]);
    assert_eq!(
        code, 2,
        "--timeout 0 is a usage error, not a rollout left running: {err}"
    );
    // A refusal in JSON mode still ends with a result line for the pipeline.
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v3", "--output", "json"], &[]);
    assert_eq!(code, 3, "{out}{err}");
    let result = json_lines(&out).pop().unwrap();
    assert_eq!(
        (result["kind"].as_str(), result["exit_code"].as_u64()),
        (Some("result"), Some(3))
    );
    assert!(result["error"].as_str().unwrap().contains("rollout"), "{result}");
    // No token to send is "not authorised" too.
    let (code, _, err) = cutover(&dir, &["abort", "web", "--token-file", "/nonexistent/token"], &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("/nonexistent/token (--token-file)"), "{err}");
    // An address that is not the admin API (another HTTP service) is said to be so.
    let other = cutover_test_support::ExampleApp::spawn("other", &[]);
    let other = format!("http://{}", other.addr);
    let (code, _, err) = cutover(&dir, &["apps", "--admin", &other], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not cutover's admin API"), "{err}");
    // A 200 with JSON that is not the answer asked for (another service's) is no success either.
    let elsewhere_api = format!("{other}/api/x?");
    for args in [
        vec!["status", "web"],
        vec!["history", "web"],
        vec!["rollback", "web"],
        vec!["events", "web"],
    ] {
        let mut args = args.clone();
        args.extend(["--admin", elsewhere_api.as_str()]);
        let (code, out, err) = cutover(&dir, &args, &[]);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
    }
    let (code, _, err) = cutover(&dir, &["events", "web", "--rollout", "999"], &[]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = cutover(&dir, &["--admin", "http://127.0.0.1:1", "serve"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cutover(&dir, &["status", "web", "--admin", "http://127.0.0.1:1"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach the cutover admin API at http://127.0.0.1:1 (from --admin)"),
        "{err}"
    );

    // A person resumes; the rollout is promoted.
    let (code, out, err) = cutover(&dir, &["resume", "web"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v3", "--no-follow"], &[]);
    // v2 may still be finishing its promotion: then the server says so (3); otherwise v3 starts.
    assert!(code == 0 || code == 3, "{out}{err}");
    if code == 0 {
        let (code, out, err) = cutover(&dir, &["abort", "web"], &[]);
        assert_eq!(code, 0, "{out}{err}");
    }

    // A version whose directory is missing is refused before anything starts, saying why.
    let (code, _, err) = cutover(&dir, &["deploy", "web", "v9"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("releases/v9") && err.contains("does not exist"),
        "{err}"
    );

    // --wait follows through the pause; --timeout with --on-timeout abort stops the rollout: 14.
    let (code, out, err) = cutover(
        &dir,
        &[
            "deploy",
            "web",
            "v3",
            "--wait",
            "--timeout",
            "2s",
            "--on-timeout",
            "abort",
        ],
        &[],
    );
    assert_eq!(code, 14, "{out}{err}");
    assert!(out.contains("aborted (--on-timeout abort)"), "{out}");
    let (code, out, _) = cutover(&dir, &["status", "web", "--output", "json"], &[]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["rollout"]["phase"]["phase"], "aborted");

    // The history table: one line per rollout, with its start, duration, outcome and reason.
    let (code, out, err) = cutover(&dir, &["history", "web"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let header = out.lines().next().unwrap();
    for column in ["started", "took", "from", "to", "outcome", "reason"] {
        assert!(header.contains(column), "{header}");
    }
    let aborted = out.lines().find(|l| l.contains("aborted")).unwrap();
    assert!(aborted.contains("v3"), "{out}");
}

#[test]
fn a_configuration_with_problems_exits_3_and_completions_and_man_pages_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cutover.toml"), "[admin]\nlisten = 9180\n").unwrap();
    let (code, _, err) = cutover(dir.path(), &["config", "check"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("admin.listen"), "{err}");

    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = cutover(dir.path(), &["completions", shell], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("deploy") && out.contains("on-timeout"),
            "{shell}: {out}"
        );
    }
    let man = dir.path().join("man");
    let (code, out, err) = cutover(dir.path(), &["man", man.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for page in [
        "cutover.1",
        "cutover-deploy.1",
        "cutover-flag-kill.1",
        "cutover-migrate-lint.1",
    ] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}: {text}");
    }
    let deploy = std::fs::read_to_string(man.join("cutover-deploy.1")).unwrap();
    assert!(deploy.contains("on\\-timeout"), "{deploy}");
}

#[test]
fn serve_logs_json_lines_on_request_and_no_colour_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["serve", "--log-format", "json", "--config"])
        .arg(dir.path().join("cutover.toml"))
        .env("CUTOVER_ADMIN_TOKEN", "a-token-long-enough-for-serve");
    let mut serve = ChildProcess::spawn("cutover-serve", cmd);
    serve.wait_for_stdout_line(Duration::from_secs(30), |line| {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|v| v["event"] == "ready")
    });
    serve.terminate();
    let log = serve.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "serve logged nothing");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(
        !log.contains("a-token-long-enough-for-serve"),
        "the token is never logged"
    );
}

/// A project whose release never gets ready: its readiness path does not exist (404).
fn never_ready_project(dir: &Path, readiness_deadline_ms: u64) {
    std::fs::write(
        dir.join("cutover.toml"),
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"
platform = "local"

[app.release]
command = "{CUTOVER} example-app --port {{port}}"
workdir = "{}"

[app.readiness]
path = "/no-such-path"

[app.rollout]
readiness_deadline_ms = {readiness_deadline_ms}
"#,
            dir.display()
        ),
    )
    .unwrap();
}

/// A service without the readiness path: the user hears about it while it waits, with the
/// setting that fixes it, and the deploy fails before any traffic (12).
#[test]
fn a_service_without_the_readiness_path_is_told_how_to_point_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    never_ready_project(&dir, 11_000);
    let _instances = common::KillProcessesIn(dir.clone());
    let _server = serve(&dir);
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v1", "--output", "json"], &[]);
    assert_eq!(code, 12, "{out}{err}");
    let lines = json_lines(&out);
    let waiting = lines
        .iter()
        .find(|l| l["kind"] == "not_ready_yet")
        .unwrap_or_else(|| panic!("no not_ready_yet event\n{out}"));
    let message = waiting["message"].as_str().unwrap();
    assert!(message.contains("status 404"), "{message}");
    assert!(message.contains("[app.readiness] path"), "{message}");
    let failed = lines.iter().find(|l| l["kind"] == "failed").unwrap();
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("[app.readiness] path"),
        "{failed}"
    );
}

/// A following deploy outlives a restart of the server, and stops cleanly on SIGTERM (a
/// cancelled CI job) with the rollout left running.
#[test]
fn following_survives_a_server_restart_and_a_signal_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    project(&dir);
    let _instances = common::KillProcessesIn(dir.clone());
    let mut server = serve(&dir);
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v1"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // v2 waits at its pause step; `--wait` follows through it.
    let mut follower = common::unpointed(CUTOVER, &dir)
        .args(["deploy", "web", "v2", "--wait", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The follower's stderr, line by line as it comes: the restart waits until it noticed.
    let (said_tx, said) = std::sync::mpsc::channel::<String>();
    let stderr = follower.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = said_tx.send(line);
        }
        all
    });
    let paused = || {
        let (_, out, _) = cutover(&dir, &["status", "web", "--output", "json"], &[]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .is_some_and(|s| s["rollout"]["phase"]["phase"] == "paused")
    };
    cutover_test_support::wait_until_sync("v2 paused", Duration::from_secs(30), paused);

    // The server restarts under the follower, on the same address (the follower keeps the one
    // it resolved, as a CLI given --admin would).
    let admin = std::fs::read_to_string(dir.join(".cutover/admin.url")).unwrap();
    let port = admin.trim().rsplit(':').next().unwrap().to_string();
    server.terminate();
    drop(server);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match said.recv_timeout(left) {
            Ok(line) if line.contains("lost contact with the server") => break,
            Ok(_) => {}
            Err(e) => panic!("the follower never said it lost the server: {e}"),
        }
    }
    let config = std::fs::read_to_string(dir.join("cutover.toml")).unwrap();
    std::fs::write(
        dir.join("cutover.toml"),
        config.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        ),
    )
    .unwrap();
    let _server = serve(&dir);
    let (code, out, err) = cutover(&dir, &["resume", "web"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let done = follower.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    let err = reader.join().unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "the follower saw v2 promoted\n{out}\n{err}"
    );
    assert!(err.contains("in contact with the server"), "{err}");
    let result = json_lines(&out).pop().unwrap();
    assert_eq!(result["phase"], "promoted", "{result}");

    // SIGTERM to a follower: 130, an `interrupted` line, and the rollout goes on.
    let follower = common::unpointed(CUTOVER, &dir)
        .args(["deploy", "web", "v3", "--wait", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cutover_test_support::wait_until_sync("v3 paused", Duration::from_secs(30), paused);
    let status = Command::new("kill")
        .args(["-TERM", &follower.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let done = follower.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    let err = String::from_utf8_lossy(&done.stderr).into_owned();
    assert_eq!(done.status.code(), Some(130), "{out}{err}");
    let last = json_lines(&out).pop().unwrap();
    assert_eq!(last["kind"], "interrupted", "{last}");
    assert!(
        err.contains("(SIGTERM)") && err.contains("it goes on in the server"),
        "{err}"
    );
    assert!(paused(), "the rollout is still where it was");

    // A deploy whose output is closed before it knows the outcome does not pass for promoted.
    let (code, out, err) = cutover(&dir, &["abort", "web"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let piped = common::unpointed("bash", &dir)
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{CUTOVER}' deploy web v3 --output json | head -n 1"
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(piped.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the output was closed before the rollout ended"),
        "{err}"
    );
}

/// A release still starting when its rollout is aborted stops being waited for: nothing of it is
/// reported under the next rollout's name.
#[test]
fn an_aborted_rollouts_start_reports_nothing_under_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    never_ready_project(&dir, 2_0000);
    let _instances = common::KillProcessesIn(dir.clone());
    let _server = serve(&dir);
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v1", "--no-follow"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // Its first "not ready yet" report (at 10 s), then an abort.
    let reported = || {
        let (_, out, _) = cutover(
            &dir,
            &["events", "web", "--rollout", "1", "--output", "json"],
            &[],
        );
        out.contains("not_ready_yet")
    };
    cutover_test_support::wait_until_sync("v1 reported not ready", Duration::from_secs(30), reported);
    let (code, out, err) = cutover(&dir, &["abort", "web"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // The next rollout runs past the moment v1's next report would have come (25 s).
    let (code, out, err) = cutover(&dir, &["deploy", "web", "v2", "--output", "json"], &[]);
    assert_eq!(code, 12, "{out}{err}");
    for line in json_lines(&out) {
        if line["kind"] == "not_ready_yet" {
            let message = line["message"].as_str().unwrap();
            assert!(
                message.starts_with("v2 "),
                "v1's wait reported under rollout 2: {message}"
            );
        }
    }
    let (_, out, _) = cutover(
        &dir,
        &["events", "web", "--rollout", "1", "--output", "json"],
        &[],
    );
    let events = json_lines(&out);
    let aborted = events.iter().position(|e| e["kind"] == "aborted").unwrap();
    assert!(
        events[aborted..].iter().all(|e| e["kind"] != "not_ready_yet"),
        "nothing of rollout 1 after its end: {out}"
    );
}
