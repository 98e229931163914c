//! Route tables: which backends serve each slot, and what share of users goes to the canary.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::bucket::{Bucket, BUCKETS};
use crate::slot::Slot;
use crate::validate::{FieldError, ValidationErrors};

/// A share of traffic in basis points: 0 is none, 10 000 is all. Basis points let a canary start
/// at 0.5 % without floating point in the hot path.
pub type BasisPoints = u16;

/// The routing state of one app. It is replaced as a whole: the proxy swaps one table for the next
/// atomically, so a request sees either the old table or the new one, never a mix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// The slot that serves everybody not in the canary.
    pub live: Slot,
    /// Share of users (by bucket) sent to the other slot, the canary. 0 means all on `live`;
    /// 10 000 means all on the canary (a promotion not yet recorded as a change of `live`).
    #[serde(default)]
    pub canary_weight_bp: BasisPoints,
    #[serde(default)]
    pub blue: Pool,
    #[serde(default)]
    pub green: Pool,
}

/// The backends of one slot and the version they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Release version running in this slot; labels metrics. Empty when the slot is idle.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub backends: Vec<SocketAddr>,
}

impl RouteTable {
    /// A table with everything on `live` and no backends anywhere.
    pub fn empty(live: Slot) -> Self {
        RouteTable {
            live,
            canary_weight_bp: 0,
            blue: Pool::default(),
            green: Pool::default(),
        }
    }

    pub fn canary(&self) -> Slot {
        self.live.other()
    }

    pub fn pool(&self, slot: Slot) -> &Pool {
        match slot {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
    }

    pub fn pool_mut(&mut self, slot: Slot) -> &mut Pool {
        match slot {
            Slot::Blue => &mut self.blue,
            Slot::Green => &mut self.green,
        }
    }

    /// Traffic share of `slot` in basis points.
    pub fn weight_of(&self, slot: Slot) -> BasisPoints {
        if slot == self.live {
            BUCKETS.saturating_sub(self.canary_weight_bp)
        } else {
            self.canary_weight_bp
        }
    }

    /// The slot a user in `bucket` is sent to.
    pub fn slot_for(&self, bucket: Bucket) -> Slot {
        if bucket.get() < self.canary_weight_bp {
            self.canary()
        } else {
            self.live
        }
    }

    /// Checks everything the proxy relies on, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        if self.canary_weight_bp > BUCKETS {
            errors.push(FieldError::new(
                "canary_weight_bp",
                format!(
                    "{} is out of range: a weight is in basis points, 0 to 10000 (10000 = 100 %)",
                    self.canary_weight_bp
                ),
            ));
        }
        for slot in Slot::ALL {
            let pool = self.pool(slot);
            if pool.backends.len() > MAX_BACKENDS_PER_SLOT {
                errors.push(FieldError::new(
                    format!("{slot}.backends"),
                    format!(
                        "{} backends; a slot holds at most {MAX_BACKENDS_PER_SLOT}: put a load balancer \
                         in front of larger fleets, or split them into apps",
                        pool.backends.len()
                    ),
                ));
                continue;
            }
            let mut seen = HashSet::new();
            for (i, addr) in pool.backends.iter().enumerate() {
                if !seen.insert(addr) {
                    errors.push(FieldError::new(
                        format!("{slot}.backends[{i}]"),
                        format!("{addr} is listed twice in this pool; list each backend once"),
                    ));
                }
                if addr.port() == 0 {
                    errors.push(FieldError::new(
                        format!("{slot}.backends[{i}]"),
                        format!("{addr} has port 0; give the port the backend listens on"),
                    ));
                }
            }
            // A slot without a release (an app not deployed yet) may hold the weight: requests
            // then fall back to the other slot or get 503. A slot with a release and traffic but
            // no backends is a mistake that would fail every request sent there.
            if self.weight_of(slot) > 0 && pool.backends.is_empty() && !pool.version.is_empty() {
                errors.push(FieldError::new(
                    format!("{slot}.backends"),
                    format!(
                        "slot {slot} runs {} with weight {} bp but has no backends; add backends or set its weight to 0",
                        pool.version,
                        self.weight_of(slot)
                    ),
                ));
            }
            if pool.version.len() > 128 || pool.version.chars().any(|c| c.is_control() || c == '"') {
                errors.push(FieldError::new(
                    format!("{slot}.version"),
                    "must be at most 128 characters with no control characters or quotes",
                ));
            }
        }
        ValidationErrors::check(errors)
    }
}

/// The most backends one slot of a route table may hold. Each costs a health-check task and a
/// connection pool in the proxy; a table of 10 000 is a mistake or an attack, not a fleet one
/// proxy on one host serves.
pub const MAX_BACKENDS_PER_SLOT: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_at_most_max_backends() {
        let mut t = table(0);
        t.green.backends = (0..=MAX_BACKENDS_PER_SLOT)
            .map(|i| SocketAddr::from(([127, 0, (i / 250) as u8, (i % 250) as u8], 8000)))
            .collect();
        let errors = t.validate().unwrap_err().to_string();
        assert!(
            errors.contains("green.backends: 1025 backends; a slot holds at most 1024"),
            "{errors}"
        );
        t.green.backends.pop();
        t.validate().unwrap();
    }

    fn table(weight: u16) -> RouteTable {
        RouteTable {
            live: Slot::Blue,
            canary_weight_bp: weight,
            blue: Pool {
                version: "v1".into(),
                backends: vec!["127.0.0.1:1000".parse().unwrap()],
            },
            green: Pool {
                version: "v2".into(),
                backends: vec!["127.0.0.1:2000".parse().unwrap()],
            },
        }
    }

    #[test]
    fn users_below_the_weight_go_to_the_canary() {
        let t = table(500);
        assert_eq!(t.slot_for(Bucket::new(0)), Slot::Green);
        assert_eq!(t.slot_for(Bucket::new(499)), Slot::Green);
        assert_eq!(t.slot_for(Bucket::new(500)), Slot::Blue);
        assert_eq!(table(0).slot_for(Bucket::new(0)), Slot::Blue);
        assert_eq!(table(10_000).slot_for(Bucket::new(9_999)), Slot::Green);
    }

    #[test]
    fn a_user_on_the_canary_stays_there_while_the_weight_grows() {
        for b in 0..BUCKETS {
            let mut on_canary = false;
            for w in (0..=BUCKETS).step_by(250) {
                let now = table(w).slot_for(Bucket::new(b)) == Slot::Green;
                assert!(!on_canary || now, "bucket {b} left the canary at weight {w}");
                on_canary = now;
            }
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut t = table(10_001);
        t.blue.backends.push("127.0.0.1:1000".parse().unwrap());
        t.green.backends.clear();
        t.green.version = "bad\"version".into();
        let errors = t.validate().unwrap_err().errors;
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "canary_weight_bp",
                "blue.backends[1]",
                "green.backends",
                "green.version"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<RouteTable>(
            r#"{"live":"blue","canary_wieght_bp":5,"blue":{},"green":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("canary_wieght_bp"), "{err}");
    }
}
