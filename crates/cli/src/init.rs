//! `cutover init`: a commented, working `cutover.toml` and a systemd unit, to start from.
//!
//! What it writes is checked with the same parser `serve` uses before anything is written, so a
//! user's first `cutover serve` never fails on a file cutover made itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct InitOptions {
    /// Name of the app (in URLs, commands and metrics).
    #[arg(long, default_value = "web", value_name = "NAME")]
    app: String,
    /// How to start one instance of your service: `{port}` is replaced by the port the instance
    /// must listen on (also in $PORT), `{version}` by the version deployed. Runs in the version's
    /// own directory (see --releases). Default: the bundled example app, to try cutover first.
    #[arg(long = "cmd", value_name = "COMMAND")]
    command: Option<String>,
    /// Where users reach the service: cutover's proxy listens here.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
    /// The admin API (loopback only unless you also set allow_non_loopback in the file).
    #[arg(long, default_value = "127.0.0.1:9180", value_name = "ADDR")]
    admin_listen: String,
    /// The path of your service that answers 200 once it is ready to serve (and 503 until then);
    /// the proxy's health check of live instances uses it too.
    #[arg(long, default_value = "/health/ready", value_name = "PATH")]
    readiness_path: String,
    /// A request header that names the user (X-User-ID, set by your auth layer or front end):
    /// each user then stays on one version. Without it cutover issues its own bucket cookie,
    /// which keeps browsers sticky but not clients that drop cookies (curl, most API clients).
    #[arg(long, value_name = "HEADER")]
    user_header: Option<String>,
    /// Directory holding one directory per version (`releases/v2`, `releases/4f2a9c1`): blue and
    /// green run at once, so each version needs its own checkout.
    #[arg(long, default_value = "releases", value_name = "DIR")]
    releases: String,
    /// The rollout's steps: share of users on the new version and how long, comma-separated; the
    /// last is 100% (the promotion). Each step is judged against the old version as it runs.
    #[arg(long, default_value = "5%:60s,25%:60s,100%", value_name = "STEPS", value_parser = parse_steps)]
    steps: Steps,
    /// The user the systemd unit runs cutover (and your service) as; default: you.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Directory to write into.
    #[arg(long, default_value = ".", value_name = "DIR")]
    dir: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
    /// Do not write cutover.service.
    #[arg(long)]
    no_systemd: bool,
}

/// `5%:60s,25%:2m,100%` as `(basis points, milliseconds)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(Vec<(u16, u64)>);

fn parse_steps(text: &str) -> Result<Steps, String> {
    let mut steps = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (weight, duration) = match part.split_once(':') {
            Some((w, d)) => (w, Some(d)),
            None => (part, None),
        };
        let percent: f64 = weight
            .trim()
            .strip_suffix('%')
            .and_then(|w| w.trim().parse().ok())
            .ok_or_else(|| {
                format!("{part:?}: a step is a share of users such as 5% and a duration such as 60s (5%:60s)")
            })?;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(format!("{part:?}: a share of users is above 0% and at most 100%"));
        }
        let ms = match duration {
            Some(d) => crate::units::parse_millis(d).map_err(|e| format!("{part:?}: {e}"))?,
            None => 0,
        };
        steps.push(((percent * 100.0).round() as u16, ms));
    }
    match steps.last() {
        Some((10_000, _)) => {}
        _ => return Err("the last step must be 100% (the promotion), e.g. 5%:60s,100%".into()),
    }
    if steps.windows(2).any(|w| w[1].0 <= w[0].0) {
        return Err("each step must give the new version more users than the one before".into());
    }
    if steps[..steps.len() - 1].iter().any(|(_, ms)| *ms == 0) {
        return Err("every step before 100% needs a duration, e.g. 5%:60s".into());
    }
    Ok(Steps(steps))
}

/// The configuration `init` writes. Every line a user may want to change is there, commented.
fn config_text(o: &InitOptions, command: &str, releases: &str) -> String {
    let toml_str = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        r#"# cutover.toml, written by `cutover init`. Check it with `cutover config check`;
# every key is described in docs/config.md of cutover's repository.

[admin]
listen = {admin}                 # the CLI finds the server here when run beside this file
# token_file = ".cutover/admin.token"        # generated by `cutover serve` (0600) when missing

[[app]]
name = {app}
listen = {listen}                # users' traffic: cutover's proxy, in front of both versions
platform = "local"                          # cutover starts and stops the instances itself

[app.release]
# One instance of the service. {{port}}: the port it must listen on (also in $PORT);
# {{version}}: the version being deployed (also in $CUTOVER_VERSION).
command = {command}
# Blue and green run at the same time, so each version runs from its own directory:
# `cutover deploy {app_bare} v2` starts v2 in {releases_bare}/v2, which must exist (git worktree,
# a release tarball unpacked there, ...). Relative to the directory `cutover serve` runs in.
workdir = {workdir}
instances = 1
# env = {{ LOG_LEVEL = "info" }}              # values are never shown by status or history

[app.readiness]
# An instance gets traffic only once this answers 200. A service without such a path fails
# its deploy after readiness_deadline_ms: point this at any cheap page that answers 200.
path = {readiness}

[app.rollout]
# Each step gives the new version a share of users (weight_bp: 500 = 5 %) for a while; the judge
# compares it with the old version on every analysis interval and rolls back on a regression.
steps = [
{steps}]
analysis_interval_ms = 10000
readiness_deadline_ms = 60000               # a version not ready by then fails, before any traffic
rollback_window_ms = 600000                 # the old version stays warm this long: instant rollback

[app.proxy.sticky]
# Users stay on the version they got. With a header or cookie naming the user, use it
# (user_key_header = "X-User-ID", or user_key_cookie = "session"); without one, cutover issues
# its own bucket cookie.
{sticky}

# [app.verify]                              # before any user sees the new version
# smoke = [{{ path = "/", expect_status = 200 }}]
"#,
        admin = toml_str(&o.admin_listen),
        app = toml_str(&o.app),
        app_bare = o.app,
        listen = toml_str(&o.listen),
        command = toml_str(command),
        workdir = toml_str(&format!("{releases}/{{version}}")),
        releases_bare = o.releases.trim_end_matches('/'),
        readiness = toml_str(&o.readiness_path),
        sticky = match &o.user_header {
            Some(h) => format!("user_key_header = {}", toml_str(h)),
            None => "# user_key_header = \"X-User-ID\"".to_string(),
        },
        steps = o
            .steps
            .0
            .iter()
            .map(|(bp, ms)| if *bp == 10_000 {
                "  { weight_bp = 10000 },\n".to_string()
            } else {
                format!("  {{ weight_bp = {bp}, duration_ms = {ms} }},\n")
            })
            .collect::<String>(),
    )
}

/// The systemd unit. The one thing an obvious unit gets wrong: instances are children of
/// `cutover serve`, and systemd's default `KillMode=control-group` would kill every version
/// serving users on each restart of the server.
fn unit_text(o: &InitOptions, exe: &Path, dir: &Path, user: Option<&str>) -> String {
    let user_line = match user {
        Some(u) => format!("User={u}\n"),
        None => "# User=cutover                               # run as a dedicated user, not root\n".into(),
    };
    format!(
        r#"# cutover.service, written by `cutover init`.
# Install: sudo cp cutover.service /etc/systemd/system/cutover-{app}.service
#          sudo systemctl daemon-reload && sudo systemctl enable --now cutover-{app}
[Unit]
Description=cutover: zero-downtime releases of {app}
After=network-online.target
Wants=network-online.target

[Service]
# notify: cutover says when it serves, and after a reload or upgrade which process is now the
# main one (MAINPID from the new process, hence NotifyAccess=all).
Type=notify
NotifyAccess=all
{user_line}WorkingDirectory={dir}
ExecStart="{exe}" serve --config "{dir}/cutover.toml"
# `systemctl reload`: a new cutover serve takes over the listening sockets (`serve --upgrade`),
# with the configuration read again and the binary found at the path above, so both a changed
# cutover.toml and an upgraded cutover take effect without a refused connection. A file that
# does not load changes nothing (the error is in the journal).
ExecReload=/bin/kill -HUP $MAINPID
# Only the server is stopped on `systemctl stop` or `restart`: the instances it started keep
# serving users, and the next server adopts them. With systemd's default (control-group) a
# restart of cutover would kill every running version of the app.
KillMode=process
# SIGTERM: the proxy stops accepting and lets requests in flight finish.
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=2
# cutover writes its state file, token and instance logs owner-only by itself; no UMask or
# NoNewPrivileges here, since they would also bind your service's instances (children of serve).
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"#,
        app = o.app,
        exe = exe.display(),
        dir = dir.display(),
    )
}

/// The user running this, by name, for `User=`; `None` for root (a unit should not run as root,
/// and the comment in its place says so).
fn current_user() -> Option<String> {
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())?;
    (name != "root").then_some(name)
}

/// The options' own mistakes, all at once, each naming its flag: usage errors (exit 2).
fn check_options(o: &InitOptions) -> Vec<String> {
    let mut problems = Vec::new();
    let name_like = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !name_like(&o.app) {
        problems.push(format!(
            "--app {:?}: an app name is letters, digits, '-' and '_' (it appears in URLs and unit names)",
            o.app
        ));
    }
    if !o.readiness_path.starts_with('/') || o.readiness_path.chars().any(char::is_whitespace) {
        problems.push(format!(
            "--readiness-path {:?}: a path starts with '/' and has no spaces, e.g. /healthz",
            o.readiness_path
        ));
    }
    if let Some(user) = &o.user {
        if !name_like(user) {
            problems.push(format!(
                "--user {user:?}: a user name is letters, digits, '-' and '_'"
            ));
        }
    }
    if let Some(header) = &o.user_header {
        if !name_like(header) {
            problems.push(format!(
                "--user-header {header:?}: a header name is letters, digits, '-' and '_'"
            ));
        }
    }
    if let Some(command) = &o.command {
        if command.contains('\n') || command.trim().is_empty() {
            problems.push("--cmd: one command line, not empty and without line breaks".to_string());
        }
    }
    if o.releases.trim().is_empty() || o.releases.contains("{version}") {
        problems.push(format!(
            "--releases {:?}: the directory that holds one directory per version, e.g. releases",
            o.releases
        ));
    }
    problems
}

pub fn run(options: InitOptions) -> Result<ExitCode> {
    let problems = check_options(&options);
    if !problems.is_empty() {
        eprintln!("error: nothing was written:\n  {}", problems.join("\n  "));
        return Ok(ExitCode::from(crate::client::exit::USAGE));
    }
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot tell where the cutover binary is (for ExecStart and the example app's command)")?;
    std::fs::create_dir_all(&options.dir).with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", options.dir.display()))?;
    // The release command runs through /bin/sh: a path with a space or a quote must be quoted.
    let exe_for_shell = format!("'{}'", exe.display().to_string().replace('\'', r"'\''"));
    let command = options.command.clone().unwrap_or_else(|| {
        format!("{exe_for_shell} example-app --port {{port}} --version-label {{version}}")
    });
    if !command.contains("{port}") {
        eprintln!(
            "note: --cmd has no {{port}}: cutover gives each instance its port in $PORT too; make sure your service listens on it"
        );
    }

    let config_path = dir.join("cutover.toml");
    let unit_path = dir.join("cutover.service");
    let mut targets = vec![&config_path];
    if !options.no_systemd {
        targets.push(&unit_path);
    }
    if !options.force {
        let existing: Vec<String> = targets
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "{} already exist{}; nothing was written (pass --force to replace)",
                existing.join(" and "),
                if existing.len() == 1 { "s" } else { "" }
            );
        }
    }

    let releases = options.releases.trim_end_matches('/').to_string();
    let text = config_text(&options, &command, &releases);
    let releases_dir = dir.join(&releases);
    // The release's workdir is relative to where serve runs, which is here (as the unit says):
    // checked as an absolute path, since this command may run elsewhere, and against a
    // directory that exists (it is created only once everything is known to be right).
    let probe =
        tempfile::tempdir().context("creating a temporary directory to check the configuration in")?;
    let checked = cutover_server::Config::parse(
        &config_text(&options, &command, &probe.path().display().to_string()),
        "the configuration of these options",
    );
    if let Err(e) = checked {
        eprintln!("error: the configuration these options make is not valid; nothing was written:\n{e}");
        return Ok(ExitCode::from(crate::client::exit::USAGE));
    }
    std::fs::create_dir_all(&releases_dir).with_context(|| format!("creating {}", releases_dir.display()))?;
    write_file(&config_path, &text)?;
    out!("wrote {}", config_path.display());
    if !options.no_systemd {
        let user = options.user.clone().or_else(current_user);
        write_file(&unit_path, &unit_text(&options, &exe, &dir, user.as_deref()))?;
        out!("wrote {}", unit_path.display());
    }
    let app = &options.app;
    let in_dir = if dir == std::env::current_dir().unwrap_or_default() {
        String::new()
    } else {
        format!("cd {} && ", dir.display())
    };
    let releases = options.releases.trim_end_matches('/');
    let next = [
        (
            format!("{in_dir}cutover serve"),
            "or install cutover.service (see its first lines)",
        ),
        (
            format!("mkdir -p {releases}/v1"),
            "each version's code in its own directory",
        ),
        (
            format!("cutover deploy {app} v1"),
            "the first version goes live at once",
        ),
        (
            format!("cutover deploy {app} v2"),
            "later ones through the canary steps",
        ),
        (format!("cutover status {app} --watch"), ""),
    ];
    let width = next.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    out!("\nNext:");
    for (command, comment) in next {
        if comment.is_empty() {
            out!("  {command}");
        } else {
            out!("  {command:<width$}  # {comment}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        options: InitOptions,
    }

    #[test]
    fn the_configuration_parses_whatever_the_command_quotes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("releases")).unwrap();
        let options =
            Wrapper::parse_from(["x", "--cmd", r#"sh -c "exec ./srv --port {port}" # 'quoted'"#]).options;
        let releases = dir.path().join("releases").display().to_string();
        let text = config_text(&options, options.command.as_deref().unwrap(), &releases);
        let config = cutover_server::Config::parse(&text, "init").unwrap();
        assert_eq!(config.apps[0].name, "web");
    }

    #[test]
    fn steps_are_read_as_people_write_them() {
        assert_eq!(
            parse_steps("5%:60s, 25%:2m,100%").unwrap(),
            Steps(vec![(500, 60_000), (2500, 120_000), (10_000, 0)])
        );
        assert_eq!(parse_steps("0.5%:30s,100%").unwrap().0[0], (50, 30_000));
        for (bad, why) in [
            ("5%:60s", "last step must be 100%"),
            ("25%:60s,5%:60s,100%", "more users than the one before"),
            ("5%,100%", "needs a duration"),
            ("five:60s,100%", "a share of users"),
            ("5%:soon,100%", "not a duration"),
        ] {
            let err = parse_steps(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
