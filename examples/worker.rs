//! A worker that writes with fencing tokens.
//!
//! Two members share a ring of 16 partitions. Each one works on what it
//! owns by writing to a sink table, and passes the partition's **fencing
//! token** with every write. The sink keeps, per partition, the highest
//! token it has accepted and refuses a write with a lower one — so a member
//! that was paused (GC, swap, a stalled network) and wakes up after its
//! partition moved cannot overwrite its successor's work, even if it still
//! believes it owns the partition.
//!
//! Run: `cargo run --example worker` (a throwaway PostgreSQL; or set
//! `DATABASE_URL`).

mod common;

use std::time::Duration;

use common::{wait_for, Database};
use leasering::RingNode;
use r2d2_postgres::postgres::Client;

/// The sink's fenced write: applied only if `token` is at least the one
/// the sink last accepted for `partition`. Returns whether it was applied.
fn fenced_write(sink: &mut Client, partition: u32, token: u64, writer: &str) -> bool {
    let applied = sink
        .execute(
            "INSERT INTO example_sink AS s (partition, token, writes, last_writer)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (partition) DO UPDATE
                SET token = EXCLUDED.token, writes = s.writes + 1, last_writer = EXCLUDED.last_writer
              WHERE s.token <= EXCLUDED.token",
            &[&(partition as i32), &(token as i64), &writer],
        )
        .expect("write to the sink");
    applied == 1
}

/// One round of work: a fenced write to each partition the member owns.
fn work(node: &RingNode, sink: &mut Client) -> usize {
    let owned = node.owned_partitions();
    let mut done = 0;
    for p in owned.iter() {
        let token = owned.token(p).expect("an owned partition has a token");
        if fenced_write(sink, p, token, node.node_id()) {
            done += 1;
        }
    }
    done
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::open();
    let mut sink = db.client();
    sink.batch_execute(
        "DROP TABLE IF EXISTS example_sink;
         CREATE TABLE example_sink (partition int PRIMARY KEY, token bigint NOT NULL,
                                    writes bigint NOT NULL, last_writer text NOT NULL)",
    )?;

    let a = RingNode::builder(db.pool(), "worker-example")
        .node_id("a")
        .ring_size(16)
        .start()?;
    wait_for("a to own the ring", Duration::from_secs(30), || {
        a.owned_partitions().len() == 16
    });
    println!(
        "a owns {:?}; wrote {}",
        a.owned_partitions().to_vec(),
        work(&a, &mut sink)
    );

    // Remember a's token for one partition, as a paused process would.
    let before = a.owned_partitions();

    let b = RingNode::builder(db.pool(), "worker-example")
        .node_id("b")
        .ring_size(16)
        .start()?;
    wait_for("a and b to share the ring", Duration::from_secs(30), || {
        !b.owned_partitions().is_empty()
            && a.owned_partitions().len() + b.owned_partitions().len() == 16
    });
    println!(
        "b joined: a owns {:?}, b owns {:?}",
        a.owned_partitions().to_vec(),
        b.owned_partitions().to_vec()
    );
    println!(
        "b wrote {}, a wrote {}",
        work(&b, &mut sink),
        work(&a, &mut sink)
    );

    // A write by "a" with its old token to a partition b owns now is
    // refused by the sink: b's token is higher.
    let moved = b
        .owned_partitions()
        .iter()
        .next()
        .expect("b owns something");
    let stale = before.token(moved).expect("a owned it before");
    let accepted = fenced_write(&mut sink, moved, stale, "a (paused, stale)");
    println!(
        "a late write to partition {moved} with a's old token {stale} (b holds token {}): {}",
        b.owned_partitions().token(moved).unwrap_or(0),
        if accepted {
            "ACCEPTED"
        } else {
            "refused by the sink"
        }
    );
    assert!(!accepted, "the sink must refuse a stale token");

    let last: String = sink
        .query_one(
            "SELECT last_writer FROM example_sink WHERE partition = $1",
            &[&(moved as i32)],
        )?
        .get(0);
    println!("partition {moved} was last written by {last}");
    a.stop()?;
    b.stop()?;
    Ok(())
}
