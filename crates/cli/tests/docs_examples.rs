#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The pages others build on stay true to the code: `docs/events.md` names exactly the event
//! kinds the server emits, and `docs/ci.md`'s exit codes are exactly those the CLI defines and
//! the GitHub Actions workflow (`docs/ci/github-actions.yml`) handles, each with the job outcome
//! the page promises. Everything is read from the files themselves: no server runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ===== event kinds =====

/// A Rust file with its comments and the insides of its string and char literals blanked to
/// spaces (same byte offsets, newlines kept), so that patterns match code only; and the string
/// literals themselves, by the offset of their opening quote in `code`.
struct Lexed {
    code: Vec<u8>,
    strings: BTreeMap<usize, String>,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn lex(text: &str) -> Lexed {
    let src = text.as_bytes();
    let mut code = src.to_vec();
    let mut strings = BTreeMap::new();
    let blank = |code: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut code[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < src.len() {
        let prev_ident = i > 0 && is_ident(src[i - 1]);
        if src[i..].starts_with(b"//") {
            let end = src[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(src.len(), |n| i + n);
            blank(&mut code, i, end);
            i = end;
        } else if src[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (0, i);
            while j < src.len() {
                if src[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if src[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j);
            i = j;
        } else if !prev_ident && (src[i] == b'r' || src[i..].starts_with(b"br")) && {
            let k = i + if src[i] == b'b' { 2 } else { 1 };
            let hashes = src[k..].iter().take_while(|&&b| b == b'#').count();
            src.get(k + hashes) == Some(&b'"')
        } {
            // r"..." and r#"..."#: no escapes, ends at a quote followed by as many #.
            let k = i + if src[i] == b'b' { 2 } else { 1 };
            let hashes = src[k..].iter().take_while(|&&b| b == b'#').count();
            let open = k + hashes;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = src[open + 1..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(src.len(), |n| open + 1 + n);
            strings.insert(open, text[open + 1..end].to_string());
            blank(&mut code, open + 1, end);
            i = (end + close.len()).min(src.len());
        } else if src[i] == b'"' {
            let mut j = i + 1;
            while j < src.len() && src[j] != b'"' {
                j += if src[j] == b'\\' { 2 } else { 1 };
            }
            let end = j.min(src.len());
            strings.insert(i, text[i + 1..end].to_string());
            blank(&mut code, i + 1, end);
            i = end + 1;
        } else if src[i] == b'\'' {
            // A char literal ('"', b'"', '\'', 'é') is blanked; a lifetime ('a) is code.
            let end = if src.get(i + 1) == Some(&b'\\') {
                src.get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&b| b == b'\''))
                    .map(|n| i + 3 + n)
            } else {
                let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (src.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
            };
            match end {
                Some(end) => {
                    blank(&mut code, i + 1, end);
                    i = end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    let mut lexed = Lexed { code, strings };
    drop_test_modules(&mut lexed);
    lexed
}

/// The index of the bracket closing the one at `open`, in blanked code.
fn matching(code: &[u8], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, &b) in code.iter().enumerate().skip(open) {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced bracket at byte {open}")
}

/// Blanks every `#[cfg(test)]` item: the tests' own events are not the server's.
fn drop_test_modules(lexed: &mut Lexed) {
    let marker = b"#[cfg(test)]";
    while let Some(at) = lexed.code.windows(marker.len()).position(|w| w == marker) {
        let brace = lexed.code[at..].iter().position(|&b| b == b'{').map(|n| at + n);
        let semi = lexed.code[at..].iter().position(|&b| b == b';').map(|n| at + n);
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => s,
            (Some(b), _) => matching(&lexed.code, b),
            (None, Some(s)) => s,
            (None, None) => lexed.code.len() - 1,
        };
        for b in &mut lexed.code[at..=end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        lexed.strings.retain(|&offset, _| offset < at || offset > end);
    }
}

/// `code[from..to]` split at the commas outside brackets, each part trimmed, with its offset.
/// `types`: a parameter list, where `<...>` are brackets too (in arguments they may be
/// comparisons).
fn split_args(code: &[u8], from: usize, to: usize, types: bool) -> Vec<(usize, String)> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, from);
    for j in from..=to {
        let end = j == to;
        match code.get(j) {
            Some(b'(' | b'[' | b'{') if !end => depth += 1,
            Some(b')' | b']' | b'}') if !end => depth -= 1,
            Some(b'<') if types && !end => depth += 1,
            Some(b'>') if types && !end && code[j - 1] != b'-' => depth -= 1,
            _ => {}
        }
        if end || (code[j] == b',' && depth == 0) {
            let raw = String::from_utf8_lossy(&code[start..j]).to_string();
            let lead = raw.len() - raw.trim_start().len();
            if !raw.trim().is_empty() {
                parts.push((start + lead, raw.trim().to_string()));
            }
            start = j + 1;
        }
    }
    parts
}

fn line_of(code: &[u8], offset: usize) -> usize {
    code[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Occurrences of the word `word` in blanked code (not part of a longer identifier).
fn words<'a>(code: &'a [u8], word: &'a str) -> impl Iterator<Item = usize> + 'a {
    let w = word.as_bytes();
    (0..code.len().saturating_sub(w.len() - 1)).filter(move |&i| {
        code[i..].starts_with(w)
            && (i == 0 || !is_ident(code[i - 1]))
            && code.get(i + w.len()).is_none_or(|&b| !is_ident(b))
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A function that passes a `kind` parameter on to the event log.
struct Forwarder {
    file: PathBuf,
    name: String,
    /// The position of `kind` among the arguments of a call (`self` not counted).
    position: usize,
    public: bool,
}

/// Every event kind emitted in `crates/core/src` and `crates/server/src` (test modules left
/// out), with where. Events are made in two ways there, and the scan reads both:
///
/// 1. Through a function with a parameter `kind: &str` (today `Builder::event` and
///    `back_to_old` in the rollout engine, `Controller::record_event`). Such functions are found
///    by their signature, not by a list, and every call of one must give a string literal at
///    the parameter's position (or pass its own `kind` on); a call with anything else fails
///    this test, since the scan could not tell its kind. Calls of a private function are looked
///    for in its own file only, so axum's unrelated `Event::event("message")` of the flag
///    service's stream is not taken for one.
/// 2. As a struct field initialised from a literal, `kind: "restarted".into()` (an `Event`
///    built whole). A kind given there from a variable is not seen: none is today.
///
/// Comments, string contents and `#[cfg(test)]` items are blanked first by a small lexer, so
/// neither a sentence nor a test can add a kind.
fn emitted_kinds() -> BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    for dir in ["crates/core/src", "crates/server/src"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    files.sort();
    let lexed: Vec<(PathBuf, Lexed)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, lex(&text))
        })
        .collect();
    let relative = |f: &Path| f.strip_prefix(workspace()).unwrap_or(f).display().to_string();

    let mut forwarders = Vec::new();
    for (file, l) in &lexed {
        for at in words(&l.code, "fn") {
            let rest = &l.code[at + 2..(at + 100).min(l.code.len())];
            let name: String = String::from_utf8_lossy(rest)
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let Some(open) = l.code[at..].iter().position(|&b| b == b'(').map(|n| at + n) else {
                continue;
            };
            let close = matching(&l.code, open);
            let params: Vec<String> = split_args(&l.code, open + 1, close, true)
                .into_iter()
                .map(|(_, p)| p)
                .filter(|p| {
                    !p.trim_start_matches(['&', ' '])
                        .trim_start_matches("mut ")
                        .starts_with("self")
                })
                .collect();
            let Some(position) = params.iter().position(|p| {
                p.split_once(':').is_some_and(|(name, ty)| {
                    name.trim() == "kind" && (ty.contains("str") || ty.contains("String"))
                })
            }) else {
                continue;
            };
            let line_start = l.code[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |n| n + 1);
            let public = String::from_utf8_lossy(&l.code[line_start..at]).contains("pub");
            forwarders.push(Forwarder {
                file: file.clone(),
                name,
                position,
                public,
            });
        }
    }
    assert!(
        !forwarders.is_empty(),
        "no function with a `kind: &str` parameter in crates/core or crates/server: the events are made \
         another way now; teach this scan how"
    );

    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &forwarders {
        for (file, l) in lexed.iter().filter(|(file, _)| f.public || *file == f.file) {
            for at in words(&l.code, &f.name) {
                let after = at + f.name.len();
                let is_definition = l.code[..at].ends_with(b"fn ");
                if is_definition || l.code.get(after) != Some(&b'(') {
                    continue;
                }
                let close = matching(&l.code, after);
                let args = split_args(&l.code, after + 1, close, false);
                let (offset, arg) = args.get(f.position).cloned().unwrap_or_default();
                let place = format!("{}:{}", relative(file), line_of(&l.code, at));
                if arg == "kind" {
                    continue; // a forwarder passing its own parameter on
                }
                match l.strings.get(&offset) {
                    Some(kind) if arg.starts_with('"') => {
                        kinds.entry(kind.clone()).or_default().push(place);
                    }
                    _ => panic!(
                        "{place}: `{}` is called with `{arg}` as its event kind, not a string literal: this test \
                         cannot tell which kind that emits; emit a literal, or teach the scan",
                        f.name
                    ),
                }
            }
        }
    }
    for (file, l) in &lexed {
        for at in words(&l.code, "kind") {
            let rest = String::from_utf8_lossy(&l.code[at + 4..(at + 100).min(l.code.len())]).to_string();
            let trimmed = rest.trim_start();
            let Some(value) = trimmed.strip_prefix(':').filter(|v| !v.starts_with(':')) else {
                continue;
            };
            if value.trim_start().starts_with('"') {
                let offset =
                    at + 4 + (rest.len() - trimmed.len()) + 1 + (value.len() - value.trim_start().len());
                let kind = l
                    .strings
                    .get(&offset)
                    .expect("a literal at the offset found")
                    .clone();
                let place = format!("{}:{}", relative(file), line_of(&l.code, at));
                kinds.entry(kind).or_default().push(place);
            }
        }
    }
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
    let emitted = emitted_kinds();
    let documented = documented_kinds();
    let unique: BTreeSet<&String> = documented.iter().collect();
    assert_eq!(
        unique.len(),
        documented.len(),
        "a kind has two rows in docs/events.md: {documented:?}"
    );
    let undocumented: Vec<String> = emitted
        .iter()
        .filter(|(k, _)| !unique.contains(k))
        .map(|(k, places)| format!("{k} ({})", places.join(", ")))
        .collect();
    let unknown: Vec<&&String> = unique.iter().filter(|k| !emitted.contains_key(**k)).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/events.md and the code disagree.\n  emitted but without a row in the Kinds table: {undocumented:?}\n  \
         documented but emitted nowhere: {unknown:?}\n  emitted: {:?}",
        emitted.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_scan_finds_each_way_of_emitting_and_skips_what_is_not_code() {
    let source = r##"
        struct Builder;
        impl Builder {
            fn event(&mut self, kind: &str, message: String) {}
            fn back_to_old(&mut self, phase: u8, kind: &str, message: String) {
                self.event(kind, message)
            }
        }
        fn f(b: &mut Builder) {
            b.event("step", format!("step {}", 1)); // b.event("commented", ...)
            b.back_to_old(Phase::Aborted { reason: "x".into() }, "aborted", m);
            let e = Event { kind: "adopted".into() };
            let c = '"'; let d = b'"'; let s = r#"b.event("raw", x)"#; let t: &'static str = "kind: \"quoted\"";
            sse.event("message");
        }
        #[cfg(test)]
        mod tests { fn t(b: &mut Builder) { b.event("from_a_test", String::new()); } }
    "##;
    let l = lex(source);
    let code = String::from_utf8(l.code.clone()).unwrap();
    for hidden in ["commented", "raw", "quoted", "from_a_test"] {
        assert!(!code.contains(hidden), "{hidden} is not code: {code}");
    }
    let calls: Vec<String> = words(&l.code, "event")
        .filter(|&at| l.code.get(at + 5) == Some(&b'('))
        .map(|at| {
            let close = matching(&l.code, at + 5);
            let (offset, arg) = split_args(&l.code, at + 6, close, false)[0].clone();
            l.strings.get(&offset).cloned().unwrap_or(arg)
        })
        .collect();
    // The definition's parameter list, the forwarding call, the literal, and axum's own method
    // (which the real scan never reaches: it looks for a private forwarder's calls in its file).
    assert_eq!(calls, ["&mut self", "kind", "step", "message"]);
    let field = words(&l.code, "kind")
        .find(|&at| l.code[at..].starts_with(b"kind: \""))
        .unwrap();
    assert_eq!(l.strings[&(field + 6)], "adopted");
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
