//! Bugs of the core found by the chaos harness (`tests/it/one_owner/chaos.rs`), each
//! reproduced on its own, deterministically enough to fail without its fix.

use std::time::{Duration, Instant};

use crate::common::*;
use leasering::{Event, ReleaseReason};
use leasering_testkit::{ProxyMode, TcpProxy};

const TTL: Duration = Duration::from_secs(2);

/// First seen as the flaky `database_down_longer_than_ttl_fences_everyone_before_their_lease_ends`
/// (under load), and found by the chaos harness's `stall_after_join` fault
/// (35 overlaps in one run without the fix): the fence thread sleeps
/// "forever" while nothing is active and was only woken by renewals.
/// Partitions activated by the watcher's barrier read (not by a renewal
/// reply) did not wake it, so a member that lost the database right after
/// such an activation never emitted `Released { LeaseExpired }` — its event
/// subscribers kept working on partitions that others took over once its
/// lease ended (`owns()` did stop at the deadline).
#[test]
fn partitions_activated_by_a_barrier_read_are_fenced_when_the_lease_runs_out() {
    init_logs();
    let db = db();
    let ring = ring_name("fencewake");
    let target = format!("127.0.0.1:{}", db.port()).parse().unwrap();
    // The first member sits behind a slow link, so that its acknowledgement
    // of the second member's join arrives after the joiner's own first
    // renewal: the joiner then activates through its barrier reads.
    let slow = TcpProxy::start(target).unwrap();
    let a = builder(db.pool_via(slow.port(), 4).unwrap(), &ring, "a")
        .lease_ttl(TTL)
        .stop_timeout(Duration::from_secs(3))
        .start()
        .unwrap();
    wait_until(Duration::from_secs(30), "a to own everything", || {
        a.owned_partitions().len() == 1024
    });
    slow.set_mode(ProxyMode::Delay(Duration::from_millis(40)));
    let link = TcpProxy::start(target).unwrap();
    let mut b = builder(db.pool_via(link.port(), 4).unwrap(), &ring, "b")
        .lease_ttl(TTL)
        .stop_timeout(Duration::from_secs(3));
    let events = b.subscribe();
    let b = b.start().unwrap();
    // The moment b acquires, its link stalls: no renewal gets through.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = events
            .recv_deadline(deadline)
            .expect("b acquires its partitions within 20 s");
        if matches!(ev, Event::Acquired { .. }) {
            link.set_mode(ProxyMode::Stall);
            break;
        }
    }
    let stalled_at = Instant::now();
    // Its local lease (TTL minus margin from its last renewal) runs out
    // within one TTL: it must say so with an event, not only in owns().
    // (Without the fix the event never comes: the deadline only bounds how
    // long that failure takes to show.)
    let fenced = loop {
        match events.recv_deadline(stalled_at + TTL * 5) {
            Ok(Event::Released {
                reason: ReleaseReason::LeaseExpired,
                at,
                ..
            }) => break Some(at),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    link.set_mode(ProxyMode::Pass);
    slow.set_mode(ProxyMode::Pass);
    let fenced = fenced.unwrap_or_else(|| {
        panic!(
            "b kept its partitions (no Released {{ LeaseExpired }}) for {:?} of stalled link",
            stalled_at.elapsed()
        )
    });
    assert!(
        fenced <= stalled_at + TTL,
        "fenced {:?} after the stall began",
        fenced - stalled_at
    );
    assert!(b.owned_partitions().is_empty());
    let _ = b.stop();
    let _ = a.stop();
}

/// Found by the chaos harness (`pause`: SIGSTOP of a member for 2.3 × TTL,
/// seed 756158798621): when a member's threads are held past its local
/// deadline (a paused process), whichever thread runs first on waking
/// releases its partitions. The fence thread stamps the release with the
/// deadline, as documented ("for `LeaseExpired` that is the local deadline
/// itself, the moment `owns()` stopped answering true"); but a renewal
/// reply processed first (or an eviction, or a view adopted) stamped it
/// with the wake-up time — seconds after the deadline, after others had
/// legitimately taken the partitions over. Subscribers (and the checker)
/// then saw two owners at once.
///
/// Here the renewal reply comes first for sure: the member's link stalls
/// with a renewal in flight, its threads are frozen (the fence thread is
/// frozen at the deadline), and the stall ends after the local deadline
/// but before the database's, so the renewal succeeds.
#[test]
fn a_release_after_the_local_deadline_is_stamped_with_the_deadline() {
    init_logs();
    let db = db();
    let ring = ring_name("lateat");
    let ttl = Duration::from_secs(5); // margin 500 ms: room for timing
    let target = format!("127.0.0.1:{}", db.port()).parse().unwrap();
    let link = TcpProxy::start(target).unwrap();
    let mut b = builder(db.pool_via(link.port(), 4).unwrap(), &ring, "sleeper")
        .lease_ttl(ttl)
        .stop_timeout(Duration::from_secs(3));
    let events = b.subscribe();
    let node = b.start().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the member to own everything",
        || node.owned_partitions().len() == 1024,
    );
    // A few renewals, so that the heartbeat holds its connection; then the
    // link stalls, and within one heartbeat interval a renewal is in flight:
    // once the local lease has run 200 ms past the point where the next
    // renewal was due (TTL - margin - heartbeat interval left) — measured
    // on the lease itself, not from the stall, so that a late heartbeat or
    // a slow test thread cannot eat the lease left to freeze in.
    let renewals = node.status().renewals;
    wait_until(Duration::from_secs(30), "two renewals", || {
        node.status().renewals >= renewals + 2
    });
    link.set_mode(ProxyMode::Stall);
    let renewal_due = ttl - ttl / 10 - ttl / 3 - Duration::from_millis(200);
    wait_until(
        Duration::from_secs(30),
        "a renewal to be due behind the stalled link",
        || node.status().lease_left.is_none_or(|l| l <= renewal_due),
    );
    let lease_left = node
        .status()
        .lease_left
        .expect("the local lease still runs");
    let deadline = Instant::now() + lease_left;
    assert!(
        lease_left > Duration::from_millis(300),
        "too late to freeze: {lease_left:?}"
    );
    // Freeze the threads until well after the stall ends: the fence thread
    // stops at the deadline; the heartbeat, blocked in its renewal, is not.
    let stall_end = deadline + Duration::from_millis(250);
    node.pause_threads_for(stall_end + Duration::from_secs(1) - Instant::now());
    std::thread::sleep(stall_end - Instant::now());
    link.set_mode(ProxyMode::Pass);
    let released = loop {
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Released { reason, at, .. }) => break (reason, at),
            Ok(_) => continue,
            Err(e) => panic!("no release after the stall: {e}"),
        }
    };
    assert!(
        released.1 <= deadline + Duration::from_millis(5),
        "released ({:?}) {:?} after the local deadline, when owns() had long stopped",
        released.0,
        released.1 - deadline
    );
    let _ = node.stop();
}
