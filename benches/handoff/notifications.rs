//! What a change costs the database's listeners: the `NOTIFY`s sent
//! (`leasering::telemetry::notifications_sent`, process-wide; every member
//! here is in this process) by a cold start of [`MEMBERS`] members at the
//! same instant, and by a member that joins a settled ring and leaves it
//! again, `cycles` times. One line:
//!
//! `handoff notifications members=<n> cold_start=<n> per_join=<x>
//! per_leave=<x> per_handoff=<x>` (`per_handoff`: per partition moved).
//!
//! A join or a leave is one transaction and one `NOTIFY` on the ring's
//! channel; a release notifies only when somebody waited for one of its
//! claims, once per transaction. `LEASERING_BENCH_HANDOFF_ONLY=notifications`
//! runs this section alone.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use leasering::telemetry::notifications_sent;
use leasering::RingNode;
use leasering_testkit::TestPostgres;

use super::{MEMBERS, RING_SIZE};
use crate::support::pool;

/// Settled: every member joined, at one epoch, nothing pending, and the
/// ring covered once.
fn settled(nodes: &[RingNode]) -> bool {
    let mut epoch = None;
    let mut active = 0u64;
    for n in nodes {
        let s = n.status();
        if !s.joined || s.pending != 0 || *epoch.get_or_insert(s.epoch) != s.epoch {
            return false;
        }
        active += s.active as u64;
    }
    active == RING_SIZE as u64
}

fn wait_settled(nodes: &[RingNode], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !settled(nodes) {
        assert!(Instant::now() < deadline, "{what}: not settled within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs the section and prints its line.
pub(super) fn notifications(db: &TestPostgres, cycles: usize) {
    let ring = format!("notifications-{}", std::process::id());
    let builder = |name: &str| {
        RingNode::builder(pool(db, name, 2), ring.clone())
            .node_id(name)
            .ring_size(RING_SIZE)
            .lease_ttl(Duration::from_secs(30))
            .start_timeout(Duration::from_secs(60))
    };
    let n0 = notifications_sent();
    let barrier = Arc::new(Barrier::new(MEMBERS));
    let mut nodes: Vec<RingNode> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..MEMBERS)
            .map(|k| {
                let b = builder(&format!("n{k:02}"));
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    b.start().unwrap_or_else(|e| panic!("start: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    wait_settled(&nodes, "the cold start");
    let cold = notifications_sent() - n0;
    let (mut joins, mut leaves, mut moved) = (0u64, 0u64, 0u64);
    for k in 0..cycles {
        let a = notifications_sent();
        let joiner = builder(&format!("j{k:03}"))
            .start()
            .unwrap_or_else(|e| panic!("start: {e}"));
        nodes.push(joiner.clone());
        wait_settled(&nodes, "the join");
        let b = notifications_sent();
        let share = joiner.status().active as u64;
        joiner.stop().unwrap_or_else(|e| panic!("stop: {e}"));
        nodes.pop();
        wait_settled(&nodes, "the leave");
        joins += b - a;
        leaves += notifications_sent() - b;
        moved += 2 * share;
    }
    let cycles = cycles.max(1) as f64;
    println!(
        "handoff notifications members={MEMBERS} cold_start={cold} per_join={:.2} per_leave={:.2} per_handoff={:.3}",
        joins as f64 / cycles,
        leaves as f64 / cycles,
        (joins + leaves) as f64 / moved.max(1) as f64
    );
    for n in nodes {
        let _ = n.stop();
    }
}
