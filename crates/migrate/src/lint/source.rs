//! A migration file cut into statements and comments by PostgreSQL's own scanner and parser, so
//! a `;` or `--` inside a string, a dollar-quoted function body or a quoted name is never taken
//! for a separator or a comment.
//!
//! The whole file is parsed first: that is the only way a statement holding `;` of its own (a
//! `BEGIN ATOMIC` function body) stays one statement. When the file does not parse, it is cut
//! at the scanner's `;` tokens and each piece parsed alone, so every statement that does parse
//! is still checked and each one that does not is reported on its own line.

use pg_query::protobuf::Token;
use pg_query::NodeEnum;

/// A `--` comment: where a silence is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Comment {
    /// Byte offsets in the file.
    pub start: usize,
    pub end: usize,
}

/// One statement of the file.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    /// Byte offsets of its first and past its last token: comments before it and the `;`
    /// after it are not part of it.
    pub start: usize,
    pub end: usize,
    /// Its tree, or the parser's complaint.
    pub parsed: Result<NodeEnum, String>,
    /// The statement on one line, comments left out, for a finding.
    pub shown: String,
}

/// A file cut up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Split {
    pub statements: Vec<Statement>,
    pub comments: Vec<Comment>,
    /// The file could not even be scanned (an unterminated string or comment): there are no
    /// statements to check.
    pub unscannable: Option<String>,
}

/// How long [`Statement::shown`] may get, in characters.
const SHOWN_CHARS: usize = 120;

/// One token, in byte offsets.
#[derive(Debug, Clone, Copy)]
struct Tok {
    start: usize,
    end: usize,
    semicolon: bool,
}

pub(crate) fn split(text: &str) -> Split {
    let scanned = match pg_query::scan_tokens(text) {
        Ok(tokens) => tokens,
        Err(e) => {
            return Split {
                unscannable: Some(message(&e)),
                ..Split::default()
            }
        }
    };
    let mut comments = Vec::new();
    let mut code = Vec::new();
    for t in &scanned {
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            continue;
        };
        match Token::try_from(t.token) {
            Ok(Token::SqlComment) => comments.push(Comment { start, end }),
            Ok(Token::CComment) => {}
            kind => code.push(Tok {
                start,
                end,
                semicolon: kind == Ok(Token::Ascii59),
            }),
        }
    }
    let statements = match pg_query::parse(text, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => parsed
            .protobuf
            .stmts
            .iter()
            .filter_map(|raw| {
                let from = usize::try_from(raw.stmt_location).ok()?;
                let len = usize::try_from(raw.stmt_len).ok()?;
                // A length of 0 means "to the end of the text".
                let to = if len == 0 { text.len() } else { from + len };
                // Tokens are in order and do not overlap: the statement's are one run of them,
                // found by binary search (a scan per statement was quadratic in the file).
                let lo = code.partition_point(|t| t.start < from);
                let hi = code.partition_point(|t| t.end <= to).max(lo);
                let tokens: Vec<Tok> = code[lo..hi].iter().filter(|t| !t.semicolon).copied().collect();
                let node = raw.stmt.as_ref().and_then(|n| n.node.clone());
                statement(text, &tokens, node.ok_or_else(|| "empty statement".to_string()))
            })
            .collect(),
        Err(_) => code
            .split(|t| t.semicolon)
            .filter_map(|tokens| {
                let (first, last) = (tokens.first()?, tokens.last()?);
                let parsed = pg_query::parse(&text[first.start..last.end], pg_query::ParserOptions::DEFAULT)
                    .map_err(|e| message(&e))
                    .and_then(|p| {
                        p.protobuf
                            .stmts
                            .into_iter()
                            .next()
                            .and_then(|raw| raw.stmt)
                            .and_then(|n| n.node)
                            .ok_or_else(|| "empty statement".to_string())
                    });
                statement(text, tokens, parsed)
            })
            .collect(),
    };
    Split {
        statements,
        comments,
        unscannable: None,
    }
}

fn statement(text: &str, tokens: &[Tok], parsed: Result<NodeEnum, String>) -> Option<Statement> {
    let (first, last) = (tokens.first()?, tokens.last()?);
    let mut shown = String::new();
    let mut previous_end = first.start;
    for t in tokens {
        if t.start > previous_end && !shown.is_empty() {
            shown.push(' ');
        }
        shown.push_str(&text[t.start..t.end]);
        previous_end = t.end;
    }
    let shown: String = shown
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let shown = if shown.chars().count() > SHOWN_CHARS {
        let cut: String = shown.chars().take(SHOWN_CHARS - 1).collect();
        format!("{}…", cut.trim_end())
    } else {
        shown
    };
    Some(Statement {
        start: first.start,
        end: last.end,
        parsed,
        shown,
    })
}

/// The parser's words without pg_query's "Invalid statement: " prefix.
fn message(error: &pg_query::Error) -> String {
    match error {
        pg_query::Error::Parse(m) | pg_query::Error::Scan(m) => m.clone(),
        other => other.to_string(),
    }
}

/// 1-based line numbers of byte offsets.
#[derive(Debug, Clone)]
pub(crate) struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    pub fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Lines { starts }
    }

    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statements_start_at_their_first_word_and_keep_semicolons_of_strings_and_bodies() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE t (a text DEFAULT ';');\n\n/* block; */ CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nSELECT 1 -- trailing\n";
        let split = split(sql);
        let lines = Lines::new(sql);
        let starts: Vec<(usize, &str)> = split
            .statements
            .iter()
            .map(|s| (lines.line(s.start), s.shown.as_str()))
            .collect();
        assert_eq!(
            starts,
            [
                (2, "CREATE TABLE t (a text DEFAULT ';')"),
                (
                    4,
                    "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql"
                ),
                (5, "SELECT 1"),
            ]
        );
        assert!(split.statements.iter().all(|s| s.parsed.is_ok()));
        assert_eq!(split.comments.len(), 2);
        assert_eq!(
            &sql[split.comments[1].start..split.comments[1].end],
            "-- trailing"
        );
    }

    #[test]
    fn a_file_that_does_not_parse_is_checked_statement_by_statement() {
        let sql =
            "CREATE TABLE a (id int);\nCREATE TABLE b (id INTEGER PRIMARY KEY AUTOINCREMENT);\nDROP TABLE a;";
        let split = split(sql);
        let lines = Lines::new(sql);
        let parsed: Vec<(usize, bool)> = split
            .statements
            .iter()
            .map(|s| (lines.line(s.start), s.parsed.is_ok()))
            .collect();
        assert_eq!(parsed, [(1, true), (2, false), (3, true)]);
        let err = split.statements[1].parsed.as_ref().unwrap_err();
        assert!(err.contains("AUTOINCREMENT"), "{err}");
    }

    #[test]
    fn an_unterminated_string_is_reported_for_the_whole_file() {
        let split = split("SELECT 'never closed;\n");
        assert!(split.statements.is_empty());
        assert!(split.unscannable.is_some());
    }

    #[test]
    fn long_statements_are_cut_and_put_on_one_line() {
        let sql = format!("ALTER TABLE t\n    ADD COLUMN {} text;", "x".repeat(200));
        let split = split(&sql);
        let shown = &split.statements[0].shown;
        assert!(shown.starts_with("ALTER TABLE t ADD COLUMN xxx"), "{shown}");
        assert!(shown.ends_with('…'));
        assert_eq!(shown.chars().count(), SHOWN_CHARS);
    }

    #[test]
    fn lines_are_one_based() {
        let lines = Lines::new("a\nb\n\nc");
        assert_eq!([0, 1, 2, 3, 4, 5].map(|o| lines.line(o)), [1, 1, 2, 2, 3, 4]);
    }
}
