//! What a slot runs, and how its environment is kept secret.
//!
//! # Secrets
//!
//! A release's environment holds what its app needs, database passwords and API keys among
//! them, so every value is treated as a secret:
//!
//! - **Stored, never shown.** [`ReleaseSpec`]'s `Serialize` is the *stored* form: the store keeps
//!   the values, since it must start the release again after a crash. Nothing else serialises a
//!   `ReleaseSpec` as it is: every output (the admin API's status and history, the CLI, webhooks,
//!   the demo) shows a [`Redacted`] copy, in which every value of `env` is [`REDACTED`] and the
//!   names stay visible. `Redacted` has no other constructor than the one that redacts, so an
//!   output built on it cannot leak a value; a new output of a release must use it too.
//! - **Never logged.** [`EnvMap`]'s `Debug` shows names only, so neither a `{:?}` nor a tracing
//!   field of a release, a rollout or a deploy request carries a value.
//! - **Given by reference.** `secrets` maps a variable to a [`SecretRef`], `file:/abs/path` or
//!   `env:VAR`: only the reference is stored and shown. It is resolved (see
//!   [`ReleaseSpec::resolve_secrets`]) each time the release's instances start, so a rotated file
//!   takes effect at the next deploy or restart, and the value lives only in the process that
//!   starts the instances and in the instances themselves. References to cutover's own variables
//!   (`env:CUTOVER_*`, the admin token among them) are refused.
//!
//! The lookup of files and variables is injected ([`SecretLookup`]): this crate reads nothing
//! from the system.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rollout::{AppState, Rollout, SlotState};
use crate::validate::FieldError;

/// What every output shows in place of an environment value.
pub const REDACTED: &str = "<redacted>";

/// The largest secret a reference may resolve to. A secret is a password, a token or a key; a
/// larger file is a mistake (a wrong path), and a device such as `/dev/zero` never ends.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Prefix of cutover's own variables, which no reference may name.
const OWN_PREFIX: &str = "CUTOVER_";

/// A version and what a platform needs to run it. For the local process platform `command` is a
/// shell command line in which `{port}` is replaced by the port cutover gives each instance.
///
/// This is the stored form, values included: show a [`Redacted`] copy instead (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    pub version: String,
    #[serde(default)]
    pub command: String,
    /// Variables given by value.
    #[serde(default)]
    pub env: EnvMap,
    /// Variables given by reference, resolved each time instances start. A name is in `env` or
    /// here, never in both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default = "one")]
    pub instances: u32,
}

fn one() -> u32 {
    1
}

impl ReleaseSpec {
    pub fn new(version: impl Into<String>, command: impl Into<String>) -> Self {
        ReleaseSpec {
            version: version.into(),
            command: command.into(),
            env: EnvMap::new(),
            secrets: BTreeMap::new(),
            workdir: None,
            instances: 1,
        }
    }

    /// Lays a deploy's variables over these (the configured ones): a name given by the deploy
    /// replaces the configured variable of that name, whether given by value or by reference.
    /// Returns the names the deploy gave both ways, as errors of the `secrets.NAME` field.
    pub fn override_env(&mut self, env: &EnvMap, secrets: &BTreeMap<String, SecretRef>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for name in env.keys() {
            if secrets.contains_key(name) {
                errors.push(FieldError::new(
                    format!("secrets.{name}"),
                    format!("{name} is also given a value (env); give each variable either a value or a reference"),
                ));
            }
            self.secrets.remove(name);
        }
        for name in secrets.keys() {
            self.env.remove(name);
        }
        self.env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.secrets
            .extend(secrets.iter().map(|(k, r)| (k.clone(), r.clone())));
        errors
    }

    /// Every problem of the environment, for a deploy to refuse before anything starts: names
    /// an environment cannot hold, NUL bytes in values, and references that are refused or do
    /// not resolve now (a missing file, an unset variable). No message contains a value.
    pub fn check_env(&self, lookup: &dyn SecretLookup) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, value) in self.env.iter() {
            if let Some(problem) = name_problem(name) {
                errors.push(FieldError::new(
                    "env",
                    format!("variable name {name:?} {problem}"),
                ));
            }
            if value.contains('\0') {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "the value contains a NUL byte, which no environment variable can hold",
                ));
            }
        }
        for (name, reference) in &self.secrets {
            if let Some(problem) = name_problem(name) {
                errors.push(FieldError::new(
                    "secrets",
                    format!("variable name {name:?} {problem}"),
                ));
            } else if self.env.contains_key(name) {
                errors.push(FieldError::new(
                    format!("secrets.{name}"),
                    format!("{name} is also given a value (env); give each variable either a value or a reference"),
                ));
            } else if let Err(e) = reference.resolve(name, lookup) {
                errors.push(FieldError::new(
                    format!("secrets.{name}"),
                    format!("{}: {}", e.reference, e.problem),
                ));
            }
        }
        errors
    }

    /// This release with every reference replaced by its value, read through `lookup` now: what
    /// a platform starts. The result is for starting instances only; never store or show it.
    pub fn resolve_secrets(&self, lookup: &dyn SecretLookup) -> Result<ReleaseSpec, SecretError> {
        let mut resolved = self.clone();
        for (name, reference) in std::mem::take(&mut resolved.secrets) {
            let value = reference.resolve(&name, lookup)?;
            resolved.env.insert(name, value);
        }
        Ok(resolved)
    }
}

/// Why a name cannot be an environment variable's.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('=') || name.contains('\0') {
        Some("contains '=' or a NUL byte; give a name such as DB_PASSWORD")
    } else {
        None
    }
}

/// Environment variables given by value: name → value.
///
/// The map derefs to a `BTreeMap<String, String>`. Its `Debug` shows the names only, each value
/// as [`REDACTED`]; its `Serialize` is the stored form, values included (see the module
/// documentation for how outputs redact them).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvMap(BTreeMap<String, String>);

impl EnvMap {
    pub fn new() -> Self {
        EnvMap::default()
    }

    /// Replaces every value with [`REDACTED`]; the names stay.
    pub fn redact(&mut self) {
        for value in self.0.values_mut() {
            *value = REDACTED.to_string();
        }
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }

    /// `text` (an instance's log tail, say) with every value of this map that is at least
    /// [`MIN_MASKED_LEN`] long replaced by [`REDACTED`]: an app that prints its connection string
    /// when it fails must not put the password into events, webhooks and logs. Shorter values
    /// ("1", "true") are left, as masking them would mangle the text and hide nothing secret.
    pub fn mask_values(&self, text: &str) -> String {
        let mut values: Vec<&str> = self
            .0
            .values()
            .map(String::as_str)
            .filter(|v| v.chars().count() >= MIN_MASKED_LEN)
            .collect();
        // Longest first: a value that contains another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut masked = text.to_string();
        for value in values {
            if masked.contains(value) {
                masked = masked.replace(value, REDACTED);
            }
        }
        masked
    }
}

/// The shortest environment value [`EnvMap::mask_values`] masks in text.
pub const MIN_MASKED_LEN: usize = 4;

impl fmt::Debug for EnvMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hidden;
        impl fmt::Debug for Hidden {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(REDACTED)
            }
        }
        f.debug_map().entries(self.0.keys().map(|k| (k, Hidden))).finish()
    }
}

impl Deref for EnvMap {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for EnvMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<BTreeMap<String, String>> for EnvMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        EnvMap(map)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EnvMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        EnvMap(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl<'a> IntoIterator for &'a EnvMap {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for EnvMap {
    type Item = (String, String);
    type IntoIter = std::collections::btree_map::IntoIter<String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Where a secret is read when instances start. Written (and shown, and stored) as
/// `file:/absolute/path` (the file's content, one trailing newline removed) or `env:VARIABLE`
/// (a variable of the cutover server's environment).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

/// A reference that does not parse. The message never repeats the text given: a value pasted
/// where a reference belongs must not be echoed into a terminal or a CI log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefError {
    #[error("is not a secret reference; write file:/absolute/path or env:VARIABLE")]
    Syntax,
    #[error("names a relative file; give the absolute path of the file on the cutover server, e.g. file:/run/secrets/db-password")]
    RelativePath,
    #[error("names an invalid variable; give a name of letters, digits and '_' not starting with a digit, e.g. env:DB_PASSWORD")]
    VariableName,
}

impl FromStr for SecretRef {
    type Err = SecretRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("file:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(SecretRefError::RelativePath);
            }
            return Ok(SecretRef::File(path.to_path_buf()));
        }
        if let Some(var) = s.strip_prefix("env:") {
            let valid = var
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(SecretRefError::VariableName);
            }
            return Ok(SecretRef::Env(var.to_string()));
        }
        Err(SecretRefError::Syntax)
    }
}

impl TryFrom<String> for SecretRef {
    type Error = SecretRefError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Env(var) => write!(f, "env:{var}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Reads what references name: the files and the environment of the process that starts
/// instances. Implementations must not log what they read.
pub trait SecretLookup {
    /// The content of the regular file at `path`, at most [`MAX_SECRET_BYTES`] + 1 bytes of it,
    /// or why it cannot be read (including "not a regular file").
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>>;

    /// The value of environment variable `name`, `None` when it is not set.
    fn var(&self, name: &str) -> Option<OsString>;
}

/// A reference that cannot be resolved: the variable, the reference, and what is wrong with it.
/// Never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name} ({reference}): {problem}")]
pub struct SecretError {
    pub name: String,
    pub reference: SecretRef,
    pub problem: SecretProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("cutover's own variables (CUTOVER_*, its admin token among them) are never given to an app; export the secret under a name that does not start with CUTOVER_")]
    Refused,
    #[error("cannot read the file ({0}); create it, or let the user the cutover server runs as read it")]
    Unreadable(String),
    #[error("the file is empty; write the secret into it")]
    EmptyFile,
    #[error("the variable is not set or empty in the cutover server's environment; export it where `cutover serve` starts")]
    Unset,
    #[error("the secret is larger than {} KiB; reference a password, a token or a key, not a whole file", MAX_SECRET_BYTES / 1024)]
    TooLarge,
    #[error("the secret is not UTF-8 text")]
    NotUtf8,
    #[error("the secret contains a NUL byte, which no environment variable can hold")]
    Nul,
}

impl SecretRef {
    /// Whether cutover may hand what this names to an app: anything but cutover's own variables.
    pub fn is_allowed(&self) -> bool {
        match self {
            SecretRef::Env(var) => !var.to_ascii_uppercase().starts_with(OWN_PREFIX),
            SecretRef::File(_) => true,
        }
    }

    /// The value this names now, for variable `name` (which errors name).
    pub fn resolve(&self, name: &str, lookup: &dyn SecretLookup) -> Result<String, SecretError> {
        let error = |problem| SecretError {
            name: name.to_string(),
            reference: self.clone(),
            problem,
        };
        if !self.is_allowed() {
            return Err(error(SecretProblem::Refused));
        }
        let value = match self {
            SecretRef::File(path) => {
                let bytes = lookup
                    .read_file(path)
                    .map_err(|e| error(SecretProblem::Unreadable(e.to_string())))?;
                if bytes.len() > MAX_SECRET_BYTES {
                    return Err(error(SecretProblem::TooLarge));
                }
                let mut text = String::from_utf8(bytes).map_err(|_| error(SecretProblem::NotUtf8))?;
                // `echo secret > file` ends with a newline that is not part of the secret.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                if text.is_empty() {
                    return Err(error(SecretProblem::EmptyFile));
                }
                text
            }
            SecretRef::Env(var) => {
                let value = lookup.var(var).ok_or_else(|| error(SecretProblem::Unset))?;
                let text = value.into_string().map_err(|_| error(SecretProblem::NotUtf8))?;
                if text.is_empty() {
                    return Err(error(SecretProblem::Unset));
                }
                if text.len() > MAX_SECRET_BYTES {
                    return Err(error(SecretProblem::TooLarge));
                }
                text
            }
        };
        if value.contains('\0') {
            return Err(error(SecretProblem::Nul));
        }
        Ok(value)
    }
}

/// Something that holds release environments and can hide their values.
pub trait RedactEnv {
    /// Replaces every environment value with [`REDACTED`]; names and references stay.
    fn redact_env(&mut self);
}

impl RedactEnv for ReleaseSpec {
    fn redact_env(&mut self) {
        self.env.redact();
    }
}

impl RedactEnv for Rollout {
    fn redact_env(&mut self) {
        self.release.redact_env();
    }
}

impl RedactEnv for SlotState {
    fn redact_env(&mut self) {
        self.release.redact_env();
    }
}

impl RedactEnv for AppState {
    fn redact_env(&mut self) {
        self.blue.redact_env();
        self.green.redact_env();
        self.rollout.redact_env();
    }
}

impl<T: RedactEnv> RedactEnv for Option<T> {
    fn redact_env(&mut self) {
        if let Some(inner) = self {
            inner.redact_env();
        }
    }
}

impl<T: RedactEnv> RedactEnv for Vec<T> {
    fn redact_env(&mut self) {
        for inner in self {
            inner.redact_env();
        }
    }
}

/// A value as outputs show it: with every environment value replaced by [`REDACTED`]. The only
/// way to make one is [`Redacted::new`], which redacts, so whatever serialises a `Redacted`
/// cannot show a value. The JSON has the shape of `T`'s (`env` stays a map of names).
///
/// It reads back as it was written (a client of the admin API reads the values it was shown:
/// `<redacted>`); only [`Redacted::new`] redacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T: RedactEnv> Redacted<T> {
    pub fn new(mut value: T) -> Self {
        value.redact_env();
        Redacted(value)
    }
}

impl<T> Redacted<T> {
    pub fn get(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: RedactEnv> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Redacted::new(value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn values_are_masked_in_text_longest_first_and_short_ones_left() {
        let mut env = EnvMap::new();
        env.insert("DB_PASSWORD".into(), "hunter2".into());
        env.insert("DB_URL".into(), "postgres://app:hunter2@db/app".into());
        env.insert("DEBUG".into(), "1".into());
        let text = "connect postgres://app:hunter2@db/app failed; password hunter2; debug 1";
        assert_eq!(
            env.mask_values(text),
            format!("connect {REDACTED} failed; password {REDACTED}; debug 1")
        );
    }

    /// Files and variables from maps, as a test sets them up.
    #[derive(Default)]
    struct Fixed {
        files: BTreeMap<PathBuf, Vec<u8>>,
        vars: BTreeMap<String, String>,
    }

    impl SecretLookup for Fixed {
        fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"))
        }

        fn var(&self, name: &str) -> Option<OsString> {
            self.vars.get(name).map(OsString::from)
        }
    }

    fn lookup() -> Fixed {
        Fixed {
            files: BTreeMap::from([
                (PathBuf::from("/run/secrets/db"), b"s3cret-from-file\n".to_vec()),
                (PathBuf::from("/run/secrets/crlf"), b"crlf-secret\r\n".to_vec()),
                (PathBuf::from("/run/secrets/empty"), b"\n".to_vec()),
                (
                    PathBuf::from("/run/secrets/big"),
                    vec![b'x'; MAX_SECRET_BYTES + 1],
                ),
                (PathBuf::from("/run/secrets/binary"), vec![0xff, 0xfe]),
            ]),
            vars: BTreeMap::from([
                ("API_KEY".to_string(), "s3cret-from-env".to_string()),
                ("EMPTY".to_string(), String::new()),
                ("CUTOVER_ADMIN_TOKEN".to_string(), "the-admin-token".to_string()),
            ]),
        }
    }

    fn secret(s: &str) -> SecretRef {
        s.parse().unwrap()
    }

    fn release_with_secrets() -> ReleaseSpec {
        let mut release = ReleaseSpec::new("v6", "run");
        release.env.insert("DB_PASSWORD".into(), "hunter2".into());
        release.secrets.insert("API_KEY".into(), secret("env:API_KEY"));
        release
            .secrets
            .insert("DB_FILE".into(), secret("file:/run/secrets/db"));
        release
    }

    #[test]
    fn references_parse_and_print_as_written_and_never_echo_a_bad_one() {
        assert_eq!(
            secret("file:/run/secrets/db"),
            SecretRef::File("/run/secrets/db".into())
        );
        assert_eq!(secret("env:DB_PASSWORD"), SecretRef::Env("DB_PASSWORD".into()));
        for text in ["file:/run/secrets/db", "env:DB_PASSWORD", "env:_x1"] {
            assert_eq!(secret(text).to_string(), text);
            let json = serde_json::to_string(&secret(text)).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<SecretRef>(&json).unwrap(), secret(text));
        }
        for (text, error) in [
            ("hunter2", SecretRefError::Syntax),
            ("file:relative/pw", SecretRefError::RelativePath),
            ("file:", SecretRefError::RelativePath),
            ("env:", SecretRefError::VariableName),
            ("env:1X", SecretRefError::VariableName),
            ("env:A=B", SecretRefError::VariableName),
        ] {
            assert_eq!(text.parse::<SecretRef>(), Err(error.clone()), "{text}");
            let given = text.trim_start_matches("file:").trim_start_matches("env:");
            assert!(given.is_empty() || !error.to_string().contains(given), "{error}");
        }
        let e = serde_json::from_str::<SecretRef>("\"hunter2\"").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn references_resolve_through_the_lookup_and_fail_naming_the_variable_and_reference() {
        let lookup = lookup();
        let ok = |r: &str| secret(r).resolve("X", &lookup).unwrap();
        assert_eq!(ok("file:/run/secrets/db"), "s3cret-from-file");
        assert_eq!(ok("file:/run/secrets/crlf"), "crlf-secret");
        assert_eq!(ok("env:API_KEY"), "s3cret-from-env");

        for (reference, problem) in [
            (
                "file:/run/secrets/missing",
                "cannot read the file (No such file or directory)",
            ),
            ("file:/run/secrets/empty", "the file is empty"),
            ("file:/run/secrets/big", "larger than 64 KiB"),
            ("file:/run/secrets/binary", "not UTF-8"),
            ("env:NOT_SET", "not set or empty"),
            ("env:EMPTY", "not set or empty"),
            ("env:CUTOVER_ADMIN_TOKEN", "cutover's own variables"),
            ("env:cutover_admin_token", "cutover's own variables"),
        ] {
            let e = secret(reference).resolve("DB_PASSWORD", &lookup).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("secret DB_PASSWORD ({reference}): ")),
                "{text}"
            );
            assert!(text.contains(problem), "{reference}: {text}");
            assert!(!text.contains("the-admin-token"), "{text}");
        }
    }

    #[test]
    fn resolving_moves_every_reference_into_the_environment_and_leaves_the_release_alone() {
        let release = release_with_secrets();
        let resolved = release.resolve_secrets(&lookup()).unwrap();
        assert!(resolved.secrets.is_empty());
        assert_eq!(
            resolved.env.clone().into_inner(),
            BTreeMap::from([
                ("API_KEY".to_string(), "s3cret-from-env".to_string()),
                ("DB_FILE".to_string(), "s3cret-from-file".to_string()),
                ("DB_PASSWORD".to_string(), "hunter2".to_string()),
            ])
        );
        assert_eq!(release.secrets.len(), 2, "only the copy is resolved");

        let mut refused = release.clone();
        refused
            .secrets
            .insert("TOKEN".into(), secret("env:CUTOVER_ADMIN_TOKEN"));
        let e = refused.resolve_secrets(&lookup()).unwrap_err();
        assert_eq!(e.problem, SecretProblem::Refused);
        assert_eq!(e.name, "TOKEN");
    }

    #[test]
    fn the_check_of_a_deploy_names_every_bad_variable_by_field_without_values() {
        let mut release = release_with_secrets();
        release.env.insert("NUL".into(), "a\0b".into());
        release.env.insert("A=B".into(), "x".into());
        release
            .secrets
            .insert("TOKEN".into(), secret("env:CUTOVER_ADMIN_TOKEN"));
        release.secrets.insert("GONE".into(), secret("file:/nope"));
        release.secrets.insert("UNSET".into(), secret("env:NOT_SET"));
        let errors = release.check_env(&lookup());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["env", "env.NUL", "secrets.GONE", "secrets.TOKEN", "secrets.UNSET"],
            "{errors:?}"
        );
        assert!(
            errors[3].message.starts_with("env:CUTOVER_ADMIN_TOKEN: "),
            "{errors:?}"
        );
        let text = format!("{errors:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("the-admin-token"),
            "{text}"
        );
        assert!(release_with_secrets().check_env(&lookup()).is_empty());
    }

    #[test]
    fn a_deploy_replaces_configured_variables_by_name_whichever_way_given() {
        let mut release = ReleaseSpec::new("v1", "run");
        release.env.insert("A".into(), "configured".into());
        release.env.insert("B".into(), "configured".into());
        release.secrets.insert("C".into(), secret("env:C_VAR"));
        let env: EnvMap = [("C", "given"), ("D", "given")].into_iter().collect();
        let secrets = BTreeMap::from([("A".to_string(), secret("file:/run/a"))]);
        assert!(release.override_env(&env, &secrets).is_empty());
        assert_eq!(release.env.keys().collect::<Vec<_>>(), ["B", "C", "D"]);
        assert_eq!(release.secrets.keys().collect::<Vec<_>>(), ["A"]);

        let both = BTreeMap::from([("D".to_string(), secret("file:/run/d"))]);
        let errors = release.override_env(&env, &both);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "secrets.D");
    }

    #[test]
    fn debug_shows_names_and_redacted_values_while_the_stored_form_keeps_the_values() {
        let release = release_with_secrets();
        let debug = format!("{release:?} {:?}", release.env);
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("\"DB_PASSWORD\": <redacted>"), "{debug}");
        assert!(debug.contains("env:API_KEY"), "{debug}");

        let stored = serde_json::to_string(&release).unwrap();
        assert!(stored.contains("hunter2"), "the store needs the value: {stored}");
        assert_eq!(serde_json::from_str::<ReleaseSpec>(&stored).unwrap(), release);
        // Releases stored before references existed load as they were.
        let old = r#"{"version":"v1","command":"run","env":{"K":"V"},"workdir":null,"instances":2}"#;
        let old: ReleaseSpec = serde_json::from_str(old).unwrap();
        assert_eq!(old.env.get("K").map(String::as_str), Some("V"));
        assert!(old.secrets.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("secrets"));
    }

    #[test]
    fn redacted_copies_show_names_and_references_but_no_value() {
        let mut state = AppState::new("web");
        state.blue.release = Some(release_with_secrets());
        let shown = serde_json::to_value(Redacted::new(state.clone())).unwrap();
        let text = shown.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(shown["blue"]["release"]["env"]["DB_PASSWORD"], REDACTED);
        assert_eq!(
            shown["blue"]["release"]["secrets"]["DB_FILE"],
            "file:/run/secrets/db"
        );
        assert_eq!(
            state.blue.release.as_ref().unwrap().env["DB_PASSWORD"],
            "hunter2",
            "the original is untouched"
        );
    }
}
