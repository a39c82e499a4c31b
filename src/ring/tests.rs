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
        let after = before.apply(&Change { epoch: 2, removed: vec![], added: Some(("joiner".into(), vec![newpos])), added_metadata: None });
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
            let read = RingView::build_with(v.epoch(), ring_size, pairs, Some(Arc::new(stored)), |_| None);
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
    });
    assert_eq!(v.member("a").unwrap().weight(), 2);
    assert_eq!(v.arcs().len(), 2);
    assert_eq!(v.owner_info(4).map(|m| m.node_id()), Some("a"));
}
