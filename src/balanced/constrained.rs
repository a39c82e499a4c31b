//! The target-count rule, for tables whose members declare a capacity or a
//! zone, or with pins ("Capacity and zones" and "Pins" in the module docs).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::{tie_hash, BalancedMember, MemberAttrs, MoveLog, NameCache, Scorer, Table, NO_OWNER};

/// One zone or one member, as [`water_fill`] splits a total among them.
pub(super) struct Share {
    pub(super) weight: u128,
    /// `None`: unbounded.
    pub(super) capacity: Option<u128>,
    /// At least this much (its active pins; at most `capacity`).
    pub(super) floor: u128,
    /// What it holds now: who gets the rounding's extra units.
    pub(super) current: u64,
    pub(super) tie: u64,
}

/// Splits `total` (at most the sum of the capacities) among `items`, each
/// within one of its weighted share water-filled against the capacities:
/// an item whose capacity is below its share gets exactly its capacity and
/// the rest is shared among the others by weight, until no capacity binds.
/// The free items get the floor of their share; the units left over go, one
/// each, to free items with a fractional share, those holding most above
/// their floor now first, then by higher tie hash, then by lower index.
/// Exact integers throughout.
///
/// With floors (active pins), see [`water_fill_between`]; without, this is
/// the computation as it was before pins existed, kept as it is.
pub(super) fn water_fill(total: u64, items: &[Share]) -> Vec<u64> {
    if items.iter().any(|s| s.floor > 0) {
        return water_fill_between(total, items);
    }
    let n = items.len();
    let mut out = vec![0u64; n];
    if n == 0 {
        return out;
    }
    let mut fixed = vec![false; n];
    let mut rest = total as u128;
    let mut weight: u128 = items.iter().map(|s| s.weight).sum();
    // The capacities that bind, lowest capacity-to-weight ratio first.
    let mut capped: Vec<usize> = (0..n).filter(|&i| items[i].capacity.is_some()).collect();
    capped.sort_by(|&a, &b| {
        let (ca, cb) = (items[a].capacity.unwrap(), items[b].capacity.unwrap());
        (ca * items[b].weight)
            .cmp(&(cb * items[a].weight))
            .then(a.cmp(&b))
    });
    for i in capped {
        let c = items[i].capacity.expect("capped");
        // Below its share rest · w / weight?
        if weight > items[i].weight && c * weight < rest * items[i].weight {
            fixed[i] = true;
            out[i] = c as u64;
            rest -= c;
            weight -= items[i].weight;
        } else {
            break;
        }
    }
    let mut left = rest;
    let mut fractional: Vec<(Reverse<i128>, Reverse<u64>, usize)> = Vec::new();
    for i in (0..n).filter(|&i| !fixed[i]) {
        let share = rest * items[i].weight;
        let floor = share / weight;
        out[i] = floor as u64;
        left -= floor;
        if share % weight != 0 {
            let above = items[i].current as i128 - floor as i128;
            fractional.push((Reverse(above), Reverse(items[i].tie), i));
        }
    }
    fractional.sort_unstable();
    debug_assert!(left as usize <= fractional.len());
    for &(_, _, i) in &fractional[..left as usize] {
        out[i] += 1;
    }
    debug_assert!(out
        .iter()
        .zip(items)
        .all(|(o, s)| s.capacity.is_none_or(|c| *o as u128 <= c)));
    out
}

/// `a/b < c/d` for positive denominators.
fn less(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 * b.1 < b.0 * a.1
}

/// [`water_fill`] with floors: each item gets `clamp(λ·weight, floor,
/// capacity)` for the one level `λ` at which these sum to `total` (at least
/// the sum of the floors, at most that of the capacities), rounded the same
/// way: the items strictly between their bounds get the floor of their
/// share, and the units left over go to those with a fractional share,
/// those holding most above their floor now first, then by higher tie hash,
/// then by lower index. Without floors that is what [`water_fill`]
/// computes (a test checks they agree). Exact integers throughout: the
/// level is found among the breakpoints `floor/weight` and
/// `capacity/weight` by a binary search, O(n·log n).
pub(super) fn water_fill_between(total: u64, items: &[Share]) -> Vec<u64> {
    let n = items.len();
    let mut out = vec![0u64; n];
    if n == 0 {
        return out;
    }
    let total = total as u128;
    debug_assert!(items
        .iter()
        .all(|s| s.capacity.is_none_or(|c| s.floor <= c)));
    // Σ clamp(λ·w, floor, capacity) compared with the total, at λ = a/b:
    // Σ clamp(a·w, floor·b, capacity·b) vs total·b.
    let at_most_total = |(a, b): (u128, u128)| -> bool {
        let sum: u128 = items
            .iter()
            .map(|s| {
                let v = (a * s.weight).max(s.floor * b);
                s.capacity.map_or(v, |c| v.min(c * b))
            })
            .sum();
        sum <= total * b
    };
    let mut points: Vec<(u128, u128)> = items
        .iter()
        .flat_map(|s| std::iter::once((s.floor, s.weight)).chain(s.capacity.map(|c| (c, s.weight))))
        .collect();
    points.sort_unstable_by(|x, y| (x.0 * y.1).cmp(&(y.0 * x.1)));
    // The last breakpoint where the sum is at most the total (the first one
    // is: every item is at its floor there); the level lies between it and
    // the next one.
    let k = points.partition_point(|&p| at_most_total(p)) - 1;
    let lo = points[k];
    let hi = points[k + 1..].iter().copied().find(|&p| less(lo, p));
    // Between `lo` and `hi` each item is at its floor (floor/w ≥ hi), at
    // its capacity (capacity/w ≤ lo), or free.
    let mut rest = total;
    let mut weight = 0u128;
    let mut free = vec![false; n];
    for (i, s) in items.iter().enumerate() {
        let f = (s.floor, s.weight);
        if hi.is_some_and(|h| !less(f, h)) {
            out[i] = s.floor as u64;
            rest -= s.floor;
        } else if let Some(c) = s.capacity.filter(|&c| !less(lo, (c, s.weight))) {
            out[i] = c as u64;
            rest -= c;
        } else {
            free[i] = true;
            weight += s.weight;
        }
    }
    if weight == 0 {
        debug_assert_eq!(rest, 0);
        return out;
    }
    let mut left = rest;
    let mut fractional: Vec<(Reverse<i128>, Reverse<u64>, usize)> = Vec::new();
    for i in (0..n).filter(|&i| free[i]) {
        let share = rest * items[i].weight;
        let floor = share / weight;
        out[i] = floor as u64;
        left -= floor;
        if share % weight != 0 {
            let above = items[i].current as i128 - floor as i128;
            fractional.push((Reverse(above), Reverse(items[i].tie), i));
        }
    }
    fractional.sort_unstable();
    debug_assert!(left as usize <= fractional.len());
    for &(_, _, i) in &fractional[..left as usize] {
        out[i] += 1;
    }
    debug_assert!(out
        .iter()
        .zip(items)
        .all(|(o, s)| { *o as u128 >= s.floor && s.capacity.is_none_or(|c| *o as u128 <= c) }));
    out
}

impl Table {
    /// One change under the target-count rule: `removed` and `leaving`
    /// leave, `joining` join (unless present), `added` joins (updated in
    /// place if present: it keeps its partitions) or leaves; then one target
    /// computation and one round of moves.
    pub(super) fn change_constrained(
        &mut self,
        removed: &[&str],
        leaving: &[&str],
        joining: &[(&str, u32, &MemberAttrs)],
        added: Option<(&str, u32, bool, &MemberAttrs)>,
        budget: Option<u32>,
        log: &mut MoveLog,
    ) {
        // The next member set: node id → (weight, attributes, old index).
        let mut next: BTreeMap<&str, (u32, MemberAttrs, Option<usize>)> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (&*m.node_id, (m.weight, m.attrs.clone(), Some(i))))
            .collect();
        for r in removed.iter().chain(leaving) {
            next.remove(r);
        }
        for &(n, w, a) in joining {
            next.entry(n).or_insert((w.max(1), a.normalized(), None));
        }
        match added {
            Some((n, w, true, a)) => {
                let e = next.entry(n).or_insert((0, MemberAttrs::default(), None));
                e.0 = w.max(1);
                e.1 = a.normalized();
            }
            Some((n, _, false, _)) => {
                next.remove(n);
            }
            None => {}
        }
        // Re-index the owners; the leavers' partitions lose their owner.
        let mut remap = vec![NO_OWNER; self.members.len()];
        let mut members: Vec<BalancedMember> = Vec::with_capacity(next.len());
        for (k, (n, (w, a, old))) in next.into_iter().enumerate() {
            let mut m = match old {
                Some(i) => {
                    remap[i] = k as u32;
                    self.members[i].clone()
                }
                None => BalancedMember::new(n, w),
            };
            m.weight = w;
            m.attrs = a;
            members.push(m);
        }
        let mut names = NameCache::new(self.members.len());
        for (p, o) in self.owner.iter_mut().enumerate() {
            if *o == NO_OWNER {
                continue;
            }
            let to = remap[*o as usize];
            if to == NO_OWNER {
                let from = names.get(*o as usize, &self.members, log);
                log.units.push((p as u32, from, NO_OWNER));
            }
            *o = to;
        }
        self.members = members;
        self.total_weight = self.members.iter().map(|m| m.weight as u64).sum();
        let pinned = self.active_pins();
        let target = self.targets(&pinned);
        self.move_to(&target, &pinned, budget, log);
    }

    /// How many partitions the target-count rule would still place: the
    /// members' shortfalls below their targets. 0 when the table is
    /// balanced; on a ring with a move budget, what later steps move.
    pub(crate) fn pending_moves(&self) -> u64 {
        if self.members.is_empty() {
            return 0;
        }
        let pinned = self.active_pins();
        let target = self.targets(&pinned);
        target
            .iter()
            .zip(&self.members)
            .map(|(t, m)| t.saturating_sub(m.partitions as u64))
            .sum()
    }

    /// Each member's target count: the placeable total split among the
    /// zones, then each zone's among its members (see [`water_fill`]), each
    /// zone and member at least its active pins (`pinned`, from
    /// [`active_pins`](Table::active_pins)).
    pub(super) fn targets(&self, pinned: &[(u32, usize)]) -> Vec<u64> {
        let mut pins = vec![0u128; self.members.len()];
        for &(_, i) in pinned {
            pins[i] += 1;
        }
        let cap_sum = |ms: &[usize]| -> Option<u128> {
            ms.iter()
                .map(|&i| self.members[i].attrs.capacity.map(u128::from))
                .sum()
        };
        let all: Vec<usize> = (0..self.members.len()).collect();
        let placeable = match cap_sum(&all) {
            Some(c) => c.min(self.ring_size as u128) as u64,
            None => self.ring_size as u64,
        };
        // Zones in ascending order, "no zone" first.
        let mut zones: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            zones.entry(m.zone()).or_default().push(i);
        }
        let zone_shares: Vec<Share> = zones
            .iter()
            .map(|(z, ms)| Share {
                weight: ms.iter().map(|&i| self.members[i].weight as u128).sum(),
                capacity: cap_sum(ms),
                floor: ms.iter().map(|&i| pins[i]).sum(),
                current: ms.iter().map(|&i| self.members[i].partitions as u64).sum(),
                tie: tie_hash(z.unwrap_or("")),
            })
            .collect();
        let zone_target = water_fill(placeable, &zone_shares);
        let mut target = vec![0u64; self.members.len()];
        for ((_, ms), zt) in zones.iter().zip(zone_target) {
            let shares: Vec<Share> = ms
                .iter()
                .map(|&i| {
                    let m = &self.members[i];
                    Share {
                        weight: m.weight as u128,
                        capacity: m.attrs.capacity.map(u128::from),
                        floor: pins[i],
                        current: m.partitions as u64,
                        tie: m.tie,
                    }
                })
                .collect();
            for (&i, t) in ms.iter().zip(water_fill(zt, &shares)) {
                target[i] = t;
            }
        }
        target
    }

    /// Moves partitions so that every member holds exactly its target:
    /// first each active pin's partition goes to its node (`pinned`, from
    /// [`active_pins`](Table::active_pins); every target covers its
    /// member's), then the members above their target give up the unpinned
    /// partitions they score lowest; then the members below it, most below
    /// first, each take the free partitions they score highest. The rest
    /// stays without an owner.
    ///
    /// With a move budget `Some(k)`, the members above their target give up
    /// at most `k` partitions between them, one at a time from the one then
    /// most above (higher tie hash, lower index on a tie); the free
    /// partitions (those and the orphans) then go one at a time to the
    /// member then most below its target, so that a step spreads over the
    /// receivers. Pins' forced moves are an operator's and not counted.
    fn move_to(
        &mut self,
        target: &[u64],
        pinned: &[(u32, usize)],
        budget: Option<u32>,
        log: &mut MoveLog,
    ) {
        let n = self.members.len();
        let mut names = NameCache::new(n);
        // Pins first: each active pin's partition to its node, and kept
        // there below (marked `held`).
        let mut held = vec![
            false;
            if pinned.is_empty() {
                0
            } else {
                self.ring_size as usize
            }
        ];
        for &(p, i) in pinned {
            held[p as usize] = true;
            let o = self.owner[p as usize];
            if o == i as u32 {
                continue;
            }
            let from = if o == NO_OWNER {
                NO_OWNER
            } else {
                self.members[o as usize].partitions -= 1;
                names.get(o as usize, &self.members, log)
            };
            self.owner[p as usize] = i as u32;
            self.members[i].partitions += 1;
            let to = names.get(i, &self.members, log);
            log.units.push((p, from, to));
        }
        // Surplus: bucket the donors' partitions, each keeps its best.
        let mut give: Vec<usize> = (0..n)
            .map(|i| (self.members[i].partitions as u64).saturating_sub(target[i]) as usize)
            .collect();
        if let Some(k) = budget {
            give = self.spread(&give, k as usize);
        }
        if give.iter().any(|g| *g > 0) {
            let mut theirs: Vec<Vec<(u64, u32)>> = vec![Vec::new(); n];
            let scorers: Vec<Option<Scorer>> = (0..n)
                .map(|i| (give[i] > 0).then(|| Scorer::new(&self.members[i].node_id)))
                .collect();
            for (p, &o) in self.owner.iter().enumerate() {
                if o != NO_OWNER && !held.get(p).is_some_and(|h| *h) {
                    if let Some(s) = &scorers[o as usize] {
                        theirs[o as usize].push((s.score(p as u32), p as u32));
                    }
                }
            }
            for (d, mut bucket) in theirs.into_iter().enumerate() {
                let g = give[d];
                if g == 0 {
                    continue;
                }
                if g < bucket.len() {
                    bucket.select_nth_unstable(g);
                }
                let from = names.get(d, &self.members, log);
                for &(_, p) in &bucket[..g] {
                    self.owner[p as usize] = NO_OWNER;
                    log.units.push((p, from, NO_OWNER));
                }
                self.members[d].partitions -= g as u32;
            }
        }
        // Deficits: most below target first, then higher tie hash, then
        // lower node id.
        let mut order: Vec<(Reverse<u64>, Reverse<u64>, usize)> = (0..n)
            .filter_map(|i| {
                let short = target[i].saturating_sub(self.members[i].partitions as u64);
                (short > 0).then_some((Reverse(short), Reverse(self.members[i].tie), i))
            })
            .collect();
        if order.is_empty() {
            return;
        }
        order.sort_unstable();
        let mut free: Vec<u32> = (0..self.ring_size)
            .filter(|p| self.owner[*p as usize] == NO_OWNER)
            .collect();
        let short: usize = order.iter().map(|(Reverse(g), _, _)| *g as usize).sum();
        if short > free.len() {
            // Fewer free partitions than places (a budgeted step): one
            // at a time to the member then most below its target.
            let want: Vec<usize> = {
                let mut w = vec![0usize; n];
                for &(Reverse(g), _, i) in &order {
                    w[i] = g as usize;
                }
                w
            };
            let got = self.spread(&want, free.len());
            order.retain_mut(|(g, _, i)| {
                *g = Reverse(got[*i] as u64);
                got[*i] > 0
            });
        }
        let mut scored: Vec<(Reverse<u64>, u32)> = Vec::with_capacity(free.len());
        for (Reverse(g), _, r) in order {
            let g = g as usize;
            debug_assert!(g <= free.len(), "targets sum to at most the ring");
            if g == 0 {
                continue;
            }
            let rid = Scorer::new(&self.members[r].node_id);
            scored.clear();
            scored.extend(free.iter().map(|&p| (Reverse(rid.score(p)), p)));
            if g < scored.len() {
                scored.select_nth_unstable(g);
            }
            let to = names.get(r, &self.members, log);
            for &(_, p) in &scored[..g] {
                self.owner[p as usize] = r as u32;
                log.units.push((p, NO_OWNER, to));
            }
            self.members[r].partitions += g as u32;
            free.clear();
            free.extend(scored[g..].iter().map(|(_, p)| *p));
        }
    }

    /// Of the amounts `want` (per member index), at most `k` units in all:
    /// one at a time to the member then wanting most, then higher tie hash,
    /// then lower index. All of `want` when it sums to at most `k`.
    fn spread(&self, want: &[usize], k: usize) -> Vec<usize> {
        if want.iter().sum::<usize>() <= k {
            return want.to_vec();
        }
        let mut heap: BinaryHeap<(usize, u64, Reverse<usize>)> = want
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, w)| (*w, self.members[i].tie, Reverse(i)))
            .collect();
        let mut got = vec![0usize; want.len()];
        for _ in 0..k {
            let Some((w, tie, Reverse(i))) = heap.pop() else {
                break;
            };
            got[i] += 1;
            if w > 1 {
                heap.push((w - 1, tie, Reverse(i)));
            }
        }
        got
    }
}
