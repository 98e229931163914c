//! `/users`: a table of users in a database shared by every version, for showing expand/contract
//! migrations. Which columns a version reads and writes is its `--users-schema`:
//!
//! - `old`: writes and reads `name` (v1);
//! - `both`: writes `name` and `full_name`, reads `name` (v2, after the expand that adds
//!   `full_name`);
//! - `new`: writes and reads `full_name` only (v3; the contract that drops `name` may run once
//!   it is the only version running).
//!
//! A version whose columns are missing answers 500 with the database's error, which is how an
//! unsafe migration shows up to users.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use rusqlite::OptionalExtension;

/// Which columns this version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsersSchema {
    Old,
    Both,
    New,
}

impl UsersSchema {
    fn read_column(self) -> &'static str {
        match self {
            UsersSchema::Old | UsersSchema::Both => "name",
            UsersSchema::New => "full_name",
        }
    }
}

/// Connections to PostgreSQL, used in turn: one connection pipelines the queries of many
/// requests, a few keep one slow query from holding up the rest.
const PG_CONNECTIONS: usize = 4;

enum Backend {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres {
        clients: Vec<tokio_postgres::Client>,
        next: AtomicUsize,
    },
}

pub struct UsersDb {
    backend: Backend,
    schema: UsersSchema,
}

impl std::fmt::Debug for UsersDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersDb")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl UsersDb {
    /// `target` is a `postgres://` URL or the path of a SQLite file.
    pub async fn open(target: &str, schema: UsersSchema) -> Result<UsersDb> {
        let backend = if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            let mut clients = Vec::new();
            for _ in 0..PG_CONNECTIONS {
                let (client, connection) = tokio_postgres::connect(target, tokio_postgres::NoTls)
                    .await
                    // The URL may carry a password: not in the message.
                    .map_err(|e| anyhow::anyhow!("connecting to the users database: {e}"))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                clients.push(client);
            }
            Backend::Postgres {
                clients,
                next: AtomicUsize::new(0),
            }
        } else {
            let path = PathBuf::from(target);
            let conn = rusqlite::Connection::open(&path)
                .with_context(|| format!("opening the users database {}", path.display()))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            // Readers never wait for a writer (a migration's transaction) with WAL.
            conn.pragma_update(None, "journal_mode", "wal")?;
            Backend::Sqlite(Arc::new(Mutex::new(conn)))
        };
        Ok(UsersDb { backend, schema })
    }

    fn pg(&self) -> Option<&tokio_postgres::Client> {
        match &self.backend {
            Backend::Postgres { clients, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % clients.len().max(1);
                clients.get(i)
            }
            Backend::Sqlite(_) => None,
        }
    }

    /// Adds a user; returns its id.
    pub async fn insert(&self, name: &str) -> Result<i64, String> {
        let sql = match self.schema {
            UsersSchema::Old => "INSERT INTO users (name) VALUES ($1) RETURNING id",
            UsersSchema::Both => "INSERT INTO users (name, full_name) VALUES ($1, $1) RETURNING id",
            UsersSchema::New => "INSERT INTO users (full_name) VALUES ($1) RETURNING id",
        };
        if let Some(client) = self.pg() {
            let row = client.query_one(sql, &[&name]).await.map_err(|e| pg_error(&e))?;
            return Ok(row.get(0));
        }
        let Backend::Sqlite(conn) = &self.backend else {
            return Err("no users database".into());
        };
        let conn = Arc::clone(conn);
        let sql = sql.replace("$1", "?1");
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.query_row(&sql, [&name], |row| row.get::<_, i64>(0))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The user's name as this version reads it; `None` when there is no such user.
    pub async fn get(&self, id: i64) -> Result<Option<Option<String>>, String> {
        let sql = format!("SELECT {} FROM users WHERE id = $1", self.schema.read_column());
        if let Some(client) = self.pg() {
            let row = client.query_opt(&sql, &[&id]).await.map_err(|e| pg_error(&e))?;
            return Ok(row.map(|r| r.get::<_, Option<String>>(0)));
        }
        let Backend::Sqlite(conn) = &self.backend else {
            return Err("no users database".into());
        };
        let conn = Arc::clone(conn);
        let sql = sql.replace("$1", "?1");
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.query_row(&sql, [id], |row| row.get::<_, Option<String>>(0))
                .optional()
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    pub fn schema(&self) -> UsersSchema {
        self.schema
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
