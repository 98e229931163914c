#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The migration linter at its boundary: SQL in, findings out. Every rule fails on the unsafe
//! way and passes on the safe way of doing the same thing; silences, exemptions, phases,
//! dialects and line numbers; then a corpus of realistic migrations, each stating what it
//! expects in its header.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_migrate::lint::{lint_file, lint_set, rules, Dialect, LintOptions, LintReport, RULES};
use cutover_migrate::{MigrationSet, Phase};

const EXPAND: &str = "migrations/0003_users.expand.sql";
const CONTRACT: &str = "migrations/0003_users.contract.sql";

/// PostgreSQL with the runner's default lock_timeout.
fn pg() -> LintOptions {
    LintOptions {
        dialect: Dialect::Postgres,
        lock_timeout: Some(Duration::from_secs(2)),
    }
}

fn pg_without_timeout() -> LintOptions {
    LintOptions {
        dialect: Dialect::Postgres,
        lock_timeout: None,
    }
}

fn sqlite() -> LintOptions {
    LintOptions {
        dialect: Dialect::Sqlite,
        lock_timeout: None,
    }
}

fn ids(report: &LintReport) -> Vec<&'static str> {
    report.findings.iter().map(|f| f.rule).collect()
}

/// Lints `sql` as `phase` with `options` and asserts the findings' rule ids, in order.
fn check_with(sql: &str, phase: Phase, options: &LintOptions, expected: &[&str]) -> LintReport {
    let path = match phase {
        Phase::Expand => EXPAND,
        Phase::Contract => CONTRACT,
    };
    let report = lint_file(Path::new(path), sql, phase, options);
    assert_eq!(
        ids(&report),
        expected,
        "\n--- sql ({phase}, {options:?}) ---\n{sql}\n--- report ---\n{report}\n"
    );
    report
}

/// An expand file on PostgreSQL with a lock_timeout configured.
fn check(sql: &str, expected: &[&str]) -> LintReport {
    check_with(sql, Phase::Expand, &pg(), expected)
}

const NO_TX: &str = "-- cutover:no-transaction\n";

#[test]
fn drop_column() {
    let report = check("ALTER TABLE users DROP COLUMN name;", &[rules::DROP_COLUMN.id]);
    let f = &report.findings[0];
    assert_eq!(
        f.message,
        "DROP COLUMN users.name in an expand file: the running version still reads it"
    );
    assert!(f.fix.contains("0003_users.contract.sql"), "{}", f.fix);
    // The safe way: the drop in the contract file.
    check_with("ALTER TABLE users DROP COLUMN name;", Phase::Contract, &pg(), &[]);
}

#[test]
fn drop_table() {
    let report = check(
        "DROP TABLE IF EXISTS audit_log, app.sessions;",
        &["drop-table", "drop-table"],
    );
    assert!(report.findings[1].message.contains("DROP TABLE app.sessions"));
    check("DROP VIEW active_users;", &["drop-table"]);
    check_with("DROP TABLE audit_log;", Phase::Contract, &pg(), &[]);
}

#[test]
fn rename_column() {
    let report = check(
        "ALTER TABLE users RENAME COLUMN name TO full_name;",
        &["rename-column"],
    );
    assert!(report.findings[0].message.contains("users.name TO full_name"));
    // The safe way: a new column the new version writes along with the old one, and a
    // backfill in a migration of its own.
    check("ALTER TABLE users ADD COLUMN full_name text;", &[]);
    check(
        "UPDATE users SET full_name = name WHERE id BETWEEN 1 AND 10000;",
        &[],
    );
}

#[test]
fn rename_table() {
    check("ALTER TABLE users RENAME TO accounts;", &["rename-table"]);
    check("ALTER TABLE users SET SCHEMA archive;", &["rename-table"]);
    check(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, name text);\nCREATE VIEW accounts_v AS SELECT id, name FROM accounts;",
        &[],
    );
}

#[test]
fn add_not_null_column_without_default() {
    let report = check(
        "ALTER TABLE users ADD COLUMN tier text NOT NULL;",
        &["add-not-null-column-without-default"],
    );
    assert!(report.findings[0].message.contains("users.tier"));
    check(
        "ALTER TABLE users ADD COLUMN tier text NOT NULL DEFAULT 'free';",
        &[],
    );
    check("ALTER TABLE users ADD COLUMN tier text;", &[]);
}

#[test]
fn volatile_default() {
    for default in [
        "gen_random_uuid()",
        "random()",
        "clock_timestamp()",
        "(random() * 10)::int",
    ] {
        let report = check(
            &format!("ALTER TABLE users ADD COLUMN token uuid DEFAULT {default};"),
            &["volatile-default"],
        );
        assert!(report.findings[0].message.contains("rewrites every row of users"));
    }
    check(
        "ALTER TABLE orders ADD COLUMN seq bigserial;",
        &["volatile-default"],
    );
    check(
        "ALTER TABLE orders ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;",
        &["volatile-default"],
    );
    // A stored generated column is computed for every row; a virtual one (PostgreSQL 18) is not.
    check(
        "ALTER TABLE orders ADD COLUMN total_with_tax numeric GENERATED ALWAYS AS (total * 1.2) STORED;",
        &["volatile-default"],
    );
    check(
        "ALTER TABLE orders ADD COLUMN total_with_tax numeric GENERATED ALWAYS AS (total * 1.2) VIRTUAL;",
        &[],
    );
    // Stable and constant defaults are stored once; so is a default set after the column.
    check(
        "ALTER TABLE users ADD COLUMN seen_at timestamptz NOT NULL DEFAULT now();\nALTER TABLE users ADD COLUMN created_at timestamptz DEFAULT CURRENT_TIMESTAMP;",
        &[],
    );
    check(
        "ALTER TABLE users ADD COLUMN token uuid;\nALTER TABLE users ALTER COLUMN token SET DEFAULT gen_random_uuid();",
        &[],
    );
}

#[test]
fn change_column_type() {
    let report = check(
        "ALTER TABLE users ALTER COLUMN age TYPE bigint;",
        &["change-column-type"],
    );
    assert!(
        report.findings[0].message.contains("users.age TYPE int8"),
        "{report}"
    );
    check("ALTER TABLE users ADD COLUMN age_big bigint;", &[]);
}

#[test]
fn set_not_null_without_check() {
    check_with(
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        Phase::Contract,
        &pg(),
        &["set-not-null-without-check"],
    );
    // A NOT VALID check proves nothing.
    check_with(
        "ALTER TABLE users ADD CONSTRAINT users_email_nn CHECK (email IS NOT NULL) NOT VALID;\nALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        Phase::Contract,
        &pg(),
        &["set-not-null-without-check"],
    );
    // The safe way, in one no-transaction file: each step commits before the next.
    check_with(
        &format!(
            "{NO_TX}ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_nn;\n\
             ALTER TABLE users ADD CONSTRAINT users_email_nn CHECK (email IS NOT NULL) NOT VALID;\n\
             ALTER TABLE users VALIDATE CONSTRAINT users_email_nn;\n\
             ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n\
             ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_nn;"
        ),
        Phase::Contract,
        &pg(),
        &[],
    );
    // A check on another column or table proves nothing; a dropped one no longer does.
    check_with(
        &format!(
            "{NO_TX}ALTER TABLE users VALIDATE CONSTRAINT users_name_nn;\n\
             ALTER TABLE users ALTER COLUMN email SET NOT NULL;"
        ),
        Phase::Contract,
        &pg(),
        &["set-not-null-without-check"],
    );
}

fn write_set(files: &[(&str, &str)]) -> (tempfile::TempDir, MigrationSet) {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let set = MigrationSet::load(dir.path()).unwrap();
    (dir, set)
}

#[test]
fn set_not_null_may_rely_on_a_check_validated_by_a_file_that_runs_before() {
    let (_dir, set) = write_set(&[
        (
            "0001_email_check.expand.sql",
            "ALTER TABLE users ADD CONSTRAINT users_email_nn CHECK (email IS NOT NULL) NOT VALID;",
        ),
        (
            "0002_email_valid.expand.sql",
            "ALTER TABLE users VALIDATE CONSTRAINT users_email_nn;",
        ),
        (
            "0002_email_valid.contract.sql",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\nALTER TABLE users DROP CONSTRAINT users_email_nn;",
        ),
    ]);
    let report = lint_set(&set, &pg());
    assert!(report.is_clean(), "{report}");

    // Validated only in a contract: a later expand runs before it, so it cannot rely on it.
    let (_dir, set) = write_set(&[
        (
            "0001_email_check.expand.sql",
            "ALTER TABLE users ADD CONSTRAINT users_email_nn CHECK (email IS NOT NULL) NOT VALID;",
        ),
        (
            "0001_email_check.contract.sql",
            "ALTER TABLE users VALIDATE CONSTRAINT users_email_nn;",
        ),
        (
            "0002_not_null.expand.sql",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        ),
        (
            "0002_not_null.contract.sql",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        ),
    ]);
    let report = lint_set(&set, &pg());
    let found: Vec<(String, &str)> = report
        .findings
        .iter()
        .map(|f| (f.file.file_name().unwrap().to_string_lossy().into_owned(), f.rule))
        .collect();
    assert_eq!(
        found,
        [(
            "0002_not_null.expand.sql".to_string(),
            "set-not-null-without-check"
        )],
        "{report}"
    );
}

#[test]
fn create_index_not_concurrently() {
    let report = check(
        "CREATE INDEX users_email_idx ON users (email);",
        &["create-index-not-concurrently"],
    );
    assert!(report.findings[0].fix.contains("-- cutover:no-transaction"));
    check(
        &format!(
            "{NO_TX}DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);"
        ),
        &[],
    );
    // Contract files are checked too: the new version is live.
    check_with(
        "CREATE UNIQUE INDEX users_email_key ON users (email);",
        Phase::Contract,
        &pg(),
        &["create-index-not-concurrently"],
    );
}

#[test]
fn concurrently_in_transaction() {
    check(
        "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
        &["concurrently-in-transaction"],
    );
    check(
        "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
        &["concurrently-in-transaction"],
    );
    check(
        &format!("{NO_TX}DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;"),
        &[],
    );
}

#[test]
fn constraint_without_not_valid() {
    let report = check(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);",
        &["constraint-without-not-valid"],
    );
    assert!(
        report.findings[0].message.contains("orders and users"),
        "{report}"
    );
    check(
        "ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0);",
        &["constraint-without-not-valid"],
    );
    check(
        "ALTER TABLE orders ADD COLUMN coupon_id bigint REFERENCES coupons (id);",
        &["constraint-without-not-valid"],
    );
    // The safe way: NOT VALID now, VALIDATE in a later migration.
    check(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;",
        &[],
    );
    check("ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk;", &[]);
}

#[test]
fn validate_in_same_transaction() {
    let sql = "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\nALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk;";
    check(sql, &["validate-in-same-transaction"]);
    check(&format!("{NO_TX}{sql}"), &["not-idempotent-without-transaction"]);
    check(
        &format!("{NO_TX}ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_user_fk;\n{sql}"),
        &[],
    );
}

#[test]
fn unique_or_primary_key_without_index() {
    let report = check(
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
        &["unique-or-primary-key-without-index"],
    );
    assert!(
        report.findings[0]
            .fix
            .contains("CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email)"),
        "{report}"
    );
    check(
        "ALTER TABLE events ADD PRIMARY KEY (id);",
        &["unique-or-primary-key-without-index"],
    );
    check(
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;",
        &[],
    );
}

#[test]
fn access_exclusive_without_lock_timeout() {
    let alter = "ALTER TABLE users ADD COLUMN nickname text;";
    let report = check_with(
        alter,
        Phase::Expand,
        &pg_without_timeout(),
        &["access-exclusive-without-lock-timeout"],
    );
    assert!(report.findings[0]
        .message
        .contains("ACCESS EXCLUSIVE lock on users"));
    // The file sets one itself.
    check_with(
        &format!("SET lock_timeout = '2s';\n{alter}"),
        Phase::Expand,
        &pg_without_timeout(),
        &[],
    );
    // The file turns the runner's off.
    for off in [
        "SET lock_timeout = 0;",
        "SET lock_timeout TO DEFAULT;",
        "RESET lock_timeout;",
        "SET lock_timeout = '0ms';",
    ] {
        let report = check(
            &format!("{off}\n{alter}"),
            &["access-exclusive-without-lock-timeout"],
        );
        assert!(
            report.findings[0]
                .message
                .contains("turned lock_timeout off at line 1"),
            "{report}"
        );
    }
    // Only after it: an earlier statement was protected.
    check(
        &format!("{alter}\nSET lock_timeout = 0;\nDROP TABLE IF EXISTS scratch;"),
        &["drop-table", "access-exclusive-without-lock-timeout"],
    );
    // Weaker locks need none; a foreign key's blocks writes, so it does.
    check_with(
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk;",
        Phase::Expand,
        &pg_without_timeout(),
        &[],
    );
    check_with(
        "CREATE TABLE invoices (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));",
        Phase::Contract,
        &pg_without_timeout(),
        &["access-exclusive-without-lock-timeout"],
    );
    check_with(
        "LOCK TABLE users IN ACCESS EXCLUSIVE MODE;\nTRUNCATE scratch;",
        Phase::Contract,
        &pg_without_timeout(),
        &[
            "access-exclusive-without-lock-timeout",
            "access-exclusive-without-lock-timeout",
        ],
    );
}

#[test]
fn not_idempotent_without_transaction() {
    let report = check(
        &format!("{NO_TX}CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"),
        &["not-idempotent-without-transaction"],
    );
    assert!(report.findings[0].fix.contains("INVALID"), "{report}");
    check(
        &format!("{NO_TX}ALTER TABLE users ADD COLUMN nickname text;\nDROP TABLE scratch;"),
        &[
            "not-idempotent-without-transaction",
            "drop-table",
            "not-idempotent-without-transaction",
        ],
    );
    check(
        &format!("{NO_TX}ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname text;"),
        &[],
    );
}

#[test]
fn parse_error() {
    let report = check(
        "ALTER TABLE users ADD COLUMN nickname text;\nALTER TABLE users ADD COLUM oops text;\nDROP TABLE old_sessions;",
        &["parse-error", "drop-table"],
    );
    assert_eq!(report.findings[0].line, 2);
    assert!(
        report.findings[0]
            .message
            .starts_with("does not parse: syntax error"),
        "{report}"
    );
    // The statements around it are still checked.
    assert_eq!(report.findings[1].line, 3);
    check("SELECT 'never closed;", &["parse-error"]);
    check("ALTER TABLE users ADD COLUMN nickname text;", &[]);
}

#[test]
fn a_silence_with_a_reason_accepts_that_rule_on_that_statement_only() {
    let sql = "-- cutover:allow drop-column: no released version reads legacy_flags (#812)\n\
               ALTER TABLE users DROP COLUMN legacy_flags;\n\
               ALTER TABLE users DROP COLUMN other_flags;";
    let report = check(sql, &["drop-column"]);
    assert_eq!(report.findings[0].line, 3);
    assert_eq!(report.silenced.len(), 1);
    assert_eq!(report.silenced[0].finding.line, 2);
    assert_eq!(
        report.silenced[0].reason,
        "no released version reads legacy_flags (#812)"
    );
    // Inside the statement, or apart from it by a blank line and other comments.
    check(
        "ALTER TABLE users\n    -- cutover:allow drop-column: never read\n    DROP COLUMN legacy_flags;",
        &[],
    );
    check(
        "-- cutover:allow drop-column: never read\n\n-- the flags moved to user_settings\nALTER TABLE users DROP COLUMN legacy_flags;",
        &[],
    );
    // Another rule on the same statement is not silenced.
    check_with(
        "-- cutover:allow drop-column: never read\nALTER TABLE users DROP COLUMN legacy_flags;",
        Phase::Expand,
        &pg_without_timeout(),
        &["access-exclusive-without-lock-timeout"],
    );
    // Several rules, the `--` separator, a trailing comment.
    let report = check_with(
        "DROP TABLE scratch; -- cutover:allow drop-table, access-exclusive-without-lock-timeout -- created by mistake in 0002, never used\n",
        Phase::Expand,
        &pg_without_timeout(),
        &[],
    );
    assert_eq!(report.silenced.len(), 2);
    assert!(report.is_clean());
}

#[test]
fn a_silence_without_a_reason_is_a_finding_and_silences_nothing() {
    let report = check(
        "-- cutover:allow drop-column\nALTER TABLE users DROP COLUMN legacy_flags;",
        &["silence-without-reason", "drop-column"],
    );
    assert_eq!(report.findings[0].line, 1);
    assert_eq!(report.findings[0].statement, "-- cutover:allow drop-column");
    assert!(report.silenced.is_empty());
}

#[test]
fn a_silence_naming_an_unknown_rule_says_which_was_meant() {
    let report = check(
        "-- cutover:allow drop-colum: never read\nALTER TABLE users DROP COLUMN legacy_flags;",
        &["unknown-rule", "drop-column"],
    );
    assert_eq!(report.findings[0].fix, "did you mean drop-column?");
    let report = check(
        "-- cutover:allow everything: trust me\nSELECT 1;",
        &["unknown-rule"],
    );
    assert!(
        report.findings[0].fix.starts_with("use one of: drop-column, "),
        "{report}"
    );
    check(
        "-- cutover:allow unknown-rule: nested\nSELECT 1;",
        &["unknown-rule"],
    );
}

#[test]
fn tables_created_in_the_same_file_are_exempt() {
    check_with(
        "CREATE TABLE invoices (id bigint, user_id bigint, total numeric);\n\
         CREATE INDEX invoices_user_idx ON invoices (user_id);\n\
         ALTER TABLE invoices ADD CONSTRAINT invoices_user_fk FOREIGN KEY (user_id) REFERENCES invoices (id);\n\
         ALTER TABLE invoices ADD CONSTRAINT invoices_total CHECK (total >= 0);\n\
         ALTER TABLE invoices ADD PRIMARY KEY (id);\n\
         ALTER TABLE invoices ADD COLUMN status text NOT NULL;\n\
         ALTER TABLE invoices ALTER COLUMN total SET NOT NULL;\n\
         ALTER TABLE invoices RENAME COLUMN total TO amount;\n\
         ALTER TABLE invoices RENAME TO bills;\n\
         CREATE INDEX bills_status_idx ON bills (status);",
        Phase::Expand,
        &pg_without_timeout(),
        &[],
    );
    // But not a table created by an earlier migration, nor one with the same name elsewhere.
    check(
        "CREATE TABLE archive.users (id bigint);\nCREATE INDEX users_email_idx ON public.users (email);",
        &["create-index-not-concurrently"],
    );
}

#[test]
fn contract_files_may_drop_and_rename() {
    check_with(
        "ALTER TABLE users DROP COLUMN name;\n\
         ALTER TABLE users RENAME COLUMN full_name TO display_name;\n\
         ALTER TABLE users ALTER COLUMN age TYPE bigint;\n\
         ALTER TABLE users ADD COLUMN tier text NOT NULL;\n\
         DROP TABLE sessions_old;\n\
         ALTER TABLE accounts_new RENAME TO accounts;",
        Phase::Contract,
        &pg(),
        &[],
    );
}

#[test]
fn sqlite_skips_the_lock_rules() {
    check_with(
        "CREATE INDEX users_email_idx ON users (email);\n\
         ALTER TABLE users ADD COLUMN token text DEFAULT (random());\n\
         ALTER TABLE orders ADD CONSTRAINT orders_total CHECK (total >= 0);\n\
         DROP INDEX users_old_idx;",
        Phase::Expand,
        &sqlite(),
        &[],
    );
    check_with(
        "ALTER TABLE users DROP COLUMN name;\nALTER TABLE users RENAME COLUMN a TO b;\nALTER TABLE users ADD COLUMN tier text NOT NULL;",
        Phase::Expand,
        &sqlite(),
        &["drop-column", "rename-column", "add-not-null-column-without-default"],
    );
    for rule in RULES {
        let sqlite_rule = [
            "drop-column",
            "drop-table",
            "drop-default",
            "rename-column",
            "rename-table",
            "add-not-null-column-without-default",
            "change-column-type",
            "transaction-control",
            "parse-error",
            "silence-without-reason",
            "unknown-rule",
        ]
        .contains(&rule.id);
        assert_eq!(rule.applies_to_sqlite, sqlite_rule, "{}", rule.id);
    }
}

#[test]
fn sqlite_only_syntax_is_a_parse_error_that_says_so_and_may_be_accepted() {
    let sql = "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT);\nALTER TABLE users DROP COLUMN name;";
    let report = check_with(sql, Phase::Expand, &sqlite(), &["parse-error", "drop-column"]);
    assert!(
        report.findings[0].message.contains("PostgreSQL's grammar"),
        "{report}"
    );
    check_with(
        &format!("-- cutover:allow parse-error: SQLite's AUTOINCREMENT; a new table\n{sql}"),
        Phase::Expand,
        &sqlite(),
        &["drop-column"],
    );
}

#[test]
fn lines_are_those_of_each_statements_first_word() {
    let sql = "-- 0003: split the user's name\n\
               /* a block comment; with a semicolon */\n\
               \n\
               ALTER TABLE users\n\
               \x20   ADD COLUMN first_name text; -- nullable\n\
               CREATE FUNCTION f() RETURNS int AS $$\n\
                 SELECT 1; -- DROP TABLE users;\n\
               $$ LANGUAGE sql;\n\
               \n\
               -- the index\n\
               CREATE INDEX users_first_name_idx\n\
               \x20   ON users (first_name);  ALTER TABLE users DROP COLUMN name;\n";
    let report = check(sql, &["create-index-not-concurrently", "drop-column"]);
    let lines: Vec<usize> = report.findings.iter().map(|f| f.line).collect();
    assert_eq!(lines, [11, 12]);
    assert_eq!(
        report.findings[0].statement,
        "CREATE INDEX users_first_name_idx ON users (first_name)"
    );
}

#[test]
fn a_report_prints_path_line_rule_message_statement_and_fix() {
    let report = check(
        "\n-- cutover:allow drop-table: an empty scratch table\nDROP TABLE scratch;\nALTER TABLE users DROP COLUMN name;",
        &["drop-column"],
    );
    assert_eq!(
        report.to_string(),
        "migrations/0003_users.expand.sql:4: [drop-column] DROP COLUMN users.name in an expand file: the running version still reads it\n\
         \x20   ALTER TABLE users DROP COLUMN name\n\
         \x20   fix: stop using users.name in the new version and drop it in 0003_users.contract.sql, which runs after the old version is retired\n\
         migrations/0003_users.expand.sql:3: [drop-table] allowed: an empty scratch table\n\
         1 finding, 1 silenced"
    );
}

// --- the corpus ---

/// What a corpus file's header says: `-- expect: rule, rule`, `-- phase: contract`,
/// `-- dialect: sqlite`, `-- lock-timeout: none`.
struct Header {
    expect: Vec<String>,
    phase: Phase,
    options: LintOptions,
}

fn header(sql: &str) -> Header {
    let mut h = Header {
        expect: Vec::new(),
        phase: Phase::Expand,
        options: pg(),
    };
    for line in sql.lines().take_while(|l| l.starts_with("--")) {
        let Some((key, value)) = line.trim_start_matches("--").trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "expect" => {
                h.expect = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
                    .collect()
            }
            "phase" => {
                h.phase = match value {
                    "contract" => Phase::Contract,
                    "expand" => Phase::Expand,
                    other => panic!("phase {other}?"),
                }
            }
            "dialect" => {
                h.options.dialect = match value {
                    "sqlite" => Dialect::Sqlite,
                    "postgres" => Dialect::Postgres,
                    other => panic!("dialect {other}?"),
                }
            }
            "lock-timeout" if value == "none" => h.options.lock_timeout = None,
            _ => {}
        }
    }
    h
}

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/lint-corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_corpus_finds_exactly_what_each_file_expects() {
    let safe = corpus("safe");
    let unsafe_ = corpus("unsafe");
    assert!(
        safe.len() >= 12 && unsafe_.len() >= 15,
        "{} safe, {} unsafe",
        safe.len(),
        unsafe_.len()
    );
    let mut failures = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (path, must_be_safe) in safe
        .iter()
        .map(|p| (p, true))
        .chain(unsafe_.iter().map(|p| (p, false)))
    {
        let sql = std::fs::read_to_string(path).unwrap();
        let h = header(&sql);
        if must_be_safe != h.expect.is_empty() {
            failures.push(format!(
                "{}: a {} file must {}state what it expects",
                path.display(),
                if must_be_safe { "safe" } else { "unsafe" },
                if must_be_safe { "not " } else { "" }
            ));
            continue;
        }
        let report = lint_file(path, &sql, h.phase, &h.options);
        let mut got: Vec<&str> = ids(&report);
        seen.extend(&got);
        got.sort_unstable();
        let mut expected: Vec<&str> = h.expect.iter().map(String::as_str).collect();
        expected.sort_unstable();
        if got != expected {
            failures.push(format!(
                "{}: expected {expected:?}, got {got:?}\n{report}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    for rule in RULES {
        assert!(seen.contains(&rule.id), "no unsafe corpus file shows {}", rule.id);
    }
}

#[test]
fn data_change_under_lock() {
    // The benchmark's finding: ADD COLUMN takes ACCESS EXCLUSIVE, and the backfill after it in
    // the same transaction keeps every query of users waiting for the whole UPDATE.
    let report = check(
        "ALTER TABLE users ADD COLUMN full_name text;\nUPDATE users SET full_name = name;\n",
        &["data-change-under-lock"],
    );
    let finding = &report.findings[0];
    assert_eq!(finding.line, 2);
    assert!(
        finding
            .message
            .contains("ACCESS EXCLUSIVE lock on users at line 1"),
        "{}",
        finding.message
    );
    assert!(finding.fix.contains("cutover:no-transaction"), "{}", finding.fix);
    check(
        "ALTER TABLE users ADD COLUMN full_name text;\nDELETE FROM sessions WHERE expired;\n",
        &["data-change-under-lock"],
    );
    check(
        "ALTER TABLE users ADD COLUMN full_name text;\nINSERT INTO audit SELECT * FROM users;\n",
        &["data-change-under-lock"],
    );
    // The safe ways: the backfill alone in its transaction (row locks only), in batches without
    // a transaction, a few listed rows, or a table created in this file.
    check(
        "UPDATE users SET full_name = name WHERE full_name IS NULL;\n",
        &[],
    );
    check(
        "-- cutover:no-transaction\nALTER TABLE users ADD COLUMN IF NOT EXISTS full_name text;\nUPDATE users SET full_name = name WHERE id BETWEEN 1 AND 50000 AND full_name IS NULL;\n",
        &[],
    );
    check(
        "ALTER TABLE users ADD COLUMN full_name text;\nINSERT INTO settings (k, v) VALUES ('a', 'b');\n",
        &[],
    );
    check(
        "CREATE TABLE plans (id bigint PRIMARY KEY, name text);\nALTER TABLE plans ADD COLUMN tier text;\nINSERT INTO plans SELECT id, name, 'free' FROM legacy_plans;\n",
        &[],
    );
    // SQLite locks the whole file for any write anyway: not its rule.
    check_with(
        "ALTER TABLE users ADD COLUMN full_name text;\nUPDATE users SET full_name = name;\n",
        Phase::Expand,
        &sqlite(),
        &[],
    );
}

#[test]
fn only_a_table_this_file_surely_created_is_exempt() {
    // Review finding: IF NOT EXISTS found the live table, and the DROP broke the live version.
    check(
        "CREATE TABLE IF NOT EXISTS users (id bigserial PRIMARY KEY, name text);\nALTER TABLE users DROP COLUMN name;\n",
        &["drop-column"],
    );
    check(
        "CREATE TABLE audit.users (id bigint PRIMARY KEY, name text);\nALTER TABLE users DROP COLUMN name;\n",
        &["drop-column"],
    );
    check(
        "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text);\nCREATE INDEX users_email ON users (email);\n",
        &["create-index-not-concurrently"],
    );
    check(
        "CREATE TABLE audit.users (id bigint PRIMARY KEY, name text);\nALTER TABLE audit.users DROP COLUMN name;\n",
        &[],
    );
}

#[test]
fn a_file_of_many_statements_is_linted_in_linear_time() {
    // Review finding: 40 000 statements took 9 s (a token scan per statement). No timing is
    // asserted here; 20 000 statements finish at once now, and the count is checked.
    let sql: String = (0..20_000)
        .map(|i| format!("INSERT INTO t (id) VALUES ({i});\n"))
        .collect();
    let report = lint_file(Path::new(EXPAND), &sql, Phase::Expand, &pg());
    assert!(report.is_clean(), "{report}");
}

#[test]
fn transaction_control() {
    // Review finding: a COMMIT in the file half-applied it and wedged every later deploy.
    check(
        "ALTER TABLE users ADD COLUMN c1 int;\nCOMMIT;\nALTER TABLE users ADD COLUMN c2 int;\n",
        &["transaction-control"],
    );
    check_with(
        "BEGIN;\nALTER TABLE users ADD COLUMN c1 int;\nCOMMIT;\n",
        Phase::Contract,
        &sqlite(),
        &["transaction-control", "transaction-control"],
    );
    check(
        "ALTER TABLE users ADD COLUMN c1 int;\nALTER TABLE users ADD COLUMN c2 int;\n",
        &[],
    );
}

#[test]
fn a_lock_timeout_raised_above_the_runners_is_no_timeout() {
    // Review finding: SET lock_timeout = '10min' passed, and the app waited 7 s.
    check(
        "SET lock_timeout = '10min';\nALTER TABLE users ADD COLUMN z int;\n",
        &["access-exclusive-without-lock-timeout"],
    );
    check(
        "SET lock_timeout = 1000000000;\nALTER TABLE users ADD COLUMN z int;\n",
        &["access-exclusive-without-lock-timeout"],
    );
    check(
        "SET lock_timeout = '1s';\nALTER TABLE users ADD COLUMN z int;\n",
        &[],
    );
    check(
        "SET lock_timeout = 500;\nALTER TABLE users ADD COLUMN z int;\n",
        &[],
    );
    // Without a runner's timeout, any non-zero one in the file is the one in effect.
    check_with(
        "SET lock_timeout = '10min';\nALTER TABLE users ADD COLUMN z int;\n",
        Phase::Expand,
        &pg_without_timeout(),
        &[],
    );
}

#[test]
fn drop_default_and_objects_the_old_version_uses() {
    check(
        "ALTER TABLE users ALTER COLUMN created_at DROP DEFAULT;",
        &["drop-default"],
    );
    check(
        "ALTER TABLE users ALTER COLUMN id DROP IDENTITY IF EXISTS;",
        &["drop-default"],
    );
    check(
        "ALTER TABLE users ALTER COLUMN created_at SET DEFAULT now();",
        &[],
    );
    check_with(
        "ALTER TABLE users ALTER COLUMN created_at DROP DEFAULT;",
        Phase::Contract,
        &pg(),
        &[],
    );
    check("DROP TYPE mood CASCADE;", &["drop-table"]);
    check("DROP SCHEMA legacy CASCADE;", &["drop-table"]);
    check("TRUNCATE users;", &["drop-table"]);
    check("CREATE TABLE scratch (id int);\nTRUNCATE scratch;", &[]);
}
