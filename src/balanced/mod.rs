//! Balanced placement: an owner table carried from epoch to epoch.
//!
//! # Why a table, and not a function of the member set
//!
//! Plain consistent hashing (docs/protocol.md §2) is a pure function of the member
//! set, and leaves members unequal (max/mean partitions 1.64 at 16 members
//! with 8 vnodes). A pure function can be made exactly balanced — e.g.
//! rendezvous hashing capped at each member's quota — but then one join
//! reshuffles partitions between members that did not change (the caps
//! cascade), so a change moves more than the minimum. Asking for both
//! "every member within one partition of its weighted fair share" and "a
//! join moves partitions only to the joiner, a leave only from the leaver"
//! makes the answer depend on history, so the balanced placement is a
//! **table** `owner[p]`: every member applies the same sequence of changes
//! to the same previous table with the same deterministic rule, and gets
//! the same next table, bit for bit.
//!
//! # The rule
//!
//! With `R` partitions and total weight `W`, a member `m` of weight `w(m)`
//! has the fair share `s(m) = R·w(m)/W`, and its count `c(m)` must stay
//! strictly within one of it (`floor` or `ceil`). All comparisons use the
//! exact integer `E(m) = c(m)·W − R·w(m)` (its excess, scaled by `W`; `i128`),
//! so no floating point decides anything. Ties between members are broken
//! by `fmix64(fnv1a64(node_id))`, then by node id — never by insertion order.
//!
//! * **Join.** The joiner takes one partition at a time from the member now
//!   most above its new share, while that donor must shrink (it is over its
//!   ceiling), or the joiner must grow (below its floor), or the transfer
//!   narrows the gap between the two (donor's excess − joiner's excess > one
//!   partition) — and never beyond the joiner's own ceiling. Keeping the
//!   spread of excesses small is what keeps later changes minimal. From each
//!   donor it takes the partitions with the highest rendezvous score
//!   [`affinity`] for the joiner, so a member that leaves and comes back
//!   tends to get the same partitions back.
//! * **Leave.** Each of the leaver's partitions goes to the remaining member
//!   then most below its new share; each receiver (in the order of its first
//!   turn) picks the leaver's remaining partitions with the highest
//!   [`affinity`] for it.
//! * **Quota repair.** With unequal weights, the two goals can conflict: a
//!   join can push several members above their new ceilings by more than the
//!   joiner's ceiling can absorb (e.g. shares 1.05, 1.05, 0.95, 0.95 held as
//!   2, 2, 0, 0, then a small joiner), and a leave can symmetrically push
//!   more members below their floors than the leaver had partitions. The
//!   balance bound is kept unconditionally: the surplus then moves from the
//!   member most above its share to the one most below it. Each such change
//!   moves exactly the number of partitions the balance bound forces — the
//!   minimum under that bound — and the tests check that this happens only
//!   when no move set that respects both goals exists. Such tables exist
//!   (about 0.5–3 % of arbitrary tables within quota with weights 1..=32 on
//!   rings of 1..=16 partitions), but the rule above did not produce one in
//!   120 000 random joins and leaves (rings of 2..=16384 partitions, 4..=40
//!   ids, weights 1..=16); with equal weights none arose either. The
//!   joins' narrowing moves are what keeps them away: without them, 22–47 %
//!   of those tables spread wider than one partition (0–2.4 % with them)
//!   and 31 of 60 000 weighted changes hit a conflict.
//!
//! # Capacity and zones
//!
//! A member may declare a **capacity** `C` (it holds at most `C`
//! partitions; 0 counts as 1) and a **zone** (a failure domain; members
//! without one, or with an empty one, form the "no zone" zone of their
//! own). While no member of the table declares either (and no partition
//! is pinned: see "Pins"), the rule above runs unchanged, bit for bit, and
//! the table is stored in format 1. Otherwise every change is one step of a
//! **target-count rule** (stored in format 2, or 3 with pins):
//!
//! 1. **Targets.** The placeable total is `min(R, Σ C)` (a member without a
//!    capacity counts as unbounded). It is split between the zones (a
//!    zone's weight is the sum of its members' weights, its capacity the sum
//!    of theirs), then each zone's target between its members, the same way
//!    both times: **water-filled** — an item whose capacity is below its
//!    weighted share gets exactly its capacity and the rest is shared by
//!    weight among the others, until no capacity binds — and **rounded**:
//!    the free items get the floor of their share, and the units left over
//!    go, one each, to the free items with a fractional share, first to
//!    those holding the most now *relative to that floor* (current count −
//!    floor), then by higher [`tie_hash`] of the zone name or node id, then
//!    by lower name. Rounding toward what is held is what keeps a change
//!    that changes nothing from moving anything. Exact integers throughout
//!    (`u128` products), no floating point.
//! 2. **Moves.** A member above its target gives up its surplus: the
//!    partitions it scores lowest by [`affinity`]. The partitions without an
//!    owner (the leavers', those beyond the total capacity so far, and the
//!    surplus) go to the members below their target, most below first (then
//!    higher tie hash, then lower node id), each taking the free partitions
//!    it scores highest. A member at or below its target keeps everything it
//!    has, and what is left over stays without an owner
//!    ([`Table::unassigned`]).
//! 3. **One step per change.** The removed and the newly ineligible members
//!    leave (their partitions lose their owner), the newly eligible and the
//!    added member join (an added member already present keeps its
//!    partitions and takes its new weight and attributes in place), then one
//!    target computation and one round of moves. The moves a change reports
//!    are therefore exactly `Σ max(0, old count − target)` over the members
//!    that stay, plus the partitions that had no staying owner and changed
//!    hands: none moves between two members needlessly.
//!
//! So a member never holds more than its capacity; exactly `min(R, Σ C)`
//! partitions have an owner; each zone is strictly within one partition of
//! its water-filled share of that total, and each member strictly within
//! one of its water-filled share of its zone's count — within two of its
//! global share. With no zones (one "no zone" zone), that is within one of
//! the member's water-filled share, as for the rule above. A zone that is
//! lost (all its members gone) has its partitions spread over the others by
//! their weights, by the same step. The balance is exact for the targets,
//! but unlike the rule above, the targets' rounding can shift between
//! members when the set changes; the rounding's stickiness keeps that to
//! the units that must move. When the last member with attributes leaves,
//! that step places every partition within one of the plain shares, and the
//! rule above takes over from there.
//!
//! # Pins
//!
//! An operator may **pin** partition `p` to a node id `n`
//! (`leasering::pin`): a change that every process applies at the same
//! epoch. The table stores its pins, partition → node id, also for node ids
//! that are not members (a pin outlives its node's absence), and stores them
//! in format 3 (format 2 followed by the pins). A table with a pin is
//! constrained: every change runs the target-count rule above, with these
//! additions.
//!
//! * **Active pins.** A pin is active while its node is a member of the
//!   table (so eligible) and has room: a member with more pins than its
//!   capacity honours its lowest-numbered pinned partitions up to its
//!   capacity. Any other pin (node away, ineligible, or beyond capacity) is
//!   inactive, and its partition is placed like any other.
//! * **Targets with floors.** A member's active-pin count is a floor for
//!   its target, and a zone's floor is the sum of its members'. Both
//!   water-fillings take `clamp(λ·w, floor, capacity)` for the one level
//!   `λ` at which these sum to what is split (found exactly among the
//!   breakpoints `floor/w` and `capacity/w`), rounded as above. So a
//!   member whose pins exceed its share keeps them, exactly, and the others
//!   share the rest by weight: each member whose pins do not bind is within
//!   one of `λ·w`, its share of what the binding members leave (of its
//!   zone's count, with zones; that is what the tests check). Likewise a
//!   zone whose members' pins force it above its share holds exactly those
//!   pins, and the other zones share the rest; a zone within its share
//!   keeps the zone rule unchanged. The placeable total, the capacities and
//!   the sum are as without pins (the floors never exceed the capacities:
//!   pins beyond a capacity are inactive). Without an active pin, every
//!   floor is 0 and the computation is the one above, bit for bit.
//! * **Moves.** First each active pin's partition goes to its node, from
//!   wherever it was (forced moves); then the round of moves above, where a
//!   member above its target gives up only partitions that are not actively
//!   pinned to it. So after every change each active pin is owned by its
//!   node, and the other moves are the minimum for the targets.
//! * **One step.** [`Table::apply_change`] takes the pins with the
//!   membership: the unpinned partitions lose their pin, the pinned ones
//!   get theirs (replacing any), pins outside the ring are ignored; then
//!   the leaves and joins, one target computation and one round of moves.
//!   A node that comes back takes its active pins back in that step; an
//!   unpinned partition stays where it is unless its owner's target drops
//!   (its floor is gone) and it is among the owner's least preferred.
//!
//! When the last pin goes, a table whose members declare nothing and whose
//! partitions all have an owner is stored in format 1 again and returns to
//! the unconstrained rule (the step that removed the pin placed it within
//! one of the plain shares).
//!
//! Cost of one constrained change: O(`R` + `M`·log `M`) for the re-index,
//! the targets and the donors' buckets, plus O(free · receivers) to score
//! the free partitions once per receiver (a join: one receiver, the joiner).
//! Measured (release, test `timing_apply_at_512_members`, on a loaded
//! machine where the rule above took 62 µs per join and 45 µs per leave):
//! 200 µs for a join and 160 µs for a leave at 512 members in 8 zones, a
//! third of them capped, on 16384 partitions.
//!
//! # Measured (tests `measure_balance_and_movement`, 50 id sets per size)
//!
//! Weight 8, rings of 1024 and 16384, 4 to 256 members: the table is within
//! one partition of the share (max/mean 1.000 when the share is whole,
//! 1.013 at 17 members on 1024), and a join or a leave moves exactly the
//! minimum (moved ÷ minimum 1.00 in every case). Capacity-capped rendezvous,
//! the stateless alternative, is equally balanced but moves 1.3× the minimum
//! at 16 members and 4.5–4.8× at 256 (ring 1024; 3× on 16384): each cap
//! that fills pushes partitions on to other members. It has one advantage
//! the table lacks: a member that leaves and rejoins gets exactly its old
//! partitions back, where the table's affinity returns 50–70 % of them.
//!
//! # Cost
//!
//! One join or leave is O(`R` + `M`·log `M` + moved·log `M`) (`M` members):
//! a few linear passes over the owner table (re-indexing, collecting the
//! donors' or leaver's partitions) and heap work per moved partition. A
//! leave additionally scores the leaver's partitions once per receiver:
//! O(moved · receivers), at most about `R·w(leaver)/w(min)`. A quota repair
//! (rare) costs O(`R` + `M`) per extra partition. Measured (release): 31 µs
//! for a join and 26 µs for a leave at 512 members on 16384 partitions; a
//! 4096-member table on 65536 partitions is built by joins in 0.7 s.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use crate::placement::{fmix64, fnv1a64};

/// `owner[p]` of a partition on an empty ring.
const NO_OWNER: u32 = u32::MAX;

/// The rendezvous score of partition `p` for `node_id`:
/// `fmix64(fnv1a64(node_id ‖ be_u32(p)))`. A member prefers the partitions
/// it scores highest, whichever members come and go, which is what gives a
/// rejoining member its old partitions back. (The partition is a fixed-width
/// suffix, so no separator is needed.)
pub(crate) fn affinity(node_id: &str, p: u32) -> u64 {
    fmix64(fnv1a64(&[node_id.as_bytes(), &p.to_be_bytes()]))
}

/// [`affinity`] for one node and many partitions: FNV-1a is a left fold, so
/// the state after the node id is computed once and each partition only
/// adds its four bytes (the node id is hashed byte by byte otherwise, and
/// scoring is most of what a join costs).
struct Scorer(u64);

impl Scorer {
    fn new(node_id: &str) -> Scorer {
        Scorer(fnv1a64(&[node_id.as_bytes()]))
    }

    fn score(&self, p: u32) -> u64 {
        let mut h = fnv::FnvHasher::with_key(self.0);
        h.write(&p.to_be_bytes());
        fmix64(h.finish())
    }
}

/// The deterministic tie-breaker between members with equal excess: a hash
/// of the node id, so that no member is favoured for sorting first.
fn tie_hash(node_id: &str) -> u64 {
    fmix64(fnv1a64(&[node_id.as_bytes()]))
}

/// What a member declares about its placement besides its weight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemberAttrs {
    /// At most this many partitions (0 counts as 1).
    pub(crate) capacity: Option<u32>,
    /// Its failure domain; members without one (or with an empty one) form
    /// the "no zone" zone.
    pub(crate) zone: Option<Arc<str>>,
}

impl MemberAttrs {
    /// Whether it declares neither a capacity nor a zone: a member the
    /// unconstrained rule can place.
    pub(crate) fn is_plain(&self) -> bool {
        self.capacity.is_none() && self.zone.is_none()
    }

    /// The canonical form the table keeps: capacity at least 1, no empty
    /// zone name (the stored form could not tell it from none).
    fn normalized(&self) -> MemberAttrs {
        MemberAttrs {
            capacity: self.capacity.map(|c| c.max(1)),
            zone: self.zone.clone().filter(|z| !z.is_empty()),
        }
    }
}

/// A member of a [`Table`]: its node id, weight, attributes and current
/// partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BalancedMember {
    node_id: Arc<str>,
    weight: u32,
    partitions: u32,
    /// `tie_hash(node_id)`, cached: compared on every heap operation.
    tie: u64,
    /// Normalized ([`MemberAttrs::normalized`]).
    attrs: MemberAttrs,
}

impl BalancedMember {
    fn new(node_id: &str, weight: u32) -> BalancedMember {
        BalancedMember::with_attrs(node_id, weight, MemberAttrs::default())
    }

    fn with_attrs(node_id: &str, weight: u32, attrs: MemberAttrs) -> BalancedMember {
        BalancedMember {
            node_id: Arc::from(node_id),
            weight,
            partitions: 0,
            tie: tie_hash(node_id),
            attrs: attrs.normalized(),
        }
    }

    /// The most partitions it may hold, if it declared a capacity (≥ 1).
    pub(crate) fn capacity(&self) -> Option<u32> {
        self.attrs.capacity
    }

    /// Its zone (failure domain), if it declared one.
    pub(crate) fn zone(&self) -> Option<&str> {
        self.attrs.zone.as_deref()
    }

    /// The member's node id.
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Its weight (at least 1): its fair share is proportional to it.
    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    /// How many partitions the table gives it.
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions
    }
}

/// The partitions that changed owner in one call, each once, ascending by
/// partition: the net effect of the call (a partition moved twice within an
/// [`Table::apply`] shows once, from its first owner to its last; one that
/// came back to where it was is not listed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The members named by `moves`, by index.
    names: Vec<Arc<str>>,
    /// `(partition, from, to)`, indices into `names`, `NO_OWNER` for none
    /// (the empty ring before a first join, after a last leave).
    moves: Vec<(u32, u32, u32)>,
}

impl Moved {
    /// How many partitions changed owner.
    pub(crate) fn len(&self) -> usize {
        self.moves.len()
    }

    /// Whether nothing changed owner.
    pub(crate) fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// `(partition, from, to)` for each partition that changed owner,
    /// ascending by partition; `None` stands for "no owner" (empty ring).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, Option<&str>, Option<&str>)> + '_ {
        let name = |i: u32| (i != NO_OWNER).then(|| &*self.names[i as usize]);
        self.moves
            .iter()
            .map(move |&(p, f, t)| (p, name(f), name(t)))
    }
}

/// Collects the unit moves of one call, naming each member once.
#[derive(Default)]
struct MoveLog {
    names: Vec<Arc<str>>,
    index: BTreeMap<Arc<str>, u32>,
    units: Vec<(u32, u32, u32)>,
}

impl MoveLog {
    fn name(&mut self, n: &Arc<str>) -> u32 {
        if let Some(i) = self.index.get(n) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(n.clone());
        self.index.insert(n.clone(), i);
        i
    }

    /// The net moves, ascending by partition.
    fn finish(mut self) -> Moved {
        // Stable: the unit moves of one partition stay in order.
        self.units.sort_by_key(|u| u.0);
        let mut moves: Vec<(u32, u32, u32)> = Vec::with_capacity(self.units.len());
        for (p, f, t) in self.units {
            match moves.last_mut() {
                Some(last) if last.0 == p => last.2 = t,
                _ => moves.push((p, f, t)),
            }
        }
        moves.retain(|(_, f, t)| f != t);
        Moved {
            names: self.names,
            moves,
        }
    }
}

/// The balanced placement of one ring at one epoch: the owner of every
/// partition, the members with their weights and counts, and the pins.
///
/// Canonical: members are kept ascending by node id and `owner` holds
/// indices into that order, so two tables that place every partition alike
/// are equal (`==`) and encode to the same bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Table {
    ring_size: u32,
    /// Per partition: index into `members`, or `NO_OWNER` on an empty ring.
    owner: Vec<u32>,
    /// Ascending by node id.
    members: Vec<BalancedMember>,
    /// Sum of the members' weights.
    total_weight: u64,
    /// The operator's pins: partition → node id, also for node ids that are
    /// not members now ("Pins" in the module docs).
    pins: BTreeMap<u32, Arc<str>>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The owner table can have 2^20 entries: show the counts instead.
        f.debug_struct("Table")
            .field("ring_size", &self.ring_size)
            .field(
                "members",
                &self
                    .members
                    .iter()
                    .map(|m| (m.node_id(), m.weight, m.partitions))
                    .collect::<Vec<_>>(),
            )
            .field("pins", &self.pins.len())
            .finish()
    }
}

impl Table {
    /// The table of a ring with no members: no partition has an owner.
    pub(crate) fn empty(ring_size: u32) -> Table {
        Table {
            ring_size,
            owner: vec![NO_OWNER; ring_size as usize],
            members: Vec::new(),
            total_weight: 0,
            pins: BTreeMap::new(),
        }
    }

    /// Number of partitions.
    pub(crate) fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Per partition, the index of its owner in [`members`](Table::members)
    /// (`u32::MAX` on an empty ring).
    pub(crate) fn owners(&self) -> &[u32] {
        &self.owner
    }

    /// The members, ascending by node id.
    pub(crate) fn members(&self) -> &[BalancedMember] {
        &self.members
    }

    /// The member with this node id, if present.
    pub(crate) fn member(&self, node_id: &str) -> Option<&BalancedMember> {
        self.index_of(node_id).map(|i| &self.members[i])
    }

    fn index_of(&self, node_id: &str) -> Option<usize> {
        self.members
            .binary_search_by(|m| (*m.node_id).cmp(node_id))
            .ok()
    }

    /// The owner of partition `p`; `None` on an empty ring or for
    /// `p >= ring_size`. O(1).
    pub(crate) fn owner_of(&self, p: u32) -> Option<&str> {
        let i = *self.owner.get(p as usize)?;
        (i != NO_OWNER).then(|| &*self.members[i as usize].node_id)
    }

    /// The partitions of `node_id`, ascending (empty for a non-member).
    /// A scan of the owner table: O(`ring_size`).
    pub(crate) fn partitions_of(&self, node_id: &str) -> Vec<u32> {
        let Some(i) = self.index_of(node_id) else {
            return Vec::new();
        };
        let i = i as u32;
        let mut out = Vec::with_capacity(self.members[i as usize].partitions as usize);
        out.extend((0..self.ring_size).filter(|p| self.owner[*p as usize] == i));
        out
    }

    /// `node_id`'s weighted fair share `ring_size · w / W`, for reports
    /// (decisions use exact integers, never this float).
    pub(crate) fn fair_share(&self, node_id: &str) -> Option<f64> {
        let m = self.member(node_id)?;
        Some(self.ring_size as f64 * m.weight as f64 / self.total_weight as f64)
    }

    /// Whether every member's count is strictly within one partition of its
    /// fair share — what [`join`](Table::join) and [`leave`](Table::leave)
    /// maintain while no member declares a capacity or a zone (with them,
    /// the bound is on the water-filled shares: see the module docs). Useful
    /// to vet a table decoded from storage.
    pub(crate) fn within_quota(&self) -> bool {
        let w = self.total_weight as i128;
        self.members
            .iter()
            .all(|m| self.excess(m.partitions, m.weight, w).abs() < w)
    }

    /// `(count − fair share) · total`, exactly.
    fn excess(&self, count: u32, weight: u32, total: i128) -> i128 {
        count as i128 * total - self.ring_size as i128 * weight as i128
    }

    /// Partitions without an owner although the table has members: those
    /// beyond the members' total capacity (see "Capacity and zones" in the
    /// module docs). Always 0 for a table whose members declare no capacity,
    /// and 0 for an empty table. A scan: O(`ring_size`).
    pub(crate) fn unassigned(&self) -> u32 {
        if self.members.is_empty() {
            return 0;
        }
        self.owner.iter().filter(|o| **o == NO_OWNER).count() as u32
    }

    /// Whether the next change must use the target-count rule: some
    /// partition is pinned, or some member declares a capacity or a zone, or
    /// some partition has no owner although members are present (left over
    /// from such members).
    fn is_constrained(&self) -> bool {
        !self.pins.is_empty()
            || (!self.members.is_empty()
                && (self.members.iter().any(|m| !m.attrs.is_plain())
                    || self.owner.contains(&NO_OWNER)))
    }

    /// The pins, `(partition, node id)`, ascending by partition: also those
    /// whose node is not a member now (see "Pins" in the module docs).
    pub(crate) fn pins(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.pins.iter().map(|(p, n)| (*p, &**n))
    }

    /// The node id partition `p` is pinned to, if any (member or not).
    pub(crate) fn pinned_to(&self, p: u32) -> Option<&str> {
        self.pins.get(&p).map(|n| &**n)
    }

    /// The active pins, `(partition, member index)` ascending by partition:
    /// those whose node is a member, each member's lowest-numbered pinned
    /// partitions up to its capacity.
    fn active_pins(&self) -> Vec<(u32, usize)> {
        if self.pins.is_empty() {
            return Vec::new();
        }
        let mut held = vec![0u32; self.members.len()];
        let mut out = Vec::new();
        for (&p, n) in &self.pins {
            let Some(i) = self.index_of(n) else {
                continue;
            };
            if self.members[i].capacity().is_none_or(|c| held[i] < c) {
                held[i] += 1;
                out.push((p, i));
            }
        }
        out
    }

    /// Adds `node_id` with `weight` (0 counts as 1: every member has a
    /// share) and no capacity or zone. It takes its quota, only from the
    /// existing members; see the module docs for the rule. A node id already
    /// present re-joins: it leaves first (so this is also how a weight
    /// changes). On a constrained table this is
    /// [`join_with`](Table::join_with) with plain attributes.
    pub(crate) fn join(&mut self, node_id: &str, weight: u32) -> Moved {
        self.join_with(node_id, weight, &MemberAttrs::default())
    }

    /// Adds `node_id` with `weight` and `attrs` (a re-join replaces the
    /// member): [`apply_change`](Table::apply_change) with only an eligible
    /// added member.
    pub(crate) fn join_with(&mut self, node_id: &str, weight: u32, attrs: &MemberAttrs) -> Moved {
        self.apply_change(
            &[],
            &[],
            &[],
            Some((node_id, weight, true, attrs.clone())),
            (&[], &[]),
        )
    }

    /// Removes `node_id` (a no-op for a non-member): its partitions go to
    /// the remaining members; see the module docs. The last leave empties
    /// the ring.
    pub(crate) fn leave(&mut self, node_id: &str) -> Moved {
        if self.is_constrained() {
            return self.apply_change(&[node_id.to_string()], &[], &[], None, (&[], &[]));
        }
        let mut log = MoveLog::default();
        self.leave_into(node_id, &mut log);
        log.finish()
    }

    /// One membership change, as the change log records it: the removals
    /// first, in ascending node id order (so that the order in which they
    /// are listed does not matter), then the join (plain attributes).
    /// Returns the net moves.
    pub(crate) fn apply(&mut self, removed: &[String], added: Option<(&str, u32)>) -> Moved {
        self.apply_change(
            removed,
            &[],
            &[],
            added.map(|(n, w)| (n, w, true, MemberAttrs::default())),
            (&[], &[]),
        )
    }

    /// One membership change with eligibility and pins (issue 19), in the
    /// one order every process uses: the pins change first (`pins` is
    /// `(pinned, unpinned)`: the unpinned partitions lose their pin, then
    /// each pinned one is pinned to its node, replacing any pin it had, in
    /// the order listed; partitions outside the ring are ignored), then the
    /// removals and the members that became ineligible leave (ascending
    /// node id each), then the members that became eligible join (ascending
    /// node id, with their weights and attributes), then the added member
    /// joins if it is eligible (an ineligible one that replaces its old self
    /// leaves instead). The table only ever holds eligible members: an
    /// ineligible member is a live member that owns nothing.
    ///
    /// When the table has no pin before or after the change, and neither
    /// the table nor a joining member declares a capacity or a zone, each
    /// leave and join runs the unconstrained rule in that order; otherwise
    /// the whole change is one step of the target-count rule ("Capacity and
    /// zones" and "Pins" in the module docs): one target computation and
    /// one round of moves.
    pub(crate) fn apply_change(
        &mut self,
        removed: &[String],
        ineligible: &[String],
        eligible: &[(&str, u32, MemberAttrs)],
        added: Option<(&str, u32, bool, MemberAttrs)>,
        pins: (&[(u32, String)], &[u32]),
    ) -> Moved {
        self.apply_change_within(removed, ineligible, eligible, added, pins, None)
    }

    /// [`apply_change`](Table::apply_change) on a ring with a move budget
    /// (`Some(k)`: `k` is what the budget leaves this change, see "Move
    /// budget" in the module docs): the whole change is one step of the
    /// target-count rule, whose round of moves takes at most `k` partitions
    /// from members that stay. `None`: no budget, as `apply_change`.
    pub(crate) fn apply_change_within(
        &mut self,
        removed: &[String],
        ineligible: &[String],
        eligible: &[(&str, u32, MemberAttrs)],
        added: Option<(&str, u32, bool, MemberAttrs)>,
        pins: (&[(u32, String)], &[u32]),
        budget: Option<u32>,
    ) -> Moved {
        let was_constrained = self.is_constrained();
        let (pinned, unpinned) = pins;
        for p in unpinned {
            self.pins.remove(p);
        }
        for (p, n) in pinned {
            if *p < self.ring_size {
                self.pins.insert(*p, Arc::from(n.as_str()));
            }
        }
        let mut removed: Vec<&str> = removed.iter().map(String::as_str).collect();
        removed.sort_unstable();
        removed.dedup();
        let mut leaving: Vec<&str> = ineligible.iter().map(String::as_str).collect();
        leaving.sort_unstable();
        leaving.dedup();
        // Ascending by (node id, weight); of one node id listed twice the
        // first stays.
        let mut joining: Vec<(&str, u32, &MemberAttrs)> =
            eligible.iter().map(|(n, w, a)| (*n, *w, a)).collect();
        joining.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        joining.dedup_by_key(|(n, _, _)| *n);
        let added = added.as_ref().map(|(n, w, e, a)| (*n, *w, *e, a));
        let attrs_join = joining.iter().any(|j| !j.2.normalized().is_plain())
            || added.is_some_and(|(_, _, e, a)| e && !a.normalized().is_plain());
        let mut log = MoveLog::default();
        if attrs_join || was_constrained || self.is_constrained() || budget.is_some() {
            self.change_constrained(&removed, &leaving, &joining, added, budget, &mut log);
            return log.finish();
        }
        for r in removed {
            self.leave_into(r, &mut log);
        }
        for r in leaving {
            self.leave_into(r, &mut log);
        }
        for (n, w, _) in joining {
            // Already placed (never produced by the store): left as it is,
            // not reshuffled by a re-join.
            if self.index_of(n).is_none() {
                self.join_into(n, w, &mut log);
            }
        }
        match added {
            Some((n, w, true, _)) => self.join_into(n, w, &mut log),
            Some((n, _, false, _)) => self.leave_into(n, &mut log),
            None => {}
        }
        log.finish()
    }

    /// Moves partition `p` from member `from` to member `to` (indices),
    /// logging it.
    fn reassign(
        &mut self,
        p: u32,
        from: usize,
        to: usize,
        names: &mut NameCache,
        log: &mut MoveLog,
    ) {
        self.owner[p as usize] = to as u32;
        self.members[from].partitions -= 1;
        self.members[to].partitions += 1;
        let f = names.get(from, &self.members, log);
        let t = names.get(to, &self.members, log);
        log.units.push((p, f, t));
    }

    fn join_into(&mut self, node_id: &str, weight: u32, log: &mut MoveLog) {
        let weight = weight.max(1);
        if self.index_of(node_id).is_some() {
            self.leave_into(node_id, log);
        }
        let k = self
            .members
            .binary_search_by(|m| (*m.node_id).cmp(node_id))
            .expect_err("the node left above");
        self.members.insert(k, BalancedMember::new(node_id, weight));
        self.total_weight += weight as u64;
        let n = self.members.len();
        if n == 1 {
            let me = log.name(&self.members[0].node_id);
            self.owner.fill(0);
            self.members[0].partitions = self.ring_size;
            log.units
                .extend((0..self.ring_size).map(|p| (p, NO_OWNER, me)));
            return;
        }
        let k32 = k as u32;
        // Branch-free, so that it vectorises.
        for o in &mut self.owner {
            *o += u32::from(*o >= k32);
        }
        // How many partitions each member gives, one at a time, always from
        // the member most above its new share.
        let total = self.total_weight as i128;
        let mut heap: BinaryHeap<(i128, u64, Reverse<usize>)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .map(|(i, m)| {
                (
                    self.excess(m.partitions, m.weight, total),
                    m.tie,
                    Reverse(i),
                )
            })
            .collect();
        let mut mine = self.excess(0, weight, total);
        let mut take = vec![0u32; n];
        while let Some(&(top, tie, Reverse(d))) = heap.peek() {
            let room = mine < 0; // one more keeps the joiner below its share + 1
            let must = top >= total || mine <= -total;
            let narrows = top - mine > total;
            if !room || !(must || narrows) {
                break;
            }
            debug_assert!(top > 0, "a donor with excess {top} has nothing to give");
            heap.pop();
            take[d] += 1;
            mine += total;
            heap.push((top - total, tie, Reverse(d)));
        }
        drop(heap);
        // Which partitions: each donor's best for the joiner. The donors'
        // partitions are bucketed by donor (a counting sort, no comparison
        // sort), then each bucket keeps its `take` best: O(ring_size).
        let joiner = Scorer::new(&self.members[k].node_id);
        let mut start = vec![0usize; n + 1];
        for d in 0..n {
            let c = if take[d] > 0 {
                self.members[d].partitions
            } else {
                0
            };
            start[d + 1] = start[d] + c as usize;
        }
        let mut buckets: Vec<(Reverse<u64>, u32)> = vec![(Reverse(0), 0); start[n]];
        let mut fill = start.clone();
        for (p, &o) in self.owner.iter().enumerate() {
            let o = o as usize;
            if take[o] > 0 {
                buckets[fill[o]] = (Reverse(joiner.score(p as u32)), p as u32);
                fill[o] += 1;
            }
        }
        let mut names = NameCache::new(n);
        for d in 0..n {
            let t = take[d] as usize;
            if t == 0 {
                continue;
            }
            let bucket = &mut buckets[start[d]..start[d + 1]];
            if t < bucket.len() {
                bucket.select_nth_unstable(t);
            }
            for i in 0..t {
                let p = buckets[start[d] + i].1;
                self.reassign(p, d, k, &mut names, log);
            }
        }
        self.repair(log);
    }

    fn leave_into(&mut self, node_id: &str, log: &mut MoveLog) {
        let Some(l) = self.index_of(node_id) else {
            return;
        };
        let n = self.members.len();
        let leaver = self.members.remove(l);
        self.total_weight -= leaver.weight as u64;
        if n == 1 {
            let me = log.name(&leaver.node_id);
            self.owner.fill(NO_OWNER);
            log.units
                .extend((0..self.ring_size).map(|p| (p, me, NO_OWNER)));
            return;
        }
        // Re-index around the removed member; its partitions are marked
        // with `gone` until handed out.
        let l32 = l as u32;
        let gone = (n - 1) as u32;
        let mut theirs: Vec<u32> = Vec::with_capacity(leaver.partitions as usize);
        theirs.extend((0..self.ring_size).filter(|p| self.owner[*p as usize] == l32));
        for o in &mut self.owner {
            *o -= u32::from(*o > l32);
        }
        for &p in &theirs {
            self.owner[p as usize] = gone;
        }
        // How many partitions each receiver gets: one at a time, to the
        // member most below its new share.
        let total = self.total_weight as i128;
        let mut heap: BinaryHeap<(Reverse<i128>, u64, Reverse<usize>)> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    Reverse(self.excess(m.partitions, m.weight, total)),
                    m.tie,
                    Reverse(i),
                )
            })
            .collect();
        let mut give = vec![0u32; n - 1];
        let mut order: Vec<usize> = Vec::new();
        for _ in 0..theirs.len() {
            let (Reverse(e), tie, Reverse(r)) = heap.pop().expect("members remain");
            if give[r] == 0 {
                order.push(r);
            }
            give[r] += 1;
            heap.push((Reverse(e + total), tie, Reverse(r)));
        }
        drop(heap);
        // Which partitions: in the order of their first turn, each receiver
        // picks the leaver's remaining partitions it scores highest.
        let from = log.name(&leaver.node_id);
        let mut names = NameCache::new(n - 1);
        let mut scored: Vec<(Reverse<u64>, u32)> = Vec::with_capacity(theirs.len());
        for r in order {
            let g = give[r] as usize;
            let rid = Scorer::new(&self.members[r].node_id);
            scored.clear();
            scored.extend(theirs.iter().map(|&p| (Reverse(rid.score(p)), p)));
            if g < scored.len() {
                scored.select_nth_unstable(g);
            }
            let to = names.get(r, &self.members, log);
            for &(_, p) in &scored[..g] {
                self.owner[p as usize] = r as u32;
                log.units.push((p, from, to));
            }
            self.members[r].partitions += g as u32;
            theirs.clear();
            theirs.extend(scored[g..].iter().map(|(_, p)| *p));
        }
        debug_assert!(theirs.is_empty());
        self.repair(log);
    }

    /// Restores the balance bound where the minimal moves could not (see the
    /// module docs): one partition at a time from the member most above its
    /// share to the one most below it, the receiver's best. Does nothing on a
    /// table within quota, which is the usual case.
    fn repair(&mut self, log: &mut MoveLog) {
        let total = self.total_weight as i128;
        let mut names = NameCache::new(self.members.len());
        loop {
            let key = |(i, m): (usize, &BalancedMember)| {
                (
                    self.excess(m.partitions, m.weight, total),
                    m.tie,
                    Reverse(i),
                )
            };
            let Some(hi) = self.members.iter().enumerate().map(key).max() else {
                return;
            };
            let lo = self
                .members
                .iter()
                .enumerate()
                .map(key)
                .min_by_key(|&(e, tie, i)| (e, Reverse(tie), Reverse(i)))
                .expect("members are present");
            if hi.0 < total && lo.0 > -total {
                return;
            }
            let (d, r) = (hi.2 .0, lo.2 .0);
            debug_assert!(d != r && self.members[d].partitions > 0);
            let rid = Scorer::new(&self.members[r].node_id);
            let p = (0..self.ring_size)
                .filter(|p| self.owner[*p as usize] == d as u32)
                .max_by_key(|p| (rid.score(*p), Reverse(*p)))
                .expect("the donor has a partition");
            self.reassign(p, d, r, &mut names, log);
        }
    }
}

/// Member index → name index in a [`MoveLog`], for one pass over a table
/// whose member indices do not change meanwhile.
struct NameCache(Vec<u32>);

impl NameCache {
    fn new(n: usize) -> NameCache {
        NameCache(vec![NO_OWNER; n])
    }

    fn get(&mut self, i: usize, members: &[BalancedMember], log: &mut MoveLog) -> u32 {
        if self.0[i] == NO_OWNER {
            self.0[i] = log.name(&members[i].node_id);
        }
        self.0[i]
    }
}

mod codec;
mod constrained;

// The tests (`use super::*`) check the stored form's layout and errors.
#[cfg(test)]
use crate::error::ErrorKind;
#[cfg(test)]
use codec::index_bits;

#[cfg(test)]
mod tests;
