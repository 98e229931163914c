//! Which variant of a split a user gets: flagd's `fractional`, bit for bit.
//!
//! The bucketing value is the flag key followed by the targeting key. Its MurmurHash3 (x86,
//! 32-bit, seed 0), read as an unsigned number, is mapped into `[0, total weight)` by a 32-bit
//! multiply-shift, `(hash × total) >> 32`, and the variants take consecutive ranges of that
//! interval in their listed order. So a user lands in the same variant in cutover and in flagd
//! given the same weights, and raising the first variant's weight only moves users into it:
//! `bucket < w` holds for a larger `w` whenever it held for a smaller one (monotone ramps).
//!
//! Weights only matter as ratios: `(h × kW) >> 32 < kc ⇔ h × W < c × 2³²` up to the rounding
//! of the shift, which is why a split in basis points (total 10 000) and flagd's percentages
//! (total 100) put the same users in the same variants.

/// MurmurHash3 x86 32-bit with seed 0 of `first` followed by `second`, read in place: an
/// evaluation hashes flag key and targeting key without copying them together.
#[allow(clippy::expect_used)]
pub fn murmur3(first: &[u8], second: &[u8]) -> u32 {
    use std::io::Read as _;
    // Reading from in-memory slices cannot fail: the `io::Result` is the crate's generic reader
    // interface, not a failure this input can have. The crate refills its 4-byte blocks across
    // the seam of the chain, so the hash is that of the concatenation.
    murmur3::murmur3_32(&mut first.chain(second), 0).expect("reading a slice cannot fail")
}

/// The bucket of `hash` in `[0, total)`.
pub fn bucket(hash: u32, total: u64) -> u64 {
    (u64::from(hash) * total) >> 32
}

/// The index of the entry of `weights` whose range holds the bucket of `flag_key` +
/// `targeting_key`; `None` when the weights sum to zero.
pub fn pick<W>(flag_key: &str, targeting_key: &str, weights: W) -> Option<usize>
where
    W: IntoIterator<Item = u32>,
    W::IntoIter: Clone,
{
    let weights = weights.into_iter();
    let total: u64 = weights.clone().map(u64::from).sum();
    // Validation keeps totals far below this; a larger one would overflow the bucket's product.
    if total == 0 || total > crate::flag::MAX_SPLIT_TOTAL {
        return None;
    }
    let at = bucket(murmur3(flag_key.as_bytes(), targeting_key.as_bytes()), total);
    let mut end = 0u64;
    weights.into_iter().position(|w| {
        end += u64::from(w);
        at < end
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Preimages of MurmurHash3 x86-32 (seed 0) at the edges of the 32-bit range, from flagd's
    /// test bed: zero, one, the last value below the sign bit, the first with it, the maximum.
    const EDGES: [(&str, u32, u64); 5] = [
        ("ejOoVL", 0, 0),
        ("bY9fO-", 1, 0),
        ("SI7p-", 2_147_483_647, 49),
        ("6LvT0", 2_147_483_648, 50),
        ("ceQdGm", 4_294_967_295, 99),
    ];

    #[test]
    fn the_hash_is_murmur3_x86_32_seed_0_at_the_edges_of_the_range() {
        assert_eq!(murmur3(b"", b""), 0);
        for (key, hash, bucket_of_100) in EDGES {
            assert_eq!(murmur3(key.as_bytes(), b""), hash, "{key}");
            assert_eq!(bucket(hash, 100), bucket_of_100, "{key}");
            // The same key split anywhere hashes the same: flag key + targeting key.
            for at in 0..=key.len() {
                let (a, b) = key.split_at(at);
                assert_eq!(murmur3(a.as_bytes(), b.as_bytes()), hash, "{key} split at {at}");
            }
        }
        // 50/50 between "lower" and "upper", as flagd's edge flag.
        let sides = ["lower", "upper"];
        for (key, _, bucket_of_100) in EDGES {
            let side = sides[pick("", key, [50, 50]).unwrap()];
            assert_eq!(side, if bucket_of_100 < 50 { "lower" } else { "upper" }, "{key}");
        }
    }

    #[test]
    fn users_land_where_flagd_puts_them() {
        // flagd's `fractional-flag`: four suits of 25 each, bucketed by flag key + user name.
        let suits = ["clubs", "diamonds", "hearts", "spades"];
        for (name, suit) in [
            ("jack", "hearts"),
            ("queen", "spades"),
            ("ten", "clubs"),
            ("nine", "diamonds"),
            ("3", "clubs"),
        ] {
            let i = pick("fractional-flag", name, [25, 25, 25, 25]).unwrap();
            assert_eq!(suits[i], suit, "{name}");
            // In basis points (total 10 000) the same users get the same suits.
            let i = pick("fractional-flag", name, [2_500, 2_500, 2_500, 2_500]).unwrap();
            assert_eq!(suits[i], suit, "{name} in basis points");
        }
        // `fractional-flag-shorthand`: heads and tails 1:1 by flag key + targeting key.
        for (key, side) in [("jon@company.com", "heads"), ("jane@company.com", "tails")] {
            let i = pick("fractional-flag-shorthand", key, [1, 1]).unwrap();
            assert_eq!(["heads", "tails"][i], side, "{key}");
        }
    }

    #[test]
    fn weights_that_sum_to_zero_pick_nothing_and_zero_weights_are_skipped() {
        assert_eq!(pick("f", "u", [0, 0]), None);
        assert_eq!(pick("f", "u", []), None);
        for user in 0..1000 {
            assert_eq!(pick("f", &format!("u{user}"), [0, 7, 0]), Some(1));
        }
    }
}
