//! What a slot runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A version and what a platform needs to run it. For the local process platform `command` is a
/// shell command line in which `{port}` is replaced by the port cutover gives each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    pub version: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
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
            env: BTreeMap::new(),
            workdir: None,
            instances: 1,
        }
    }
}
