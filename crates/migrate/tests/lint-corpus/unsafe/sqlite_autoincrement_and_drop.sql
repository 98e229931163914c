-- dialect: sqlite
-- expect: parse-error, drop-column
CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
ALTER TABLE users DROP COLUMN nickname;
