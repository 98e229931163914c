//! Feature flags: deploy is not release. A flag decides per user which variant of a code path
//! runs, so a team ships code dark, ramps it to a share of users, and kills it in seconds
//! without a redeploy.
//!
//! This crate is the pure part: the [`Flag`] model and its validation ([`flag`]), which user
//! lands in which variant of a split, bit for bit as flagd's `fractional` ([`bucket`]), and the
//! local evaluation of a flag for an evaluation context ([`eval`]), and the OpenFeature Remote
//! Evaluation Protocol's answers as pure functions ([`ofrep`]). The HTTP listener, storing and
//! ramping live elsewhere.

pub mod bucket;
pub mod eval;
pub mod file;
pub mod flag;
pub mod hygiene;
pub mod ofrep;
pub mod ramp;

pub use eval::{evaluate, EvalError, Reason, Resolution, TARGETING_KEY};
pub use flag::{AllowList, Condition, Flag, FlagType, Op, Rule, SplitEntry};
