//! Tests of the edge that need the store's internals (the ring's lock key)
//! against a real PostgreSQL.

use std::time::{Duration, Instant};

use leasering_testkit::{unique_name, TestPostgres};

use crate::config::Config;
use crate::store::Store;
use crate::{ErrorKind, RingNode};

/// Issue 17, item 6: a `start()` that fails after its join request was
/// committed withdraws it. Here nobody can absorb the request while the
/// start runs (the test holds the ring's lock), so the start times out
/// with its request filed; without the withdrawal, the next member to get
/// the lock would absorb it, and the ring would carry a ghost member —
/// nobody renewing it, holding its share for a TTL.
#[test]
fn a_failed_start_withdraws_its_join_request() {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let schema = unique_name("ghost");
    let ring = unique_name("ring");
    let mut cfg = Config::new(ring.clone());
    cfg.schema = schema.clone();
    let key = Store::new(&cfg, "a").unwrap().ring_lock;
    let mut admin = db.client().unwrap();
    crate::migrate(&mut admin, &schema).unwrap();
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();
    let started = RingNode::builder(db.pool(3).unwrap(), ring.clone())
        .schema(schema.clone())
        .node_id("a")
        .lease_ttl(Duration::from_secs(6))
        .start_timeout(Duration::from_millis(1500))
        .start();
    let Err(err) = started else {
        panic!("nobody can absorb the join: start must fail");
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let pending = |admin: &mut postgres::Client| -> i64 {
        admin
            .query_one(
                &format!("SELECT count(*) FROM \"{schema}\".join_requests WHERE node_id = 'a'"),
                &[],
            )
            .unwrap()
            .get(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending(&mut admin) > 0 {
        assert!(
            Instant::now() < deadline,
            "10 s after its start failed, a's join request is still pending: \
             the next member to take the ring's lock would absorb it as a ghost member"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap();
    let b = RingNode::builder(db.pool(3).unwrap(), ring)
        .schema(schema)
        .node_id("b")
        .lease_ttl(Duration::from_secs(6))
        .start()
        .unwrap();
    let members: Vec<String> = b
        .view()
        .members()
        .iter()
        .map(|m| m.node_id().to_string())
        .collect();
    assert_eq!(members, vec!["b".to_string()], "no ghost of a in the ring");
    b.stop().unwrap();
}
