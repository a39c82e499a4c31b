//! Tests of the partition state machine: unit tests, an op-for-op check
//! against a full-scan reference, and a randomised protocol check.

use super::*;
use crate::ring::Change;
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(1);

fn acquired(actions: &[Action]) -> Vec<u32> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Acquire { partitions, .. } = a {
            out.extend(partitions);
        }
    }
    out.sort();
    out
}

fn released(actions: &[Action]) -> Vec<u32> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Release { partitions, .. } = a {
            out.extend(partitions);
        }
    }
    out.sort();
    out
}

#[test]
fn lone_member_activates_everything_with_its_join_epoch() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 8, TTL, MARGIN);
    let v = RingView::build(1, 8, [(3, "a")]);
    assert!(m.joined(v, t0).is_empty());
    assert_eq!(m.pending().count(), 8);
    let acts = m.barrier(1, None, t0);
    assert_eq!(
        acts,
        vec![Action::Acquire {
            partitions: (0..8).collect(),
            token: 1
        }]
    );
    assert_eq!(m.active_count(), 8);
}

#[test]
fn joiner_waits_for_the_old_owner_ack() {
    let t0 = Instant::now();
    let v1 = RingView::build(1, 8, [(7, "a")]);
    let v2 = v1.apply(&Change {
        epoch: 2,
        removed: vec![],
        added: Some(("b".into(), vec![3])),
    });
    let mut a = Ownership::new("a", 8, TTL, MARGIN);
    a.joined(v1, t0);
    a.barrier(1, None, t0);
    let mut b = Ownership::new("b", 8, TTL, MARGIN);
    b.joined(v2.clone(), t0);
    // a has acked only epoch 1: b must wait.
    assert!(b.barrier(2, Some(1), t0).is_empty());
    // a adopts epoch 2: releases 0..=3 first.
    let rel = a.adopt(v2);
    assert_eq!(released(&rel), vec![0, 1, 2, 3]);
    assert_eq!(a.active_count(), 4);
    // after a's ack of 2, b activates with token 2.
    let acts = b.barrier(2, Some(2), t0);
    assert_eq!(acquired(&acts), vec![0, 1, 2, 3]);
    assert_eq!(b.token(0), Some(2));
}

#[test]
fn barrier_needs_view_at_snapshot_epoch_and_a_running_lease() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(5, 4, [(0, "a")]), t0);
    assert!(m.barrier(6, None, t0).is_empty(), "view behind snapshot");
    assert!(m.barrier(5, None, t0 + TTL).is_empty(), "lease ran out");
    assert_eq!(acquired(&m.barrier(5, None, t0)).len(), 4);
}

#[test]
fn fence_releases_everything_and_renewal_goes_back_through_barrier() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(1, 4, [(0, "a")]), t0);
    m.barrier(1, None, t0);
    assert!(m.fence(t0 + Duration::from_secs(8)).is_empty());
    let acts = m.fence(t0 + Duration::from_secs(9));
    assert_eq!(
        acts,
        vec![Action::Release {
            partitions: vec![0, 1, 2, 3],
            reason: ReleaseReason::LeaseExpired
        }]
    );
    let t1 = t0 + Duration::from_secs(12);
    assert!(m.renewed(t1, t1).is_empty());
    assert_eq!(acquired(&m.barrier(1, None, t1)).len(), 4);
}

#[test]
fn late_renewal_after_deadline_fences_first() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(1, 4, [(0, "a")]), t0);
    m.barrier(1, None, t0);
    // A renewal sent before the deadline, answered after it.
    let acts = m.renewed(t0 + Duration::from_secs(8), t0 + Duration::from_secs(9));
    assert_eq!(released(&acts), vec![0, 1, 2, 3]);
    assert_eq!(m.active_count(), 0);
}

#[test]
fn jump_resets_since_but_keeps_active() {
    let t0 = Instant::now();
    let v1 = RingView::build(1, 16, [(7, "a"), (15, "b")]);
    let mut a = Ownership::new("a", 16, TTL, MARGIN);
    a.joined(v1.clone(), t0);
    a.barrier(1, None, t0);
    let v2 = v1.apply(&Change {
        epoch: 2,
        removed: vec!["b".into()],
        added: None,
    });
    // contiguous: since of new partitions is 2
    a.adopt(v2.clone());
    assert!(a.pending().all(|(_, s)| s == 2));
    // jump from 2 to 5, still owning the same: pending since restarts at 5
    let v5 = RingView::build(5, 16, [(7, "a")]);
    a.adopt(v5);
    assert!(a.pending().all(|(_, s)| s == 5));
    assert_eq!(a.active_count(), 8, "active partitions survive the jump");
    assert!(a.active().all(|(_, t)| t == 1));
}

#[test]
fn stop_and_evict_release_everything() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(1, 4, [(0, "a")]), t0);
    m.barrier(1, None, t0);
    let acts = m.evicted();
    assert_eq!(released(&acts).len(), 4);
    assert_eq!(m.status(), Status::Joining);
    assert!(m.barrier(1, None, t0).is_empty());
    m.joined(RingView::build(3, 4, [(0, "a")]), t0);
    m.barrier(3, None, t0);
    let acts = m.stop();
    assert!(matches!(
        &acts[0],
        Action::Release {
            reason: ReleaseReason::Stopping,
            ..
        }
    ));
    assert!(m.joined(RingView::build(4, 4, [(0, "a")]), t0).is_empty());
    assert_eq!(m.status(), Status::Stopped);
}

// ---- a randomised protocol check over the real state machine --------
//
// A miniature of DESIGN §4 in one thread: a "database" (epoch, ring,
// acks), members that adopt, acknowledge and run the barrier in random
// order, sometimes jumping over epochs, joins and leaves. After every
// step: no partition active on two members; tokens strictly increase
// from owner to owner.

struct SimDb {
    epoch: u64,
    history: Vec<RingView>,  // index = epoch
    acked: Vec<Option<u64>>, // per member id; None = not a member
}

fn check(members: &[Ownership], last: &mut [(u64, usize)]) -> Result<(), TestCaseError> {
    let size = last.len();
    for p in 0..size as u32 {
        let holders: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.token(p).is_some())
            .map(|(i, _)| i)
            .collect();
        prop_assert!(
            holders.len() <= 1,
            "partition {} active on {:?}",
            p,
            holders
        );
        if let Some(&i) = holders.first() {
            let tok = members[i].token(p).unwrap();
            let (lt, lo) = last[p as usize];
            prop_assert!(
                tok > lt || (tok == lt && lo == i),
                "token regression on {}: {} after {} of {}",
                p,
                tok,
                lt,
                lo
            );
            last[p as usize] = (tok, i);
        }
    }
    Ok(())
}

/// The state machine as first written: every transition scans the
/// whole ring. The real one walks only the member's assigned partitions;
/// `matches_the_full_scan_reference` checks they never differ.
struct Reference {
    me: String,
    view: Option<RingView>,
    active: Vec<u64>,
    pending: Vec<u64>,
}

impl Reference {
    fn adopt(&mut self, view: RingView, contiguous: bool) -> Vec<Action> {
        let epoch = view.epoch();
        let mut released = Vec::new();
        for p in 0..self.active.len() {
            if view.owner_of(p as u32) == Some(self.me.as_str()) {
                if self.active[p] == 0 && !(contiguous && self.pending[p] != 0) {
                    self.pending[p] = epoch;
                }
            } else {
                if self.active[p] != 0 {
                    self.active[p] = 0;
                    released.push(p as u32);
                }
                self.pending[p] = 0;
            }
        }
        self.view = Some(view);
        if released.is_empty() {
            Vec::new()
        } else {
            vec![Action::Release {
                partitions: released,
                reason: ReleaseReason::Handoff,
            }]
        }
    }
    fn barrier(&mut self, min_ack: Option<u64>) -> Vec<Action> {
        let mut by_token: Vec<(u64, Vec<u32>)> = Vec::new();
        for p in 0..self.active.len() {
            let since = self.pending[p];
            if since == 0 || min_ack.is_some_and(|a| a < since) {
                continue;
            }
            self.pending[p] = 0;
            self.active[p] = since;
            match by_token.iter_mut().find(|(t, _)| *t == since) {
                Some((_, ps)) => ps.push(p as u32),
                None => by_token.push((since, vec![p as u32])),
            }
        }
        by_token.sort_unstable_by_key(|(t, _)| *t);
        by_token
            .into_iter()
            .map(|(token, partitions)| Action::Acquire { partitions, token })
            .collect()
    }
    fn release_all(&mut self, reason: ReleaseReason, to_pending: Option<u64>) -> Vec<Action> {
        let mut released = Vec::new();
        for p in 0..self.active.len() {
            if self.active[p] != 0 {
                self.active[p] = 0;
                if let Some(e) = to_pending {
                    self.pending[p] = e;
                }
                released.push(p as u32);
            }
        }
        if released.is_empty() {
            Vec::new()
        } else {
            vec![Action::Release {
                partitions: released,
                reason,
            }]
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_the_full_scan_reference(
        ops in proptest::collection::vec((0u8..7, 0usize..5, 0u64..12), 1..120),
    ) {
        const SIZE: u32 = 48;
        let t0 = Instant::now();
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        // A history of views: members joining and leaving at random.
        let mut history = vec![RingView::build(1, SIZE, [(7u32, "n0")])];
        let mut m = Ownership::new("n0", SIZE, TTL, MARGIN);
        let mut r = Reference { me: "n0".into(), view: None, active: vec![0; SIZE as usize], pending: vec![0; SIZE as usize] };
        let mut clock = t0;
        let joined = m.joined(history[0].clone(), t0);
        r.view = None;
        let mut want = r.adopt(history[0].clone(), false);
        want.retain(|_| false);
        prop_assert_eq!(joined, want);
        for (op, who, x) in ops {
            let got;
            let want;
            match op {
                0 => { // a ring change: someone joins or leaves
                    let last = history.last().unwrap();
                    let epoch = last.epoch() + 1;
                    let name = &names[who];
                    let change = if last.member(name).is_some() && who != 0 {
                        Change { epoch, removed: vec![name.clone()], added: None }
                    } else {
                        let taken: Vec<u32> = last.vnodes().map(|(p, _)| p).collect();
                        let ps = crate::placement::choose_positions(&format!("{name}-{x}"), 2, SIZE, |p| taken.contains(&p)).unwrap();
                        Change { epoch, removed: vec![], added: Some((name.clone(), ps)) }
                    };
                    let next = last.apply(&change);
                    history.push(next);
                    continue;
                }
                1 | 2 => { // adopt the next view, or jump to the newest
                    let cur = m.view_epoch();
                    let newest = history.last().unwrap().epoch();
                    let target = if op == 1 { (cur + 1).min(newest) } else { newest };
                    let v = history[(target - 1) as usize].clone();
                    let contiguous = target == cur + 1;
                    got = m.adopt(v.clone());
                    want = if target > cur { r.adopt(v, contiguous) } else { Vec::new() };
                }
                3 | 4 => { // barrier at the view's epoch
                    let min_ack = (x > 0).then_some(x);
                    got = m.barrier(m.view_epoch(), min_ack, clock);
                    want = r.barrier(min_ack);
                }
                5 => { // the lease runs out, then a renewal
                    clock += TTL * 2;
                    let later = clock;
                    got = m.fence(later);
                    let e = m.view_epoch();
                    want = r.release_all(ReleaseReason::LeaseExpired, Some(e));
                    m.renewed(later, later);
                }
                _ => { // eviction and a rejoin at the newest view
                    let mut g = m.evicted();
                    let mut w = r.release_all(ReleaseReason::Evicted, None);
                    r.pending.iter_mut().for_each(|s| *s = 0);
                    let v = history.last().unwrap().clone();
                    if v.member("n0").is_some() {
                        g.extend(m.joined(v.clone(), clock));
                        w.extend(r.adopt(v, false));
                    }
                    got = g;
                    want = w;
                }
            }
            prop_assert_eq!(&got, &want);
            for p in 0..SIZE {
                let rt = r.active[p as usize];
                prop_assert_eq!(m.token(p), (rt != 0).then_some(rt), "token of {}", p);
                prop_assert_eq!(m.pending[p as usize], r.pending[p as usize], "pending {}", p);
            }
            prop_assert_eq!(m.pending_count as usize, r.pending.iter().filter(|s| **s != 0).count());
            prop_assert_eq!(m.active_count as usize, r.active.iter().filter(|t| **t != 0).count());
            prop_assert_eq!(m.active().map(|(p, _)| p).collect::<Vec<_>>(),
                (0..SIZE).filter(|p| r.active[*p as usize] != 0).collect::<Vec<_>>());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_interleavings_never_overlap(ops in proptest::collection::vec((0u8..6, 0usize..6, any::<u32>()), 1..300)) {
        const SIZE: u32 = 32;
        let t0 = Instant::now();
        let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
        let mut members: Vec<Ownership> = names.iter().map(|n| Ownership::new(n, SIZE, TTL, MARGIN)).collect();
        let mut db = SimDb { epoch: 0, history: vec![RingView::empty(0, SIZE)], acked: vec![None; 6] };
        let mut last = vec![(0u64, usize::MAX); SIZE as usize];
        for (op, who, r) in ops {
            let m = &mut members[who];
            match op {
                0 => { // join (if not a member)
                    if db.acked[who].is_none() && m.status() != Status::Stopped {
                        let taken: Vec<u32> = db.history[db.epoch as usize].vnodes().map(|(p, _)| p).collect();
                        if let Some(ps) = crate::placement::choose_positions(&names[who], 2, SIZE, |p| taken.contains(&p)) {
                            db.epoch += 1;
                            let v = db.history.last().unwrap().apply(&Change { epoch: db.epoch, removed: vec![], added: Some((names[who].clone(), ps)) });
                            db.history.push(v.clone());
                            db.acked[who] = Some(db.epoch);
                            m.joined(v, t0);
                        }
                    }
                }
                1 | 2 => { // adopt the next view, or jump to the newest
                    if db.acked[who].is_some() {
                        let target = if op == 1 { (m.view_epoch() + 1).min(db.epoch) } else { db.epoch };
                        m.adopt(db.history[target as usize].clone());
                    }
                }
                3 => { // acknowledge (a renewal carrying the view's epoch)
                    if let Some(a) = db.acked[who].as_mut() { *a = (*a).max(m.view_epoch()); }
                }
                4 => { // barrier from a consistent snapshot
                    if db.acked[who].is_some() {
                        let others = db.acked.iter().enumerate().filter(|(i, _)| *i != who).filter_map(|(_, a)| *a).min();
                        m.barrier(db.epoch, others, t0);
                    }
                }
                _ => { // graceful leave (rarely), then may rejoin
                    if db.acked[who].is_some() && r % 4 == 0 {
                        m.evicted(); // releases everything locally first, like stop()
                        db.acked[who] = None;
                        db.epoch += 1;
                        let v = db.history.last().unwrap().apply(&Change { epoch: db.epoch, removed: vec![names[who].clone()], added: None });
                        db.history.push(v);
                    }
                }
            }
            check(&members, &mut last)?;
        }
    }
}
