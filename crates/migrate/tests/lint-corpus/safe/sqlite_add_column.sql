-- dialect: sqlite
-- SQLite has no CONCURRENTLY: a plain index is what there is.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    expires_at TEXT NOT NULL
);
ALTER TABLE users ADD COLUMN last_seen_at TEXT;
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX users_last_seen_at_idx ON users (last_seen_at);
