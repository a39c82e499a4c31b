//! Drains and the local lease (docs/protocol.md §4): the release of a
//! drained partition is written when every copy of its guard is dropped,
//! at the drain timeout — or never past the local lease. A lease that runs
//! out cannot wait for a drain: its partitions end as `LeaseExpired`,
//! stamped at the deadline, whichever thread notices first.

use super::*;

/// The lease deadline of [`lone_active`] started at `t0`.
fn deadline(t0: Instant) -> Instant {
    t0 + ms(9000)
}

/// The drain of the first `Released` effect in `out`.
fn drain_of(out: &Output) -> crate::protocol::output::Drain {
    match out.effects.first() {
        Some(Effect::Released { drain: Some(d), .. }) => *d,
        other => panic!("a drained release expected: {other:?}"),
    }
}

/// Every release in `out`: `LeaseExpired`, without a guard, stamped when
/// the hot path stopped at the deadline; returns their partitions.
fn lease_expired_at_the_deadline(out: &Output, t0: Instant) -> Vec<u32> {
    let mut ps = Vec::new();
    for e in &out.effects {
        if let Effect::Released {
            partitions,
            reason,
            at,
            drain,
            ..
        } = e
        {
            assert_eq!(*reason, ReleaseReason::LeaseExpired, "{e:?}");
            assert_eq!(*at, deadline(t0) - LEAD, "stamped at the deadline: {e:?}");
            assert!(drain.is_none(), "nothing drains past the lease: {e:?}");
            ps.extend(partitions);
        }
    }
    ps.sort_unstable();
    ps
}

/// The claims the watcher gives back next: by token, none of them still
/// held back as draining.
fn gives_back(s: &mut Session, now: Instant) -> Vec<(u32, u64)> {
    match s.watcher_next(now).0 {
        WatcherStep::Release { claims, .. } => claims,
        step => panic!("a release expected: {step:?}"),
    }
}

#[test]
fn a_drained_handoff_holds_the_claims_until_the_guard_is_dropped() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(5000)));
    let (step, out) = hand_off_to_b(&mut s, t0);
    assert_eq!(
        step,
        WatcherStep::Wait(IDLE_TICK),
        "nothing to give back yet"
    );
    let Some(Effect::Released {
        drain: Some(d),
        partitions,
        ..
    }) = out.effects.first()
    else {
        panic!("{:?}", out.effects)
    };
    assert_eq!(partitions, &vec![0, 1, 2, 3]);
    assert_eq!(d.deadline, t0 + ms(5000));
    assert_eq!(s.draining_count(), 4);
    let out = s.drained(d.id, t0 + ms(200));
    assert!(out.wake_watcher);
    let ticket = s.ticket();
    assert_eq!(
        s.watcher_next(t0 + ms(200)).0,
        WatcherStep::Release {
            claims: claims(0..4, 1),
            ticket
        }
    );
    // A second handoff whose guard is never dropped ends at the timeout.
    let mut s = lone_active(t0, Some(ms(5000)));
    hand_off_to_b(&mut s, t0);
    assert_eq!(
        s.watcher_next(t0 + ms(4000)).0,
        WatcherStep::Wait(IDLE_TICK)
    );
    assert_eq!(s.watcher_next(t0 + ms(4999)).0, WatcherStep::Wait(ms(1)));
    assert!(matches!(
        s.watcher_next(t0 + ms(5000)).0,
        WatcherStep::Release { .. }
    ));
}

#[test]
fn a_lease_that_runs_out_cuts_a_drain_short() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(30_000)));
    hand_off_to_b(&mut s, t0);
    assert_eq!(
        s.fence_deadline(),
        Some(t0 + ms(9000)),
        "the fence guards the drain"
    );
    let out = s.tick(t0 + ms(9000));
    let rel = released(&out);
    // The four kept partitions fence, and the four draining ones are
    // released again: stop now.
    assert_eq!(rel.len(), 8);
    assert!(rel.iter().all(|r| r.1 == ReleaseReason::LeaseExpired));
    assert_eq!(s.draining_count(), 0);
}

#[test]
fn stop_waits_for_drains_keeping_the_lease_and_the_fence() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(2000)));
    let out = s.stop(t0);
    let Some(Effect::Released {
        drain: Some(d),
        reason: ReleaseReason::Stopping,
        ..
    }) = out.effects.first()
    else {
        panic!("{:?}", out.effects)
    };
    assert_eq!(s.still_draining(t0), 8);
    // The lease is kept while draining: the heartbeat renews, the fence
    // guards.
    assert!(matches!(
        s.heartbeat_next(t0 + ms(3333)),
        HeartbeatStep::Renew { .. }
    ));
    assert!(s.fence_deadline().is_some());
    s.drained(d.id, t0 + ms(10));
    assert_eq!(s.still_draining(t0 + ms(10)), 0);
    assert_eq!(s.heartbeat_next(t0 + ms(3333)), HeartbeatStep::Stop);
    // The drain timeout also ends it.
    let mut s = lone_active(t0, Some(ms(2000)));
    s.stop(t0);
    assert_eq!(s.still_draining(t0 + ms(1999)), 8);
    assert_eq!(s.still_draining(t0 + ms(2000)), 0);
}

#[test]
fn a_guard_dropped_after_the_tick_at_the_deadline_is_a_no_op() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(30_000)));
    let (_, out) = hand_off_to_b(&mut s, t0);
    let d = drain_of(&out);
    assert_eq!(s.fence_deadline(), Some(deadline(t0)));
    // The tick at the deadline ends the draining partitions (0..=3) with
    // the kept ones (4..=7): stop now.
    let out = s.tick(deadline(t0));
    assert_eq!(
        lease_expired_at_the_deadline(&out, t0),
        (0..8).collect::<Vec<_>>()
    );
    assert_eq!(s.draining_count(), 0);
    // The guard dropped afterwards changes nothing: no second release, no
    // drained handoff.
    let out = s.drained(d.id, deadline(t0) + ms(500));
    assert!(out.is_empty(), "{out:?}");
    assert!(s.tick(deadline(t0) + ms(500)).effects.is_empty());
    assert_eq!(gives_back(&mut s, deadline(t0) + ms(500)), claims(0..8, 1));
}

/// The reviewer's `repro_a_guard_dropped_after_the_lease_ran_out_gets_no_lease_expired`:
/// the guard drop reached the session before the fence's tick, ended the
/// drain as drained (a clean handoff) and the tick then had nothing to cut.
#[test]
fn a_guard_dropped_past_the_lease_before_the_fence_looked_ends_as_lease_expired() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(30_000)));
    let (_, out) = hand_off_to_b(&mut s, t0);
    let d = drain_of(&out);
    // The fence thread is late (a pause): the guard drop is handed over
    // first, well past the deadline.
    let late = deadline(t0) + ms(700);
    let out = s.drained(d.id, late);
    assert_eq!(
        lease_expired_at_the_deadline(&out, t0),
        (0..8).collect::<Vec<_>>(),
        "the lapse is seen first: the drain is cut, not ended as drained"
    );
    assert!(out.wake_watcher && s.draining_count() == 0);
    let out = s.tick(late);
    assert!(out.effects.is_empty(), "once only: {out:?}");
    assert_eq!(gives_back(&mut s, late), claims(0..8, 1));
}

#[test]
fn a_drain_timeout_past_the_lease_ends_as_lease_expired() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(2000)));
    // Handed off shortly before the deadline: the drain would end after it.
    let (_, out) = hand_off_to_b(&mut s, t0 + ms(8500));
    assert_eq!(drain_of(&out).deadline, t0 + ms(10_500));
    // The watcher runs first, after the drain timeout too.
    let late = t0 + ms(11_000);
    let (step, out) = s.watcher_next(late);
    assert_eq!(
        lease_expired_at_the_deadline(&out, t0),
        (0..8).collect::<Vec<_>>()
    );
    assert!(
        matches!(&step, WatcherStep::Release { claims: c, .. } if *c == claims(0..8, 1)),
        "{step:?}"
    );
    assert!(s.tick(late).effects.is_empty());
}

#[test]
fn a_stop_drain_past_the_lease_is_cut_by_the_tick_not_ended_as_drained() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(2000)));
    s.stop(t0 + ms(8500));
    // stop() waits: past the lease (and the drain timeout) nothing ends as
    // drained, the fence's tick cuts the drain.
    let late = t0 + ms(11_000);
    assert_eq!(s.still_draining(late), 8);
    let out = s.tick(late);
    assert_eq!(
        lease_expired_at_the_deadline(&out, t0),
        (0..8).collect::<Vec<_>>()
    );
    assert_eq!(s.still_draining(late), 0);
}

#[test]
fn a_stop_past_the_lease_hands_out_no_guard() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(2000)));
    let late = deadline(t0) + ms(300);
    let out = s.stop(late);
    assert!(
        matches!(
            &out.effects[..],
            [Effect::Released { reason: ReleaseReason::Stopping, drain: None, at, .. }]
                if *at == deadline(t0) - LEAD
        ),
        "{:?}",
        out.effects
    );
    assert_eq!(s.draining_count(), 0);
    assert_eq!(s.heartbeat_next(late), HeartbeatStep::Stop);
}

#[test]
fn the_draining_partitions_are_listed_ascending() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(5000)));
    assert!(s.draining_partitions().is_empty());
    let (_, out) = hand_off_to_b(&mut s, t0);
    let first = drain_of(&out);
    assert_eq!(s.draining_partitions(), vec![0, 1, 2, 3]);
    // A second drain (the stop) joins the list, in order.
    s.stop(t0 + ms(10));
    assert_eq!(s.draining_partitions(), (0..8).collect::<Vec<_>>());
    assert_eq!(s.draining_count(), 8);
    s.drained(first.id, t0 + ms(20));
    assert_eq!(s.draining_partitions(), vec![4, 5, 6, 7]);
    assert_eq!(s.still_draining(t0 + ms(5010)), 0);
    assert!(s.draining_partitions().is_empty());
}

#[test]
fn a_crash_hands_out_no_guard_and_cuts_the_drains() {
    let t0 = Instant::now();
    let mut s = lone_active(t0, Some(ms(5000)));
    hand_off_to_b(&mut s, t0);
    assert_eq!(s.draining_count(), 4);
    let out = s.crash(t0 + ms(10));
    let rel: Vec<_> = out
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Released {
                partitions,
                reason,
                drain,
                ..
            } => Some((partitions.clone(), *reason, *drain)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rel,
        vec![
            (vec![4, 5, 6, 7], ReleaseReason::Stopping, None),
            (vec![0, 1, 2, 3], ReleaseReason::Stopping, None),
        ],
        "a crash cannot drain: the active partitions stop with no guard, and the draining ones stop now"
    );
    assert_eq!(s.draining_count(), 0);
    assert_eq!(s.unused_claims(), 0, "a crash gives nothing back");
    assert_eq!(s.heartbeat_next(t0 + ms(10)), HeartbeatStep::Stop);
    assert_eq!(s.fence_deadline(), None);
}
