//! The target-count rule, for tables whose members declare a capacity or a
//! zone ("Capacity and zones" in the module docs).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::{tie_hash, BalancedMember, MemberAttrs, MoveLog, NameCache, Scorer, Table, NO_OWNER};

/// One zone or one member, as [`water_fill`] splits a total among them.
struct Share {
    weight: u128,
    /// `None`: unbounded.
    capacity: Option<u128>,
    /// What it holds now: who gets the rounding's extra units.
    current: u64,
    tie: u64,
}

/// Splits `total` (at most the sum of the capacities) among `items`, each
/// within one of its weighted share water-filled against the capacities:
/// an item whose capacity is below its share gets exactly its capacity and
/// the rest is shared among the others by weight, until no capacity binds.
/// The free items get the floor of their share; the units left over go, one
/// each, to free items with a fractional share, those holding most above
/// their floor now first, then by higher tie hash, then by lower index.
/// Exact integers throughout.
fn water_fill(total: u64, items: &[Share]) -> Vec<u64> {
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
        let target = self.targets();
        self.move_to(&target, log);
    }

    /// Each member's target count: the placeable total split among the
    /// zones, then each zone's among its members (see [`water_fill`]).
    pub(super) fn targets(&self) -> Vec<u64> {
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
    /// members above it give up the partitions they score lowest; then the
    /// members below it, most below first, each take the free partitions
    /// they score highest. The rest stays without an owner.
    fn move_to(&mut self, target: &[u64], log: &mut MoveLog) {
        let n = self.members.len();
        let mut names = NameCache::new(n);
        // Surplus: bucket the donors' partitions, each keeps its best.
        let give: Vec<usize> = (0..n)
            .map(|i| (self.members[i].partitions as u64).saturating_sub(target[i]) as usize)
            .collect();
        if give.iter().any(|g| *g > 0) {
            let mut theirs: Vec<Vec<(u64, u32)>> = vec![Vec::new(); n];
            let scorers: Vec<Option<Scorer>> = (0..n)
                .map(|i| (give[i] > 0).then(|| Scorer::new(&self.members[i].node_id)))
                .collect();
            for (p, &o) in self.owner.iter().enumerate() {
                if o != NO_OWNER {
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
        let mut scored: Vec<(Reverse<u64>, u32)> = Vec::with_capacity(free.len());
        for (Reverse(g), _, r) in order {
            let g = g as usize;
            debug_assert!(g <= free.len(), "targets sum to at most the ring");
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
}
