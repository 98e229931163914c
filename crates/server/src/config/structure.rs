//! The structural pass over `cutover.toml`: every type error and unknown field, not just the first.
//!
//! serde stops at the first error, so a single pass reports one problem and a user with three
//! typos learns about them one run at a time. Here the document is deserialized again and again:
//! after each error the offending value is taken out of the document (the unknown key, the value
//! of the wrong type, or the table that lacks a required field) and deserialization resumes, until
//! it succeeds. Every value taken out comes with its own problem, so nothing is silently lost.
//!
//! Taking an element out of an array shifts the indices after it, so every later path is
//! translated back to the document as written before it is shown or located.

use serde_path_to_error::Segment;

use super::Config;

/// One step of a field path such as `app[0].proxy.sticky`: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// `app[0].proxy.sticky`, as fields are shown to users everywhere in cutover.
pub(super) fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The inverse of [`render`] for the paths validation produces; `None` for anything else (a key
/// with a `.` or `[` in it), which callers then leave as it is.
pub(super) fn parse_path(field: &str) -> Option<Vec<Step>> {
    let mut path = Vec::new();
    for segment in field.split('.') {
        let (key, mut rest) = match segment.find('[') {
            Some(at) => segment.split_at(at),
            None => (segment, ""),
        };
        if key.is_empty() {
            return None;
        }
        path.push(Step::Key(key.to_string()));
        while let Some(after) = rest.strip_prefix('[') {
            let (index, tail) = after.split_once(']')?;
            path.push(Step::Index(index.parse().ok()?));
            rest = tail;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(path)
}

/// What the structural pass found.
#[derive(Debug)]
pub(super) struct Structure {
    /// The configuration without the values taken out; `None` when the document could not be
    /// repaired (the error was about the document as a whole).
    pub config: Option<Config>,
    /// (field path as written, message), in the order serde met them.
    pub problems: Vec<(String, String)>,
    /// Values taken out because they were wrong, as written. Unknown keys are not among them:
    /// taking those out changes nothing the configuration says.
    damaged: Vec<Vec<Step>>,
    /// Array elements taken out: the array's path and the element's index, both as written.
    dropped: Vec<(Vec<Step>, usize)>,
}

/// More rounds than any configuration has values; each round takes one value out, so the loop
/// ends anyway, and this only bounds the work if that reasoning is ever broken.
const MAX_ROUNDS: usize = 10_000;

impl Structure {
    pub(super) fn clean(config: Config) -> Structure {
        Structure {
            config: Some(config),
            problems: Vec::new(),
            damaged: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Deserializes `document`, taking out each offending value in turn.
    pub(super) fn collect(document: toml::Table) -> Structure {
        let mut value = toml::Value::Table(document);
        let mut found = Structure {
            config: None,
            problems: Vec::new(),
            damaged: Vec::new(),
            dropped: Vec::new(),
        };
        for _ in 0..MAX_ROUNDS {
            let error = match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
                Ok(config) => {
                    found.config = Some(config);
                    return found;
                }
                Err(e) => e,
            };
            let mut path = steps(error.path());
            let message = error.inner().message().trim().to_string();
            let (take, damaging) = match classify(&message) {
                Error::UnknownField { name, expected } => {
                    let reached = reach_key(&value, &mut path, &name);
                    let shown = found.to_original(&path);
                    found
                        .problems
                        .push((render(&shown), unknown_field(&name, &expected)));
                    // Had the key not been found, the whole table goes, and that is damage.
                    (path, !reached)
                }
                Error::UnknownVariant { name, expected } => {
                    // Internally tagged enums (`[app.router] kind = ...`) report at the table:
                    // point at the key that holds the bad name.
                    reach_string(&value, &mut path, &name);
                    let shown = found.to_original(&path);
                    found
                        .problems
                        .push((render(&shown), unknown_variant(&name, &expected)));
                    (path, true)
                }
                Error::MissingField(name) => {
                    let mut field = found.to_original(&path);
                    field.push(Step::Key(name.clone()));
                    // A required field taken out for its type already has its problem.
                    if !found.damaged.contains(&field) {
                        found.problems.push((
                            render(&field),
                            "missing: this field is required; add it".to_string(),
                        ));
                    }
                    // The table cannot be built without it: take the whole table out.
                    (path, true)
                }
                Error::Other => {
                    reach_value(&value, &mut path, &message);
                    let shown = found.to_original(&path);
                    found.problems.push((render(&shown), explain(&message)));
                    (path, true)
                }
            };
            if !found.take(&mut value, take, damaging) {
                return found;
            }
        }
        found
    }

    /// Takes the value at `path` (or the nearest enclosing one that exists) out of `value`.
    /// False when nothing but the whole document could go: the pass ends there.
    fn take(&mut self, value: &mut toml::Value, mut path: Vec<Step>, damaging: bool) -> bool {
        path.truncate(existing_prefix(value, &path));
        let Some(last) = path.pop() else {
            return false;
        };
        let mut original = self.to_original(&path);
        let Some(parent) = walk_mut(value, &path) else {
            return false;
        };
        let taken = match (&last, parent) {
            (Step::Key(key), toml::Value::Table(table)) => {
                original.push(last.clone());
                table.remove(key).is_some()
            }
            (Step::Index(i), toml::Value::Array(array)) if *i < array.len() => {
                array.remove(*i);
                let index = self.original_index(&original, *i);
                self.dropped.push((original.clone(), index));
                original.push(Step::Index(index));
                true
            }
            _ => false,
        };
        if taken && damaging {
            self.damaged.push(original);
        }
        taken
    }

    /// The path as written of `path`, a path into the document with elements taken out.
    pub(super) fn to_original(&self, path: &[Step]) -> Vec<Step> {
        let mut original = Vec::with_capacity(path.len());
        for step in path {
            let step = match step {
                Step::Index(i) => Step::Index(self.original_index(&original, *i)),
                key => key.clone(),
            };
            original.push(step);
        }
        original
    }

    /// The index as written of element `index` of the array at `array` (a path as written).
    fn original_index(&self, array: &[Step], index: usize) -> usize {
        let mut gone: Vec<usize> = self
            .dropped
            .iter()
            .filter(|(a, _)| a.as_slice() == array)
            .map(|(_, i)| *i)
            .collect();
        gone.sort_unstable();
        let mut original = index;
        for g in gone {
            if g <= original {
                original += 1;
            }
        }
        original
    }

    /// Whether a semantic problem at `field` (as written) should stay unreported: its section
    /// (`server`, `admin`, `app[i]`) lost a value, so validation judged defaults the user did not
    /// write, and would report problems that are not in the file. They show once the structural
    /// problems are fixed.
    pub(super) fn masks(&self, field: &[Step]) -> bool {
        self.damaged
            .iter()
            .any(|d| d.starts_with(field) || section(d) == section(field))
    }
}

/// `server`, `admin`, `app[i]`: the part of the file a path belongs to.
fn section(path: &[Step]) -> &[Step] {
    match path {
        [Step::Key(_), Step::Index(_), ..] => &path[..2],
        [Step::Key(_), ..] => &path[..1],
        _ => path,
    }
}

fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    let mut out = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push(Step::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => out.push(Step::Key(key.clone())),
            // A key that is not a string cannot come from TOML; stop where the path is known.
            Segment::Unknown => break,
        }
    }
    out
}

enum Error {
    UnknownField { name: String, expected: Vec<String> },
    UnknownVariant { name: String, expected: Vec<String> },
    MissingField(String),
    Other,
}

/// Recognises serde's own messages (`serde::de::Error::unknown_field` and friends), which every
/// derived `Deserialize` uses.
fn classify(message: &str) -> Error {
    let quoted = backticked(message);
    let name = quoted.first().cloned().unwrap_or_default();
    let expected = quoted.iter().skip(1).cloned().collect();
    if message.starts_with("unknown field `") {
        Error::UnknownField { name, expected }
    } else if message.starts_with("unknown variant `") {
        Error::UnknownVariant { name, expected }
    } else if message.starts_with("missing field `") {
        Error::MissingField(name)
    } else {
        Error::Other
    }
}

/// The words between backticks.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn unknown_field(name: &str, expected: &[String]) -> String {
    if let Some(near) = suggest(name, expected) {
        format!("unknown field; did you mean `{near}`?")
    } else if expected.is_empty() {
        "unknown field: this table takes no fields; remove it".to_string()
    } else {
        format!(
            "unknown field; remove it, or use one of the fields of this table: {}",
            list(expected)
        )
    }
}

fn unknown_variant(name: &str, expected: &[String]) -> String {
    match suggest(name, expected) {
        Some(near) => format!("unknown value `{name}`; did you mean `{near}`?"),
        None => format!("unknown value `{name}`; use one of {}", list(expected)),
    }
}

/// serde's other messages say what was wrong and what was expected ("invalid type: string
/// \"10s\", expected u64"); a few need a word on what to write instead.
fn explain(message: &str) -> String {
    if message == "invalid socket address syntax" {
        format!(
            "{message}; write an IP address and a port, e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\" \
             or \"[::1]:8080\" (host names are not resolved)"
        )
    } else if message == "invalid type: map, expected a sequence" {
        format!("{message}; a list of tables is written [[name]], with two brackets")
    } else {
        message.to_string()
    }
}

fn list(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `name`, if it is close enough to be a typo (see
/// [`cutover_core::validate::typos`]).
fn suggest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    cutover_core::validate::typos(name, candidates.iter().map(String::as_str))
        .first()
        .copied()
}

fn walk<'a>(value: &'a toml::Value, path: &[Step]) -> Option<&'a toml::Value> {
    path.iter().try_fold(value, |v, step| match (step, v) {
        (Step::Key(k), toml::Value::Table(t)) => t.get(k),
        (Step::Index(i), toml::Value::Array(a)) => a.get(*i),
        _ => None,
    })
}

fn walk_mut<'a>(value: &'a mut toml::Value, path: &[Step]) -> Option<&'a mut toml::Value> {
    path.iter().try_fold(value, |v, step| match (step, v) {
        (Step::Key(k), toml::Value::Table(t)) => t.get_mut(k),
        (Step::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

/// How many leading steps of `path` exist in `value`.
fn existing_prefix(value: &toml::Value, path: &[Step]) -> usize {
    (0..=path.len())
        .rev()
        .find(|n| walk(value, &path[..*n]).is_some())
        .unwrap_or(0)
}

/// Extends `path` to the key `name` when the error was reported at the table holding it, as
/// serde does for tables it buffers (the internally tagged `[app.router]`). True when `path`
/// ends at that key.
fn reach_key(value: &toml::Value, path: &mut Vec<Step>, name: &str) -> bool {
    if path.last() == Some(&Step::Key(name.to_string())) {
        return true;
    }
    match walk(value, path) {
        Some(toml::Value::Table(t)) if t.contains_key(name) => {
            path.push(Step::Key(name.to_string()));
            true
        }
        _ => false,
    }
}

/// Extends `path` to the key of its table whose value is the string `name`.
fn reach_string(value: &toml::Value, path: &mut Vec<Step>, name: &str) {
    if let Some(toml::Value::Table(t)) = walk(value, path) {
        if let Some((key, _)) = t.iter().find(|(_, v)| v.as_str() == Some(name)) {
            path.push(Step::Key(key.clone()));
        }
    }
}

/// Extends `path` to the one key of its table whose value is the one serde complained about
/// ("invalid type: string \"*:80\", expected a sequence"), when the error was reported at the
/// table because serde buffered it (the internally tagged `[app.router]`). Left as it is when
/// the value is not a scalar or more than one key holds it.
fn reach_value(value: &toml::Value, path: &mut Vec<Step>, message: &str) {
    let Some(toml::Value::Table(table)) = walk(value, path) else {
        return;
    };
    let Some(unexpected) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected"))
        .map(|(unexpected, _)| unexpected)
    else {
        return;
    };
    let matches = |v: &toml::Value| match v {
        toml::Value::String(s) => unexpected == format!("string {s:?}"),
        toml::Value::Integer(i) => unexpected == format!("integer `{i}`"),
        toml::Value::Float(f) => unexpected == format!("floating point `{f:?}`"),
        toml::Value::Boolean(b) => unexpected == format!("boolean `{b}`"),
        _ => false,
    };
    let mut keys = table.iter().filter(|(_, v)| matches(v)).map(|(k, _)| k);
    if let (Some(key), None) = (keys.next(), keys.next()) {
        path.push(Step::Key(key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_and_parse_back() {
        for field in ["app", "app[0]", "app[2].routes.blue.backends[1]", "admin.listen"] {
            let path = parse_path(field).unwrap();
            assert_eq!(render(&path), field);
        }
        assert_eq!(parse_path("a[x]"), None);
        assert_eq!(parse_path("a.[0]"), None);
    }

    #[test]
    fn suggestions_are_typos_only() {
        let known = [
            "connect_timeout_ms".to_string(),
            "tls".to_string(),
            "listen".to_string(),
        ];
        assert_eq!(suggest("conect_timeout_ms", &known), Some("connect_timeout_ms"));
        assert_eq!(suggest("tsl", &known), Some("tls"));
        assert_eq!(suggest("Listen", &known), Some("listen"));
        assert_eq!(suggest("backlog", &known), None);
    }

    #[test]
    fn indices_are_translated_past_dropped_elements() {
        let mut s = Structure::clean(Config {
            server: Default::default(),
            admin: Default::default(),
            apps: Vec::new(),
            flags: None,
            store: Default::default(),
        });
        let app = vec![Step::Key("app".into())];
        s.dropped.push((app.clone(), 1));
        s.dropped.push((app.clone(), 2));
        let current = parse_path("app[1].name").unwrap();
        assert_eq!(render(&s.to_original(&current)), "app[3].name");
        assert_eq!(render(&s.to_original(&parse_path("app[0]").unwrap())), "app[0]");
    }
}
