//! Event timestamps are instants of real activity: a `Released` that is
//! emitted after the member's local lease had already run out (here: a
//! `stop()` or `crash()` while its threads are frozen past the TTL) is
//! stamped at that deadline, when `owns()` stopped answering `true` — not
//! at the later moment it was emitted. Overlap checkers that build
//! intervals from `Acquired.at`/`Released.at` (the demo's, the tests') rely
//! on it: a paused ex-owner whose release is stamped late would look like
//! it overlapped its successor.

use std::time::{Duration, Instant};

use crate::common::*;
use leasering::{Event, ReleaseReason, RingNode};

fn released(events: &crossbeam_channel::Receiver<Event>) -> Vec<(ReleaseReason, Instant, usize)> {
    events
        .try_iter()
        .filter_map(|e| match e {
            Event::Released {
                partitions,
                reason,
                at,
                ..
            } => Some((reason, at, partitions.len())),
            _ => None,
        })
        .collect()
}

fn frozen_past_its_lease(ring: &str, end: impl FnOnce(&RingNode)) {
    init_logs();
    let mut b = builder(pool(4), ring, "frozen").lease_ttl(Duration::from_secs(1));
    let events = b.subscribe();
    let node = b.start().unwrap_or_else(|e| panic!("start: {e}"));
    wait_until(
        Duration::from_secs(10),
        "the lone member owns the ring",
        || node.owned_partitions().len() == 1024,
    );
    node.pause_threads_for(Duration::from_secs(30));
    wait_until(
        Duration::from_secs(5),
        "the hot path stops at the local deadline",
        || !node.owns(0),
    );
    let stopped_owning = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    end(&node);
    let rel = released(&events);
    assert_eq!(rel.len(), 1, "one release expected: {rel:?}");
    let (reason, at, n) = rel[0];
    assert_eq!(reason, ReleaseReason::Stopping);
    assert_eq!(n, 1024);
    assert!(
        at <= stopped_owning,
        "the release is stamped {:?} after owns() had already turned false",
        at - stopped_owning
    );
}

#[test]
fn a_stop_while_frozen_past_the_lease_is_stamped_at_the_deadline() {
    frozen_past_its_lease(&ring_name("evt_stop"), |node| {
        node.stop().unwrap_or_else(|e| panic!("stop: {e}"))
    });
}

#[test]
fn a_crash_while_frozen_past_the_lease_is_stamped_at_the_deadline() {
    frozen_past_its_lease(&ring_name("evt_crash"), |node| node.crash());
}
