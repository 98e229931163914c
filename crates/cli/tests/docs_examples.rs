#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The pages others build on stay true to the code: `docs/events.md` names exactly the event
//! kinds the server emits (those of `EventDetail`), and `docs/ci.md`'s exit codes are exactly
//! those the CLI defines and the GitHub Actions workflow (`docs/ci/github-actions.yml`) handles,
//! each with the job outcome the page promises. No server runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ===== event kinds =====

/// Every kind an event can have: one per variant of `EventDetail`, by its name in the JSON, as
/// serde knows them (it lists them all when asked for a kind that does not exist). Events are
/// made only as `EventDetail` variants, so these are the kinds the server can emit.
fn event_kinds() -> BTreeSet<String> {
    let asked = serde_json::json!({ "kind": "no such kind", "data": null });
    let err = serde_json::from_value::<cutover_core::event::EventDetail>(asked)
        .expect_err("no event has the kind \"no such kind\"")
        .to_string();
    let listed = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("serde no longer lists the variants as this test reads them: {err}"))
        .1;
    let kinds: BTreeSet<String> = listed
        .split(", ")
        .map(|k| k.trim_matches('`').to_string())
        .collect();
    assert!(kinds.contains("deploy") && kinds.contains("rolled_back"), "{err}");
    kinds
}

/// The kinds in the first column of the table under `## Kinds` in docs/events.md.
fn documented_kinds() -> Vec<String> {
    let doc = read("docs/events.md");
    let section = doc
        .split_once("\n## Kinds\n")
        .expect("docs/events.md has a `## Kinds` section")
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(kind, _)| kind.to_string())
        .collect()
}

#[test]
fn every_event_kind_the_server_emits_is_documented_and_no_other() {
    let kinds = event_kinds();
    let documented = documented_kinds();
    let unique: BTreeSet<String> = documented.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        documented.len(),
        "a kind has two rows in docs/events.md: {documented:?}"
    );
    let undocumented: Vec<&String> = kinds.difference(&unique).collect();
    let unknown: Vec<&String> = unique.difference(&kinds).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/events.md and cutover_core::event::EventDetail disagree.\n  a kind without a row in the Kinds \
         table: {undocumented:?}\n  documented but no kind of EventDetail: {unknown:?}\n  kinds: {kinds:?}"
    );
}

// ===== exit codes =====

/// The rows of the table under `## Exit codes` in docs/ci.md: code and the job's outcome.
fn documented_exit_codes() -> BTreeMap<u16, String> {
    let doc = read("docs/ci.md");
    let section = doc
        .split_once("\n## Exit codes\n")
        .expect("docs/ci.md has a `## Exit codes` section")
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut codes = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if let Ok(code) = cells[0].trim_matches('`').parse::<u16>() {
            let job = cells.get(2).copied().unwrap_or_default().to_string();
            assert!(
                codes.insert(code, job).is_none(),
                "exit code {code} has two rows in docs/ci.md"
            );
        }
    }
    assert!(!codes.is_empty(), "no exit code rows in docs/ci.md");
    codes
}

/// The arms of the workflow's `case "$code" in`: each numeric pattern with its body, and whether
/// a `*)` arm catches the rest. A nested `case` inside an arm belongs to that arm's body.
fn workflow_case_arms(workflow: &str) -> (BTreeMap<u16, String>, bool) {
    let starts: Vec<usize> = workflow
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "case \"$code\" in")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "the workflow has one `case \"$code\" in`, found {}",
        starts.len()
    );
    let (mut arms, mut default, mut current) = (BTreeMap::new(), false, None::<u16>);
    let mut depth = 1;
    for line in workflow.lines().skip(starts[0] + 1) {
        let t = line.trim();
        if t.starts_with("case ") && t.ends_with(" in") {
            depth += 1;
        } else if t == "esac" {
            depth -= 1;
            if depth == 0 {
                break;
            }
        } else if depth == 1 {
            if let Some((pattern, _)) = t.split_once(')') {
                if let Ok(code) = pattern.parse::<u16>() {
                    assert!(arms.insert(code, String::new()).is_none(), "two arms for {code}");
                    current = Some(code);
                    continue;
                }
                if pattern == "*" {
                    default = true;
                    current = None;
                    continue;
                }
            }
        }
        if let Some(code) = current {
            let body: &mut String = arms.get_mut(&code).unwrap();
            body.push_str(t);
            body.push('\n');
        }
    }
    (arms, default)
}

/// The codes of `pub mod exit` in the CLI: what `cutover deploy` can exit with.
fn cli_exit_codes() -> BTreeSet<u16> {
    let source = read("crates/cli/src/client.rs");
    let module = source
        .split_once("pub mod exit {")
        .expect("crates/cli/src/client.rs has `pub mod exit`")
        .1
        .split_once("\n}")
        .unwrap()
        .0;
    module
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|l| {
            let value = l.split('=').nth(1).unwrap().trim().trim_end_matches(';');
            value.parse().unwrap_or_else(|e| panic!("exit code {l}: {e}"))
        })
        .collect()
}

#[test]
fn the_workflow_handles_exactly_the_documented_exit_codes_with_the_documented_outcome() {
    let documented = documented_exit_codes();
    let workflow = read("docs/ci/github-actions.yml");
    let (arms, default) = workflow_case_arms(&workflow);
    let doc_codes: BTreeSet<u16> = documented.keys().copied().collect();
    let arm_codes: BTreeSet<u16> = arms.keys().copied().collect();
    assert_eq!(
        arm_codes, doc_codes,
        "the workflow's case (left) and the table of docs/ci.md (right) list different exit codes"
    );
    assert!(
        default,
        "the workflow's case has no `*)` arm for a code nobody expected"
    );
    for (code, job) in &documented {
        let fails = arms[code].contains("exit 1");
        assert_eq!(
            fails,
            !job.starts_with("success"),
            "exit code {code}: docs/ci.md says the job ends in {job:?}, the workflow's arm is:\n{}",
            arms[code]
        );
        assert!(
            arms[code].contains("annotate "),
            "exit code {code}: its arm annotates nothing"
        );
    }
    // The table is the CLI's codes and ssh's own 255, nothing else.
    let cli = cli_exit_codes();
    let expected: BTreeSet<u16> = cli.iter().copied().chain([255]).collect();
    assert_eq!(
        doc_codes, expected,
        "docs/ci.md's table (left) against the codes of crates/cli/src/client.rs `pub mod exit` and ssh's 255 (right)"
    );
}

// ===== the workflow file =====

/// The literal block (`run: |`) of the step named `name`, dedented.
fn step_script(workflow: &str, name: &str) -> String {
    let lines: Vec<&str> = workflow.lines().collect();
    let step = lines
        .iter()
        .position(|l| l.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no step named {name:?} in the workflow"));
    let run = (step + 1..lines.len())
        .find(|&i| lines[i].trim() == "run: |")
        .unwrap_or_else(|| panic!("step {name:?} has no `run: |`"));
    let key_indent = lines[run].len() - lines[run].trim_start().len();
    let body: Vec<&str> = lines[run + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .copied()
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_workflow_is_well_formed_yaml_and_its_scripts_are_bash() {
    let workflow = read("docs/ci/github-actions.yml");
    assert!(!workflow.contains('\t'), "YAML forbids tabs for indentation");
    for key in ["on:", "jobs:", "concurrency:", "permissions:"] {
        assert!(
            workflow.lines().any(|l| l == key),
            "the workflow has no top-level `{key}`"
        );
    }
    assert!(
        workflow.contains("cancel-in-progress: false"),
        "a running deploy must not be cancelled"
    );

    let python = std::env::var_os("CUTOVER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/test-venv/bin/python"));
    let python = if python.exists() {
        python
    } else {
        PathBuf::from("python3")
    };
    // YAML 1.1 (PyYAML) reads a bare `on` key as true, as GitHub does not: both are accepted.
    let check = r#"
import json, sys
try:
    import yaml
except ImportError as e:
    print(e); sys.exit(77)
doc = yaml.safe_load(open(sys.argv[1]))
on = doc.get("on", doc.get(True))
assert isinstance(on, dict) and "push" in on and "workflow_dispatch" in on, on
assert doc["concurrency"]["cancel-in-progress"] is False, doc["concurrency"]
runs = []
for name, job in doc["jobs"].items():
    assert "runs-on" in job and job["steps"], name
    for step in job["steps"]:
        assert ("run" in step) != ("uses" in step), step
        if "run" in step:
            runs.append(step["run"])
json.dump(runs, sys.stdout)
"#;
    let path = workspace().join("docs/ci/github-actions.yml");
    let scripts: Vec<String> = match Command::new(&python).arg("-c").arg(check).arg(&path).output() {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).unwrap(),
        Ok(out) if out.status.code() == Some(77) => {
            println!(
                "skipping the YAML parse: {} has no yaml module ({}); ./scripts/test installs PyYAML in target/test-venv",
                python.display(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
            Vec::new()
        }
        Ok(out) => panic!(
            "the workflow does not parse as a GitHub Actions workflow:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            println!("skipping the YAML parse: cannot run {}: {e}", python.display());
            Vec::new()
        }
    };
    if !have("bash") {
        println!("skipping the syntax check of the run scripts: no bash");
        return;
    }
    for script in &scripts {
        let out = Command::new("bash")
            .arg("-n")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "a run script is not valid bash: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Deploy step run as GitHub runs it (`bash --noprofile --norc -eo pipefail`), with an `ssh`
/// that plays the host: `cutover deploy` exits with each documented code in turn.
#[test]
fn the_deploy_step_ends_each_exit_code_as_documented() {
    if !have("bash") || !have("jq") {
        println!("skipping: the Deploy step needs bash and jq, as GitHub's runners have");
        return;
    }
    let script = step_script(&read("docs/ci/github-actions.yml"), "Deploy");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake_ssh = r#"#!/bin/bash
case "$2" in
  *"status web --output json"*) echo '{"live":"blue","slots":[{"slot":"blue","version":"v0"},{"slot":"green","version":null}]}' ;;
  *"status web"*) echo "latest decisions:" ;;
  *"deploy web"*)
    echo '{"kind":"started","app":"web","rollout_id":2}'
    # Messages of several lines, as a `failed` one is (the reason, then the log tail).
    for kind in deploy step decision promoted rolled_back aborted failed paused; do
      echo "{\"seq\":1,\"app\":\"web\",\"at\":1,\"rollout_id\":2,\"kind\":\"$kind\",\"message\":\"the $kind event at 5.00 %\\nits second line\\n\",\"data\":null}"
    done
    echo "error: the server said so" >&2
    exit "$FAKE_EXIT" ;;
  *) echo "fake ssh: unexpected command $2" >&2; exit 99 ;;
esac
"#;
    let ssh = bin.join("ssh");
    std::fs::write(&ssh, fake_ssh).unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let mut codes = documented_exit_codes();
    codes.insert(77, "failure (unexpected)".into());
    // The arms that quote the rollout's last event of a kind: the whole message, escaped.
    let quoted = BTreeMap::from([
        (0, "promoted"),
        (10, "rolled_back"),
        (11, "aborted"),
        (12, "failed"),
        (13, "paused"),
    ]);
    for (code, job) in &codes {
        let github_env = dir.path().join(format!("github_env_{code}"));
        std::fs::write(&github_env, "").unwrap();
        let out = Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("FAKE_EXIT", code.to_string())
            .env("APP", "web")
            .env("APP_DIR", "/srv/web")
            .env("SSH_USER", "deploy")
            .env("SHA", "0123456789abcdef0123456789abcdef01234567")
            .env("GITHUB_ENV", &github_env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let context = format!(
            "exit code {code}, documented as {job:?}: the step exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), job.starts_with("success"), "{context}");
        let annotation = stdout
            .lines()
            .find(|l| {
                ["::notice ", "::warning ", "::error "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .unwrap_or_else(|| panic!("no annotation; {context}"));
        let unescaped = annotation
            .replace("%25", "")
            .replace("%0A", "")
            .replace("%0D", "");
        assert!(
            !unescaped.contains('%'),
            "a % must be escaped as %25 in {annotation}"
        );
        if *code == 77 {
            assert!(annotation.contains("exited 77"), "{context}");
        }
        if let Some(kind) = quoted.get(code) {
            let message = format!("the {kind} event at 5.00 %25%0Aits second line");
            assert!(
                annotation.contains(&message),
                "no {message:?} in the annotation; {context}"
            );
        }
        let env = std::fs::read_to_string(&github_env).unwrap();
        assert_eq!(
            env.contains("PROMOTED_ROLLOUT=2\n"),
            *code == 0,
            "$GITHUB_ENV: {env:?}; {context}"
        );
    }
    let events = std::fs::read_to_string(dir.path().join("deploy.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{events}"
    );
}

// ===== the configuration shown =====

#[test]
fn the_cutover_toml_of_the_ci_page_is_one_cutover_accepts() {
    let doc = read("docs/ci.md");
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ci.md shows a cutover.toml");
    let block: String = block.lines().map(|l| format!("{}\n", l.trim_start())).collect();
    match cutover_server::Config::parse(&block, "docs/ci.md") {
        Ok(config) => assert_eq!(config.apps[0].name, "web"),
        // The release directory lives on the host, not here.
        Err(cutover_server::ConfigError::Invalid { problems, .. })
            if problems.iter().all(|p| p.field.ends_with(".release.workdir")) => {}
        Err(e) => panic!("{e}"),
    }
}
