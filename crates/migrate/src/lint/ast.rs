//! Small readers of pg_query's protobuf tree: names, types, expressions. Only what the checks
//! need, each tolerant of a shape it does not expect (it answers "unknown", never panics).

use std::fmt;

use pg_query::protobuf::{self as pb, a_const, BoolExprType, NullTestType};
use pg_query::{NodeEnum, NodeRef};

/// A table (or view, index) as a statement names it. Identifiers come from the parser already
/// folded to lower case unless they were quoted, so comparing strings compares names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// Empty when the statement did not qualify the name.
    pub schema: String,
    pub name: String,
}

impl Table {
    pub fn of(relation: Option<&pb::RangeVar>) -> Table {
        relation.map_or(
            Table {
                schema: String::new(),
                name: "?".to_string(),
            },
            |r| Table {
                schema: r.schemaname.clone(),
                name: r.relname.clone(),
            },
        )
    }

    /// From a qualified name as DROP lists it (`[schema, name]` or `[name]`).
    pub fn from_names(names: &[String]) -> Table {
        match names {
            [.., schema, name] => Table {
                schema: schema.clone(),
                name: name.clone(),
            },
            [name] => Table {
                schema: String::new(),
                name: name.clone(),
            },
            [] => Table {
                schema: String::new(),
                name: "?".to_string(),
            },
        }
    }

    /// The same table, as far as the text can tell: an unqualified name matches any schema
    /// (the search path decides, and the linter has no database to ask).
    pub fn same(&self, other: &Table) -> bool {
        self.name == other.name
            && (self.schema.is_empty() || other.schema.is_empty() || self.schema == other.schema)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schema.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.schema, self.name)
        }
    }
}

/// The enum node inside an optional boxed node.
pub(crate) fn inner(node: &Option<Box<pb::Node>>) -> Option<&NodeEnum> {
    node.as_ref().and_then(|n| n.node.as_ref())
}

/// The strings of a list of `String` nodes (a qualified name, a column list); other nodes are
/// left out.
pub(crate) fn strings(nodes: &[pb::Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// The qualified names of a DROP's objects: each is a `List` of `String`s.
pub(crate) fn object_names(objects: &[pb::Node]) -> Vec<Vec<String>> {
    objects
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::List(l)) => Some(strings(&l.items)),
            Some(NodeEnum::String(s)) => Some(vec![s.sval.clone()]),
            _ => None,
        })
        .collect()
}

/// A type as a person writes it: `int8`, `varchar(255)`; the `pg_catalog.` the parser adds to
/// built-in types is left out.
pub(crate) fn type_name(t: Option<&pb::TypeName>) -> String {
    let Some(t) = t else {
        return "?".to_string();
    };
    let names = strings(&t.names);
    let mut shown = match names.as_slice() {
        [schema, name] if schema == "pg_catalog" => name.clone(),
        _ => names.join("."),
    };
    let mods: Vec<String> = t
        .typmods
        .iter()
        .filter_map(|m| match &m.node {
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(a_const::Val::Ival(i)) => Some(i.ival.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    if !mods.is_empty() {
        shown.push_str(&format!("({})", mods.join(",")));
    }
    if !t.array_bounds.is_empty() {
        shown.push_str("[]");
    }
    shown
}

/// The last word of a type's name (`bigserial`, `int8`).
pub(crate) fn type_word(t: Option<&pb::TypeName>) -> String {
    t.map(|t| strings(&t.names).pop().unwrap_or_default())
        .unwrap_or_default()
}

/// Functions PostgreSQL marks volatile that appear in column defaults. A default calling one
/// is evaluated for every existing row when the column is added, so the table is rewritten
/// under ACCESS EXCLUSIVE; a non-volatile default (a constant, `now()`, `CURRENT_TIMESTAMP`,
/// which are stable) is stored once in the catalog instead (PostgreSQL 11+). The linter has no
/// catalog to ask for a function's volatility, so this list decides: a user-defined volatile
/// function is not caught.
pub(crate) const VOLATILE_FUNCTIONS: &[&str] = &[
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "gen_random_bytes",
    "clock_timestamp",
    "timeofday",
    "nextval",
];

/// The first known-volatile function `expr` calls, anywhere inside it.
pub(crate) fn volatile_call(expr: &NodeEnum) -> Option<String> {
    expr.nodes().into_iter().find_map(|(node, ..)| match node {
        NodeRef::FuncCall(f) => {
            let name = strings(&f.funcname).pop()?;
            VOLATILE_FUNCTIONS
                .contains(&name.as_str())
                .then(|| format!("{name}()"))
        }
        _ => None,
    })
}

/// The column `expr` proves not null: `col IS NOT NULL`, alone or as one side of an AND (what
/// PostgreSQL's SET NOT NULL accepts as proof from a validated CHECK).
pub(crate) fn not_null_column(expr: &NodeEnum) -> Vec<String> {
    match expr {
        NodeEnum::NullTest(t) if t.nulltesttype == NullTestType::IsNotNull as i32 => match inner(&t.arg) {
            Some(NodeEnum::ColumnRef(c)) => strings(&c.fields).pop().into_iter().collect(),
            _ => Vec::new(),
        },
        NodeEnum::BoolExpr(b) if b.boolop == BoolExprType::AndExpr as i32 => b
            .args
            .iter()
            .filter_map(|a| a.node.as_ref())
            .flat_map(not_null_column)
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a `SET lock_timeout` value turns the timeout on: anything but zero. A string value
/// is read by its leading number (`'2s'`, `'500ms'`, `'0'`); one that does not start with a
/// number would be refused by PostgreSQL, so it is taken as on rather than guessed at.
pub(crate) fn timeout_is_on(value: Option<&NodeEnum>) -> bool {
    let Some(NodeEnum::AConst(c)) = value else {
        return true;
    };
    match &c.val {
        Some(a_const::Val::Ival(i)) => i.ival != 0,
        Some(a_const::Val::Fval(f)) => leading_number(&f.fval).is_none_or(|n| n != 0.0),
        Some(a_const::Val::Sval(s)) => leading_number(&s.sval).is_none_or(|n| n != 0.0),
        _ => true,
    }
}

/// A `SET lock_timeout` value in milliseconds (PostgreSQL's units: a bare number is ms; `us`,
/// `ms`, `s`, `min`, `h`, `d`), when the text says.
pub(crate) fn timeout_ms(value: Option<&NodeEnum>) -> Option<f64> {
    let Some(NodeEnum::AConst(c)) = value else {
        return None;
    };
    let text = match &c.val {
        Some(a_const::Val::Ival(i)) => return Some(f64::from(i.ival)),
        Some(a_const::Val::Fval(f)) => f.fval.clone(),
        Some(a_const::Val::Sval(s)) => s.sval.clone(),
        _ => return None,
    };
    let number = leading_number(&text)?;
    let unit = text
        .trim()
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
        .trim();
    let factor = match unit {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    Some(number * factor)
}

fn leading_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn expr(sql: &str) -> NodeEnum {
        // The expression of `SELECT <expr>`.
        let parsed = pg_query::parse(&format!("SELECT {sql}"), 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.clone();
        let Some(NodeEnum::SelectStmt(s)) = stmt else {
            panic!("not a select")
        };
        let Some(NodeEnum::ResTarget(t)) = s.target_list[0].node.clone() else {
            panic!("no target")
        };
        t.val.unwrap().node.unwrap()
    }

    #[test]
    fn volatile_calls_are_found_inside_expressions_and_stable_ones_are_not() {
        assert_eq!(
            volatile_call(&expr("gen_random_uuid()")),
            Some("gen_random_uuid()".into())
        );
        assert_eq!(
            volatile_call(&expr("(random() * 100)::int")),
            Some("random()".into())
        );
        assert_eq!(
            volatile_call(&expr("coalesce(null, public.uuid_generate_v4())")),
            Some("uuid_generate_v4()".into())
        );
        assert_eq!(volatile_call(&expr("now()")), None);
        assert_eq!(volatile_call(&expr("CURRENT_TIMESTAMP")), None);
        assert_eq!(volatile_call(&expr("'pending'")), None);
    }

    #[test]
    fn a_not_null_proof_is_read_from_the_check_expression() {
        assert_eq!(not_null_column(&expr("email IS NOT NULL")), ["email"]);
        assert_eq!(
            not_null_column(&expr("email IS NOT NULL AND length(email) > 3")),
            ["email"]
        );
        assert!(not_null_column(&expr("email IS NULL")).is_empty());
        assert!(not_null_column(&expr("email IS NOT NULL OR name IS NOT NULL")).is_empty());
    }

    #[test]
    fn timeout_values_are_read_by_their_number() {
        let on = |v: &str| timeout_is_on(Some(&expr(v)));
        assert!(on("'2s'"));
        assert!(on("5000"));
        assert!(!on("0"));
        assert!(!on("'0'"));
        assert!(!on("'0ms'"));
        assert!(on("'1.5s'"));
    }
}
