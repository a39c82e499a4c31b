//! Tests of the ring view: arcs, owners, deltas against rebuilds.

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
        added_metadata: None,
        ..Default::default()
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
        let after = before.apply(&Change { epoch: 2, removed: vec![], added: Some(("joiner".into(), vec![newpos])), added_metadata: None, ..Default::default() });
        // A member the change left as it was is shared with the view before
        // (every member of a fleet applies every change: one allocation per
        // changed member, not one per member); one it changed is not.
        for m in after.members() {
            if let Some(old) = before.member(m.node_id()) {
                prop_assert_eq!(
                    std::sync::Arc::ptr_eq(&old.0, &m.0),
                    old.partition_count() == m.partition_count(),
                    "member {} shared although changed, or copied although unchanged", m.node_id()
                );
            }
        }
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

    #[test]
    fn apply_equals_a_rebuild_of_the_changed_pairs(
        ring_size in 1u32..300,
        raw in proptest::collection::vec((0u32..320, 0usize..8), 0..40),
        removed in proptest::collection::vec(0usize..10, 0..4),
        added in proptest::option::of((0usize..10, proptest::collection::vec(0u32..320, 0..6))),
    ) {
        let name = |i: usize| format!("n{i}");
        let before = RingView::build(1, ring_size, raw.iter().map(|(p, i)| (*p, name(*i))).collect::<Vec<_>>().iter().map(|(p, n)| (*p, n.as_str())));
        let change = Change {
            epoch: 2,
            removed: removed.iter().map(|i| name(*i)).collect(),
            added: added.clone().map(|(i, ps)| (name(i), ps)),
            added_metadata: None,
            ..Default::default()
        };
        let got = before.apply(&change);
        // The reference: the old view's pairs, changed, built anew.
        let added_name = change.added.as_ref().map(|(n, _)| n.clone());
        let mut pairs: Vec<(u32, String)> = before
            .vnodes()
            .filter(|(_, n)| !change.removed.iter().any(|r| r == n) && Some(n.to_string()) != added_name)
            .map(|(p, n)| (p, n.to_string()))
            .collect();
        if let Some((n, ps)) = &change.added {
            pairs.extend(ps.iter().map(|p| (*p, n.clone())));
        }
        let want = RingView::build(2, ring_size, pairs.iter().map(|(p, n)| (*p, n.as_str())));
        prop_assert_eq!(got.epoch(), 2);
        prop_assert_eq!(got.members(), want.members());
        prop_assert_eq!(got.vnodes().collect::<Vec<_>>(), want.vnodes().collect::<Vec<_>>());
        for p in 0..ring_size + 2 {
            prop_assert_eq!(got.owner_of(p), want.owner_of(p));
        }
    }

    #[test]
    fn build_ignores_duplicates_and_out_of_range_positions(
        ring_size in 1u32..200,
        raw in proptest::collection::vec((0u32..220, 0usize..6), 0..30),
    ) {
        let pairs: Vec<(u32, String)> = raw.iter().map(|(p, i)| (*p, format!("n{i}"))).collect();
        let v = RingView::build(1, ring_size, pairs.iter().map(|(p, n)| (*p, n.as_str())));
        // The smallest node id wins a duplicate position.
        let mut want: std::collections::BTreeMap<u32, &str> = std::collections::BTreeMap::new();
        for (p, n) in &pairs {
            if *p < ring_size {
                let e = want.entry(*p).or_insert(n.as_str());
                if n.as_str() < *e { *e = n.as_str(); }
            }
        }
        prop_assert_eq!(v.vnodes().collect::<Vec<_>>(), want.iter().map(|(p, n)| (*p, *n)).collect::<Vec<_>>());
        let total: u32 = v.members().iter().map(|m| m.partition_count()).sum();
        prop_assert_eq!(total, if want.is_empty() { 0 } else { ring_size });
        for m in v.members() {
            prop_assert!(!m.positions().is_empty());
            prop_assert!(m.positions().windows(2).all(|w| w[0] < w[1]));
            let scanned: Vec<u32> = (0..ring_size).filter(|p| v.owner_of(*p) == Some(m.node_id())).collect();
            prop_assert_eq!(v.partitions_of(m.node_id()), scanned);
        }
    }
}

/// A random history of joins (with weights from their positions) and
/// leaves, applied to a balanced view one change at a time.
fn balanced_history(ring_size: u32, steps: &[(bool, u8, u8)]) -> (Vec<Change>, Vec<RingView>) {
    let mut view = RingView::empty_with(0, ring_size, Placement::Balanced);
    let mut taken: HashSet<u32> = HashSet::new();
    let mut live: Vec<String> = Vec::new();
    let (mut changes, mut views) = (Vec::new(), Vec::new());
    for (i, (join, who, weight)) in steps.iter().enumerate() {
        let epoch = i as u64 + 1;
        let change = if *join || live.is_empty() {
            let name = format!("n{who}");
            if live.contains(&name) {
                continue;
            }
            let w = 1 + (*weight as u32 % 4);
            let Some(ps) = choose_positions(&name, w, ring_size, |p| taken.contains(&p)) else {
                continue;
            };
            taken.extend(ps.iter().copied());
            live.push(name.clone());
            Change {
                epoch,
                removed: vec![],
                added: Some((name, ps)),
                added_metadata: Some(format!("md{who}")),
                ..Default::default()
            }
        } else {
            let name = live.remove(*who as usize % live.len());
            for p in view.member(&name).unwrap().positions() {
                taken.remove(p);
            }
            Change {
                epoch,
                removed: vec![name],
                added: None,
                added_metadata: None,
                ..Default::default()
            }
        };
        let epoch_fixed = Change {
            epoch: view.epoch() + 1,
            ..change
        };
        view = view.apply(&epoch_fixed);
        changes.push(epoch_fixed);
        views.push(view.clone());
    }
    (changes, views)
}

proptest! {
    #[test]
    fn balanced_views_are_within_one_of_the_share_and_deltas_agree(
        ring_size in 8u32..300,
        steps in proptest::collection::vec((proptest::bool::weighted(0.6), 0u8..12, any::<u8>()), 1..30),
    ) {
        let (changes, views) = balanced_history(ring_size, &steps);
        let start = RingView::empty_with(0, ring_size, Placement::Balanced);
        for (k, v) in views.iter().enumerate() {
            prop_assert_eq!(v.placement(), Placement::Balanced);
            let total: u64 = v.members().iter().map(|m| m.weight() as u64).sum();
            let mut sum = 0;
            for m in v.members() {
                let share = ring_size as f64 * m.weight() as f64 / total as f64;
                prop_assert!((m.partition_count() as f64 - share).abs() < 1.0,
                    "{} holds {} of share {share}", m.node_id(), m.partition_count());
                prop_assert_eq!(m.metadata().map(str::to_string), Some(format!("md{}", &m.node_id()[1..])));
                // partitions_of and owner_of agree.
                for p in v.partitions_of(m.node_id()) {
                    prop_assert_eq!(v.owner_of(p), Some(m.node_id()));
                }
                sum += m.partition_count();
            }
            if !v.members().is_empty() {
                prop_assert_eq!(sum, ring_size);
                let arcs: u32 = v.arcs().iter().map(|(a, _)| a.end - a.start + 1).sum();
                prop_assert_eq!(arcs, ring_size);
            }
            // Applying the changes all at once (a member that fell behind)
            // gives the same view as one by one.
            let all = start.apply_all(&changes[..=k]);
            prop_assert_eq!(all.epoch(), v.epoch());
            for p in 0..ring_size {
                prop_assert_eq!(all.owner_of(p), v.owner_of(p));
            }
        }
    }

    #[test]
    fn a_balanced_view_from_the_stored_table_equals_the_one_from_deltas(
        ring_size in 8u32..300,
        steps in proptest::collection::vec((proptest::bool::weighted(0.6), 0u8..12, any::<u8>()), 1..20),
    ) {
        // What the store does: the writer applies each change to the table
        // it read, encodes it; a reader decodes it and builds the view from
        // the vnodes and the table.
        let (changes, views) = balanced_history(ring_size, &steps);
        let mut t = Table::empty(ring_size);
        for (c, v) in changes.iter().zip(&views) {
            t.apply(&c.removed, c.added.as_ref().map(|(n, ps)| (n.as_str(), ps.len() as u32)));
            let stored = Table::decode(&t.encode()).unwrap();
            prop_assert!(stored == t);
            let pairs: Vec<(u32, &str)> = v.vnodes().collect();
            let read = RingView::build_with(v.epoch(), ring_size, pairs, Some(Arc::new(stored)), |_| None, |_| true, |_| Default::default());
            for p in 0..ring_size {
                prop_assert_eq!(read.owner_of(p), v.owner_of(p));
            }
        }
    }
}

#[test]
fn a_hashed_view_ignores_weights_and_keeps_arcs() {
    let v = RingView::empty_with(0, 16, Placement::Hashed);
    assert_eq!(v.placement(), Placement::Hashed);
    let v = v.apply(&Change {
        epoch: 1,
        removed: vec![],
        added: Some(("a".into(), vec![3, 9])),
        added_metadata: None,
        ..Default::default()
    });
    assert_eq!(v.member("a").unwrap().weight(), 2);
    assert_eq!(v.arcs().len(), 2);
    assert_eq!(v.owner_info(4).map(|m| m.node_id()), Some("a"));
}

// ---- eligibility (issue 19) ---------------------------------------------

/// A random history of joins (eligible or not), leaves and eligibility
/// flips, as changes, from an empty ring under `placement`.
fn eligibility_history(
    ring_size: u32,
    placement: Placement,
    steps: &[(u8, u8, u8)],
) -> (RingView, Vec<Change>) {
    let start = RingView::empty_with(0, ring_size, placement);
    let mut v = start.clone();
    let mut changes = Vec::new();
    for (i, &(op, who, extra)) in steps.iter().enumerate() {
        let name = format!("m{}", who % 10);
        let epoch = i as u64 + 1;
        let present = v.member(&name);
        let change = match (op % 4, present) {
            (0 | 1, None) => {
                let taken: HashSet<u32> = v.vnodes().map(|(p, _)| p).collect();
                let n = 1 + u32::from(extra % 4);
                let Some(ps) = choose_positions(&name, n, ring_size, |p| taken.contains(&p)) else {
                    continue;
                };
                Change {
                    epoch,
                    added: Some((name, ps)),
                    added_ineligible: op % 4 == 1,
                    ..Default::default()
                }
            }
            (0 | 1, Some(_)) => Change {
                epoch,
                removed: vec![name],
                ..Default::default()
            },
            (_, Some(m)) if m.is_eligible() => Change {
                epoch,
                ineligible: vec![name],
                ..Default::default()
            },
            (_, Some(_)) => Change {
                epoch,
                eligible: vec![name],
                ..Default::default()
            },
            (_, None) => continue,
        };
        let change = Change {
            epoch: v.epoch() + 1,
            ..change
        };
        v = v.apply(&change);
        changes.push(change);
    }
    (start, changes)
}

/// The placement rules over eligible members only.
fn check_eligible_placement(v: &RingView) -> Result<(), TestCaseError> {
    let ring_size = v.ring_size();
    let eligible: Vec<&MemberInfo> = v.members().iter().filter(|m| m.is_eligible()).collect();
    for m in v.members() {
        if !m.is_eligible() {
            prop_assert_eq!(m.partition_count(), 0, "{} is ineligible", m.node_id());
            prop_assert!(v.partitions_of(m.node_id()).is_empty());
        } else {
            prop_assert_eq!(
                v.partitions_of(m.node_id()).len() as u32,
                m.partition_count()
            );
        }
    }
    for p in 0..ring_size {
        match v.owner_of(p) {
            Some(o) => prop_assert!(v.member(o).unwrap().is_eligible(), "{} owns {}", o, p),
            None => prop_assert!(eligible.is_empty(), "partition {} has no owner", p),
        }
    }
    if eligible.is_empty() {
        let want = if v.members().is_empty() { 0 } else { ring_size };
        prop_assert_eq!(v.unassigned(), want);
        prop_assert!(v.arcs().is_empty());
        return Ok(());
    }
    prop_assert_eq!(v.unassigned(), 0);
    let arcs: u32 = v
        .arcs()
        .iter()
        .map(|(a, _)| {
            if a.start <= a.end {
                a.end - a.start + 1
            } else {
                ring_size - a.start + a.end + 1
            }
        })
        .sum();
    prop_assert_eq!(arcs, ring_size);
    if v.placement() == Placement::Balanced {
        // Within one partition of the weighted share over the eligible.
        let w: i128 = eligible.iter().map(|m| i128::from(m.weight())).sum();
        for m in &eligible {
            let excess = i128::from(m.partition_count()) * w
                - i128::from(ring_size) * i128::from(m.weight());
            prop_assert!(
                excess.abs() < w,
                "{} holds {} of {}",
                m.node_id(),
                m.partition_count(),
                ring_size
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn ineligible_members_own_nothing_and_every_process_agrees(
        ring_size in 8u32..200,
        balanced in any::<bool>(),
        steps in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..30),
    ) {
        let placement = if balanced { Placement::Balanced } else { Placement::Hashed };
        let (start, changes) = eligibility_history(ring_size, placement, &steps);
        let mut v = start.clone();
        let mut t = Table::empty(ring_size);
        for (k, c) in changes.iter().enumerate() {
            let before = v.clone();
            v = v.apply(c);
            check_eligible_placement(&v)?;
            // Another process applying the same changes, all at once.
            let all = start.apply_all(&changes[..=k]);
            // A reader of the store: vnodes, eligibility and (balanced) the
            // table the writer computed the store's way.
            if balanced {
                let eligible: Vec<(&str, u32, MemberAttrs)> = c
                    .eligible
                    .iter()
                    .filter_map(|n| before.member(n).map(|m| (n.as_str(), m.weight(), MemberAttrs::default())))
                    .collect();
                t.apply_change(
                    &c.removed,
                    &c.ineligible,
                    &eligible,
                    c.added.as_ref().map(|(n, ps)| (n.as_str(), ps.len() as u32, !c.added_ineligible, MemberAttrs::default())),
                    (&[], &[]),
                );
            }
            let pairs: Vec<(u32, &str)> = v.vnodes().collect();
            let read = RingView::build_with(
                v.epoch(),
                ring_size,
                pairs,
                balanced.then(|| Arc::new(Table::decode(&t.encode()).unwrap())),
                |_| None,
                |n| v.member(n).is_none_or(|m| m.is_eligible()),
                |_| Default::default(),
            );
            for p in 0..ring_size {
                prop_assert_eq!(all.owner_of(p), v.owner_of(p), "apply_all, partition {}", p);
                prop_assert_eq!(read.owner_of(p), v.owner_of(p), "stored read, partition {}", p);
            }
            for (a, b) in all.members().iter().zip(v.members()) {
                prop_assert_eq!(a.is_eligible(), b.is_eligible());
            }
        }
    }

    #[test]
    fn flipping_eligibility_off_and_on_returns_to_a_valid_placement(
        ring_size in 32u32..200,
        balanced in any::<bool>(),
        n in 2usize..8,
        who in any::<prop::sample::Index>(),
    ) {
        let placement = if balanced { Placement::Balanced } else { Placement::Hashed };
        let mut v = RingView::empty_with(0, ring_size, placement);
        for i in 0..n {
            let name = format!("m{i}");
            let taken: HashSet<u32> = v.vnodes().map(|(p, _)| p).collect();
            let ps = choose_positions(&name, 4, ring_size, |p| taken.contains(&p)).unwrap();
            v = v.apply(&Change { epoch: v.epoch() + 1, added: Some((name, ps)), ..Default::default() });
        }
        let name = format!("m{}", who.index(n));
        let off = v.apply(&Change { epoch: v.epoch() + 1, ineligible: vec![name.clone()], ..Default::default() });
        check_eligible_placement(&off)?;
        prop_assert!(off.partitions_of(&name).is_empty());
        prop_assert!(off.member(&name).is_some(), "still a member");
        // Nobody but the ineligible member's partitions moved.
        for p in 0..ring_size {
            if v.owner_of(p) != Some(name.as_str()) {
                prop_assert_eq!(off.owner_of(p), v.owner_of(p));
            }
        }
        let on = off.apply(&Change { epoch: off.epoch() + 1, eligible: vec![name.clone()], ..Default::default() });
        check_eligible_placement(&on)?;
        prop_assert!(!on.partitions_of(&name).is_empty());
        if !balanced {
            // Hashed placement is a function of the eligible members.
            for p in 0..ring_size {
                prop_assert_eq!(on.owner_of(p), v.owner_of(p));
            }
        }
    }
}

#[test]
fn a_ring_of_ineligible_members_assigns_nothing() {
    for placement in [Placement::Hashed, Placement::Balanced] {
        let v = RingView::empty_with(0, 16, placement).apply(&Change {
            epoch: 1,
            added: Some(("a".into(), vec![3, 9])),
            added_ineligible: true,
            ..Default::default()
        });
        assert!(!v.member("a").unwrap().is_eligible());
        assert!((0..16).all(|p| v.owner_of(p).is_none()));
        assert_eq!(v.unassigned(), 16);
        let v = v.apply(&Change {
            epoch: 2,
            eligible: vec!["a".into()],
            ..Default::default()
        });
        assert!(v.member("a").unwrap().is_eligible());
        assert_eq!(v.partitions_of("a").len(), 16, "{placement:?}");
        assert_eq!(v.unassigned(), 0);
    }
}
