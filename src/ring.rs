//! The ring view: a member's immutable copy of the ring at one epoch, with
//! the owner table that makes [`RingView::owner_of`] O(1). Pure: built from
//! rows read or changes received, never does I/O.

use std::fmt;
use std::sync::Arc;

/// One membership change, as stored in the change log and applied to a view
/// to get the next epoch's view without re-reading the whole ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The epoch this change produced.
    pub epoch: u64,
    /// Members removed (left, or expired and cleaned up).
    pub removed: Vec<String>,
    /// A member added, with its positions.
    pub added: Option<(String, Vec<u32>)>,
}

/// A member as seen in a [`RingView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    node_id: Arc<str>,
    positions: Vec<u32>,
    partitions: u32,
}

impl MemberInfo {
    /// The member's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    /// Its vnode positions, ascending.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }
    /// How many partitions its arcs cover in this view.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }
}

/// An arc of the ring: the partitions `start..=end` (wrapping past
/// `ring_size − 1` to 0 when `start > end`) owned by the vnode at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingArc {
    /// First partition of the arc.
    pub start: u32,
    /// Last partition, which is the vnode's position.
    pub end: u32,
}

const NO_OWNER: u32 = u32::MAX;

/// A member's view of the ring at one epoch: who holds which positions and
/// therefore who *should* own each partition. Which partitions are *active*
/// (safe to work on) is a different question, answered by
/// [`RingNode::owned_partitions`](crate::RingNode::owned_partitions).
///
/// Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct RingView {
    inner: Arc<ViewInner>,
}

struct ViewInner {
    epoch: u64,
    ring_size: u32,
    /// (position, index into `members`), ascending by position.
    vnodes: Vec<(u32, u32)>,
    /// Ascending by node id.
    members: Vec<MemberInfo>,
    /// Per partition: index into `members`, or `NO_OWNER` on an empty ring.
    owner: Vec<u32>,
}

impl RingView {
    /// An empty ring (no members) at `epoch`.
    pub(crate) fn empty(epoch: u64, ring_size: u32) -> RingView {
        RingView::build(epoch, ring_size, std::iter::empty::<(u32, &str)>())
    }

    /// Builds a view from `(position, node id)` pairs. Positions outside the
    /// ring and duplicates (never produced by the store) are ignored.
    pub(crate) fn build<'a>(
        epoch: u64,
        ring_size: u32,
        vnodes: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> RingView {
        let mut pairs: Vec<(u32, &str)> =
            vnodes.into_iter().filter(|(p, _)| *p < ring_size).collect();
        pairs.sort_unstable();
        pairs.dedup_by_key(|(p, _)| *p);
        let mut names: Vec<&str> = pairs.iter().map(|(_, n)| *n).collect();
        names.sort_unstable();
        names.dedup();
        let mut members: Vec<MemberInfo> = names
            .iter()
            .map(|n| MemberInfo {
                node_id: Arc::from(*n),
                positions: Vec::new(),
                partitions: 0,
            })
            .collect();
        let vnodes: Vec<(u32, u32)> = pairs
            .iter()
            .map(|(p, n)| {
                let idx = names.binary_search(n).expect("name collected above") as u32;
                members[idx as usize].positions.push(*p);
                (*p, idx)
            })
            .collect();
        let mut owner = vec![NO_OWNER; ring_size as usize];
        if !vnodes.is_empty() {
            // Partition q belongs to the first vnode at a position >= q,
            // wrapping to the lowest vnode: arcs are (pred(p), p].
            let mut next = 0usize;
            for (q, slot) in owner.iter_mut().enumerate() {
                while next < vnodes.len() && (vnodes[next].0 as usize) < q {
                    next += 1;
                }
                let idx = if next < vnodes.len() {
                    vnodes[next].1
                } else {
                    vnodes[0].1
                };
                *slot = idx;
                members[idx as usize].partitions += 1;
            }
        }
        RingView {
            inner: Arc::new(ViewInner {
                epoch,
                ring_size,
                vnodes,
                members,
                owner,
            }),
        }
    }

    /// The view that follows `change`; `self` must be at `change.epoch − 1`
    /// for the result to be the ring at `change.epoch`.
    pub(crate) fn apply(&self, change: &Change) -> RingView {
        let removed = |n: &str| change.removed.iter().any(|r| r == n);
        let added_name = change.added.as_ref().map(|(n, _)| n.as_str());
        let mut pairs: Vec<(u32, &str)> = self
            .vnodes_iter()
            .filter(|(_, n)| !removed(n) && Some(*n) != added_name)
            .collect();
        if let Some((name, positions)) = &change.added {
            pairs.extend(positions.iter().map(|p| (*p, name.as_str())));
        }
        RingView::build(change.epoch, self.inner.ring_size, pairs)
    }

    fn vnodes_iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.inner
            .vnodes
            .iter()
            .map(|(p, i)| (*p, &*self.inner.members[*i as usize].node_id))
    }

    /// The epoch of this view.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Number of partitions.
    pub fn ring_size(&self) -> u32 {
        self.inner.ring_size
    }

    /// The member whose arc covers partition `p` in this view, or `None` on an
    /// empty ring or for `p >= ring_size`. O(1).
    ///
    /// This is placement, not permission: during a handoff the new owner
    /// named here may still be waiting for the old one to let go.
    pub fn owner_of(&self, p: u32) -> Option<&str> {
        let idx = *self.inner.owner.get(p as usize)?;
        if idx == NO_OWNER {
            return None;
        }
        Some(&self.inner.members[idx as usize].node_id)
    }

    /// The members, ascending by node id.
    pub fn members(&self) -> &[MemberInfo] {
        &self.inner.members
    }

    /// The member with this node id, if it is in the view.
    pub fn member(&self, node_id: &str) -> Option<&MemberInfo> {
        self.member_index(node_id)
            .map(|i| &self.inner.members[i as usize])
    }

    fn member_index(&self, node_id: &str) -> Option<u32> {
        self.inner
            .members
            .binary_search_by(|m| (*m.node_id).cmp(node_id))
            .ok()
            .map(|i| i as u32)
    }

    /// `(position, node id)` of every vnode, ascending by position.
    pub fn vnodes(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.vnodes_iter()
    }

    /// The partitions this view assigns to `node_id`, ascending.
    pub fn partitions_of(&self, node_id: &str) -> Vec<u32> {
        let Some(idx) = self.member_index(node_id) else {
            return Vec::new();
        };
        self.inner
            .owner
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == idx)
            .map(|(p, _)| p as u32)
            .collect()
    }

    /// Fills `out` (length `ring_size`) with `true` where `node_id` owns.
    pub(crate) fn ownership_mask(&self, node_id: &str, out: &mut [bool]) {
        let idx = self.member_index(node_id);
        for (slot, o) in out.iter_mut().zip(self.inner.owner.iter()) {
            *slot = idx == Some(*o);
        }
    }

    /// The arcs of the ring, in position order; empty for an empty ring, one
    /// arc covering everything for a single vnode.
    pub fn arcs(&self) -> Vec<(RingArc, &str)> {
        let v = &self.inner.vnodes;
        let n = self.inner.ring_size;
        (0..v.len())
            .map(|i| {
                let (p, idx) = v[i];
                let pred = if i == 0 { v[v.len() - 1].0 } else { v[i - 1].0 };
                let start = if v.len() == 1 {
                    (p + 1) % n
                } else {
                    (pred + 1) % n
                };
                (
                    RingArc { start, end: p },
                    &*self.inner.members[idx as usize].node_id,
                )
            })
            .collect()
    }

    /// The member that follows `node_id`'s lowest position clockwise, other
    /// than `node_id` itself: the one expected to clean it up if it crashes.
    pub(crate) fn successor_of(&self, node_id: &str) -> Option<&str> {
        let first = *self.member(node_id)?.positions.first()?;
        let v = &self.inner.vnodes;
        let start = v.partition_point(|(p, _)| *p <= first);
        (0..v.len())
            .map(|k| v[(start + k) % v.len()].1)
            .map(|idx| &*self.inner.members[idx as usize].node_id)
            .find(|n| *n != node_id)
    }
}

impl fmt::Debug for RingView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingView")
            .field("epoch", &self.inner.epoch)
            .field("ring_size", &self.inner.ring_size)
            .field("members", &self.inner.members.len())
            .field("vnodes", &self.inner.vnodes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::choose_positions;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn view_of(ring_size: u32, vnodes: &[(u32, &str)]) -> RingView {
        RingView::build(1, ring_size, vnodes.iter().copied())
    }

    #[test]
    fn single_vnode_owns_everything() {
        let v = view_of(16, &[(5, "a")]);
        assert!((0..16).all(|p| v.owner_of(p) == Some("a")));
        assert_eq!(v.arcs(), vec![(RingArc { start: 6, end: 5 }, "a")]);
        assert_eq!(v.partitions_of("a").len(), 16);
        assert_eq!(v.owner_of(16), None);
    }

    #[test]
    fn arcs_are_pred_exclusive_position_inclusive() {
        let v = view_of(16, &[(3, "a"), (10, "b")]);
        // (10, 3] wraps: 11..=15, 0..=3 -> a; (3, 10] -> b
        for p in 0..16 {
            let want = if (4..=10).contains(&p) { "b" } else { "a" };
            assert_eq!(v.owner_of(p), Some(want), "partition {p}");
        }
        assert_eq!(v.successor_of("a"), Some("b"));
        assert_eq!(v.successor_of("b"), Some("a"));
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let v = RingView::empty(0, 8);
        assert_eq!(v.owner_of(0), None);
        assert!(v.arcs().is_empty());
        assert!(v.partitions_of("x").is_empty());
    }

    #[test]
    fn apply_matches_rebuild() {
        let v = view_of(64, &[(3, "a"), (10, "b"), (40, "c")]);
        let c = Change {
            epoch: 2,
            removed: vec!["b".into()],
            added: Some(("d".into(), vec![20, 50])),
        };
        let w = v.apply(&c);
        let x = RingView::build(2, 64, [(3, "a"), (40, "c"), (20, "d"), (50, "d")]);
        assert_eq!(w.epoch(), 2);
        for p in 0..64 {
            assert_eq!(w.owner_of(p), x.owner_of(p));
        }
    }

    fn random_ring(ring_size: u32, members: &[String], vnodes: u32) -> Vec<(u32, String)> {
        let mut taken = HashSet::new();
        let mut out = Vec::new();
        for m in members {
            if let Some(ps) = choose_positions(m, vnodes, ring_size, |p| taken.contains(&p)) {
                for p in ps {
                    taken.insert(p);
                    out.push((p, m.clone()));
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn arcs_cover_every_partition_exactly_once(
            ring_size in 1u32..2048,
            n in 1usize..20,
            vnodes in 1u32..10,
            salt in any::<u32>(),
        ) {
            let members: Vec<String> = (0..n).map(|i| format!("m{salt}-{i}")).collect();
            let pairs = random_ring(ring_size, &members, vnodes);
            prop_assume!(!pairs.is_empty());
            let v = RingView::build(1, ring_size, pairs.iter().map(|(p, m)| (*p, m.as_str())));
            let mut count = vec![0u32; ring_size as usize];
            for (arc, owner) in v.arcs() {
                let mut p = arc.start;
                loop {
                    count[p as usize] += 1;
                    prop_assert_eq!(v.owner_of(p), Some(owner));
                    if p == arc.end { break; }
                    p = (p + 1) % ring_size;
                }
            }
            prop_assert!(count.iter().all(|c| *c == 1));
            // Owned sets are disjoint and their union is the ring.
            let mut seen = vec![false; ring_size as usize];
            for m in v.members() {
                let owned = v.partitions_of(m.node_id());
                prop_assert_eq!(owned.len() as u32, m.partition_count());
                for p in owned {
                    prop_assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                }
            }
            prop_assert!(seen.iter().all(|s| *s));
        }

        #[test]
        fn a_joining_vnode_takes_from_exactly_one_arc(
            ring_size in 2u32..2048,
            n in 1usize..12,
            salt in any::<u32>(),
            newpos in any::<u32>(),
        ) {
            let members: Vec<String> = (0..n).map(|i| format!("m{salt}-{i}")).collect();
            let pairs = random_ring(ring_size, &members, 4);
            prop_assume!(!pairs.is_empty());
            let before = RingView::build(1, ring_size, pairs.iter().map(|(p, m)| (*p, m.as_str())));
            let taken: HashSet<u32> = pairs.iter().map(|(p, _)| *p).collect();
            let newpos = newpos % ring_size;
            prop_assume!(!taken.contains(&newpos));
            let after = before.apply(&Change { epoch: 2, removed: vec![], added: Some(("joiner".into(), vec![newpos])) });
            // Every partition that changed owner went to the joiner, and all of
            // them came from the same vnode: the arc that contained newpos.
            let mut from: HashMap<u32, ()> = HashMap::new();
            let succ = before.arcs().into_iter().find(|(a, _)| {
                if a.start <= a.end { (a.start..=a.end).contains(&newpos) } else { newpos >= a.start || newpos <= a.end }
            }).map(|(a, _)| a.end).unwrap();
            for p in 0..ring_size {
                if before.owner_of(p) != after.owner_of(p) {
                    prop_assert_eq!(after.owner_of(p), Some("joiner"));
                    // p was in the arc ending at `succ`
                    let arc = before.arcs().into_iter().find(|(a, _)| a.end == succ).unwrap().0;
                    let inside = if arc.start <= arc.end { (arc.start..=arc.end).contains(&p) } else { p >= arc.start || p <= arc.end };
                    prop_assert!(inside);
                    from.insert(succ, ());
                }
            }
            prop_assert!(from.len() <= 1);
            prop_assert_eq!(after.owner_of(newpos), Some("joiner"));
        }
    }
}
