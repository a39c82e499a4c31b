//! A member's end: `Drop` of the last handle never blocks the caller for
//! the leave, yet stops local ownership at once and leaves the ring in the
//! background; errors carry their structured facts.

use std::time::Duration;

use crate::common::*;
use leasering::{ErrorKind, Event, ReleaseReason};
use leasering_testkit::{ProxyMode, TcpProxy};

#[test]
fn drop_releases_at_once_and_leaves_in_the_background_even_when_the_database_stalls() {
    init_logs();
    let db = db();
    let ring = ring_name("drop");
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    let watcher = builder(pool(4), &ring, "stays").start().unwrap();
    let mut b = builder(db.pool_via(proxy.port(), 4).unwrap(), &ring, "dropped")
        // A leave that could wait this long would hang the test: the drop
        // must not wait for it at all.
        .stop_timeout(Duration::from_secs(3600));
    let events = b.subscribe();
    let node = b.start().unwrap();
    wait_until(
        Duration::from_secs(30),
        "both members to hold their share",
        || {
            let all = [watcher.clone(), node.clone()];
            covered_exactly_once(&all, 1024) && settled(&all)
        },
    );
    proxy.set_mode(ProxyMode::Stall);
    // Drop on another thread so that a blocking drop shows as a timeout
    // here rather than as a hung test.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        drop(node);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("drop of the last handle returned while the database stalled");
    // Locally it stopped at once: a release with reason Stopping arrived
    // while the leave itself is still stuck behind the stall.
    let stopped = events.try_iter().any(|e| {
        matches!(
            e,
            Event::Released {
                reason: ReleaseReason::Stopping,
                ..
            }
        )
    });
    assert!(
        stopped,
        "the dropped member released its partitions at once"
    );
    // When the database answers again the background leave completes: the
    // channel disconnects and the other member takes everything over
    // without waiting for a lease to expire.
    proxy.set_mode(ProxyMode::Pass);
    wait_until(
        Duration::from_secs(30),
        "the dropped member's leave",
        || rows_of(db, "leasering", &ring, "dropped") == 0,
    );
    wait_until(
        Duration::from_secs(30),
        "the survivor to own the ring",
        || watcher.owned_partitions().len() == 1024,
    );
    let disconnected = (0..3000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        matches!(
            events.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    });
    assert!(
        disconnected,
        "the event channel disconnects once the member has stopped"
    );
    watcher.stop().unwrap();
}

#[test]
fn errors_carry_their_facts() {
    let db = db();
    let ring = ring_name("facts");
    let a = builder(pool(4), &ring, "same")
        .ring_size(64)
        .start()
        .unwrap();
    let err = builder(pool(4), &ring, "other")
        .ring_size(128)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RingSizeMismatch);
    assert_eq!(err.ring_sizes(), Some((64, 128)), "{err}");
    let err = builder(pool(4), &ring, "same")
        .ring_size(64)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NodeIdInUse);
    assert_eq!(err.node_id(), Some("same"));
    let err = builder(pool(4), &ring, "x")
        .vnode_count(0)
        .start()
        .unwrap_err();
    assert_eq!(err.setting(), Some("vnode_count"), "{err}");
    let err = builder(pool(1), &ring, "x").start().unwrap_err();
    assert_eq!(err.setting(), Some("pool"), "{err}");
    a.stop().unwrap();
    let _ = db;
}

#[test]
fn a_crash_hands_out_no_drain_guard_and_the_status_lists_the_draining_partitions() {
    init_logs();
    let ring = ring_name("crash_drain");
    let mut b = builder(pool(4), &ring, "crashes")
        .ring_size(64)
        .drain_timeout(Duration::from_secs(30));
    let events = b.subscribe();
    let node = b.start().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the lone member owns the ring",
        || node.owned_partitions().len() == 64,
    );
    let other = builder(pool(4), &ring, "joins")
        .ring_size(64)
        .drain_timeout(Duration::from_secs(30))
        .start()
        .unwrap();
    // The handoff to the joiner drains: its user keeps the guard.
    let (handed_off, guard) = loop {
        match events
            .recv_timeout(Duration::from_secs(30))
            .expect("a handoff")
        {
            Event::Released {
                partitions,
                reason: ReleaseReason::Handoff,
                drain: Some(g),
                ..
            } => break (partitions, g),
            _ => continue,
        }
    };
    let status = node.status();
    assert_eq!(status.draining_partitions, handed_off);
    assert!(status.draining_partitions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(status.draining as usize, handed_off.len());
    node.crash();
    let after: Vec<Event> = events.try_iter().collect();
    let released: Vec<_> = after
        .iter()
        .filter_map(|e| match e {
            Event::Released {
                partitions,
                reason,
                drain,
                ..
            } => Some((partitions.clone(), *reason, drain.is_some())),
            _ => None,
        })
        .collect();
    assert!(!released.is_empty(), "the crash released: {after:?}");
    for (ps, reason, guarded) in &released {
        assert_eq!(*reason, ReleaseReason::Stopping, "{ps:?}");
        assert!(!guarded, "a crash cannot drain: {ps:?} came with a guard");
    }
    assert!(
        released.iter().any(|(ps, _, _)| *ps == handed_off),
        "the draining partitions are told to stop now: {released:?}"
    );
    assert!(node.status().draining_partitions.is_empty());
    drop(guard);
    other.stop().unwrap();
}
