//! Sessions in Redis, for instances that do not share a file system. Each session is
//! a hash under `example:session:<id>` with the fields `user`, `issued_by_version`
//! and `created_at` (Unix seconds), so `redis-cli HGETALL` shows it as it is. Like
//! the SQLite rows, sessions never expire on their own.
//!
//! The blocking client runs on the store thread, so it needs no async runtime and
//! each command waits for the previous one, just like SQLite.

use std::fmt;
use std::time::Duration;

use redis::{Connection, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisResult};

use super::{Backend, OpenErrorLog, Session, StoreError};

/// Redis answers a healthy request in well under a millisecond, so a connect or
/// command that takes a second means the server is down or stuck. Giving up then
/// frees the store thread for the jobs behind it, and matches the 1 s readiness bound.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Port used when the URL names none, Redis's own default.
const DEFAULT_PORT: u16 = 6379;
/// Namespaces the keys, so the sessions can share a database with other data.
const KEY_PREFIX: &str = "example:session:";
const USAGE: &str = "expected redis://HOST[:PORT][/DB]";

/// A Redis server and database, from a `redis://HOST[:PORT][/DB]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Without the brackets of an IPv6 address, as the resolver wants it.
    host: String,
    port: u16,
    db: u32,
}

impl RedisTarget {
    /// Parses `redis://HOST[:PORT][/DB]`. Credentials, query parameters and TLS
    /// (`rediss://`) are refused rather than half supported: nothing here would
    /// test them, and a URL that works partly is worse than one rejected upfront.
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = redis::parse_redis_url(s).ok_or_else(|| format!("not a valid URL; {USAGE}"))?;
        match url.scheme() {
            "redis" => {}
            "rediss" => return Err(format!("rediss:// (TLS) is not supported; {USAGE}")),
            other => return Err(format!("{other}:// is not supported; {USAGE}")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("credentials in the URL are not supported; {USAGE}"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "query parameters and fragments are not supported; {USAGE}"
            ));
        }
        let host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("the URL names no host; {USAGE}"))?
            .to_owned();
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("database {db:?} is not a number; {USAGE}"))?,
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
            db,
        })
    }

    fn connection_info(&self) -> RedisResult<ConnectionInfo> {
        Ok((self.host.as_str(), self.port)
            .into_connection_info()?
            .set_redis_settings(RedisConnectionInfo::default().set_db(i64::from(self.db))))
    }
}

/// The full URL, port and database included, so messages leave no doubt which
/// server and database every instance uses.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "redis://[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

pub struct RedisBackend {
    target: RedisTarget,
    conn: Option<Connection>,
    open_errors: OpenErrorLog,
}

impl RedisBackend {
    pub fn new(target: RedisTarget) -> Self {
        Self {
            target,
            conn: None,
            open_errors: OpenErrorLog::default(),
        }
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let err = |e: redis::RedisError| StoreError(format!("connecting to {}: {e}", self.target));
        let conn = redis::Client::open(self.target.connection_info().map_err(err)?)
            .and_then(|client| client.get_connection_with_timeout(TIMEOUT))
            .map_err(err)?;
        // The timeout above covers only connecting and the handshake; without these a
        // server that stops answering would hold the store thread forever.
        conn.set_read_timeout(Some(TIMEOUT)).map_err(err)?;
        conn.set_write_timeout(Some(TIMEOUT)).map_err(err)?;
        Ok(conn)
    }

    /// Runs `cmd` on the connection, connecting first if there is none.
    fn run<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        if self.conn.is_none() {
            match self.connect() {
                Ok(conn) => {
                    tracing::info!(store = %self.target, "session store connected");
                    self.conn = Some(conn);
                    self.open_errors.opened();
                }
                Err(e) => {
                    self.open_errors.failed(&e);
                    return Err(e);
                }
            }
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| StoreError("the session store is not connected".into()))?;
        cmd.query(conn).map_err(|e| {
            // Dropped for any failure: after a timeout a late reply could be read as
            // the answer to the next command, a broken connection fails every command,
            // and reconnecting after the rare other error costs one round trip.
            self.conn = None;
            let e = StoreError(format!("{} on {}: {e}", command_name(cmd), self.target));
            tracing::warn!("session store: {e}");
            e
        })
    }
}

/// The command's name for messages (never its arguments, which hold user names).
fn command_name(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .next()
        .and_then(|arg| match arg {
            redis::Arg::Simple(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        })
        .unwrap_or("command")
        .to_owned()
}

fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

impl Backend for RedisBackend {
    fn ping(&mut self) -> Result<(), StoreError> {
        self.run::<String>(&redis::cmd("PING")).map(drop)
    }

    fn insert(&mut self, session: &Session) -> Result<(), StoreError> {
        // One HSET writes every field at once, so no reader sees half a session.
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key(&session.id))
            .arg("user")
            .arg(&session.user)
            .arg("issued_by_version")
            .arg(&session.issued_by_version)
            .arg("created_at")
            .arg(session.created_at);
        self.run::<i64>(&cmd).map(drop)
    }

    fn get(&mut self, id: &str) -> Result<Option<Session>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key(id))
            .arg("user")
            .arg("issued_by_version")
            .arg("created_at");
        // HMGET on a missing key answers nil for every field.
        match self.run::<(Option<String>, Option<String>, Option<i64>)>(&cmd)? {
            (None, None, None) => Ok(None),
            (Some(user), Some(issued_by_version), Some(created_at)) => Ok(Some(Session {
                id: id.to_owned(),
                user,
                issued_by_version,
                created_at,
            })),
            _ => Err(StoreError(format!(
                "{} on {} lacks some of the fields user, issued_by_version, created_at",
                key(id),
                self.target
            ))),
        }
    }

    fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key(id));
        self.run::<i64>(&cmd).map(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, db: u32) -> RedisTarget {
        RedisTarget {
            host: host.to_owned(),
            port,
            db,
        }
    }

    #[test]
    fn parses_host_port_and_database() {
        for (url, want) in [
            ("redis://127.0.0.1:6380", target("127.0.0.1", 6380, 0)),
            ("redis://127.0.0.1:6380/", target("127.0.0.1", 6380, 0)),
            ("redis://cache.internal:7000/3", target("cache.internal", 7000, 3)),
            ("REDIS://localhost", target("localhost", 6379, 0)),
            ("redis://[::1]:6379/2", target("::1", 6379, 2)),
        ] {
            assert_eq!(RedisTarget::parse(url), Ok(want), "{url}");
        }
    }

    #[test]
    fn displays_the_full_url() {
        assert_eq!(
            RedisTarget::parse("redis://localhost").map(|t| t.to_string()),
            Ok("redis://localhost:6379/0".to_owned())
        );
        assert_eq!(
            RedisTarget::parse("redis://[::1]:7000/1").map(|t| t.to_string()),
            Ok("redis://[::1]:7000/1".to_owned())
        );
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        for (url, wanted) in [
            ("rediss://127.0.0.1:6379", "rediss:// (TLS) is not supported"),
            ("redis://:secret@127.0.0.1:6379", "credentials"),
            ("redis://user:secret@127.0.0.1:6379", "credentials"),
            ("redis://127.0.0.1:6379/0?protocol=resp3", "query parameters"),
            ("redis://127.0.0.1:6379/x", "database \"x\" is not a number"),
            ("redis://127.0.0.1:6379/1/2", "is not a number"),
            ("redis://127.0.0.1:notaport", "not a valid URL"),
            ("redis:///0", "names no host"),
        ] {
            match RedisTarget::parse(url) {
                Ok(t) => panic!("{url} was accepted as {t}"),
                Err(e) => assert!(e.contains(wanted) && e.contains(USAGE), "{url}: {e}"),
            }
        }
    }
}
