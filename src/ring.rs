//! The ring view: a member's immutable copy of the ring at one epoch, with
//! the owner table that makes [`RingView::owner_of`] O(1). Pure: built from
//! rows read or changes received, never does I/O.

use std::fmt;
use std::sync::Arc;

use crate::balanced::{MemberAttrs, Table};
use crate::Placement;

/// One membership change, as stored in the change log and carried by
/// notifications, applied to a view ([`RingView::apply`]) to get the next
/// epoch's view without re-reading the whole ring.
///
/// Build one with `..Default::default()` for the fields you do not set:
/// fields may be added (as eligibility was).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The epoch this change produced.
    pub epoch: u64,
    /// Members removed (left, or expired and cleaned up).
    pub removed: Vec<String>,
    /// A member added, with its positions.
    pub added: Option<(String, Vec<u32>)>,
    /// The added member's [metadata](MemberInfo::metadata), if it has any.
    pub added_metadata: Option<String>,
    /// Whether the added member joined ineligible (not ready, or
    /// cordoned): a live member that owns nothing. `false` for the usual
    /// eligible join.
    pub added_ineligible: bool,
    /// Members that became [eligible](MemberInfo::is_eligible) (made ready,
    /// or uncordoned).
    pub eligible: Vec<String>,
    /// Members that became ineligible (made unready, or cordoned): they stay
    /// members and give up their partitions.
    pub ineligible: Vec<String>,
    /// The added member's [capacity](MemberInfo::capacity), if it declared
    /// one.
    pub added_capacity: Option<u32>,
    /// The added member's [zone](MemberInfo::zone), if it declared one.
    pub added_zone: Option<String>,
    /// Partitions an operator pinned, with the node each is pinned to
    /// ([`pin`](crate::pin)).
    pub pinned: Vec<(u32, String)>,
    /// Partitions an operator unpinned.
    pub unpinned: Vec<u32>,
    /// On a ring with a move budget ([`NodeBuilder::max_moving`](crate::NodeBuilder::max_moving)),
    /// how many partitions this change may move between members that stay
    /// (the budget less what was in motion when it was written); `None`:
    /// no budget. A change with nothing else in it is a budget's next step.
    pub move_budget: Option<u32>,
}

/// A member as seen in a [`RingView`]. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo(Arc<MemberData>);

/// What a [`MemberInfo`] holds; while a view is built, its members.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberData {
    node_id: Arc<str>,
    /// Shared between successive views while unchanged.
    positions: Arc<[u32]>,
    partitions: u32,
    metadata: Option<Arc<str>>,
    /// Ready and not cordoned: the placement gives it partitions.
    eligible: bool,
    /// Its capacity and zone (balanced placement).
    attrs: MemberAttrs,
}

impl MemberData {
    /// Whether `other` is this member unchanged: the shared parts compared
    /// by pointer first (a member carried over from the previous view shares
    /// them), the rest by value.
    fn same_as(&self, other: &MemberData) -> bool {
        self.partitions == other.partitions
            && self.eligible == other.eligible
            && (Arc::ptr_eq(&self.node_id, &other.node_id) || self.node_id == other.node_id)
            && (Arc::ptr_eq(&self.positions, &other.positions) || self.positions == other.positions)
            && self.metadata == other.metadata
            && self.attrs == other.attrs
    }
}

impl MemberInfo {
    /// The member's node id.
    pub fn node_id(&self) -> &str {
        &self.0.node_id
    }
    /// Its vnode positions, ascending.
    pub fn positions(&self) -> &[u32] {
        &self.0.positions
    }
    /// How many partitions this view assigns to it.
    pub fn partition_count(&self) -> u32 {
        self.0.partitions
    }
    /// Its weight: the number of its positions (its `vnode_count`).
    pub fn weight(&self) -> u32 {
        self.0.positions.len() as u32
    }
    /// The metadata it was started with
    /// ([`NodeBuilder::metadata`](crate::NodeBuilder::metadata)), e.g. its address.
    pub fn metadata(&self) -> Option<&str> {
        self.0.metadata.as_deref()
    }
    /// Whether the placement gives it partitions: it is ready
    /// ([`RingNode::set_ready`](crate::RingNode::set_ready)) and not
    /// cordoned ([`cordon`](crate::cordon)). An ineligible member is a live
    /// member that owns nothing.
    pub fn is_eligible(&self) -> bool {
        self.0.eligible
    }
    /// The most partitions it takes ([`NodeBuilder::capacity`](crate::NodeBuilder::capacity)),
    /// if it declared a limit.
    pub fn capacity(&self) -> Option<u32> {
        self.0.attrs.capacity
    }
    /// Its zone ([`NodeBuilder::zone`](crate::NodeBuilder::zone)), if it declared one.
    pub fn zone(&self) -> Option<&str> {
        self.0.attrs.zone.as_deref()
    }

    /// A copy that shares no reference count with `self`: for a thread's
    /// own cache, whose clones then contend with no other thread's.
    pub(crate) fn unshared(&self) -> MemberInfo {
        let d = &self.0;
        MemberInfo(Arc::new(MemberData {
            node_id: Arc::from(&*d.node_id),
            positions: Arc::from(&*d.positions),
            partitions: d.partitions,
            metadata: d.metadata.as_deref().map(Arc::from),
            eligible: d.eligible,
            attrs: MemberAttrs {
                capacity: d.attrs.capacity,
                zone: d.attrs.zone.as_deref().map(Arc::from),
            },
        }))
    }
}

/// The placement attributes a change gives the member it adds.
fn added_attrs(change: &Change) -> MemberAttrs {
    MemberAttrs {
        capacity: change.added_capacity,
        zone: change.added_zone.as_deref().map(Arc::from),
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
    /// The balanced placement's table at this epoch; `None`: hashed.
    table: Option<Arc<Table>>,
    /// (position, index into `members`), ascending by position.
    vnodes: Vec<(u32, u32)>,
    /// Whether every member is eligible: then a hashed view's arcs are the
    /// vnodes' (the usual case, kept on its fast paths).
    all_eligible: bool,
    /// Ascending by node id.
    members: Vec<MemberInfo>,
    /// Per partition: index into `members`, or `NO_OWNER` on an empty ring
    /// (or one whose members are all ineligible).
    owner: Vec<u32>,
    /// Partitions the placement gives to nobody although the ring has
    /// members (every member ineligible).
    unassigned: u32,
}

impl RingView {
    /// An empty ring (no members) at `epoch`.
    pub fn empty(epoch: u64, ring_size: u32) -> RingView {
        RingView::build(epoch, ring_size, std::iter::empty::<(u32, &str)>())
    }

    unstable_fn! {
    /// An empty ring under `placement`: [`apply`](RingView::apply) the
    /// ring's changes to it, in order, to get the views the members get
    /// (a balanced view is history, so it cannot be built from the vnodes
    /// alone). For simulations and benchmarks; members and observers read
    /// the stored table instead.
    ///
    /// ```
    /// use leasering::{Change, Placement, RingView};
    ///
    /// let mut v = RingView::empty_with(0, 12, Placement::Balanced);
    /// for (i, n) in ["a", "b", "c"].iter().enumerate() {
    ///     v = v.apply(&Change {
    ///         epoch: i as u64 + 1,
    ///         removed: vec![],
    ///         added: Some((n.to_string(), vec![i as u32])), // one vnode: weight 1
    ///         added_metadata: None,
    ///         ..Default::default()
    ///     });
    /// }
    /// assert!(v.members().iter().all(|m| m.partition_count() == 4));
    /// ```
    fn empty_with(epoch: u64, ring_size: u32, placement: Placement) -> RingView {
        let table = match placement {
            Placement::Hashed => None,
            Placement::Balanced => Some(Arc::new(Table::empty(ring_size))),
        };
        RingView::build_with(
            epoch,
            ring_size,
            std::iter::empty::<(u32, &str)>(),
            table,
            |_| None,
            |_| true,
            |_| MemberAttrs::default(),
        )
    }
    }

    unstable_fn! {
    /// Builds a view from `(position, node id)` pairs. Positions outside the
    /// ring and duplicates (never produced by the store) are ignored; of two
    /// vnodes at one position, the smaller node id wins.
    fn build<'a>(
        epoch: u64,
        ring_size: u32,
        vnodes: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> RingView {
        RingView::build_with(
            epoch,
            ring_size,
            vnodes,
            None,
            |_| None,
            |_| true,
            |_| MemberAttrs::default(),
        )
    }
    }

    /// [`build`](RingView::build) for either placement: with `table`, the
    /// balanced placement's owners (the table read with the vnodes, at the
    /// same epoch); and each member's metadata, eligibility and placement
    /// attributes.
    pub(crate) fn build_with<'a>(
        epoch: u64,
        ring_size: u32,
        vnodes: impl IntoIterator<Item = (u32, &'a str)>,
        table: Option<Arc<Table>>,
        metadata: impl Fn(&str) -> Option<Arc<str>>,
        eligible: impl Fn(&str) -> bool,
        attrs: impl Fn(&str) -> MemberAttrs,
    ) -> RingView {
        let mut pairs: Vec<(u32, &str)> =
            vnodes.into_iter().filter(|(p, _)| *p < ring_size).collect();
        // Names are interned through a hash map, so that the string work is
        // one hash per vnode and a sort of the distinct names (not a sort
        // and a binary search of every vnode's name).
        let mut index: fnv::FnvHashMap<&str, u32> = fnv::FnvHashMap::default();
        for (_, n) in &pairs {
            let next = index.len() as u32;
            index.entry(n).or_insert(next);
        }
        let mut names: Vec<&str> = index.keys().copied().collect();
        names.sort_unstable();
        for (i, n) in names.iter().enumerate() {
            index.insert(n, i as u32);
        }
        // Member indices follow name order, so sorting (position, index)
        // breaks ties of duplicate positions by name.
        let mut vnodes: Vec<(u32, u32)> = pairs.drain(..).map(|(p, n)| (p, index[n])).collect();
        vnodes.sort_unstable();
        vnodes.dedup_by_key(|(p, _)| *p);
        let mut positions: Vec<Vec<u32>> = vec![Vec::new(); names.len()];
        for (p, idx) in &vnodes {
            positions[*idx as usize].push(*p);
        }
        if positions.iter().any(|ps| ps.is_empty()) {
            // A name whose every vnode lost a duplicate position: drop it.
            let mut remap = vec![NO_OWNER; names.len()];
            let mut kept = 0u32;
            for (i, ps) in positions.iter().enumerate() {
                if !ps.is_empty() {
                    remap[i] = kept;
                    kept += 1;
                }
            }
            let mut i = 0;
            names.retain(|_| {
                i += 1;
                !positions[i - 1].is_empty()
            });
            positions.retain(|ps| !ps.is_empty());
            for v in &mut vnodes {
                v.1 = remap[v.1 as usize];
            }
        }
        let members: Vec<MemberData> = names
            .iter()
            .zip(positions)
            .map(|(n, ps)| MemberData {
                node_id: Arc::from(*n),
                positions: ps.into(),
                partitions: 0,
                metadata: metadata(n),
                eligible: eligible(n),
                attrs: attrs(n),
            })
            .collect();
        RingView::finish(epoch, ring_size, members, Vec::new(), vnodes, table)
    }

    /// Completes a view from its members (ascending by node id, with their
    /// positions; partition counts still zero) and its vnodes (ascending by
    /// position, no duplicates): the owner table and the partition counts.
    /// `prev[i]`, when given, is member `i` as the view this one follows
    /// had it: kept (shared) when nothing of it changed.
    fn finish(
        epoch: u64,
        ring_size: u32,
        mut members: Vec<MemberData>,
        prev: Vec<Option<MemberInfo>>,
        vnodes: Vec<(u32, u32)>,
        table: Option<Arc<Table>>,
    ) -> RingView {
        let mut owner = vec![NO_OWNER; ring_size as usize];
        let all_eligible = members.iter().all(|m| m.eligible);
        // Ineligible members' vnodes are skipped (a copy only when there
        // are any).
        let owning_copy: Option<Vec<(u32, u32)>> = (!all_eligible)
            .then(|| owning_vnodes(false, &vnodes, |i| members[i as usize].eligible).into_owned());
        let owning: &[(u32, u32)] = owning_copy.as_deref().unwrap_or(&vnodes);
        if let Some(t) = &table {
            // The table's members and the view's are both ascending by node
            // id and, from a consistent store, the same set: map indices by
            // a merge walk (a member in one but not the other owns nothing).
            let mut remap = vec![NO_OWNER; t.members().len()];
            let mut j = 0;
            for (i, tm) in t.members().iter().enumerate() {
                while j < members.len() && &*members[j].node_id < tm.node_id() {
                    j += 1;
                }
                if j < members.len() && &*members[j].node_id == tm.node_id() {
                    remap[i] = j as u32;
                }
            }
            for (p, o) in t.owners().iter().enumerate().take(ring_size as usize) {
                if let Some(&k) = remap.get(*o as usize) {
                    owner[p] = k;
                    if k != NO_OWNER {
                        members[k as usize].partitions += 1;
                    }
                }
            }
        } else if let Some(&(_, first)) = owning.first() {
            // Arcs are (pred(p), p]; partitions after the last vnode wrap
            // around to the first one. Ineligible members' vnodes are
            // skipped: their arcs go to the next eligible vnode clockwise.
            let mut start = 0usize;
            for &(p, idx) in owning {
                let end = p as usize + 1;
                owner[start..end].fill(idx);
                members[idx as usize].partitions += (end - start) as u32;
                start = end;
            }
            owner[start..].fill(first);
            members[first as usize].partitions += (ring_size as usize - start) as u32;
        }
        let unassigned = if members.is_empty() {
            0
        } else {
            ring_size - members.iter().map(|m| m.partitions).sum::<u32>()
        };
        RingView {
            inner: Arc::new(ViewInner {
                epoch,
                ring_size,
                table,
                unassigned,
                all_eligible,
                vnodes,
                // Every member updates its view at every change: with 512
                // members, a new allocation per member per view (and its
                // release with the old view) was a fifth of the fleet's CPU.
                // Most members are unchanged by a change: they are shared.
                members: members
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| match prev.get(i) {
                        Some(Some(p)) if p.0.same_as(&d) => p.clone(),
                        _ => MemberInfo(Arc::new(d)),
                    })
                    .collect(),
                owner,
            }),
        }
    }

    unstable_fn! {
    /// The view that follows `change`; `self` must be at `change.epoch − 1`
    /// for the result to be the ring at `change.epoch`. Works on member
    /// indices (no string sorting): O(members + vnodes + ring_size).
    fn apply(&self, change: &Change) -> RingView {
        let inner = &*self.inner;
        let find = |name: &str| inner.members.binary_search_by(|m| m.node_id().cmp(name));
        let mut dropped = vec![false; inner.members.len()];
        for r in &change.removed {
            if let Ok(i) = find(r) {
                dropped[i] = true;
            }
        }
        let mut added_positions: Vec<u32> = Vec::new();
        // A member added again replaces its old self.
        let added = change.added.as_ref().map(|(name, positions)| {
            let at = match find(name) {
                Ok(i) => {
                    dropped[i] = true;
                    i
                }
                Err(i) => i,
            };
            added_positions = positions
                .iter()
                .copied()
                .filter(|p| *p < inner.ring_size)
                .collect();
            added_positions.sort_unstable();
            added_positions.dedup();
            (name.as_str(), at)
        });
        // Old member index -> new index (NO_OWNER when removed), with the
        // added member inserted in name order. Unchanged members share their
        // positions with the old view.
        let mut remap = vec![NO_OWNER; inner.members.len()];
        let mut members: Vec<MemberData> = Vec::with_capacity(inner.members.len() + 1);
        let mut prev: Vec<Option<MemberInfo>> = Vec::with_capacity(inner.members.len() + 1);
        let mut added_idx = NO_OWNER;
        let added_metadata: Option<Arc<str>> = change.added_metadata.as_deref().map(Arc::from);
        let added_attrs = added_attrs(change);
        let mut push_added = |members: &mut Vec<MemberData>, prev: &mut Vec<Option<MemberInfo>>, name: &str| {
            added_idx = members.len() as u32;
            prev.push(None);
            members.push(MemberData {
                node_id: Arc::from(name),
                positions: added_positions.as_slice().into(),
                partitions: 0,
                metadata: added_metadata.clone(),
                eligible: !change.added_ineligible,
                attrs: added_attrs.clone(),
            });
        };
        for (i, m) in inner.members.iter().enumerate() {
            if let Some((name, at)) = added {
                if at == i {
                    push_added(&mut members, &mut prev, name);
                }
            }
            if dropped[i] {
                continue;
            }
            remap[i] = members.len() as u32;
            prev.push(Some(m.clone()));
            members.push(MemberData {
                node_id: m.0.node_id.clone(),
                positions: m.0.positions.clone(),
                partitions: 0,
                metadata: m.0.metadata.clone(),
                eligible: m.0.eligible,
                attrs: m.0.attrs.clone(),
            });
        }
        if let Some((name, at)) = added {
            if at == inner.members.len() {
                push_added(&mut members, &mut prev, name);
            }
        }
        flip_eligibility(&mut members, change);
        let mut vnodes: Vec<(u32, u32)> =
            Vec::with_capacity(inner.vnodes.len() + added_positions.len());
        vnodes.extend(inner.vnodes.iter().filter_map(|(p, i)| {
            let j = remap[*i as usize];
            (j != NO_OWNER).then_some((*p, j))
        }));
        if added.is_some() {
            if added_positions.is_empty() {
                return self.apply_by_rebuild(change);
            }
            for &p in &added_positions {
                match vnodes.binary_search_by_key(&p, |(q, _)| *q) {
                    // A position taken twice (never produced by the store):
                    // let `build` settle who keeps it.
                    Ok(_) => return self.apply_by_rebuild(change),
                    Err(k) => vnodes.insert(k, (p, added_idx)),
                }
            }
        }
        let table = self.next_table(change);
        RingView::finish(change.epoch, inner.ring_size, members, prev, vnodes, table)
    }
    }

    /// The balanced table after `change` (`None` for a hashed view). The
    /// added member's weight is the number of positions the change lists,
    /// exactly as the store counts them when it writes the table.
    fn next_table(&self, change: &Change) -> Option<Arc<Table>> {
        let old = self.inner.table.as_ref()?;
        let mut t = Table::clone(old);
        // A member that becomes eligible joins with its weight in this
        // view, as the store counts its vnodes.
        let eligible: Vec<(&str, u32, MemberAttrs)> = change
            .eligible
            .iter()
            .filter_map(|n| {
                self.member(n)
                    .map(|m| (n.as_str(), m.weight(), m.0.attrs.clone()))
            })
            .collect();
        t.apply_change_within(
            &change.removed,
            &change.ineligible,
            &eligible,
            change.added.as_ref().map(|(n, ps)| {
                (
                    n.as_str(),
                    ps.len() as u32,
                    !change.added_ineligible,
                    added_attrs(change),
                )
            }),
            (&change.pinned, &change.unpinned),
            change.move_budget,
        );
        Some(Arc::new(t))
    }

    /// Partitions this view gives to no member although the ring has
    /// members: all of them when every member is ineligible (not ready, or
    /// cordoned), else 0. (`leasering_partitions_unassigned`.)
    pub(crate) fn unassigned(&self) -> u32 {
        self.inner.unassigned
    }

    /// On a balanced view: how many partitions its placement would still
    /// move to reach its targets — on a ring with a move budget
    /// ([`NodeBuilder::max_moving`](crate::NodeBuilder::max_moving)), what later
    /// steps move. 0 for a balanced ring at rest and for a hashed view.
    pub fn moves_pending(&self) -> u64 {
        self.inner.table.as_ref().map_or(0, |t| t.pending_moves())
    }

    /// How this view places partitions.
    pub fn placement(&self) -> Placement {
        if self.inner.table.is_some() {
            Placement::Balanced
        } else {
            Placement::Hashed
        }
    }

    unstable_fn! {
    /// The view after several consecutive changes (`changes[0]` following
    /// this view's epoch), built once: cheaper than applying them one by one
    /// when a member that fell behind — hundreds of members joining at once
    /// — has many to apply.
    fn apply_all(&self, changes: &[Change]) -> RingView {
        let Some(last) = changes.last() else {
            return self.clone();
        };
        if self.inner.table.is_some() {
            // The table is history: each change is applied in turn.
            return changes.iter().fold(self.clone(), |v, c| v.apply(c));
        }
        type Entry<'a> = (Vec<u32>, Option<Arc<str>>, bool, MemberAttrs);
        let mut members: std::collections::BTreeMap<&str, Entry<'_>> = self
            .members()
            .iter()
            .map(|m| {
                (
                    m.node_id(),
                    (
                        m.positions().to_vec(),
                        m.0.metadata.clone(),
                        m.0.eligible,
                        m.0.attrs.clone(),
                    ),
                )
            })
            .collect();
        for change in changes {
            for r in &change.removed {
                members.remove(r.as_str());
            }
            for (names, to) in [(&change.ineligible, false), (&change.eligible, true)] {
                for n in names {
                    if let Some(e) = members.get_mut(n.as_str()) {
                        e.2 = to;
                    }
                }
            }
            if let Some((name, positions)) = &change.added {
                let md = change.added_metadata.as_deref().map(Arc::from);
                members.insert(
                    name.as_str(),
                    (
                        positions.clone(),
                        md,
                        !change.added_ineligible,
                        added_attrs(change),
                    ),
                );
            }
        }
        RingView::build_with(
            last.epoch,
            self.inner.ring_size,
            members
                .iter()
                .flat_map(|(n, (ps, _, _, _))| ps.iter().map(move |p| (*p, *n))),
            None,
            |n| members.get(n).and_then(|(_, md, _, _)| md.clone()),
            |n| members.get(n).is_none_or(|(_, _, e, _)| *e),
            |n| {
                members
                    .get(n)
                    .map(|(_, _, _, a)| a.clone())
                    .unwrap_or_default()
            },
        )
    }
    }

    /// `apply` the slow way: the old view's pairs, changed, built anew.
    fn apply_by_rebuild(&self, change: &Change) -> RingView {
        let removed = |n: &str| change.removed.iter().any(|r| r == n);
        let added_name = change.added.as_ref().map(|(n, _)| n.as_str());
        let mut pairs: Vec<(u32, &str)> = self
            .vnodes_iter()
            .filter(|(_, n)| !removed(n) && Some(*n) != added_name)
            .collect();
        if let Some((name, positions)) = &change.added {
            pairs.extend(positions.iter().map(|p| (*p, name.as_str())));
        }
        let added_md = change.added_metadata.as_deref().map(Arc::<str>::from);
        RingView::build_with(
            change.epoch,
            self.inner.ring_size,
            pairs,
            self.next_table(change),
            |n| {
                if Some(n) == added_name {
                    added_md.clone()
                } else {
                    self.member(n).and_then(|m| m.0.metadata.clone())
                }
            },
            |n| {
                if Some(n) == added_name {
                    !change.added_ineligible
                } else if change.ineligible.iter().any(|x| x == n) {
                    false
                } else if change.eligible.iter().any(|x| x == n) {
                    true
                } else {
                    self.member(n).is_none_or(|m| m.0.eligible)
                }
            },
            |n| {
                if Some(n) == added_name {
                    added_attrs(change)
                } else {
                    self.member(n)
                        .map(|m| m.0.attrs.clone())
                        .unwrap_or_default()
                }
            },
        )
    }

    fn vnodes_iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.inner
            .vnodes
            .iter()
            .map(|(p, i)| (*p, self.inner.members[*i as usize].node_id()))
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
        Some(self.inner.members[idx as usize].node_id())
    }

    /// Like [`owner_of`](RingView::owner_of), with the owner's
    /// [`MemberInfo`] (its metadata, e.g. an address to route to). O(1).
    pub fn owner_info(&self, p: u32) -> Option<&MemberInfo> {
        let idx = *self.inner.owner.get(p as usize)?;
        self.inner.members.get(idx as usize)
    }

    /// The index into [`RingView::members`] of the member partition `p`
    /// belongs to.
    pub(crate) fn owner_index(&self, p: u32) -> Option<usize> {
        let idx = *self.inner.owner.get(p as usize)?;
        (idx != NO_OWNER).then_some(idx as usize)
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
            .binary_search_by(|m| m.node_id().cmp(node_id))
            .ok()
            .map(|i| i as u32)
    }

    /// `(position, node id)` of every vnode, ascending by position.
    pub fn vnodes(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.vnodes_iter()
    }

    /// The partitions this view assigns to `node_id`, ascending. Walks the
    /// member's own arcs: O(its partitions + vnodes × log(ring vnodes)).
    pub fn partitions_of(&self, node_id: &str) -> Vec<u32> {
        let Some(idx) = self.member_index(node_id) else {
            return Vec::new();
        };
        let inner = &*self.inner;
        let m = &inner.members[idx as usize];
        if !m.is_eligible() {
            return Vec::new();
        }
        if inner.table.is_some() || !inner.all_eligible {
            let mut out = Vec::with_capacity(m.partition_count() as usize);
            out.extend((0..inner.ring_size).filter(|p| inner.owner[*p as usize] == idx));
            return out;
        }
        let v = &inner.vnodes;
        let n = inner.ring_size;
        if v.len() == 1 {
            return (0..n).collect();
        }
        let mut out = Vec::with_capacity(m.partition_count() as usize);
        let mut tail = None;
        for &p in m.positions().iter() {
            let k = v.partition_point(|(q, _)| *q < p);
            let pred = if k == 0 { v[v.len() - 1].0 } else { v[k - 1].0 };
            if pred < p {
                out.extend(pred + 1..=p);
            } else {
                // The ring's lowest vnode: its arc wraps past ring_size − 1
                // to 0, and its upper part comes last.
                out.extend(0..=p);
                tail = Some(pred + 1..n);
            }
        }
        if let Some(t) = tail {
            out.extend(t);
        }
        out
    }

    /// The arcs of the ring, in position order; empty for an empty ring, one
    /// arc covering everything for a single vnode.
    ///
    /// Under [`Placement::Balanced`] an arc is a maximal run of consecutive
    /// partitions with one owner (not wrapping), in partition order.
    pub fn arcs(&self) -> Vec<(RingArc, &str)> {
        if self.inner.table.is_some() {
            let o = &self.inner.owner;
            let mut out = Vec::new();
            let mut start = 0usize;
            for p in 1..=o.len() {
                if p == o.len() || o[p] != o[start] {
                    if o[start] != NO_OWNER {
                        out.push((
                            RingArc {
                                start: start as u32,
                                end: p as u32 - 1,
                            },
                            self.inner.members[o[start] as usize].node_id(),
                        ));
                    }
                    start = p;
                }
            }
            return out;
        }
        let members = &self.inner.members;
        let v = owning_vnodes(self.inner.all_eligible, &self.inner.vnodes, |i| {
            members[i as usize].is_eligible()
        });
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
                    self.inner.members[idx as usize].node_id(),
                )
            })
            .collect()
    }

    /// The member that follows `node_id`'s lowest position clockwise, other
    /// than `node_id` itself: the one expected to clean it up if it crashes.
    pub fn successor_of(&self, node_id: &str) -> Option<&str> {
        let first = *self.member(node_id)?.positions().first()?;
        let v = &self.inner.vnodes;
        let start = v.partition_point(|(p, _)| *p <= first);
        (0..v.len())
            .map(|k| v[(start + k) % v.len()].1)
            .map(|idx| self.inner.members[idx as usize].node_id())
            .find(|n| *n != node_id)
    }
}

/// The vnodes that own arcs: those of eligible members (all of them, without
/// a copy, in the usual case where every member is eligible).
fn owning_vnodes(
    all_eligible: bool,
    vnodes: &[(u32, u32)],
    eligible: impl Fn(u32) -> bool,
) -> std::borrow::Cow<'_, [(u32, u32)]> {
    if all_eligible {
        return std::borrow::Cow::Borrowed(vnodes);
    }
    std::borrow::Cow::Owned(
        vnodes
            .iter()
            .copied()
            .filter(|(_, i)| eligible(*i))
            .collect(),
    )
}

/// Applies a change's eligibility flips to the next view's members
/// (ascending by node id); names not among them are ignored.
fn flip_eligibility(members: &mut [MemberData], change: &Change) {
    for (names, to) in [(&change.ineligible, false), (&change.eligible, true)] {
        for n in names {
            if let Ok(i) = members.binary_search_by(|m| (*m.node_id).cmp(n.as_str())) {
                members[i].eligible = to;
            }
        }
    }
}

impl fmt::Debug for RingView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingView")
            .field("epoch", &self.inner.epoch)
            .field("ring_size", &self.inner.ring_size)
            .field("members", &self.inner.members.len())
            .field("vnodes", &self.inner.vnodes.len())
            .field("placement", &self.placement())
            .finish()
    }
}

#[cfg(test)]
mod tests;
