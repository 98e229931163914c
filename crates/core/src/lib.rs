//! The pure domain of cutover.
//!
//! Everything in this crate is data and functions over data: no sockets, no files, no clocks read
//! from the system. The data plane (`cutover-proxy`), the server and later the rollout engine all
//! speak these types, so a route table means the same thing wherever it travels: in the admin API's
//! JSON, in the persisted state, and in the proxy's hot path.
//!
//! The central decision that lives here is how a user is assigned to a slot: a stable hash of the
//! user's key gives a bucket in `0..10000`, and the user goes to the canary slot while
//! `bucket < canary_weight_bp`. Because the comparison is against a fixed bucket, a ramp that only
//! grows never moves a user back: see [`bucket`].

pub mod bucket;
pub mod event;
pub mod histogram;
pub mod judge;
pub mod policy;
pub mod release;
pub mod rollout;
pub mod route;
pub mod sequential;
pub mod slot;
pub mod status;
pub mod time;
pub mod validate;

pub use bucket::{Bucket, Bucketer};
pub use policy::{RolloutPolicy, Step};
pub use release::{EnvMap, Redacted, ReleaseSpec, SecretLookup, SecretRef, REDACTED};
pub use route::{BasisPoints, Pool, RouteTable};
pub use slot::Slot;
pub use status::{ClientFault, TRACKED_CODES};
pub use time::{Clock, ManualClock, Timestamp};
pub use validate::{FieldError, ValidationErrors};
