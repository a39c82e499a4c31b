//! A router that sends each key to the member that owns it.
//!
//! Three members of a ring each publish where they serve their partitions
//! (their **metadata**, here a made-up address). A router process does not
//! join the ring: a [`RingObserver`] follows it — one connection, no
//! lease — and answers "who owns this key, and where is it?" on the hot
//! path, lock-free. When a member leaves, the observer's next view routes
//! its keys to the members that took over.
//!
//! Run: `cargo run --example router` (a throwaway PostgreSQL; or set
//! `DATABASE_URL`).

mod common;

use std::time::Duration;

use common::{wait_for, Database};
use leasering::{RingNode, RingObserver};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::open();
    let members: Vec<RingNode> = (0..3)
        .map(|i| {
            RingNode::builder(db.pool(), "router-example")
                .node_id(format!("shard-{i}"))
                .ring_size(64)
                .metadata(format!("10.0.0.{}:7000", i + 1))
                .start()
        })
        .collect::<Result<_, _>>()?;

    let router = RingObserver::builder(db.pool(), "router-example").start()?;
    wait_for(
        "the router to see three members",
        Duration::from_secs(30),
        || router.view().members().len() == 3,
    );

    let keys: [&[u8]; 4] = [b"customer-1", b"customer-2", b"order-77", b"invoice-9"];
    let route = |router: &RingObserver| {
        for key in keys {
            let owner = router
                .owner_info_of_key(key)
                .expect("a ring with members has owners");
            println!(
                "  {:<12} -> {} at {}",
                String::from_utf8_lossy(key),
                owner.node_id(),
                owner.metadata().unwrap_or("?")
            );
        }
    };
    println!("epoch {}:", router.view().epoch());
    route(&router);

    // shard-0 leaves; its keys go to the others.
    members[0].stop()?;
    wait_for(
        "the router to see shard-0 leave",
        Duration::from_secs(30),
        || router.view().members().len() == 2,
    );
    println!("epoch {} (shard-0 left):", router.view().epoch());
    route(&router);
    for key in keys {
        let owner = router.owner_info_of_key(key).expect("an owner");
        assert_ne!(
            owner.node_id(),
            "shard-0",
            "a key routed to a member that left"
        );
    }
    router.stop()?;
    for m in &members[1..] {
        m.stop()?;
    }
    Ok(())
}
