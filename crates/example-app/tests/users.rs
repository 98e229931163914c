//! `/users`: each version reads and writes its own columns of a table every version shares, so
//! a migration that removes what a running version uses shows up as that version's 500s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cutover_test_support::{http_client, ExampleApp};

fn spawn(version: &str, db: &Path, schema: &str) -> ExampleApp {
    ExampleApp::spawn_bin(
        Path::new(env!("CARGO_BIN_EXE_cutover-example-app")),
        version,
        &["--users-db", db.to_str().unwrap(), "--users-schema", schema],
    )
}

fn sql(db: &Path, statement: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}

async fn add(app: &ExampleApp, name: &str) -> (u16, String) {
    let r = http_client()
        .post(app.url(&format!("/users?name={name}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn read(app: &ExampleApp, id: i64) -> (u16, String) {
    let r = http_client()
        .get(app.url(&format!("/users/{id}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn each_schema_uses_its_columns_and_a_missing_column_is_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    sql(&db, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);");
    let v1 = spawn("v1", &db, "old");
    assert_eq!(add(&v1, "ada").await, (201, r#"{"id":1}"#.to_string()));
    let (status, body) = read(&v1, 1).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""name":"ada""#), "{body}");
    assert_eq!(read(&v1, 99).await.0, 404);

    // v2 writes both columns: without the expand it fails, with it it works.
    let v2 = spawn("v2", &db, "both");
    let (status, body) = add(&v2, "bob").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("full_name"), "{body}");
    sql(&db, "ALTER TABLE users ADD COLUMN full_name TEXT;");
    assert_eq!(add(&v2, "bob").await.0, 201);

    // v3 reads only full_name; dropping name breaks v1 and v2 but not v3.
    let v3 = spawn("v3", &db, "new");
    assert!(read(&v3, 2).await.1.contains(r#""name":"bob""#));
    sql(&db, "ALTER TABLE users DROP COLUMN name;");
    assert_eq!(add(&v1, "cy").await.0, 500);
    assert_eq!(add(&v3, "cy").await.0, 201);
    assert_eq!(
        http_client()
            .post(v3.url("/users?name="))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}
