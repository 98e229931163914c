//! Every rule the linter knows, by its stable id. Findings point at these constants, so an id is
//! spelled once; a silence comment's id is looked up in [`RULES`].

use serde::Serialize;

/// A rule of the linter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// Stable, kebab-case; what a silence comment names.
    pub id: &'static str,
    pub summary: &'static str,
    /// Checked in files linted with [`super::Dialect::Sqlite`]. The lock rules are not: SQLite
    /// has no `CONCURRENTLY`, no `NOT VALID` and no `lock_timeout`, and a migration locks the
    /// whole database file anyway.
    pub applies_to_sqlite: bool,
    /// Checked in contract files too. The compatibility rules are not (the old version is gone
    /// when a contract runs, so it may drop and rename); the lock rules are, because the new
    /// version is live and queues behind a long lock just the same.
    pub applies_to_contract: bool,
    /// A `-- cutover:allow` comment can silence it. Not the findings about silence comments
    /// themselves.
    pub silenceable: bool,
}

const fn compatibility(id: &'static str, summary: &'static str) -> Rule {
    Rule {
        id,
        summary,
        applies_to_sqlite: true,
        applies_to_contract: false,
        silenceable: true,
    }
}

const fn locking(id: &'static str, summary: &'static str) -> Rule {
    Rule {
        id,
        summary,
        applies_to_sqlite: false,
        applies_to_contract: true,
        silenceable: true,
    }
}

pub const DROP_COLUMN: Rule = compatibility(
    "drop-column",
    "DROP COLUMN in an expand file: the running version still reads the column",
);
pub const DROP_TABLE: Rule = compatibility(
    "drop-table",
    "DROP TABLE, VIEW, SEQUENCE, TYPE or SCHEMA, or TRUNCATE, in an expand file: the running version still uses it",
);
pub const DROP_DEFAULT: Rule = compatibility(
    "drop-default",
    "ALTER COLUMN ... DROP DEFAULT or DROP IDENTITY in an expand file: the running version's INSERTs that leave the column out rely on it",
);
pub const RENAME_COLUMN: Rule = compatibility(
    "rename-column",
    "RENAME COLUMN in an expand file: the running version's queries name the old column",
);
pub const RENAME_TABLE: Rule = compatibility(
    "rename-table",
    "RENAME or SET SCHEMA of a table or view in an expand file: the running version's queries name the old one",
);
pub const ADD_NOT_NULL_COLUMN_WITHOUT_DEFAULT: Rule = compatibility(
    "add-not-null-column-without-default",
    "ADD COLUMN ... NOT NULL without a DEFAULT in an expand file: the running version's INSERTs do not set it and fail",
);
pub const CHANGE_COLUMN_TYPE: Rule = compatibility(
    "change-column-type",
    "ALTER COLUMN ... TYPE in an expand file: the running version may not read the new type, and most changes rewrite the table",
);
pub const VOLATILE_DEFAULT: Rule = locking(
    "volatile-default",
    "ADD COLUMN with a volatile default (random(), gen_random_uuid(), clock_timestamp(), nextval(), serial, identity): rewrites the table under ACCESS EXCLUSIVE",
);
pub const SET_NOT_NULL_WITHOUT_CHECK: Rule = locking(
    "set-not-null-without-check",
    "SET NOT NULL without a validated CHECK (col IS NOT NULL): scans the table under ACCESS EXCLUSIVE",
);
pub const CREATE_INDEX_NOT_CONCURRENTLY: Rule = locking(
    "create-index-not-concurrently",
    "CREATE INDEX without CONCURRENTLY on an existing table: blocks its writes for the whole build",
);
pub const CONCURRENTLY_IN_TRANSACTION: Rule = locking(
    "concurrently-in-transaction",
    "CONCURRENTLY in a file without the `-- cutover:no-transaction` marker: PostgreSQL refuses it in a transaction",
);
pub const CONSTRAINT_WITHOUT_NOT_VALID: Rule = locking(
    "constraint-without-not-valid",
    "FOREIGN KEY or CHECK added to an existing table without NOT VALID: every row is checked under a lock that blocks writes",
);
pub const VALIDATE_IN_SAME_TRANSACTION: Rule = locking(
    "validate-in-same-transaction",
    "VALIDATE CONSTRAINT in the transaction that added it NOT VALID: the ADD's lock is held through the validating scan",
);
pub const DATA_CHANGE_UNDER_LOCK: Rule = locking(
    "data-change-under-lock",
    "UPDATE, DELETE or INSERT ... SELECT in the transaction that took an ACCESS EXCLUSIVE (or SHARE ROW EXCLUSIVE) lock: the lock is held until the file commits, so the app's queries wait for the whole data change",
);
pub const TRANSACTION_CONTROL: Rule = Rule {
    id: "transaction-control",
    summary: "BEGIN, COMMIT, ROLLBACK or SAVEPOINT in a migration file: the runner owns the transaction (the history row commits with the file), so the file's own ends it early",
    applies_to_sqlite: true,
    applies_to_contract: true,
    silenceable: true,
};
pub const UNIQUE_OR_PRIMARY_KEY_WITHOUT_INDEX: Rule = locking(
    "unique-or-primary-key-without-index",
    "ADD PRIMARY KEY or UNIQUE without USING INDEX: builds the index under ACCESS EXCLUSIVE",
);
pub const ACCESS_EXCLUSIVE_WITHOUT_LOCK_TIMEOUT: Rule = locking(
    "access-exclusive-without-lock-timeout",
    "a statement taking ACCESS EXCLUSIVE (or, for a foreign key, SHARE ROW EXCLUSIVE) with no lock_timeout in effect: every query of the table queues behind its wait",
);
pub const NOT_IDEMPOTENT_WITHOUT_TRANSACTION: Rule = locking(
    "not-idempotent-without-transaction",
    "a statement of a no-transaction file that fails when run twice: after a failure part-way the runner repeats the file from its start",
);
pub const PARSE_ERROR: Rule = Rule {
    id: "parse-error",
    summary: "the statement does not parse with PostgreSQL's grammar (used for SQLite files too), so nothing else about it was checked",
    applies_to_sqlite: true,
    applies_to_contract: true,
    silenceable: true,
};
pub const SILENCE_WITHOUT_REASON: Rule = Rule {
    id: "silence-without-reason",
    summary: "a `-- cutover:allow` comment that does not say why the statement is safe",
    applies_to_sqlite: true,
    applies_to_contract: true,
    silenceable: false,
};
pub const UNKNOWN_RULE: Rule = Rule {
    id: "unknown-rule",
    summary: "a `-- cutover:allow` comment naming a rule id the linter does not know",
    applies_to_sqlite: true,
    applies_to_contract: true,
    silenceable: false,
};

/// Every rule, in the order they are documented.
pub const RULES: &[Rule] = &[
    DROP_COLUMN,
    DROP_TABLE,
    DROP_DEFAULT,
    RENAME_COLUMN,
    RENAME_TABLE,
    ADD_NOT_NULL_COLUMN_WITHOUT_DEFAULT,
    CHANGE_COLUMN_TYPE,
    VOLATILE_DEFAULT,
    SET_NOT_NULL_WITHOUT_CHECK,
    CREATE_INDEX_NOT_CONCURRENTLY,
    CONCURRENTLY_IN_TRANSACTION,
    CONSTRAINT_WITHOUT_NOT_VALID,
    VALIDATE_IN_SAME_TRANSACTION,
    DATA_CHANGE_UNDER_LOCK,
    TRANSACTION_CONTROL,
    UNIQUE_OR_PRIMARY_KEY_WITHOUT_INDEX,
    ACCESS_EXCLUSIVE_WITHOUT_LOCK_TIMEOUT,
    NOT_IDEMPOTENT_WITHOUT_TRANSACTION,
    PARSE_ERROR,
    SILENCE_WITHOUT_REASON,
    UNKNOWN_RULE,
];

/// The rule of that id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_kebab_case() {
        for (i, r) in RULES.iter().enumerate() {
            assert!(
                r.id.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                r.id
            );
            assert!(RULES[..i].iter().all(|o| o.id != r.id), "{} twice", r.id);
        }
    }
}
