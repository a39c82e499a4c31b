//! Drained handoffs: the next owner starts only when the old one is done.
//!
//! With [`NodeBuilder::drain_timeout`](leasering::NodeBuilder::drain_timeout), the
//! `Released` event of a handoff carries a [`DrainGuard`]: the member keeps
//! the partitions' claims until the guard is dropped (or the timeout
//! passes), so the next owner starts only after the old one finished the
//! work in progress. Here "a" holds the ring; when "b" joins, a's worker
//! takes 500 ms to finish its unit of work on the partitions it gives up,
//! and b starts on them right after — never before.
//!
//! Run: `cargo run --example drain` (a throwaway PostgreSQL; or set
//! `DATABASE_URL`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_for, Database};
use leasering::{DrainGuard, Event, ReleaseReason, RingNode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::open();
    let t0 = Instant::now();
    let ms = move |t: Instant| t.saturating_duration_since(t0).as_millis();

    let mut builder = RingNode::builder(db.pool(), "drain-example")
        .node_id("a")
        .ring_size(16)
        .drain_timeout(Duration::from_secs(10));
    let events = builder.subscribe();
    let a = builder.start()?;
    wait_for("a to own the ring", Duration::from_secs(30), || {
        a.owned_partitions().len() == 16
    });

    // a's worker: on a handoff, finish the unit in progress, then let go.
    let finished: Arc<Mutex<Option<Instant>>> = Arc::default();
    let worker = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            for ev in events {
                if let Event::Released {
                    partitions,
                    reason: ReleaseReason::Handoff,
                    drain: Some(guard),
                    at,
                    ..
                } = ev
                {
                    println!("{:>5} ms  a: stops taking new work on {partitions:?}, finishing the unit in progress", ms(at));
                    std::thread::sleep(Duration::from_millis(500));
                    let done = Instant::now();
                    *finished.lock().unwrap() = Some(done);
                    println!("{:>5} ms  a: done, drops the guard", ms(done));
                    drop::<DrainGuard>(guard);
                }
            }
        })
    };

    let mut builder = RingNode::builder(db.pool(), "drain-example")
        .node_id("b")
        .ring_size(16)
        .drain_timeout(Duration::from_secs(10));
    let b_events = builder.subscribe();
    let b = builder.start()?;
    let acquired = b_events
        .iter()
        .find_map(|ev| match ev {
            Event::Acquired { partitions, at, .. } => Some((partitions, at)),
            _ => None,
        })
        .expect("b acquires its share");
    println!("{:>5} ms  b: starts on {:?}", ms(acquired.1), acquired.0);
    let done = finished
        .lock()
        .unwrap()
        .expect("a finished before b started");
    assert!(acquired.1 >= done, "b started before a finished");
    println!(
        "b started {} ms after a finished",
        acquired.1.duration_since(done).as_millis()
    );

    // b's receiver would hold its own stop's guard until the drain
    // timeout: a receiver nobody reads is dropped before stop().
    drop(b_events);
    b.stop()?;
    a.stop()?;
    worker.join().expect("a's worker");
    Ok(())
}
