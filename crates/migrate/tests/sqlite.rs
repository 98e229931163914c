#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Migrations run against a real SQLite file: in order, recorded, never twice, a failure named
//! and rolled back, a changed file refused until repaired, a contract only after its expand.

use std::path::Path;
use std::time::Duration;

use cutover_core::{ManualClock, Timestamp};
use cutover_migrate::sqlite::SqliteDatabase;
use cutover_migrate::{run, Database, MigrateError, MigrationSet, Phase};

fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

fn columns(db: &Path, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap();
    let names = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    names.map(Result::unwrap).collect()
}

#[tokio::test]
async fn expands_run_in_order_once_and_contracts_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    write(
        &migrations,
        "0001_users.expand.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, mail TEXT);\n",
    );
    write(
        &migrations,
        "0002_email.expand.sql",
        "-- v2 writes both columns\nALTER TABLE users ADD COLUMN email TEXT;\nUPDATE users SET email = mail;\n",
    );
    write(
        &migrations,
        "0002_email.contract.sql",
        "ALTER TABLE users DROP COLUMN mail;\n",
    );
    let file = dir.path().join("app.db");
    let clock = ManualClock::new(Timestamp(1_000));
    let mut db = SqliteDatabase::open(&file, Duration::from_secs(1)).unwrap();
    let set = MigrationSet::load(&migrations).unwrap();

    let done = run(&mut db, &set, Phase::Expand, Some(7), &clock).await.unwrap();
    let names: Vec<&str> = done.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["0001_users", "0002_email"]);
    assert_eq!(done[0].rollout_id, Some(7));
    assert_eq!(columns(&file, "users"), ["id", "mail", "email"]);
    // Nothing twice.
    assert!(run(&mut db, &set, Phase::Expand, Some(8), &clock)
        .await
        .unwrap()
        .is_empty());

    let done = run(&mut db, &set, Phase::Contract, None, &clock).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(columns(&file, "users"), ["id", "email"]);
    let history = db.history().await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].phase, Phase::Contract);
}

#[tokio::test]
async fn a_failing_statement_is_named_with_its_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY);\n",
    );
    write(
        dir.path(),
        "0002_broken.expand.sql",
        "ALTER TABLE users ADD COLUMN email TEXT;\n\nALTER TABLE nope ADD COLUMN x TEXT;\n",
    );
    let file = dir.path().join("app.db");
    let clock = ManualClock::new(Timestamp(1_000));
    let mut db = SqliteDatabase::open(&file, Duration::from_secs(1)).unwrap();
    let set = MigrationSet::load(dir.path()).unwrap();
    let err = run(&mut db, &set, Phase::Expand, None, &clock).await.unwrap_err();
    let MigrateError::Statement {
        index,
        line,
        statement,
        error,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((*index, *line), (2, 3), "{err}");
    assert!(statement.contains("ALTER TABLE nope"), "{err}");
    assert!(error.contains("no such table"), "{err}");
    assert!(
        err.to_string()
            .contains("0002_broken.expand.sql: statement 2 (line 3) failed"),
        "{err}"
    );
    // The first migration stays; the broken one left neither its first statement nor a record.
    assert_eq!(columns(&file, "users"), ["id"]);
    let history = db.history().await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].name, "0001_users");
}

#[tokio::test]
async fn a_changed_file_blocks_everything_until_repaired_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY);\n",
    );
    let file = dir.path().join("app.db");
    let clock = ManualClock::new(Timestamp(1_000));
    let mut db = SqliteDatabase::open(&file, Duration::from_secs(1)).unwrap();
    run(
        &mut db,
        &MigrationSet::load(dir.path()).unwrap(),
        Phase::Expand,
        None,
        &clock,
    )
    .await
    .unwrap();
    // Someone edits the applied file (a comment, say) and adds a new migration.
    write(
        dir.path(),
        "0001_users.expand.sql",
        "-- users\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n",
    );
    write(
        dir.path(),
        "0002_email.expand.sql",
        "ALTER TABLE users ADD COLUMN email TEXT;\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let err = run(&mut db, &set, Phase::Expand, None, &clock).await.unwrap_err();
    assert!(matches!(err, MigrateError::Blocked(_)), "{err}");
    assert!(
        err.to_string().contains("cutover migrate repair APP 0001_users"),
        "{err}"
    );
    assert_eq!(columns(&file, "users"), ["id"], "nothing ran while blocked");

    let checksum = set.migrations[0].expand.checksum.clone();
    assert!(db.repair("0001_users", Phase::Expand, &checksum).await.unwrap());
    assert!(!db.repair("0009_none", Phase::Expand, &checksum).await.unwrap());
    let done = run(&mut db, &set, Phase::Expand, None, &clock).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(columns(&file, "users"), ["id", "email"]);
}

#[tokio::test]
async fn a_database_no_migration_ran_against_has_an_empty_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SqliteDatabase::open(&dir.path().join("fresh.db"), Duration::from_secs(1)).unwrap();
    assert!(db.history().await.unwrap().is_empty());
}

#[tokio::test]
async fn upper_case_names_are_refused_and_a_renamed_applied_migration_blocks() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0001_a.expand.SQL", "CREATE TABLE a (id INTEGER);\n");
    let err = MigrationSet::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("0001_a.expand.SQL: has upper-case letters"), "{err}");
    std::fs::remove_file(dir.path().join("0001_a.expand.SQL")).unwrap();

    write(
        dir.path(),
        "0001_c3.expand.sql",
        "CREATE TABLE c3 (id INTEGER);\n",
    );
    let file = dir.path().join("app.db");
    let clock = ManualClock::new(Timestamp(1));
    let mut db = SqliteDatabase::open(&file, Duration::from_secs(1)).unwrap();
    run(
        &mut db,
        &MigrationSet::load(dir.path()).unwrap(),
        Phase::Expand,
        None,
        &clock,
    )
    .await
    .unwrap();
    // Review finding: renamed in a later version, it ran again.
    std::fs::rename(
        dir.path().join("0001_c3.expand.sql"),
        dir.path().join("0001_third.expand.sql"),
    )
    .unwrap();
    let err = run(
        &mut db,
        &MigrationSet::load(dir.path()).unwrap(),
        Phase::Expand,
        None,
        &clock,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MigrateError::Blocked(_)), "{err}");
    assert!(
        err.to_string()
            .contains("its number was applied as 0001_c3.expand"),
        "{err}"
    );
}
