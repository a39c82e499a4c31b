//! Tests of the partition state machine: unit tests and a property test of
//! its invariants under random inputs.

use super::*;
use crate::ring::Change;
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(1);

fn acquired(actions: &[Action]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Acquire { partitions, token } = a {
            out.extend(partitions.iter().map(|p| (*p, *token)));
        }
    }
    out.sort();
    out
}

fn released(actions: &[Action]) -> Vec<(u32, u64, ReleaseReason)> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Release {
            partitions,
            tokens,
            reason,
        } = a
        {
            out.extend(
                partitions
                    .iter()
                    .zip(tokens)
                    .map(|(p, t)| (*p, *t, *reason)),
            );
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

fn claims(ps: impl IntoIterator<Item = u32>, token: u64) -> Vec<(u32, u64)> {
    ps.into_iter().map(|p| (p, token)).collect()
}

#[test]
fn a_joiner_is_pending_until_its_claims_arrive() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 8, TTL, MARGIN);
    assert!(m.joined(RingView::build(1, 8, [(3, "a")]), t0).is_empty());
    assert_eq!(m.pending().count(), 8);
    let (acts, fate) = m.claimed(&claims(0..8, 1), t0);
    assert_eq!(
        acts,
        vec![Action::Acquire {
            partitions: (0..8).collect(),
            token: 1
        }]
    );
    assert!(fate.iter().all(|f| *f == Taken::Used));
    assert_eq!((m.active_count(), m.pending_count()), (8, 0));
}

#[test]
fn partitions_with_different_tokens_are_acquired_in_groups_by_token() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 8, TTL, MARGIN);
    m.joined(RingView::build(1, 8, [(3, "a")]), t0);
    let (acts, _) = m.claimed(&[(0, 7), (1, 5), (2, 7), (3, 5)], t0);
    assert_eq!(
        acts,
        vec![
            Action::Acquire {
                partitions: vec![1, 3],
                token: 5
            },
            Action::Acquire {
                partitions: vec![0, 2],
                token: 7
            }
        ]
    );
    assert_eq!(m.token(0), Some(7));
    assert_eq!(m.token(1), Some(5));
}

#[test]
fn a_claim_that_cannot_be_used_is_stray() {
    let t0 = Instant::now();
    let mut m = Ownership::new("b", 8, TTL, MARGIN);
    // b's arc is 0..=3.
    m.joined(RingView::build(2, 8, [(3, "b"), (7, "a")]), t0);
    let (acts, fate) = m.claimed(&[(2, 4), (5, 4)], t0);
    assert_eq!(acquired(&acts), vec![(2, 4)]);
    assert_eq!(fate, vec![Taken::Used, Taken::Stray], "5 is a's");
    // A repeated answer for a partition in use is not stray (never given
    // back while in use), whatever the token says.
    let (acts, fate) = m.claimed(&[(2, 4), (2, 9)], t0);
    assert!(acts.is_empty());
    assert_eq!(fate, vec![Taken::Used, Taken::Used]);
    // After the local deadline nothing activates: a late answer is given back.
    let late = t0 + TTL;
    let (acts, fate) = m.claimed(&[(1, 4)], late);
    assert!(acts.is_empty());
    assert_eq!(fate, vec![Taken::Stray]);
}

#[test]
fn adopting_releases_first_naming_the_tokens() {
    let t0 = Instant::now();
    let v1 = RingView::build(1, 8, [(7, "a")]);
    let mut a = Ownership::new("a", 8, TTL, MARGIN);
    a.joined(v1.clone(), t0);
    a.claimed(&claims(0..8, 1), t0);
    let v2 = v1.apply(&Change {
        epoch: 2,
        removed: vec![],
        added: Some(("b".into(), vec![3])),
        added_metadata: None,
        ..Default::default()
    });
    let rel = a.adopt(v2.clone());
    assert_eq!(
        released(&rel),
        (0..4)
            .map(|p| (p, 1, ReleaseReason::Handoff))
            .collect::<Vec<_>>()
    );
    assert_eq!(a.active_count(), 4);
    assert!(a.adopt(v2).is_empty(), "an equal view is ignored");
    assert!(!a.is_assigned(0) && a.is_assigned(4));
}

#[test]
fn the_fence_releases_everything_and_a_renewal_makes_them_pending_again() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(1, 4, [(0, "a")]), t0);
    m.claimed(&claims(0..4, 3), t0);
    assert!(m.fence(t0 + Duration::from_secs(8)).is_empty());
    let rel = m.fence(t0 + Duration::from_secs(9));
    assert_eq!(
        released(&rel),
        (0..4)
            .map(|p| (p, 3, ReleaseReason::LeaseExpired))
            .collect::<Vec<_>>()
    );
    assert_eq!(m.pending_count(), 4);
    let t1 = t0 + Duration::from_secs(12);
    assert!(m.renewed(t1, t1).is_empty());
    assert_eq!(acquired(&m.claimed(&claims(0..4, 4), t1).0).len(), 4);
}

#[test]
fn a_late_renewal_answer_fences_first() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(1, 4, [(0, "a")]), t0);
    m.claimed(&claims(0..4, 1), t0);
    // A renewal sent before the deadline, answered after it.
    let acts = m.renewed(t0 + Duration::from_secs(8), t0 + Duration::from_secs(9));
    assert_eq!(released(&acts).len(), 4);
    assert_eq!(m.active_count(), 0);
    assert!(
        m.lease_runs(t0 + Duration::from_secs(9)),
        "then the lease is extended"
    );
}

#[test]
fn stop_and_evict_release_everything() {
    let t0 = Instant::now();
    let mut m = Ownership::new("a", 4, TTL, MARGIN);
    m.joined(RingView::build(1, 4, [(0, "a")]), t0);
    m.claimed(&claims(0..4, 1), t0);
    assert_eq!(released(&m.evicted()).len(), 4);
    assert_eq!(m.status(), Status::Joining);
    assert!(m.claimed(&claims(0..4, 1), t0).0.is_empty());
    m.joined(RingView::build(3, 4, [(0, "a")]), t0);
    m.claimed(&claims(0..4, 2), t0);
    let acts = m.stop();
    assert!(released(&acts)
        .iter()
        .all(|r| r.2 == ReleaseReason::Stopping));
    assert!(m.joined(RingView::build(4, 4, [(0, "a")]), t0).is_empty());
    assert_eq!(m.status(), Status::Stopped);
    assert_eq!(m.pending_count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Under any sequence of inputs: active partitions are assigned ones,
    /// pending = assigned − active, the counts agree with a full scan, and
    /// every release names the token its partition was active under.
    #[test]
    fn invariants_hold_under_random_inputs(ops in proptest::collection::vec((0u8..6, 0usize..4, 0u64..6), 1..200)) {
        const SIZE: u32 = 24;
        let t0 = Instant::now();
        let names = ["n0", "n1", "n2", "n3"];
        let mut m = Ownership::new("n0", SIZE, TTL, MARGIN);
        let mut epoch = 1;
        let mut view = RingView::build(epoch, SIZE, [(5, "n0")]);
        m.joined(view.clone(), t0);
        let mut clock = t0;
        let mut tokens = vec![0u64; SIZE as usize];
        for (op, who, x) in ops {
            let before: Vec<Option<u64>> = (0..SIZE).map(|p| m.token(p)).collect();
            let acts = match op {
                0 => { // the ring changes
                    epoch += 1;
                    let name = names[who];
                    let change = if view.member(name).is_some() && who != 0 {
                        Change { epoch, removed: vec![name.to_string()], added: None, added_metadata: None, ..Default::default() }
                    } else {
                        let taken: Vec<u32> = view.vnodes().map(|(p, _)| p).collect();
                        let ps = crate::placement::choose_positions(&format!("{name}-{x}"), 2, SIZE, |p| taken.contains(&p)).unwrap();
                        Change { epoch, removed: vec![], added: Some((name.to_string(), ps)), added_metadata: None, ..Default::default() }
                    };
                    view = view.apply(&change);
                    m.adopt(view.clone())
                }
                1 | 2 => { // a take's answer for some partitions
                    let got: Vec<(u32, u64)> = (0..SIZE).filter(|p| (*p as u64 + x) % 3 == 0).map(|p| { tokens[p as usize] += 1; (p, tokens[p as usize]) }).collect();
                    m.claimed(&got, clock).0
                }
                3 => { clock += Duration::from_millis(x * 3000); m.fence(clock) }
                4 => m.renewed(clock, clock),
                _ => { let mut a = m.evicted(); a.extend(m.joined(view.clone(), clock)); a }
            };
            for a in &acts {
                if let Action::Release { partitions, tokens: ts, .. } = a {
                    for (p, t) in partitions.iter().zip(ts) {
                        prop_assert_eq!(before[*p as usize], Some(*t), "release of {} names its token", p);
                    }
                }
            }
            let assigned: Vec<u32> = (0..SIZE).filter(|p| m.is_assigned(*p)).collect();
            let active: Vec<u32> = (0..SIZE).filter(|p| m.token(*p).is_some()).collect();
            prop_assert!(active.iter().all(|p| assigned.contains(p)));
            prop_assert_eq!(m.active_count() as usize, active.len());
            prop_assert_eq!(m.pending().collect::<Vec<_>>(), assigned.iter().copied().filter(|p| !active.contains(p)).collect::<Vec<_>>());
            prop_assert_eq!(m.active().map(|(p, _)| p).collect::<Vec<_>>(), active);
            if m.status() == Status::Member {
                prop_assert_eq!(assigned, view.partitions_of("n0"));
            }
        }
    }
}
