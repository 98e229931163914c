//! The rules, applied to one parsed statement at a time with what the file (and, through
//! [`Knowledge`], the files before it) already did: the tables it created, the lock_timeout it
//! set, the checks it validated.
//!
//! Which rules a finding may come from in a contract file or a SQLite file is decided once, in
//! [`FileLinter::hit`], from the [`Rule`]'s own flags; the checks below only say what is wrong.

use std::time::Duration;

use pg_query::protobuf::{self as pb, AlterTableType as At, ConstrType, ObjectType};
use pg_query::NodeEnum;

use super::ast::{self, inner, Table};
use super::rules::{self, Rule};
use super::Dialect;
use crate::set::{Phase, NO_TRANSACTION};

/// A finding before it has a file and a line.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub rule: &'static Rule,
    pub message: String,
    pub fix: String,
}

/// What earlier files established that a later one may rely on: the CHECK constraints that
/// prove a column not null, so that its SET NOT NULL needs no scan.
#[derive(Debug, Clone, Default)]
pub(crate) struct Knowledge {
    checks: Vec<NotNullCheck>,
}

#[derive(Debug, Clone)]
struct NotNullCheck {
    table: Table,
    /// Empty when the statement gave none (then it cannot be validated later by name).
    constraint: String,
    column: String,
    validated: bool,
    /// The phase of the file that added or validated it. All pending expand files run before
    /// any contract file, so an expand file may rely only on what other expand files did.
    usable_from: Phase,
}

impl Knowledge {
    fn proves(&self, table: &Table, column: &str, phase: Phase) -> bool {
        self.checks
            .iter()
            .any(|c| c.validated && c.column == column && c.table.same(table) && c.usable_from <= phase)
    }

    fn validate(&mut self, table: &Table, constraint: &str, phase: Phase) {
        for c in &mut self.checks {
            if c.constraint == constraint && c.table.same(table) {
                c.validated = true;
                c.usable_from = c.usable_from.max(phase);
            }
        }
    }

    fn forget(&mut self, table: &Table, constraint: &str) {
        self.checks
            .retain(|c| !(c.constraint == constraint && c.table.same(table)));
    }
}

/// What is fixed for a file.
#[derive(Debug, Clone)]
pub(crate) struct FileContext {
    pub phase: Phase,
    pub dialect: Dialect,
    /// The file carries the [`NO_TRANSACTION`] marker: each statement commits on its own.
    pub no_transaction: bool,
    /// The runner's lock_timeout; `None` or zero: none.
    pub lock_timeout: Option<Duration>,
    /// The name of this migration's contract file, for "move it there".
    pub contract_file: String,
}

/// Whether a lock_timeout is in effect at a point of the file, and why.
#[derive(Debug, Clone, Copy)]
enum Timeout {
    Runner,
    NotConfigured,
    SetInFile,
    OffInFile {
        line: usize,
    },
    /// The file set one longer than the runner's: each wait holds the app up that long.
    RaisedInFile {
        line: usize,
    },
}

/// The table locks that matter to the live app: those that block its queries while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lock {
    /// SHARE UPDATE EXCLUSIVE or weaker: reads and writes go on.
    Weak,
    /// Blocks writes (a foreign key's triggers are added under it).
    ShareRowExclusive,
    /// Blocks reads and writes.
    AccessExclusive,
}

impl Lock {
    fn name(self) -> &'static str {
        match self {
            Lock::Weak => "a weak lock",
            Lock::ShareRowExclusive => "a SHARE ROW EXCLUSIVE lock",
            Lock::AccessExclusive => "an ACCESS EXCLUSIVE lock",
        }
    }

    fn blocks(self) -> &'static str {
        match self {
            Lock::AccessExclusive => "every query",
            _ => "every write",
        }
    }
}

/// The checks of one file, statement by statement, in order.
pub(crate) struct FileLinter<'k> {
    cx: FileContext,
    knowledge: &'k mut Knowledge,
    /// Tables created earlier in this file: empty and unknown to the running version, so
    /// nothing done to them can break it or make it wait.
    new_tables: Vec<Table>,
    timeout: Timeout,
    /// Indexes an earlier `DROP INDEX ... IF EXISTS` of this file removes, so that creating
    /// them again is re-runnable.
    dropped_indexes: Vec<String>,
    /// Constraints an earlier `DROP CONSTRAINT IF EXISTS` of this file removes, likewise.
    dropped_constraints: Vec<(Table, String)>,
    /// Constraints this file added NOT VALID.
    not_valid_here: Vec<(Table, String)>,
    /// Strong locks taken by earlier statements of a transactional file, with the line of the
    /// statement that took each: held until the file commits.
    held: Vec<(Table, Lock, usize)>,
    /// The line of the statement being checked.
    line: usize,
    hits: Vec<Hit>,
}

impl<'k> FileLinter<'k> {
    pub fn new(cx: FileContext, knowledge: &'k mut Knowledge) -> FileLinter<'k> {
        let timeout = match cx.lock_timeout {
            Some(t) if !t.is_zero() => Timeout::Runner,
            _ => Timeout::NotConfigured,
        };
        FileLinter {
            cx,
            knowledge,
            new_tables: Vec::new(),
            timeout,
            dropped_indexes: Vec::new(),
            dropped_constraints: Vec::new(),
            not_valid_here: Vec::new(),
            held: Vec::new(),
            line: 0,
            hits: Vec::new(),
        }
    }

    /// The findings of one statement, which starts on `line`.
    pub fn statement(&mut self, node: &NodeEnum, line: usize) -> Vec<Hit> {
        self.line = line;
        match node {
            NodeEnum::TransactionStmt(_) => self.hit(
                &rules::TRANSACTION_CONTROL,
                "a transaction command in a migration file: the runner runs the file in its own transaction with the history row (or, with the no-transaction marker, commits each statement), so this one ends it early: a failure after it leaves part of the file applied and unrecorded".to_string(),
                format!("remove it; to run statements outside a transaction, put `{NO_TRANSACTION}` on a line of its own and make each statement re-runnable"),
            ),
            NodeEnum::UpdateStmt(s) => {
                self.data_change("UPDATE", &[Table::of(s.relation.as_ref())]);
            }
            NodeEnum::DeleteStmt(s) => {
                self.data_change("DELETE", &[Table::of(s.relation.as_ref())]);
            }
            NodeEnum::InsertStmt(s) => {
                // INSERT ... VALUES writes the rows it lists, quickly; INSERT ... SELECT may
                // copy a whole table.
                let copies = match inner(&s.select_stmt) {
                    Some(NodeEnum::SelectStmt(select)) => select.values_lists.is_empty(),
                    _ => false,
                };
                if copies {
                    self.data_change("INSERT ... SELECT", &[Table::of(s.relation.as_ref())]);
                }
            }
            NodeEnum::CreateStmt(s) => self.create_table(s),
            NodeEnum::CreateTableAsStmt(s) => {
                let table = Table::of(s.into.as_ref().and_then(|i| i.rel.as_ref()));
                self.rerun(
                    s.if_not_exists,
                    format!("CREATE TABLE {table} AS"),
                    "CREATE TABLE IF NOT EXISTS ... AS",
                );
                if !s.if_not_exists {
                    self.new_tables.push(table);
                }
            }
            NodeEnum::IndexStmt(s) => self.create_index(s),
            NodeEnum::AlterTableStmt(s) => self.alter_table(s),
            NodeEnum::RenameStmt(s) => self.rename(s),
            NodeEnum::AlterObjectSchemaStmt(s) => self.set_schema(s),
            NodeEnum::DropStmt(s) => self.drop(s),
            NodeEnum::TruncateStmt(s) => {
                let tables = range_vars(&s.relations);
                let contract = self.cx.contract_file.clone();
                let existing: Vec<Table> = tables.iter().filter(|t| !self.is_new(t)).cloned().collect();
                for table in existing {
                    self.hit(
                        &rules::DROP_TABLE,
                        format!("TRUNCATE {table} in an expand file: it removes every row the running version reads"),
                        format!("move it to {contract}, which runs after the old version is retired, or delete in batches if only some rows must go"),
                    );
                }
                self.lock(Lock::AccessExclusive, "TRUNCATE", &tables);
            }
            NodeEnum::LockStmt(s) if s.mode == pg_query::LockMode::AccessExclusiveLock as i32 => {
                let tables = range_vars(&s.relations);
                self.lock(Lock::AccessExclusive, "LOCK TABLE", &tables);
            }
            NodeEnum::VariableSetStmt(s) => self.set_variable(s, line),
            NodeEnum::ClusterStmt(s) => {
                let tables: Vec<Table> = s.relation.iter().map(|r| Table::of(Some(r))).collect();
                self.lock(Lock::AccessExclusive, "CLUSTER", &tables);
            }
            NodeEnum::VacuumStmt(s) => {
                let full = s.options.iter().any(|o| match &o.node {
                    Some(NodeEnum::DefElem(d)) => d.defname == "full",
                    _ => false,
                });
                if s.is_vacuumcmd && full {
                    let tables: Vec<Table> = s
                        .rels
                        .iter()
                        .filter_map(|r| match &r.node {
                            Some(NodeEnum::VacuumRelation(v)) => Some(Table::of(v.relation.as_ref())),
                            _ => None,
                        })
                        .collect();
                    self.lock(Lock::AccessExclusive, "VACUUM FULL", &tables);
                }
            }
            NodeEnum::RefreshMatViewStmt(s) if !s.concurrent => {
                let view = Table::of(s.relation.as_ref());
                self.lock(Lock::AccessExclusive, "REFRESH MATERIALIZED VIEW", &[view]);
            }
            NodeEnum::ReindexStmt(s) => {
                let concurrently = s.params.iter().any(|o| match &o.node {
                    Some(NodeEnum::DefElem(d)) => d.defname == "concurrently",
                    _ => false,
                });
                if concurrently {
                    self.concurrently("REINDEX CONCURRENTLY");
                } else {
                    let target = match &s.relation {
                        Some(r) => Table::of(Some(r)),
                        None => Table::from_names(std::slice::from_ref(&s.name)),
                    };
                    self.lock(Lock::AccessExclusive, "REINDEX", &[target]);
                }
            }
            _ => {}
        }
        std::mem::take(&mut self.hits)
    }

    /// Records a finding, unless its rule is not checked in this phase or dialect.
    fn hit(&mut self, rule: &'static Rule, message: String, fix: String) {
        if self.cx.phase == Phase::Contract && !rule.applies_to_contract {
            return;
        }
        if self.cx.dialect == Dialect::Sqlite && !rule.applies_to_sqlite {
            return;
        }
        self.hits.push(Hit { rule, message, fix });
    }

    /// Created by this file: the same name in the same schema as written (an unqualified name
    /// matches only an unqualified one, so `audit.users` never exempts `users`).
    fn is_new(&self, table: &Table) -> bool {
        self.new_tables.iter().any(|t| t == table)
    }

    /// `what` takes `lock` on `tables`: it must not wait without a lock_timeout, unless every
    /// table is new (nobody else queries it).
    fn lock(&mut self, lock: Lock, what: &str, tables: &[Table]) {
        if lock == Lock::Weak || tables.iter().all(|t| self.is_new(t)) {
            return;
        }
        if !self.cx.no_transaction {
            let line = self.line;
            let held: Vec<(Table, Lock, usize)> = tables
                .iter()
                .filter(|t| !self.is_new(t))
                .map(|t| (t.clone(), lock, line))
                .collect();
            self.held.extend(held);
        }
        let (why, fix) = match self.timeout {
            Timeout::Runner | Timeout::SetInFile => return,
            Timeout::NotConfigured => (
                "no lock_timeout is in effect (the runner has none configured and the file sets none before it)".to_string(),
                "put SET lock_timeout = '2s' before it, or configure the runner's lock_timeout: a statement whose lock is not granted in time fails and the migration is tried again later".to_string(),
            ),
            Timeout::RaisedInFile { line } => (
                format!("the file raised lock_timeout above the runner's at line {line}"),
                format!("remove the SET at line {line}: the runner's lock_timeout bounds how long the app's queries wait behind this statement, and it retries when the lock is not granted"),
            ),
            Timeout::OffInFile { line } => (
                format!("the file turned lock_timeout off at line {line}"),
                format!("remove the statement at line {line}, or SET lock_timeout = '2s' again before this one"),
            ),
        };
        let names = tables
            .iter()
            .map(Table::to_string)
            .collect::<Vec<_>>()
            .join(" and ");
        self.hit(
            &rules::ACCESS_EXCLUSIVE_WITHOUT_LOCK_TIMEOUT,
            format!(
                "{what} takes {} on {names}, and {why}: while it waits behind a long transaction, {} of {names} queues behind it",
                lock.name(),
                lock.blocks()
            ),
            fix,
        );
    }

    /// `what` changes rows of `tables` while this file's transaction holds a strong lock taken
    /// earlier: the app's queries of the locked tables wait for the whole change.
    fn data_change(&mut self, what: &str, tables: &[Table]) {
        let Some((locked, lock, line)) = self.held.iter().max_by_key(|(_, lock, _)| *lock).cloned() else {
            return;
        };
        let names = tables
            .iter()
            .map(Table::to_string)
            .collect::<Vec<_>>()
            .join(" and ");
        self.hit(
            &rules::DATA_CHANGE_UNDER_LOCK,
            format!(
                "{what} {names} runs in the transaction that took {} on {locked} at line {line}: the lock is held until the file commits, so {} of {locked} waits for the whole {what}",
                lock.name(),
                lock.blocks()
            ),
            format!(
                "move the {what} to a migration of its own after this one, with `{NO_TRANSACTION}` and in batches (e.g. `WHERE id BETWEEN ...`, each statement re-runnable), so each batch commits and holds its row locks briefly"
            ),
        );
    }

    fn concurrently(&mut self, what: &str) {
        if !self.cx.no_transaction {
            self.hit(
                &rules::CONCURRENTLY_IN_TRANSACTION,
                format!("{what} in a file without the no-transaction marker: PostgreSQL refuses CONCURRENTLY inside a transaction block, and the runner wraps the file in one"),
                format!("put `{NO_TRANSACTION}` on a line of its own in this file (each statement then commits on its own, so keep them re-runnable), or move the statement to a migration of its own that has the marker"),
            );
        }
    }

    /// A statement of a no-transaction file that fails, or does harm, when the file is run
    /// again from the start after a failure part-way.
    fn rerun(&mut self, ok: bool, what: String, fix: &str) {
        self.rerun_because(ok, format!("{what} fails when run a second time"), fix);
    }

    fn rerun_because(&mut self, ok: bool, problem: String, fix: &str) {
        if self.cx.no_transaction && !ok {
            self.hit(
                &rules::NOT_IDEMPOTENT_WITHOUT_TRANSACTION,
                format!("{problem}, and this file runs without a transaction: after a failure part-way, the runner repeats it from its first statement"),
                fix.to_string(),
            );
        }
    }

    fn set_variable(&mut self, s: &pb::VariableSetStmt, line: usize) {
        let kind = pb::VariableSetKind::try_from(s.kind);
        if kind == Ok(pb::VariableSetKind::VarResetAll) {
            self.timeout = Timeout::OffInFile { line };
            return;
        }
        if s.name != "lock_timeout" {
            return;
        }
        let on = match kind {
            Ok(pb::VariableSetKind::VarSetValue) => {
                ast::timeout_is_on(s.args.first().and_then(|a| a.node.as_ref()))
            }
            _ => false,
        };
        let value = s.args.first().and_then(|a| a.node.as_ref());
        let raised = match (self.cx.lock_timeout, ast::timeout_ms(value)) {
            (Some(runner), Some(ms)) if !runner.is_zero() => ms > runner.as_secs_f64() * 1000.0,
            _ => false,
        };
        self.timeout = if !on {
            Timeout::OffInFile { line }
        } else if raised {
            Timeout::RaisedInFile { line }
        } else {
            Timeout::SetInFile
        };
    }

    fn create_table(&mut self, s: &pb::CreateStmt) {
        let table = Table::of(s.relation.as_ref());
        // Foreign keys to existing tables lock those tables for the triggers they add.
        let mut referenced = Vec::new();
        let column_constraints = s.table_elts.iter().flat_map(|e| match &e.node {
            Some(NodeEnum::ColumnDef(c)) => c.constraints.as_slice(),
            _ => &[],
        });
        for node in s.constraints.iter().chain(column_constraints) {
            if let Some(NodeEnum::Constraint(c)) = &node.node {
                if c.contype == ConstrType::ConstrForeign as i32 {
                    referenced.push(Table::of(c.pktable.as_ref()));
                }
            }
        }
        referenced.retain(|t| !t.same(&table));
        self.lock(
            Lock::ShareRowExclusive,
            &format!("CREATE TABLE {table} with a foreign key"),
            &referenced,
        );
        if s.partbound.is_some() {
            let parents = range_vars(&s.inh_relations);
            self.lock(
                Lock::AccessExclusive,
                &format!("CREATE TABLE {table} PARTITION OF"),
                &parents,
            );
        }
        self.rerun(
            s.if_not_exists,
            format!("CREATE TABLE {table}"),
            "CREATE TABLE IF NOT EXISTS",
        );
        // `IF NOT EXISTS` may find the live table there: only a table this file surely created
        // is exempt from the rules.
        if !s.if_not_exists {
            self.new_tables.push(table);
        }
    }

    fn create_index(&mut self, s: &pb::IndexStmt) {
        let table = Table::of(s.relation.as_ref());
        let name = if s.idxname.is_empty() {
            format!("on {table}")
        } else {
            format!("{} ON {table}", s.idxname)
        };
        if !s.concurrent && !self.is_new(&table) {
            let marker = if self.cx.no_transaction {
                String::new()
            } else {
                format!(", in a file with `{NO_TRANSACTION}` on a line of its own")
            };
            self.hit(
                &rules::CREATE_INDEX_NOT_CONCURRENTLY,
                format!("CREATE INDEX {name} without CONCURRENTLY: writes to {table} are blocked until the whole index is built"),
                format!("CREATE INDEX CONCURRENTLY{marker}"),
            );
        }
        if s.concurrent {
            self.concurrently(&format!("CREATE INDEX CONCURRENTLY {name}"));
        }
        let dropped_first = self.dropped_indexes.contains(&s.idxname);
        if s.concurrent {
            let fix = if s.idxname.is_empty() {
                "name the index and put DROP INDEX CONCURRENTLY IF EXISTS <name> before it".to_string()
            } else {
                format!("put DROP INDEX CONCURRENTLY IF EXISTS {} before it: IF NOT EXISTS alone would keep the INVALID index an interrupted build leaves behind", s.idxname)
            };
            let problem = if s.if_not_exists {
                format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {name}, run a second time, keeps the INVALID index an interrupted build leaves behind")
            } else {
                format!("CREATE INDEX CONCURRENTLY {name} fails when run a second time")
            };
            self.rerun_because(dropped_first, problem, &fix);
        } else {
            self.rerun(
                s.if_not_exists || dropped_first,
                format!("CREATE INDEX {name}"),
                "CREATE INDEX IF NOT EXISTS",
            );
        }
    }

    fn alter_table(&mut self, s: &pb::AlterTableStmt) {
        let table = Table::of(s.relation.as_ref());
        let new = self.is_new(&table);
        let mut lock = Lock::Weak;
        let mut locked = vec![table.clone()];
        for node in &s.cmds {
            let Some(NodeEnum::AlterTableCmd(cmd)) = &node.node else {
                continue;
            };
            lock = lock.max(cmd_lock(cmd));
            if let Some(NodeEnum::Constraint(c)) = inner(&cmd.def) {
                if c.contype == ConstrType::ConstrForeign as i32 {
                    locked.push(Table::of(c.pktable.as_ref()));
                }
            }
            self.alter_command(&table, new, cmd);
        }
        let what = match pb::ObjectType::try_from(s.objtype) {
            Ok(ObjectType::ObjectIndex) => "ALTER INDEX",
            Ok(ObjectType::ObjectView) => "ALTER VIEW",
            Ok(ObjectType::ObjectMatview) => "ALTER MATERIALIZED VIEW",
            _ => "ALTER TABLE",
        };
        self.lock(lock, &format!("{what} {table}"), &locked);
    }

    fn alter_command(&mut self, table: &Table, new: bool, cmd: &pb::AlterTableCmd) {
        let Ok(kind) = At::try_from(cmd.subtype) else {
            return;
        };
        let column = format!("{table}.{}", cmd.name);
        match kind {
            At::AtAddColumn => {
                if let Some(NodeEnum::ColumnDef(def)) = inner(&cmd.def) {
                    self.add_column(table, new, def, cmd.missing_ok);
                }
            }
            At::AtColumnDefault if cmd.def.is_none() && !new => {
                let contract = self.cx.contract_file.clone();
                self.hit(
                    &rules::DROP_DEFAULT,
                    format!("DROP DEFAULT of {column} in an expand file: the running version's INSERTs that leave it out get NULL instead"),
                    format!("keep the default until the old version is retired: drop it in {contract}"),
                );
            }
            At::AtDropIdentity if !new => {
                let contract = self.cx.contract_file.clone();
                self.hit(
                    &rules::DROP_DEFAULT,
                    format!("DROP IDENTITY of {column} in an expand file: the running version's INSERTs that leave it out fail"),
                    format!("keep the identity until the old version is retired: drop it in {contract}"),
                );
            }
            At::AtDropColumn => {
                if !new {
                    let contract = self.cx.contract_file.clone();
                    self.hit(
                        &rules::DROP_COLUMN,
                        format!("DROP COLUMN {column} in an expand file: the running version still reads it"),
                        format!("stop using {column} in the new version and drop it in {contract}, which runs after the old version is retired"),
                    );
                }
                self.rerun(
                    cmd.missing_ok,
                    format!("DROP COLUMN {column}"),
                    "DROP COLUMN IF EXISTS",
                );
            }
            At::AtAlterColumnType if !new => {
                let to = match inner(&cmd.def) {
                    Some(NodeEnum::ColumnDef(def)) => ast::type_name(def.type_name.as_ref()),
                    _ => "?".to_string(),
                };
                let contract = self.cx.contract_file.clone();
                self.hit(
                        &rules::CHANGE_COLUMN_TYPE,
                        format!("ALTER COLUMN {column} TYPE {to} in an expand file: the running version reads and writes the old type, and most type changes rewrite {table} under an ACCESS EXCLUSIVE lock"),
                        format!("add a new column of type {to}, have the new version write both, backfill it in batches, and drop {column} in {contract}"),
                    );
            }
            At::AtSetNotNull if !new => self.set_not_null(table, &cmd.name, "SET NOT NULL"),
            At::AtAddConstraint => {
                if let Some(NodeEnum::Constraint(c)) = inner(&cmd.def) {
                    self.add_constraint(table, new, c);
                }
            }
            At::AtValidateConstraint => {
                self.knowledge.validate(table, &cmd.name, self.cx.phase);
                let here = self
                    .not_valid_here
                    .iter()
                    .any(|(t, c)| t.same(table) && *c == cmd.name);
                if here && !self.cx.no_transaction {
                    self.hit(
                        &rules::VALIDATE_IN_SAME_TRANSACTION,
                        format!("VALIDATE CONSTRAINT {} runs in the transaction that added it NOT VALID: the lock the ADD took on {table} is held until commit, through the whole validating scan", cmd.name),
                        format!("validate in a later migration, or in a file with `{NO_TRANSACTION}`, where the ADD commits first and VALIDATE takes only a SHARE UPDATE EXCLUSIVE lock"),
                    );
                }
            }
            At::AtDropConstraint => {
                self.knowledge.forget(table, &cmd.name);
                if cmd.missing_ok {
                    self.dropped_constraints.push((table.clone(), cmd.name.clone()));
                }
                self.rerun(
                    cmd.missing_ok,
                    format!("DROP CONSTRAINT {}", cmd.name),
                    "DROP CONSTRAINT IF EXISTS",
                );
            }
            At::AtDetachPartition => {
                if let Some(NodeEnum::PartitionCmd(p)) = inner(&cmd.def) {
                    if p.concurrent {
                        self.concurrently(&format!("ALTER TABLE {table} DETACH PARTITION CONCURRENTLY"));
                    }
                }
            }
            _ => {}
        }
    }

    fn add_column(&mut self, table: &Table, new: bool, def: &pb::ColumnDef, if_not_exists: bool) {
        let column = format!("{table}.{}", def.colname);
        let constraints: Vec<&pb::Constraint> = def
            .constraints
            .iter()
            .filter_map(|n| match &n.node {
                Some(NodeEnum::Constraint(c)) => Some(&**c),
                _ => None,
            })
            .collect();
        let has = |t: ConstrType| constraints.iter().any(|c| c.contype == t as i32);
        let default = constraints
            .iter()
            .find(|c| c.contype == ConstrType::ConstrDefault as i32)
            .and_then(|c| inner(&c.raw_expr));
        let type_word = ast::type_word(def.type_name.as_ref());
        let serial = matches!(
            type_word.as_str(),
            "serial" | "serial2" | "serial4" | "serial8" | "smallserial" | "bigserial"
        );
        let identity = has(ConstrType::ConstrIdentity) || !def.identity.is_empty();
        let stored = constraints
            .iter()
            .any(|c| c.contype == ConstrType::ConstrGenerated as i32 && c.generated_kind == "s");
        let generated = identity || has(ConstrType::ConstrGenerated) || !def.generated.is_empty();
        let not_null = def.is_not_null || has(ConstrType::ConstrNotnull) || has(ConstrType::ConstrPrimary);
        self.rerun(
            if_not_exists,
            format!("ADD COLUMN {column}"),
            "ADD COLUMN IF NOT EXISTS",
        );
        if new {
            return;
        }
        if not_null && default.is_none() && !generated && !serial {
            let contract = self.cx.contract_file.clone();
            self.hit(
                &rules::ADD_NOT_NULL_COLUMN_WITHOUT_DEFAULT,
                format!("ADD COLUMN {column} NOT NULL without a DEFAULT: the running version's INSERTs into {table} do not set {} and fail", def.colname),
                format!("give it a constant DEFAULT (PostgreSQL 11+ stores it without rewriting {table}), or add it nullable, backfill in batches, and SET NOT NULL in {contract}"),
            );
        }
        let volatile = match default.and_then(ast::volatile_call) {
            Some(call) => Some(format!("DEFAULT {call}, a volatile function,")),
            None if serial => Some(format!("type {type_word}, whose nextval() default is volatile,")),
            None if identity => Some("an identity, whose values come from a sequence,".to_string()),
            None if stored => Some("a stored generated value, computed for every row,".to_string()),
            None => None,
        };
        if let Some(why) = volatile {
            self.hit(
                &rules::VOLATILE_DEFAULT,
                format!("ADD COLUMN {column} with {why} rewrites every row of {table} under an ACCESS EXCLUSIVE lock"),
                format!("add {} without that default (nullable, or with a constant default), set the default for new rows with ALTER COLUMN ... SET DEFAULT in its own statement, and backfill existing rows in batches", def.colname),
            );
        }
        for c in &constraints {
            match ConstrType::try_from(c.contype) {
                Ok(ConstrType::ConstrForeign | ConstrType::ConstrCheck) => {
                    let what = if c.contype == ConstrType::ConstrForeign as i32 {
                        format!("REFERENCES {}", Table::of(c.pktable.as_ref()))
                    } else {
                        "CHECK".to_string()
                    };
                    self.hit(
                        &rules::CONSTRAINT_WITHOUT_NOT_VALID,
                        format!("ADD COLUMN {column} {what}: the constraint is checked against every row of {table} while the ADD holds an ACCESS EXCLUSIVE lock"),
                        format!("add the column bare, then ALTER TABLE {table} ADD CONSTRAINT ... NOT VALID, and VALIDATE CONSTRAINT in a later transaction"),
                    );
                }
                Ok(ConstrType::ConstrPrimary | ConstrType::ConstrUnique) => {
                    self.hit(
                        &rules::UNIQUE_OR_PRIMARY_KEY_WITHOUT_INDEX,
                        format!("ADD COLUMN {column} with a PRIMARY KEY or UNIQUE constraint builds its index under an ACCESS EXCLUSIVE lock on {table}"),
                        format!("add the column bare, CREATE UNIQUE INDEX CONCURRENTLY on it in a no-transaction file, then ALTER TABLE {table} ADD CONSTRAINT ... USING INDEX"),
                    );
                }
                _ => {}
            }
        }
    }

    fn set_not_null(&mut self, table: &Table, column: &str, what: &str) {
        if self.knowledge.proves(table, column, self.cx.phase) {
            return;
        }
        let check = format!("{}_{column}_not_null", table.name);
        self.hit(
            &rules::SET_NOT_NULL_WITHOUT_CHECK,
            format!("{what} on {table}.{column} scans all of {table} under an ACCESS EXCLUSIVE lock: no validated CHECK ({column} IS NOT NULL) was found earlier in this file or, for a migration set, in the files that run before it"),
            format!("ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT {check} in a later transaction; then SET NOT NULL (PostgreSQL 12+ uses the check instead of scanning) and drop the check"),
        );
    }

    fn add_constraint(&mut self, table: &Table, new: bool, c: &pb::Constraint) {
        let named = if c.conname.is_empty() {
            String::new()
        } else {
            format!(" {}", c.conname)
        };
        let dropped_first = self
            .dropped_constraints
            .iter()
            .any(|(t, name)| t.same(table) && *name == c.conname);
        let fix = if c.conname.is_empty() {
            "name the constraint and put ALTER TABLE ... DROP CONSTRAINT IF EXISTS <name> before it (there is no ADD CONSTRAINT IF NOT EXISTS)".to_string()
        } else {
            format!("put ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {} before it (there is no ADD CONSTRAINT IF NOT EXISTS), or move it to a migration that runs in a transaction", c.conname)
        };
        self.rerun(dropped_first, format!("ADD CONSTRAINT{named}"), &fix);
        match ConstrType::try_from(c.contype) {
            Ok(kind @ (ConstrType::ConstrForeign | ConstrType::ConstrCheck)) => {
                if c.skip_validation && !c.conname.is_empty() {
                    self.not_valid_here.push((table.clone(), c.conname.clone()));
                }
                if kind == ConstrType::ConstrCheck {
                    if let Some(expr) = inner(&c.raw_expr) {
                        for column in ast::not_null_column(expr) {
                            self.knowledge.checks.push(NotNullCheck {
                                table: table.clone(),
                                constraint: c.conname.clone(),
                                column,
                                validated: !c.skip_validation,
                                usable_from: self.cx.phase,
                            });
                        }
                    }
                }
                if !new && !c.skip_validation {
                    let (what, lock) = if kind == ConstrType::ConstrForeign {
                        let target = Table::of(c.pktable.as_ref());
                        (
                            format!("FOREIGN KEY to {target}"),
                            format!("a lock that blocks writes to {table} and {target}"),
                        )
                    } else {
                        (
                            "CHECK".to_string(),
                            format!("an ACCESS EXCLUSIVE lock on {table}"),
                        )
                    };
                    let name = if c.conname.is_empty() {
                        "<name>"
                    } else {
                        &c.conname
                    };
                    self.hit(
                        &rules::CONSTRAINT_WITHOUT_NOT_VALID,
                        format!("ADD CONSTRAINT{named} {what} without NOT VALID: every row of {table} is checked while holding {lock}"),
                        format!("add it NOT VALID (new rows are checked at once), then ALTER TABLE {table} VALIDATE CONSTRAINT {name} in a later transaction, which takes only a SHARE UPDATE EXCLUSIVE lock"),
                    );
                }
            }
            Ok(ConstrType::ConstrPrimary | ConstrType::ConstrUnique) if !new && c.indexname.is_empty() => {
                let kind = if c.contype == ConstrType::ConstrPrimary as i32 {
                    "PRIMARY KEY"
                } else {
                    "UNIQUE"
                };
                let columns = ast::strings(&c.keys).join(", ");
                let index = match (c.conname.is_empty(), kind) {
                    (false, _) => c.conname.clone(),
                    (true, "PRIMARY KEY") => format!("{}_pkey", table.name),
                    (true, _) => format!("{}_{}_key", table.name, ast::strings(&c.keys).join("_")),
                };
                let constraint = if c.conname.is_empty() {
                    String::new()
                } else {
                    format!(" CONSTRAINT {}", c.conname)
                };
                self.hit(
                        &rules::UNIQUE_OR_PRIMARY_KEY_WITHOUT_INDEX,
                        format!("ADD{constraint} {kind} ({columns}) on {table} builds its unique index under an ACCESS EXCLUSIVE lock: {table} can be neither read nor written until it is built"),
                        format!("CREATE UNIQUE INDEX CONCURRENTLY {index} ON {table} ({columns}) in a no-transaction file, then ALTER TABLE {table} ADD CONSTRAINT {index} {kind} USING INDEX {index}"),
                    );
            }
            Ok(ConstrType::ConstrNotnull) if !new && !c.skip_validation => {
                if let Some(column) = ast::strings(&c.keys).first() {
                    self.set_not_null(table, column, "ADD CONSTRAINT ... NOT NULL");
                }
            }
            _ => {}
        }
    }

    fn rename(&mut self, s: &pb::RenameStmt) {
        let table = Table::of(s.relation.as_ref());
        let new = self.is_new(&table);
        let contract = self.cx.contract_file.clone();
        let lock = match ObjectType::try_from(s.rename_type) {
            Ok(ObjectType::ObjectColumn) => {
                if !new {
                    self.hit(
                        &rules::RENAME_COLUMN,
                        format!("RENAME COLUMN {table}.{} TO {} in an expand file: the running version's queries of {table}.{} fail", s.subname, s.newname, s.subname),
                        format!("add {} as a new column, have the new version write both and backfill it in batches, then drop {} in {contract}", s.newname, s.subname),
                    );
                }
                Lock::AccessExclusive
            }
            Ok(
                ObjectType::ObjectTable
                | ObjectType::ObjectView
                | ObjectType::ObjectMatview
                | ObjectType::ObjectForeignTable,
            ) => {
                if new {
                    self.new_tables.push(Table {
                        schema: table.schema.clone(),
                        name: s.newname.clone(),
                    });
                } else {
                    self.hit(
                        &rules::RENAME_TABLE,
                        format!("RENAME {table} TO {} in an expand file: the running version's queries of {table} fail", s.newname),
                        format!("create {} beside {table}, have the new version write both and backfill it in batches, then drop {table} in {contract}", s.newname),
                    );
                }
                Lock::AccessExclusive
            }
            Ok(
                ObjectType::ObjectTabconstraint
                | ObjectType::ObjectTrigger
                | ObjectType::ObjectRule
                | ObjectType::ObjectPolicy,
            ) => Lock::AccessExclusive,
            _ => Lock::Weak,
        };
        if s.relation.is_some() {
            self.rerun(
                false,
                format!("RENAME of {table}"),
                "move it to a migration that runs in a transaction (a rename cannot be made re-runnable)",
            );
        }
        self.lock(lock, &format!("ALTER ... RENAME of {table}"), &[table]);
    }

    fn set_schema(&mut self, s: &pb::AlterObjectSchemaStmt) {
        if !matches!(
            ObjectType::try_from(s.object_type),
            Ok(ObjectType::ObjectTable
                | ObjectType::ObjectView
                | ObjectType::ObjectMatview
                | ObjectType::ObjectForeignTable)
        ) {
            return;
        }
        let table = Table::of(s.relation.as_ref());
        if !self.is_new(&table) {
            let contract = self.cx.contract_file.clone();
            self.hit(
                &rules::RENAME_TABLE,
                format!("SET SCHEMA {} on {table} in an expand file: the running version's queries of {table} fail", s.newschema),
                format!("move it in {contract}, which runs after the old version is retired"),
            );
        }
        self.lock(
            Lock::AccessExclusive,
            &format!("ALTER ... SET SCHEMA of {table}"),
            &[table],
        );
    }

    fn drop(&mut self, s: &pb::DropStmt) {
        let kind = ObjectType::try_from(s.remove_type).ok();
        let names = ast::object_names(&s.objects);
        let word = match kind {
            Some(ObjectType::ObjectTable) => "TABLE",
            Some(ObjectType::ObjectView) => "VIEW",
            Some(ObjectType::ObjectMatview) => "MATERIALIZED VIEW",
            Some(ObjectType::ObjectForeignTable) => "FOREIGN TABLE",
            Some(ObjectType::ObjectIndex) => "INDEX",
            Some(ObjectType::ObjectSequence) => "SEQUENCE",
            Some(ObjectType::ObjectTrigger) => "TRIGGER",
            Some(ObjectType::ObjectRule) => "RULE",
            Some(ObjectType::ObjectPolicy) => "POLICY",
            _ => "",
        };
        let shown = names.iter().map(|n| n.join(".")).collect::<Vec<_>>().join(", ");
        let relations = matches!(
            kind,
            Some(
                ObjectType::ObjectTable
                    | ObjectType::ObjectView
                    | ObjectType::ObjectMatview
                    | ObjectType::ObjectForeignTable
            )
        );
        let used_by_tables = matches!(
            kind,
            Some(
                ObjectType::ObjectSequence
                    | ObjectType::ObjectType
                    | ObjectType::ObjectDomain
                    | ObjectType::ObjectSchema
            )
        );
        if used_by_tables {
            let what = match kind {
                Some(ObjectType::ObjectSequence) => "SEQUENCE",
                Some(ObjectType::ObjectSchema) => "SCHEMA",
                Some(ObjectType::ObjectDomain) => "DOMAIN",
                _ => "TYPE",
            };
            let contract = self.cx.contract_file.clone();
            // Objects this file created are named too, but rarely dropped in the same file;
            // an object of the live schema is what the running version's columns, defaults
            // and queries use.
            self.hit(
                &rules::DROP_TABLE,
                format!("DROP {what} {shown} in an expand file: the running version's tables, defaults or queries may use it"),
                format!("move it to {contract}, which runs after the old version is retired"),
            );
        }
        if relations {
            let contract = self.cx.contract_file.clone();
            for name in &names {
                let table = Table::from_names(name);
                if !self.is_new(&table) {
                    self.hit(
                        &rules::DROP_TABLE,
                        format!("DROP {word} {table} in an expand file: the running version still reads it"),
                        format!("move it to {contract}, which runs after the old version is retired"),
                    );
                }
            }
        }
        if s.concurrent {
            self.concurrently(&format!("DROP {word} CONCURRENTLY {shown}"));
        }
        if kind == Some(ObjectType::ObjectIndex) && s.missing_ok {
            self.dropped_indexes
                .extend(names.iter().filter_map(|n| n.last().cloned()));
        }
        if !word.is_empty() {
            self.rerun(
                s.missing_ok,
                format!("DROP {word} {shown}"),
                &format!("DROP {word} IF EXISTS"),
            );
        }
        let locked: Vec<Table> = match kind {
            _ if relations || kind == Some(ObjectType::ObjectSequence) => {
                names.iter().map(|n| Table::from_names(n)).collect()
            }
            Some(ObjectType::ObjectIndex) if !s.concurrent => {
                names.iter().map(|n| Table::from_names(n)).collect()
            }
            // The trigger's, rule's or policy's table: its name is all but the last.
            Some(ObjectType::ObjectTrigger | ObjectType::ObjectRule | ObjectType::ObjectPolicy) => names
                .iter()
                .filter(|n| n.len() > 1)
                .map(|n| Table::from_names(&n[..n.len() - 1]))
                .collect(),
            _ => Vec::new(),
        };
        if !locked.is_empty() {
            self.lock(Lock::AccessExclusive, &format!("DROP {word} {shown}"), &locked);
        }
    }
}

/// The strongest lock an ALTER TABLE subcommand takes on its table (PostgreSQL's
/// `AlterTableGetLockLevel`, simplified: storage parameters are counted as weak though a few
/// take ACCESS EXCLUSIVE).
fn cmd_lock(cmd: &pb::AlterTableCmd) -> Lock {
    match At::try_from(cmd.subtype) {
        Ok(
            At::AtValidateConstraint
            | At::AtSetStatistics
            | At::AtClusterOn
            | At::AtDropCluster
            | At::AtSetRelOptions
            | At::AtResetRelOptions
            | At::AtSetOptions
            | At::AtResetOptions
            | At::AtAttachPartition,
        ) => Lock::Weak,
        Ok(At::AtDetachPartition) => match inner(&cmd.def) {
            Some(NodeEnum::PartitionCmd(p)) if p.concurrent => Lock::Weak,
            _ => Lock::AccessExclusive,
        },
        Ok(At::AtAddConstraint) => match inner(&cmd.def) {
            Some(NodeEnum::Constraint(c)) if c.contype == ConstrType::ConstrForeign as i32 => {
                Lock::ShareRowExclusive
            }
            _ => Lock::AccessExclusive,
        },
        Ok(
            At::AtAlterConstraint
            | At::AtEnableTrig
            | At::AtEnableAlwaysTrig
            | At::AtEnableReplicaTrig
            | At::AtDisableTrig
            | At::AtEnableTrigAll
            | At::AtDisableTrigAll
            | At::AtEnableTrigUser
            | At::AtDisableTrigUser,
        ) => Lock::ShareRowExclusive,
        _ => Lock::AccessExclusive,
    }
}

fn range_vars(nodes: &[pb::Node]) -> Vec<Table> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::RangeVar(r)) => Some(Table::of(Some(r))),
            _ => None,
        })
        .collect()
}
