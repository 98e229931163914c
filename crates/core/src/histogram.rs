//! The latency histogram layout shared by the proxy (which fills it) and the judge (which reads it).
//!
//! Log-linear over microseconds: values below 16 µs each have their own bucket, above that every
//! power of two is split into 16 equal sub-buckets, so any value is known to within 1/16 (6.25 %)
//! of itself. Buckets run to 2^26 µs (about 67 s); longer values land in the last bucket.

const SUB_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Highest tracked power of two (2^26 µs ≈ 67 s).
const MAX_MSB: u32 = 26;
/// Number of buckets.
pub const LATENCY_BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as usize) * SUB_BUCKETS as usize;

/// Index of the bucket holding `micros`.
pub fn bucket_index(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let msb = 63 - micros.leading_zeros();
    if msb > MAX_MSB {
        return LATENCY_BUCKETS - 1;
    }
    let sub = (micros >> (msb - SUB_BITS)) & (SUB_BUCKETS - 1);
    ((msb - SUB_BITS + 1) as u64 * SUB_BUCKETS + sub) as usize
}

/// Exclusive upper bound, in microseconds, of bucket `index`.
pub fn bucket_upper_micros(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index + 1;
    }
    let msb = index / SUB_BUCKETS + u64::from(SUB_BITS) - 1;
    let sub = index % SUB_BUCKETS;
    (SUB_BUCKETS + sub + 1) << (msb - u64::from(SUB_BITS))
}

/// The index of the bucket holding the `q`-quantile of `buckets`; `None` when empty.
pub fn quantile_bucket(buckets: &[u64], q: f64) -> Option<usize> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, c) in buckets.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(i);
        }
    }
    None
}

/// Requests in buckets above `index` (slower than the upper bound of bucket `index`).
pub fn count_above(buckets: &[u64], index: usize) -> u64 {
    buckets.iter().skip(index + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_a_sixteenth() {
        for micros in [0u64, 1, 15, 16, 17, 100, 999, 1_000, 123_456, 60_000_000] {
            let i = bucket_index(micros);
            let upper = bucket_upper_micros(i);
            assert!(upper > micros, "{micros} in bucket {i} with upper {upper}");
            let lower = if i == 0 { 0 } else { bucket_upper_micros(i - 1) };
            assert!(lower <= micros, "{micros} in bucket {i} with lower {lower}");
            assert!((upper - lower) as f64 <= (micros.max(16) as f64) / 16.0 + 1.0);
        }
        assert_eq!(bucket_index(u64::MAX), LATENCY_BUCKETS - 1);
        assert!(bucket_upper_micros(LATENCY_BUCKETS - 2) > 60_000_000);
    }
}
