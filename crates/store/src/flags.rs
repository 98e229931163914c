//! Feature flags in the store: the flag set with its revision, a change to one flag, and the
//! audit record every change leaves. The rules every backend applies to a change (compare and
//! swap, revisions, what is refused) live here, so the backends cannot disagree on them.

use cutover_core::Timestamp;
use cutover_flags::Flag;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Every live flag and the revision of the set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagSet {
    /// Increases with every change of any flag; 0 before the first. A reader that saw this
    /// revision has seen every change up to it (an ETag for the whole set).
    pub revision: u64,
    /// Sorted by key (bytes, as Rust orders `str`); archived flags are not here.
    pub flags: Vec<Flag>,
}

/// One change to one flag, as the caller asks for it. The store does not validate the flag:
/// whoever accepts it from a user runs [`Flag::validate`] first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagChange {
    pub key: String,
    /// The flag as it should be, or `None` to archive it. Its `revision` is ignored: the store
    /// sets it.
    pub after: Option<Flag>,
    /// Compare and swap: when set, the change is refused with [`StoreError::Conflict`] unless the
    /// stored flag has this revision (0: the flag must not exist).
    pub expected_revision: Option<u64>,
    /// Who made the change: the name of the API token.
    pub who: String,
    /// Why, in the user's words.
    pub why: String,
    pub at: Timestamp,
}

/// A change as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagChangeRecord {
    /// Increases by one per change of any flag, from 1.
    pub seq: u64,
    pub key: String,
    pub at: Timestamp,
    pub who: String,
    pub why: String,
    /// The flag as stored before the change; `None` when the change created it.
    pub before: Option<Flag>,
    /// The flag as stored by the change, with its new revision; `None` when it was archived.
    pub after: Option<Flag>,
}

/// What a change writes, decided from what is stored.
#[derive(Debug)]
pub struct PlannedChange {
    /// The flag to store, its revision set; `None` to archive.
    pub after: Option<Flag>,
    /// The flag's revision as of this change, kept in the audit so a flag archived and created
    /// again continues from it: see [`plan_change`].
    pub revision: u64,
}

/// Checks of a change that need nothing stored; run before a backend touches anything, so a
/// refused change writes nothing.
pub fn check_change(change: &FlagChange) -> Result<(), StoreError> {
    let key = &change.key;
    if let Some(after) = &change.after {
        if &after.key != key {
            return Err(StoreError::UnstorableFlag {
                key: key.clone(),
                reason: format!(
                    "the new flag has key {:?}; a change can only write the flag it names: send it as a change of {:?}",
                    after.key, after.key
                ),
            });
        }
    }
    flag_i64(key, "the change time", change.at.as_millis())?;
    Ok(())
}

/// Applies the compare and swap and computes the new revision. `stored` is the flag as stored,
/// `last_revision` the highest revision the key ever had (archived flags included).
pub fn plan_change(
    change: &FlagChange,
    stored: Option<&Flag>,
    last_revision: u64,
) -> Result<PlannedChange, StoreError> {
    let key = &change.key;
    let found = stored.map_or(0, |f| f.revision);
    if let Some(expected) = change.expected_revision {
        if expected != found {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                found,
            });
        }
    }
    let Some(after) = &change.after else {
        let Some(stored) = stored else {
            // Archiving nothing would leave an audit record of a change that changed nothing.
            return Err(StoreError::NoSuchFlag { key: key.clone() });
        };
        return Ok(PlannedChange {
            after: None,
            revision: stored.revision,
        });
    };
    // A flag archived and created again continues from its last revision rather than starting
    // over at 1: a client holding revision 1 of the old flag must not be able to overwrite the
    // new one with a compare and swap that happens to match.
    let revision = last_revision
        .max(found)
        .checked_add(1)
        .filter(|r| i64::try_from(*r).is_ok())
        .ok_or_else(|| StoreError::UnstorableFlag {
            key: key.clone(),
            reason: format!(
                "its revision {found} cannot be increased further; the stored revision is damaged: restore the state file from a backup"
            ),
        })?;
    let mut after = after.clone();
    after.revision = revision;
    Ok(PlannedChange {
        after: Some(after),
        revision,
    })
}

/// The flag as JSON, checked to read back.
pub fn encode_flag(flag: &Flag) -> Result<String, StoreError> {
    let unstorable = |reason: String| StoreError::UnstorableFlag {
        key: flag.key.clone(),
        reason,
    };
    let json = serde_json::to_string(flag).map_err(|e| {
        unstorable(format!(
            "it does not serialise to JSON ({e}); this is a bug in cutover"
        ))
    })?;
    // A flag that saves but does not read back would make every later read of the flag set fail.
    // Parsing is the check, not equality: serde_json may read a float back one unit in the last
    // place off, which is no reason to refuse the flag.
    serde_json::from_str::<Flag>(&json).map_err(|e| {
        unstorable(format!(
            "it would not read back ({e}); check its variant values for infinite or NaN numbers"
        ))
    })?;
    Ok(json)
}

/// SQLite integers are signed; every backend refuses what SQLite could not store.
pub(crate) fn flag_i64(key: &str, what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::UnstorableFlag {
        key: key.to_string(),
        reason: format!("{what} {value} is beyond the largest storable integer; this is a bug in cutover"),
    })
}

/// A ramp as JSON, checked to read back. A verdict with a number JSON cannot hold (an infinite
/// e-value, say) would not read back; the ramp is then stored without its verdicts' details,
/// keeping every decision's sentence, rather than not at all.
pub fn encode_ramp(ramp: &cutover_flags::ramp::Ramp) -> Result<String, StoreError> {
    let unstorable = |reason: String| StoreError::UnstorableFlag {
        key: ramp.flag.clone(),
        reason,
    };
    let encode = |ramp: &cutover_flags::ramp::Ramp| -> Result<String, String> {
        let json = serde_json::to_string(ramp).map_err(|e| e.to_string())?;
        serde_json::from_str::<cutover_flags::ramp::Ramp>(&json).map_err(|e| e.to_string())?;
        Ok(json)
    };
    encode(ramp).or_else(|_| {
        let mut plain = ramp.clone();
        for d in &mut plain.decisions {
            d.verdict = None;
        }
        encode(&plain).map_err(|e| {
            unstorable(format!(
                "its ramp does not read back as JSON ({e}); this is a bug in cutover"
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn flag(key: &str) -> Flag {
        serde_json::from_value(serde_json::json!({
            "key": key,
            "type": "boolean",
            "variants": { "on": true, "off": false },
            "default_variant": "off",
            "owner": "team",
            "description": "test flag",
            "permanent": "test",
        }))
        .unwrap()
    }

    fn change(key: &str, after: Option<Flag>, expected: Option<u64>) -> FlagChange {
        FlagChange {
            key: key.into(),
            after,
            expected_revision: expected,
            who: "ci".into(),
            why: "test".into(),
            at: Timestamp(1),
        }
    }

    #[test]
    fn a_recreated_flag_continues_from_its_last_revision() {
        let plan = plan_change(&change("a", Some(flag("a")), Some(0)), None, 4).unwrap();
        assert_eq!(plan.revision, 5);
        assert_eq!(plan.after.unwrap().revision, 5);
    }

    #[test]
    fn a_revision_at_the_end_of_the_range_is_refused_not_wrapped() {
        let mut stored = flag("a");
        stored.revision = i64::MAX as u64;
        let err = plan_change(&change("a", Some(flag("a")), None), Some(&stored), 0).unwrap_err();
        assert!(matches!(err, StoreError::UnstorableFlag { .. }), "{err:?}");
    }

    #[test]
    fn a_change_time_beyond_sqlite_is_refused() {
        let mut c = change("a", Some(flag("a")), None);
        c.at = Timestamp(u64::MAX);
        assert!(matches!(check_change(&c), Err(StoreError::UnstorableFlag { .. })));
    }
}
