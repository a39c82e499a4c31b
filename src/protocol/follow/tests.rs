//! The follow rules, input by input (the simulation drives them through
//! lost notifications and delayed reads: `session/tests/sim.rs`).

use std::time::{Duration, Instant};

use super::*;
use crate::ring::Change;

const POLL: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn view(epoch: u64, vnodes: &[(u32, &str)]) -> RingView {
    RingView::build(epoch, 8, vnodes.iter().copied())
}

fn join(epoch: u64, who: &str, at: u32) -> Change {
    Change {
        epoch,
        added: Some((who.to_string(), vec![at])),
        ..Default::default()
    }
}

fn notice(epoch: u64, change: Option<Change>) -> FollowInput {
    FollowInput::Notified(Notice::Change { epoch, change })
}

fn full(timeline: u64, v: RingView) -> FollowInput {
    FollowInput::Read {
        timeline,
        read: CatchUp::Full(v),
    }
}

/// A follower that has read `view(1, a at 0)` on timeline 1.
fn following(t0: Instant) -> Follow {
    let mut f = Follow::new(POLL, t0);
    assert_eq!(f.next(t0), FollowStep::ReadRing);
    assert!(f.step(full(1, view(1, &[(0, "a")])), t0));
    f
}

#[test]
fn a_ring_not_created_yet_is_read_whole_at_the_next_notice_or_poll() {
    let t0 = Instant::now();
    let mut f = Follow::new(POLL, t0);
    assert_eq!(f.next(t0), FollowStep::ReadRing);
    assert!(!f.step(FollowInput::NoRing, t0));
    assert_eq!(f.next(t0 + ms(10)), FollowStep::Wait(ms(990)));
    // A change notice of a ring it cannot apply to: read it whole.
    assert!(!f.step(notice(1, Some(join(1, "a", 0))), t0 + ms(20)));
    assert_eq!(f.next(t0 + ms(20)), FollowStep::ReadRing);
    assert!(!f.step(FollowInput::NoRing, t0 + ms(30)));
    // The poll reads it again.
    assert_eq!(f.next(t0 + POLL), FollowStep::ReadRing);
    assert!(f.step(full(1, view(1, &[(0, "a")])), t0 + POLL));
    assert_eq!(f.view().ring_size(), 8);
}

#[test]
fn the_next_change_applies_without_a_read_and_a_gap_reads_the_log_from_the_view() {
    let t0 = Instant::now();
    let mut f = following(t0);
    assert!(f.step(notice(2, Some(join(2, "b", 4))), t0));
    assert_eq!(f.view().epoch(), 2);
    assert_eq!(f.view().members().len(), 2);
    assert_eq!(f.next(t0), FollowStep::Wait(POLL));
    // Old news changes nothing.
    assert!(!f.step(notice(2, Some(join(2, "b", 4))), t0));
    // Epoch 4 without its change (the payload had no room), and epoch 3
    // lost: read the log from epoch 2.
    assert!(!f.step(notice(4, None), t0));
    assert_eq!(f.next(t0), FollowStep::CatchUp { from: 2 });
    let read = FollowInput::Read {
        timeline: 1,
        read: CatchUp::Changes(vec![join(3, "c", 2), join(4, "d", 6)]),
    };
    assert!(f.step(read, t0 + ms(1)));
    assert_eq!(f.view().epoch(), 4);
    assert_eq!(f.next(t0 + ms(1)), FollowStep::Wait(POLL - ms(1)));
}

#[test]
fn a_new_connection_and_the_poll_read_the_log() {
    let t0 = Instant::now();
    let mut f = following(t0);
    assert!(!f.step(FollowInput::Reconnected, t0));
    assert_eq!(f.next(t0), FollowStep::CatchUp { from: 1 });
    let nothing = || FollowInput::Read {
        timeline: 1,
        read: CatchUp::Changes(vec![]),
    };
    assert!(!f.step(nothing(), t0));
    assert_eq!(f.next(t0 + ms(500)), FollowStep::Wait(ms(500)));
    assert_eq!(f.next(t0 + POLL), FollowStep::CatchUp { from: 1 });
    assert!(!f.step(nothing(), t0 + POLL));
    assert_eq!(f.next(t0 + POLL), FollowStep::Wait(POLL));
}

#[test]
fn changes_from_another_timeline_are_thrown_away_and_the_ring_read_whole() {
    let t0 = Instant::now();
    let mut f = following(t0);
    assert!(!f.step(notice(3, None), t0));
    assert_eq!(f.next(t0), FollowStep::CatchUp { from: 1 });
    // A promoted standby: timeline 2, whose epoch 2 is not the old one's.
    let read = FollowInput::Read {
        timeline: 2,
        read: CatchUp::Changes(vec![join(2, "x", 4)]),
    };
    assert!(!f.step(read, t0));
    assert_eq!(f.view().epoch(), 1, "nothing of it applied");
    assert_eq!(f.next(t0), FollowStep::CatchUp { from: 0 });
    // The whole ring of the new timeline is published, even at an epoch
    // the view already had.
    assert!(f.step(full(2, view(1, &[(0, "y")])), t0));
    assert_eq!(f.view().owner_of(0), Some("y"));
    assert_eq!(f.timeline(), Some(2));
    assert_eq!(f.next(t0), FollowStep::Wait(POLL));
}

#[test]
fn a_failed_read_is_tried_again_after_a_backoff_that_doubles_to_two_seconds() {
    let t0 = Instant::now();
    let mut f = following(t0);
    f.step(FollowInput::Reconnected, t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        assert!(matches!(f.next(now), FollowStep::CatchUp { .. }));
        f.step(FollowInput::ReadFailed, now);
        let FollowStep::Wait(d) = f.next(now) else {
            panic!("a failed read waits first");
        };
        waits.push(d.as_millis());
        now += d;
    }
    assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    // A read that works resets it.
    assert!(matches!(f.next(now), FollowStep::CatchUp { from: 1 }));
    f.step(
        FollowInput::Read {
            timeline: 1,
            read: CatchUp::Changes(vec![]),
        },
        now,
    );
    f.step(FollowInput::Reconnected, now);
    f.step(FollowInput::ReadFailed, now);
    assert_eq!(f.next(now), FollowStep::Wait(ms(50)));
}

#[test]
fn released_claims_are_not_an_observers_business() {
    let t0 = Instant::now();
    let mut f = following(t0);
    let released = FollowInput::Notified(Notice::Released {
        partitions: Some(vec![1, 2]),
    });
    assert!(!f.step(released, t0));
    assert_eq!(f.next(t0), FollowStep::Wait(POLL));
}
