#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Migrations against a real PostgreSQL server (Debian's, started by the test support in a
//! temporary directory): the history, failures named with the database's error and position,
//! checksums and repair, two migrators at once, a held lock that the migration waits out
//! without holding up the live app, and a connection killed mid-migration.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{ManualClock, Timestamp};
use cutover_migrate::postgres::{PostgresDatabase, PostgresOptions};
use cutover_migrate::{run, Database, MigrateError, MigrationSet, Phase};
use cutover_test_support::postgres::{Postgres, PASSWORD};
use cutover_test_support::wait_until;

fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

fn quick() -> PostgresOptions {
    PostgresOptions {
        lock_timeout: Duration::from_millis(200),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        lock_retries: 50,
        ..PostgresOptions::default()
    }
}

async fn connect(pg: &Postgres) -> PostgresDatabase {
    PostgresDatabase::connect(&pg.url, quick()).await.unwrap()
}

/// A plain client, as the live app would have.
async fn app_client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn expands_run_once_in_order_with_their_history_and_contracts_after_them() {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY, mail text);\n",
    );
    write(
        dir.path(),
        "0002_email.expand.sql",
        "ALTER TABLE users ADD COLUMN email text;\nUPDATE users SET email = mail;\n",
    );
    write(
        dir.path(),
        "0002_email.contract.sql",
        "ALTER TABLE users DROP COLUMN mail;\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let clock = ManualClock::new(Timestamp(5_000));
    let mut db = connect(&pg).await;

    let done = run(&mut db, &set, Phase::Expand, Some(3), &clock).await.unwrap();
    assert_eq!(
        done.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["0001_users", "0002_email"]
    );
    assert_eq!(
        pg.query("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'users'"),
        "id,mail,email"
    );
    assert!(run(&mut db, &set, Phase::Expand, Some(4), &clock)
        .await
        .unwrap()
        .is_empty());
    let history = db.history().await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].checksum, set.migrations[1].expand.checksum);
    assert_eq!(history[1].rollout_id, Some(3));
    assert_eq!(history[1].applied_at, Timestamp(5_000));
    assert_eq!(
        pg.query("SELECT name || ':' || phase || ':' || rollout_id FROM cutover_migrations ORDER BY name"),
        "0001_users:expand:3\n0002_email:expand:3"
    );

    run(&mut db, &set, Phase::Contract, None, &clock).await.unwrap();
    assert_eq!(
        pg.query(
            "SELECT string_agg(column_name, ',') FROM information_schema.columns WHERE table_name = 'users'"
        ),
        "id,email"
    );
}

#[tokio::test]
async fn a_failing_statement_is_named_with_the_databases_error_and_position_and_leaves_nothing() {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY);\n",
    );
    write(
        dir.path(),
        "0002_broken.expand.sql",
        "-- adds the column\nALTER TABLE users ADD COLUMN email text;\n\nUPDATE users\n   SET emial = 'x';\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let clock = ManualClock::new(Timestamp(1));
    let mut db = connect(&pg).await;
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
    assert_eq!((*index, *line), (2, 4), "{err}");
    assert!(statement.starts_with("UPDATE users"), "{err}");
    assert!(
        error.contains("column \"emial\" of relation \"users\" does not exist"),
        "{err}"
    );
    assert!(error.contains("SQLSTATE 42703"), "{err}");
    assert!(
        error.contains("at line 5"),
        "the position inside the statement: {err}"
    );
    // Rolled back: no email column, no record of 0002.
    assert_eq!(
        pg.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email'"),
        "0"
    );
    assert_eq!(
        pg.query("SELECT string_agg(name, ',') FROM cutover_migrations"),
        "0001_users"
    );
}

#[tokio::test]
async fn a_changed_file_is_refused_until_repaired_and_no_transaction_files_run_concurrently() {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n",
    );
    let clock = ManualClock::new(Timestamp(1));
    let mut db = connect(&pg).await;
    run(
        &mut db,
        &MigrationSet::load(dir.path()).unwrap(),
        Phase::Expand,
        None,
        &clock,
    )
    .await
    .unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "-- the users\nCREATE TABLE users (id bigint PRIMARY KEY, email text);\n",
    );
    write(
        dir.path(),
        "0002_email_index.expand.sql",
        "-- cutover:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let err = run(&mut db, &set, Phase::Expand, None, &clock).await.unwrap_err();
    assert!(matches!(err, MigrateError::Blocked(_)), "{err}");
    assert!(err.to_string().contains("cutover migrate repair"), "{err}");
    assert_eq!(
        pg.query("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_email'"),
        "0"
    );

    assert!(db
        .repair("0001_users", Phase::Expand, &set.migrations[0].expand.checksum)
        .await
        .unwrap());
    let done = run(&mut db, &set, Phase::Expand, None, &clock).await.unwrap();
    assert_eq!(done.len(), 1);
    // CREATE INDEX CONCURRENTLY is refused inside a transaction: it ran outside one, and is valid.
    assert_eq!(
        pg.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email'::regclass"),
        "t"
    );
}

#[tokio::test]
async fn two_migrators_at_once_apply_each_migration_once() {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_slow.expand.sql",
        "CREATE TABLE events (id bigint PRIMARY KEY);\nSELECT pg_sleep(0.5);\nINSERT INTO events VALUES (1);\n",
    );
    let set = Arc::new(MigrationSet::load(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for id in 0..2u64 {
        let url = pg.url.clone();
        let set = Arc::clone(&set);
        tasks.push(tokio::spawn(async move {
            let clock = ManualClock::new(Timestamp(1));
            let mut db = PostgresDatabase::connect(&url, quick()).await.unwrap();
            run(&mut db, &set, Phase::Expand, Some(id), &clock).await.unwrap()
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap().len();
    }
    assert_eq!(
        applied, 1,
        "exactly one migrator applied it; the other waited and found nothing to do"
    );
    assert_eq!(pg.query("SELECT count(*) FROM events"), "1");
    assert_eq!(pg.query("SELECT count(*) FROM cutover_migrations"), "1");
}

/// A long transaction holds a lock on the table. The expand's ALTER TABLE gives up after its
/// lock_timeout, backs off and tries again until the lock is released, and the live app's
/// queries, which would queue behind a waiting ALTER TABLE, keep succeeding all along (each with
/// the app's own 1 s statement timeout, five times the migration's lock_timeout).
#[tokio::test]
async fn a_held_lock_is_waited_out_in_short_attempts_while_the_live_app_keeps_working() {
    let pg = Postgres::start().await;
    pg.query("CREATE TABLE orders (id bigserial PRIMARY KEY, total int NOT NULL)");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_note.expand.sql",
        "ALTER TABLE orders ADD COLUMN note text;\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();

    // The long transaction: ACCESS SHARE on orders until it commits.
    let holder = app_client(&pg).await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM orders")
        .await
        .unwrap();

    // The live app: inserts and reads in a loop, each bounded by its own statement timeout.
    let app = app_client(&pg).await;
    app.batch_execute("SET statement_timeout = '1s'").await.unwrap();
    let stop = Arc::new(AtomicU32::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let live = {
        let stop = Arc::clone(&stop);
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..100_000 {
                if stop.load(Ordering::SeqCst) == 1 {
                    break;
                }
                let result = async {
                    app.execute("INSERT INTO orders (total) VALUES ($1)", &[&(i % 100)])
                        .await?;
                    app.query_one("SELECT count(*) FROM orders", &[]).await
                }
                .await;
                match result {
                    Ok(_) => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };

    let retries = Arc::new(AtomicU32::new(0));
    let migrate = {
        let url = pg.url.clone();
        let retries = Arc::clone(&retries);
        tokio::spawn(async move {
            let mut db = PostgresDatabase::connect(&url, quick()).await.unwrap();
            db.on_retry(move |_| {
                retries.fetch_add(1, Ordering::SeqCst);
            });
            let clock = ManualClock::new(Timestamp(1));
            run(&mut db, &set, Phase::Expand, None, &clock).await
        })
    };
    wait_until(
        "the migration retried three times",
        Duration::from_secs(30),
        || {
            let retries = Arc::clone(&retries);
            async move { retries.load(Ordering::SeqCst) >= 3 }
        },
    )
    .await;
    let served_while_blocked = served.load(Ordering::SeqCst);
    holder.batch_execute("COMMIT").await.unwrap();
    let done = migrate.await.unwrap().unwrap();
    assert_eq!(done.len(), 1);
    stop.store(1, Ordering::SeqCst);
    let failures = live.await.unwrap();
    assert!(failures.is_empty(), "the live app's queries failed: {failures:?}");
    assert!(
        served_while_blocked > 0,
        "the live app was served while the migration waited"
    );
    assert_eq!(
        pg.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'"),
        "1"
    );
}

#[tokio::test]
async fn a_lock_never_granted_fails_after_the_bounded_retries_and_keeps_nothing() {
    let pg = Postgres::start().await;
    pg.query("CREATE TABLE orders (id bigint PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_note.expand.sql",
        "ALTER TABLE orders ADD COLUMN note text;\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let holder = app_client(&pg).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let options = PostgresOptions {
        lock_retries: 2,
        ..quick()
    };
    let mut db = PostgresDatabase::connect(&pg.url, options).await.unwrap();
    let err = run(
        &mut db,
        &set,
        Phase::Expand,
        None,
        &ManualClock::new(Timestamp(1)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, MigrateError::LockNotGranted { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("lock timeout"), "{err}");
    assert!(err.to_string().contains("pg_stat_activity"), "{err}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(pg.query("SELECT count(*) FROM cutover_migrations"), "0");
}

/// The migrator's connection dies mid-migration (as when the server is killed): the
/// transaction is rolled back by PostgreSQL, no record is left, and the next run applies it.
#[tokio::test]
async fn a_migration_cut_off_midway_leaves_history_and_schema_in_agreement() {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY);\nSELECT pg_sleep(30);\nALTER TABLE users ADD COLUMN email text;\n",
    );
    let set = Arc::new(MigrationSet::load(dir.path()).unwrap());
    let task = {
        let url = pg.url.clone();
        let set = Arc::clone(&set);
        tokio::spawn(async move {
            let mut db = PostgresDatabase::connect(&url, quick()).await.unwrap();
            run(
                &mut db,
                &set,
                Phase::Expand,
                None,
                &ManualClock::new(Timestamp(1)),
            )
            .await
        })
    };
    wait_until("the migration is sleeping", Duration::from_secs(20), || async {
        pg.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'") == "1"
    })
    .await;
    pg.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cutover-migrate'",
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    assert_eq!(pg.query("SELECT to_regclass('users') IS NULL"), "t");
    assert_eq!(pg.query("SELECT count(*) FROM cutover_migrations"), "0");

    // Fixed (the sleep removed, so the file's checksum changes: it was never applied, so that
    // is fine), it runs.
    write(
        dir.path(),
        "0001_users.expand.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY);\nALTER TABLE users ADD COLUMN email text;\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let mut db = connect(&pg).await;
    assert_eq!(
        run(
            &mut db,
            &set,
            Phase::Expand,
            None,
            &ManualClock::new(Timestamp(1))
        )
        .await
        .unwrap()
        .len(),
        1
    );
}

#[tokio::test]
async fn the_url_and_its_password_never_appear_in_errors() {
    let pg = Postgres::start().await;
    let wrong = pg.url.replace(PASSWORD, "not-the-password-xyz");
    let err = PostgresDatabase::connect(&wrong, quick())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("not-the-password-xyz"), "{err}");
    let err = PostgresDatabase::connect("postgres://u:hunter2@[::1", quick())
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("does not parse"), "{err}");
    let db = connect(&pg).await;
    assert!(!format!("{db:?}").contains(PASSWORD));
}

/// A no-transaction file that fails part-way keeps what it did (each statement committed) and
/// leaves no history row; run again, its re-runnable statements skip what is done and it
/// completes.
#[tokio::test]
async fn a_no_transaction_migration_that_failed_part_way_is_run_again_from_its_start() {
    let pg = Postgres::start().await;
    pg.query("CREATE TABLE users (id bigint PRIMARY KEY, email text)");
    let dir = tempfile::tempdir().unwrap();
    let file = "0001_email_index.expand.sql";
    write(
        dir.path(),
        file,
        "-- cutover:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS users_email;\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nALTER TABLE users ADD COLUMN nope_typo bigint REFERENCES missing (id);\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    let mut db = connect(&pg).await;
    let clock = ManualClock::new(Timestamp(1));
    let err = run(&mut db, &set, Phase::Expand, None, &clock).await.unwrap_err();
    assert!(err.to_string().contains("statement 3 (line 4)"), "{err}");
    assert_eq!(
        pg.query("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_email'"),
        "1"
    );
    assert_eq!(pg.query("SELECT count(*) FROM cutover_migrations"), "0");

    write(
        dir.path(),
        file,
        "-- cutover:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS users_email;\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nALTER TABLE users ADD COLUMN IF NOT EXISTS team_id bigint;\n",
    );
    let set = MigrationSet::load(dir.path()).unwrap();
    assert!(cutover_migrate::lint::lint_set(
        &set,
        &cutover_migrate::lint::LintOptions {
            dialect: cutover_migrate::lint::Dialect::Postgres,
            lock_timeout: Some(Duration::from_secs(2)),
        }
    )
    .is_clean());
    assert_eq!(
        run(&mut db, &set, Phase::Expand, None, &clock)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        pg.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email'::regclass"),
        "t"
    );
}

/// Review finding: a server that accepts and never answers held a rollout for minutes.
#[tokio::test]
async fn a_server_that_never_answers_is_given_up_on_with_where_and_why() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/db?connect_timeout=1");
    let err = PostgresDatabase::connect(&url, quick())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    drop(listener);
    let err = PostgresDatabase::connect(&url, quick())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused"), "the cause is named: {err}");
}
