#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What `cutover config check` and `cutover serve` print for a configuration file with mistakes:
//! every one of them, in file order, each with the file, line and field.

use cutover_server::config::ConfigError;
use cutover_server::Config;

#[test]
fn three_typos_are_three_problems_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        r#"[admin]
listen = "127.0.0.1:9180"
tokn_file = "admin.token"

[[app]]
name = "web"
listen = "0.0.0.0:8080"
preview_listen = "127.0.0.1:8080"
listen_backlog = 0

[app.proxy]
conect_timeout_ms = 500
max_request_body_bytes = "10MB"

[app.proxy.health_check]
intervall_ms = 100
"#,
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("{err}");
    };
    let shown = path.display().to_string();
    let expected = [
        format!("{shown}:3: admin.tokn_file: unknown field; did you mean `token_file`?"),
        format!(
            "{shown}:8: app[0].preview_listen: 127.0.0.1:8080 overlaps 0.0.0.0:8080 (app[0].listen): \
             the wildcard 0.0.0.0 takes port 8080 on every IPv4 address, so both cannot be bound; \
             give each listener its own port"
        ),
        format!(
            "{shown}:9: app[0].listen_backlog: 0 is out of range: give 1 to 65535 (default 4096; \
             the kernel caps it at net.core.somaxconn)"
        ),
        format!(
            "{shown}:12: app[0].proxy.conect_timeout_ms: unknown field; did you mean `connect_timeout_ms`?"
        ),
        format!(
            "{shown}:13: app[0].proxy.max_request_body_bytes: invalid type: string \"10MB\", expected u64"
        ),
        format!(
            "{shown}:16: app[0].proxy.health_check.intervall_ms: unknown field; did you mean `interval_ms`?"
        ),
    ];
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{shown}: 4 problems found:")),
        "{message}"
    );
    let lines: Vec<&str> = message.lines().skip(1).map(str::trim).collect();
    // The overlap and the backlog are semantic problems of app[0], which lost a value to its
    // type error: they wait until that is fixed.
    let structural = [&expected[0], &expected[3], &expected[4], &expected[5]];
    assert_eq!(lines, structural, "{message}");
    assert_eq!(problems.len(), 4);

    // With the type error fixed, the semantic problems show, in file order among the typos.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"10MB\"", "10485760");
    std::fs::write(&path, text).unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{shown}: 5 problems found:")),
        "{message}"
    );
    let lines: Vec<&str> = message.lines().skip(1).map(str::trim).collect();
    let all = [
        &expected[0],
        &expected[1],
        &expected[2],
        &expected[3],
        &expected[5],
    ];
    assert_eq!(lines, all, "{message}");
}

#[test]
fn forwarded_flags_are_checked_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        r#"[[app]]
name = "web"
listen = "127.0.0.1:8080"

[app.flags]
forward = ["new_session_validator", "new_session_validator", "bad key"]
header = "Cookie"
"#,
    )
    .unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    for wanted in [
        "app[0].flags: forwarding flags needs the flag service: add a [flags] table",
        "app[0].flags.forward[1]: \"new_session_validator\" is listed twice",
        "app[0].flags.forward[2]: \"bad key\" is not a flag key",
        "app[0].flags.header: \"Cookie\" is not a header the variants can go in",
    ] {
        assert!(message.contains(wanted), "{wanted}\n{message}");
    }
    assert!(message.contains(":5: app[0].flags:"), "{message}");

    // The variants must not replace the user's key.
    std::fs::write(
        &path,
        r#"[flags]
listen = "127.0.0.1:9190"

[[app]]
name = "web"
listen = "127.0.0.1:8080"

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.flags]
forward = ["f1"]
header = "x-user-id"
"#,
    )
    .unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.contains("app[0].flags.header: \"x-user-id\" is already the user key header"),
        "{message}"
    );

    std::fs::write(
        &path,
        r#"[flags]
listen = "0.0.0.0:9190"
stale_after_days = 7

[flags.prometheus]
url = "http://127.0.0.1:9090"
requests_query = 'sum(rate(x{app="{app}"}[{interval}]))'
"#,
    )
    .unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.contains("flags.listen: 0.0.0.0:9190 is not a loopback address"),
        "{message}"
    );
    assert!(message.contains("unknown placeholder(s) {app}"), "{message}");
    assert!(
        message.contains("{flag}, {variant}, {op}, {interval}"),
        "{message}"
    );
}
