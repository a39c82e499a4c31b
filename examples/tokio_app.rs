//! Using the library from a tokio application.
//!
//! The library is synchronous: `start()` and `stop()` block (they talk to
//! PostgreSQL), and events arrive on a `crossbeam-channel` receiver. In an
//! async application:
//!
//! * call `start()` and `stop()` inside `tokio::task::spawn_blocking`;
//! * bridge the events to a `tokio::sync::mpsc` channel with one plain
//!   thread that forwards them (its blocking `recv` never holds up the
//!   runtime), and consume them in a task;
//! * call the hot-path reads (`owns`, `partition_for`, `owned_partitions`)
//!   directly: they are lock-free and never block.
//!
//! When the member stops, its channel disconnects, the bridge thread ends,
//! and the task's `recv()` returns `None`.
//!
//! Run: `cargo run --example tokio_app` (a throwaway PostgreSQL; or set
//! `DATABASE_URL`).

mod common;

use std::time::Duration;

use common::Database;
use leasering::{Event, RingNode};
use tokio::sync::mpsc;
use tokio::task::spawn_blocking;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = spawn_blocking(Database::open).await?;
    let pool = db.pool();

    // start() blocks: off the runtime's threads. The receiver is taken
    // before the start, so that the first Acquired is not missed.
    let (node, events) = spawn_blocking(move || {
        let mut b = RingNode::builder(pool, "tokio-example").ring_size(16);
        let events = b.subscribe();
        b.start().map(|node| (node, events))
    })
    .await??;

    // The bridge: one plain thread per receiver.
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    std::thread::spawn(move || {
        for ev in events {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    let consumer = tokio::spawn(async move {
        let mut active = 0usize;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Acquired {
                    partitions, token, ..
                } => {
                    active += partitions.len();
                    println!("acquired {partitions:?} (token {token}): {active} active");
                }
                Event::Released {
                    partitions, reason, ..
                } => {
                    active -= partitions.len();
                    println!("released {partitions:?} ({reason:?}): {active} active");
                }
                _ => {}
            }
        }
        println!("the member stopped: its channel disconnected");
        active
    });

    // The hot path, straight from async code.
    while node.owned_partitions().len() < 16 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p = node.partition_for(b"customer-42");
    println!("customer-42 is partition {p}; owned here: {}", node.owns(p));

    // stop() blocks too (it leaves the ring and waits for drains).
    spawn_blocking(move || node.stop()).await??;
    let left = consumer.await?;
    assert_eq!(left, 0, "every acquired partition was released");
    Ok(())
}
