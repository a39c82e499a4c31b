//! Where things go on the ring (docs/protocol.md §2): the position of a member's
//! vnodes and the partition of a key. Pure functions, identical in every
//! process, so that all members agree without talking.

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

use crate::error::{Error, Result};

/// How partitions are placed on members: stored with the ring when it is
/// created, like `ring_size`, and every member must be configured alike
/// (a mismatch is [`ErrorKind::PlacementMismatch`](crate::ErrorKind::PlacementMismatch)).
///
/// | | `Hashed` (default) | `Balanced` |
/// |---|---|---|
/// | owner of a partition | the next vnode clockwise (docs/protocol.md §2) | a table carried from epoch to epoch |
/// | balance (16 members × 8 vnodes) | max/mean ≈ 1.6, worst ≈ 2.8 | within one partition of the weighted share |
/// | partitions moved by a join / leave | about the minimum, on average | the minimum |
/// | a member that leaves and comes back | gets exactly its old partitions | gets most of them (affinity) |
/// | a view change costs | O(ring size) | O(ring size), plus the stored table (a few bytes per partition) written by the change |
/// | computable by a non-member | from the vnodes alone | needs the stored table ([`RingObserver`](crate::RingObserver) reads it) |
///
/// Pick `Balanced` when members' shares of the work must be even (a member
/// with 2.8× the mean is the one that falls over), `Hashed` when other
/// programs must compute owners from the vnodes alone, or a member should
/// get exactly its old partitions back after a restart. Weights: a member's
/// [`vnode_count`](crate::NodeBuilder::vnode_count) is its weight in both.
///
/// ```
/// use leasering::Placement;
///
/// assert_eq!("balanced".parse::<Placement>().unwrap(), Placement::Balanced);
/// assert_eq!(Placement::default().to_string(), "hashed");
/// assert!("round-robin".parse::<Placement>().unwrap_err().to_string().contains("round-robin"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Placement {
    /// Consistent hashing: a partition belongs to the member holding the
    /// next vnode clockwise.
    #[default]
    Hashed,
    /// Every member's share within one partition of its weighted fair
    /// share, and the minimum moved by each join and leave (see
    /// `docs/protocol.md`, "Placement and its controls, for operators").
    Balanced,
}

impl Placement {
    /// The name stored in the database and accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Hashed => "hashed",
            Placement::Balanced => "balanced",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Placement {
    type Err = Error;
    fn from_str(s: &str) -> Result<Placement> {
        match s {
            "hashed" => Ok(Placement::Hashed),
            "balanced" => Ok(Placement::Balanced),
            _ => Err(Error::invalid(
                "placement",
                format!("placement {s:?} is not one of \"hashed\", \"balanced\""),
            )),
        }
    }
}

/// 64-bit FNV-1a over the concatenation of `parts` (the `fnv` crate's
/// hasher, which is FNV-1a).
pub(crate) fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    for part in parts {
        h.write(part);
    }
    h.finish()
}

/// MurmurHash3's 64-bit finalizer: spreads FNV's weak low bits over the
/// whole word, so that `mod ring_size` does not map families of similar
/// node ids onto shifted copies of one pattern.
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The partition a key belongs to: `fmix64(fnv1a64(key)) mod ring_size`.
///
/// Every process maps a key alike, whatever its language, as long as it uses
/// the same two hash functions. A `ring_size` of 0 (never a valid ring) maps
/// everything to 0 instead of panicking.
///
/// ```
/// let p = leasering::partition_for(b"customer-42", 1024);
/// assert!(p < 1024);
/// assert_eq!(p, leasering::partition_for(b"customer-42", 1024));
/// ```
pub fn partition_for(key: &[u8], ring_size: u32) -> u32 {
    (fmix64(fnv1a64(&[key])) % ring_size.max(1) as u64) as u32
}

/// The `i`-th candidate position of a node:
/// `fmix64(fnv1a64(node_id ‖ 0x00 ‖ be_u32(i))) mod ring_size`.
pub(crate) fn candidate(node_id: &str, i: u32, ring_size: u32) -> u32 {
    let h = fnv1a64(&[node_id.as_bytes(), &[0u8], &i.to_be_bytes()]);
    (fmix64(h) % ring_size.max(1) as u64) as u32
}

/// Picks a joining node's positions: the first `count` distinct candidates
/// that are free (`taken(p)` false). Deterministic, so a restarted node gets
/// its old positions back when they are free.
///
/// Collision probing: after `4 × ring_size + 64` candidates without enough
/// free ones (a nearly full ring), the remaining positions are taken by
/// walking clockwise from the node's first candidate. Returns `None` when
/// fewer than `count` positions are free.
pub fn choose_positions(
    node_id: &str,
    count: u32,
    ring_size: u32,
    taken: impl Fn(u32) -> bool,
) -> Option<Vec<u32>> {
    let mut chosen: Vec<u32> = Vec::with_capacity(count as usize);
    let limit = ring_size as u64 * 4 + 64;
    let mut i: u64 = 0;
    while chosen.len() < count as usize && i < limit {
        let p = candidate(node_id, i as u32, ring_size);
        if !taken(p) && !chosen.contains(&p) {
            chosen.push(p);
        }
        i += 1;
    }
    if chosen.len() < count as usize {
        let start = candidate(node_id, 0, ring_size);
        for step in 0..ring_size {
            let p = ((start as u64 + step as u64) % ring_size as u64) as u32;
            if !taken(p) && !chosen.contains(&p) {
                chosen.push(p);
                if chosen.len() == count as usize {
                    break;
                }
            }
        }
    }
    (chosen.len() == count as usize).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn fnv_and_fmix_match_reference_values() {
        // FNV-1a 64 of "" and "a" (published test vectors).
        assert_eq!(fnv1a64(&[b""]), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(&[b"fo", b"o"]), fnv1a64(&[b"foo"]));
        assert_eq!(fmix64(0), 0);
        assert_ne!(fmix64(1), 1);
    }

    #[test]
    fn positions_are_deterministic_and_distinct() {
        let a = choose_positions("worker-7", 8, 1024, |_| false).unwrap();
        let b = choose_positions("worker-7", 8, 1024, |_| false).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 8);
        assert_eq!(a[0], candidate("worker-7", 0, 1024));
    }

    #[test]
    fn taken_positions_are_skipped_and_full_ring_is_none() {
        let taken: HashSet<u32> = (0..1000).collect();
        let got = choose_positions("n", 24, 1024, |p| taken.contains(&p)).unwrap();
        assert!(got.iter().all(|p| *p >= 1000));
        assert_eq!(got.len(), 24);
        assert!(choose_positions("n", 25, 1024, |p| taken.contains(&p)).is_none());
        assert_eq!(choose_positions("n", 1, 1, |_| false).unwrap(), vec![0]);
    }

    #[test]
    fn partition_for_zero_ring_size_does_not_panic() {
        assert_eq!(partition_for(b"x", 0), 0);
    }

    proptest! {
        #[test]
        fn chosen_positions_are_free_distinct_in_range(
            node in "[a-z0-9_-]{1,20}",
            count in 1u32..64,
            ring_size in 1u32..4096,
            taken_seed in any::<u64>(),
        ) {
            let taken = |p: u32| fmix64(p as u64 ^ taken_seed) % 3 == 0;
            let free = (0..ring_size).filter(|p| !taken(*p)).count() as u32;
            match choose_positions(&node, count, ring_size, taken) {
                Some(ps) => {
                    prop_assert_eq!(ps.len() as u32, count);
                    let set: HashSet<u32> = ps.iter().copied().collect();
                    prop_assert_eq!(set.len() as u32, count);
                    for p in ps { prop_assert!(p < ring_size && !taken(p)); }
                }
                None => prop_assert!(free < count),
            }
        }

        #[test]
        fn partition_for_is_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), ring_size in 1u32..100_000) {
            prop_assert!(partition_for(&key, ring_size) < ring_size);
        }
    }
}
