//! Joins, leaves and convergence against a real PostgreSQL, with two
//! independent overlap checkers watching every change.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use leasering::{Event, ReleaseReason, RingNode};

const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn a_single_member_owns_every_partition_with_a_token() {
    init_logs();
    let ring = ring_name("single");
    let node = builder(pool(4), &ring, "solo")
        .ring_size(256)
        .start()
        .unwrap();
    wait_until(SETTLE, "the lone member to own all 256 partitions", || {
        node.owned_partitions().len() == 256
    });
    let owned = node.owned_partitions();
    let epoch = node.view().epoch();
    for p in 0..256 {
        assert!(node.owns(p), "partition {p}");
        assert_eq!(owned.token(p), Some(epoch), "token of {p}");
        assert_eq!(node.view().owner_of(p), Some("solo"));
    }
    assert!(!node.owns(256));
    assert_eq!(
        node.partition_for(b"k"),
        leasering::partition_for(b"k", 256)
    );
    node.stop().unwrap();
    assert!(node.owned_partitions().is_empty());
    assert!((0..256).all(|p| !node.owns(p)));
}

fn converge_checked(join_at_once: bool) {
    init_logs();
    let ring = ring_name(if join_at_once { "burst" } else { "onebyone" });
    let size = 1024;
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder::default();
    let first = recorder.start(builder(pool(4), &ring, "m0"));
    nodes.lock().unwrap().push(first.clone());
    wait_until(SETTLE, "m0 to own everything", || {
        first.owned_partitions().len() == size
    });
    let sampler = start_sampler(nodes.clone());
    if join_at_once {
        let handles: Vec<_> = (1..8)
            .map(|i| {
                let (ring, recorder) = (ring.clone(), recorder.clone());
                std::thread::spawn(move || {
                    recorder.start(builder(pool(4), &ring, &format!("m{i}")))
                })
            })
            .collect();
        for h in handles {
            let n = h.join().unwrap();
            nodes.lock().unwrap().push(n);
        }
    } else {
        for i in 1..8 {
            let n = recorder.start(builder(pool(4), &ring, &format!("m{i}")));
            nodes.lock().unwrap().push(n);
            let all = nodes.lock().unwrap().clone();
            wait_until(
                SETTLE,
                &format!("{} members to cover the ring exactly once", i + 1),
                || covered_exactly_once(&all, size as u32),
            );
        }
    }
    let all = nodes.lock().unwrap().clone();
    wait_until(SETTLE, "8 members to cover the ring exactly once", || {
        covered_exactly_once(&all, size as u32)
    });
    // Every member's active set is what the (common) view assigns it.
    // (Coverage alone can hold while the last joiner's partitions are still
    // active on their former owners, so wait for the handoff to finish.)
    wait_until(
        SETTLE,
        "all views at one epoch, each member holding its share",
        || {
            let e = all[0].view().epoch();
            all.iter().all(|n| n.view().epoch() == e)
                && all
                    .iter()
                    .all(|n| n.owned_partitions().to_vec() == n.view().partitions_of(n.node_id()))
        },
    );
    let sampled = sampler.finish();
    sampled.assert_no_overlap();
    assert!(
        sampled.samples > 10,
        "sampler ran {} times",
        sampled.samples
    );
    recorder.assert_no_overlap_and_tokens_increase();
    for n in &all {
        n.stop().unwrap();
    }
}

#[test]
fn members_joining_one_by_one_converge_without_overlap() {
    converge_checked(false);
}

#[test]
fn eight_members_joining_at_once_converge_without_overlap() {
    converge_checked(true);
}

#[test]
fn graceful_leave_hands_partitions_over_and_leaves_no_row() {
    init_logs();
    let ring = ring_name("leave");
    let size = 512u32;
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder::default();
    for i in 0..4 {
        let n = recorder.start(builder(pool(4), &ring, &format!("l{i}")).ring_size(size));
        nodes.lock().unwrap().push(n);
    }
    let all = nodes.lock().unwrap().clone();
    wait_until(SETTLE, "4 members to settle", || {
        covered_exactly_once(&all, size) && settled(&all)
    });
    let sampler = start_sampler(nodes.clone());
    let leaver = all[1].clone();
    let its = leaver.owned_partitions().to_vec();
    assert!(!its.is_empty());
    let events = leaver.subscribe();
    leaver.stop().unwrap();
    assert!(leaver.owned_partitions().is_empty(), "owned after stop");
    assert!(its.iter().all(|p| !leaver.owns(*p)));
    // Its last event says why it let go.
    let evs: Vec<Event> = events.try_iter().collect();
    assert!(
        evs.iter().any(|e| matches!(e, Event::Released { reason: ReleaseReason::Stopping, partitions, .. } if *partitions == its)),
        "expected Released(Stopping) of its partitions, got {evs:?}"
    );
    assert_eq!(
        rows_of(db(), "leasering", &ring, leaver.node_id()),
        0,
        "rows left behind"
    );
    let rest: Vec<RingNode> = all
        .iter()
        .filter(|n| n.node_id() != leaver.node_id())
        .cloned()
        .collect();
    wait_until(SETTLE, "the other 3 to cover the ring", || {
        covered_exactly_once(&rest, size)
    });
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    // Stopping twice is fine.
    leaver.stop().unwrap();
    for n in &rest {
        n.stop().unwrap();
        assert_eq!(rows_of(db(), "leasering", &ring, n.node_id()), 0);
    }
}

/// The Go original failed with 3 nodes starting at once on an
/// empty database (a DDL race); here 50 start at once, with a short TTL
/// (so a 1 s statement timeout: joins queue on the ring's row lock and are
/// retried within the start timeout), on a server of their own.
#[test]
fn fifty_members_start_at_once_on_an_empty_database() {
    init_logs();
    let server =
        leasering_testkit::TestPostgres::start_with(leasering_testkit::TestPostgresOptions {
            max_connections: 400,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let schema = ring_name("fresh");
    let ring = ring_name("fifty");
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let nodes: Vec<RingNode> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (schema, ring, barrier, server) =
                    (schema.clone(), ring.clone(), barrier.clone(), &server);
                s.spawn(move || {
                    let p = pool_of(server, 3);
                    barrier.wait();
                    builder(p, &ring, &format!("t{i}"))
                        .schema(schema)
                        .lease_ttl(Duration::from_secs(3))
                        .start()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("start failed: {e}"))
            })
            .collect()
    });
    wait_until(SETTLE, "50 members to cover the ring", || {
        covered_exactly_once(&nodes, 1024)
    });
    for n in &nodes {
        n.stop().unwrap();
    }
}

#[test]
fn tokens_increase_from_owner_to_owner_through_churn() {
    init_logs();
    let ring = ring_name("tokens");
    let size = 128;
    let recorder = Recorder::default();
    let mut live: Vec<RingNode> = Vec::new();
    for round in 0..6 {
        let n = recorder.start(
            builder(pool(4), &ring, &format!("k{round}"))
                .ring_size(size)
                .vnode_count(4),
        );
        live.push(n);
        wait_until(SETTLE, "coverage after a join", || {
            covered_exactly_once(&live, size)
        });
        if round % 2 == 1 {
            let gone = live.remove(0);
            gone.stop().unwrap();
            wait_until(SETTLE, "coverage after a leave", || {
                covered_exactly_once(&live, size)
            });
        }
    }
    recorder.assert_no_overlap_and_tokens_increase();
    // Every partition changed hands at least once, and tokens rose each time.
    let mut per_partition = std::collections::HashMap::new();
    for iv in recorder.intervals() {
        *per_partition.entry(iv.partition).or_insert(0) += 1;
    }
    assert!(per_partition.values().filter(|n| **n > 1).count() > size as usize / 2);
    for n in &live {
        n.stop().unwrap();
    }
}

#[test]
fn a_live_node_id_cannot_be_taken_over() {
    init_logs();
    let ring = ring_name("dupe");
    let a = builder(pool(4), &ring, "same").start().unwrap();
    let err = builder(pool(4), &ring, "same").start().unwrap_err();
    assert_eq!(err.kind(), leasering::ErrorKind::NodeIdInUse, "{err}");
    assert!(err.to_string().contains("same"), "{err}");
    a.stop().unwrap();
    // Once it left, the id is free again, with the same positions.
    let positions = |n: &RingNode| n.view().member(n.node_id()).unwrap().positions().to_vec();
    let b = builder(pool(4), &ring, "same").start().unwrap();
    let first = positions(&b);
    b.stop().unwrap();
    let c = builder(pool(4), &ring, "same").start().unwrap();
    assert_eq!(positions(&c), first);
    c.stop().unwrap();
}

#[test]
fn ring_size_must_match_the_stored_ring() {
    init_logs();
    let ring = ring_name("size");
    let a = builder(pool(4), &ring, "a").ring_size(64).start().unwrap();
    let err = builder(pool(4), &ring, "b")
        .ring_size(128)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), leasering::ErrorKind::RingSizeMismatch, "{err}");
    assert!(
        err.message().contains("64") && err.message().contains("128"),
        "{err}"
    );
    a.stop().unwrap();
}

#[test]
fn notifications_off_still_hands_over() {
    init_logs();
    let ring = ring_name("nonotify");
    let quiet = |name: &str| {
        builder(pool(4), &ring, name)
            .ring_size(64)
            .lease_ttl(Duration::from_secs(3))
            .pooling(leasering::Pooling::SessionPolling)
            .start()
            .unwrap()
    };
    let a = quiet("a");
    let b = quiet("b");
    let both = vec![a.clone(), b.clone()];
    wait_until(
        SETTLE,
        "two members without notifications to cover the ring",
        || covered_exactly_once(&both, 64),
    );
    b.stop().unwrap();
    wait_until(SETTLE, "a to take over everything", || {
        a.owned_partitions().len() == 64
    });
    a.stop().unwrap();
}

#[test]
fn a_joiner_absorbed_by_a_slow_member_gets_a_lease_that_outlasts_its_local_one() {
    // x's join transaction sleeps 3 s right after it took the ring's lock
    // (a trigger on its join request); y files its request meanwhile and
    // x absorbs it. y's lease in the database must start no earlier than y
    // sent its request — the instant y counts its local lease from — not
    // at x's transaction start, 0.5 s (five of y's margins) before.
    init_logs();
    let db = db();
    let ring = ring_name("slowabsorb");
    let app = ring_name("slowjoiner");
    let mut admin = db.client().unwrap();
    leasering::migrate(&mut admin, "leasering").unwrap();
    admin
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION leasering.slow_{app}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF current_setting('application_name') = '{app}' THEN PERFORM pg_sleep(3); END IF;
               RETURN NULL;
             END $$;
             CREATE TRIGGER slow_{app} AFTER INSERT ON leasering.join_requests
               FOR EACH STATEMENT EXECUTE FUNCTION leasering.slow_{app}();"
        ))
        .unwrap();
    // TTL 30 s: statements may run 10 s, far longer than the trigger's
    // sleep; and y's first renewal, which would move both leases on, comes
    // 10 s after its join — long after the comparison below.
    let ttl = Duration::from_secs(30);
    let x = std::thread::spawn({
        let (ring, pool) = (ring.clone(), named_pool(db, &app, 4));
        move || {
            builder(pool, &ring, "x")
                .lease_ttl(ttl)
                .ring_size(64)
                .start()
                .unwrap()
        }
    });
    let y = builder(pool(4), &ring, "y")
        .lease_ttl(ttl)
        .margin(Duration::from_millis(100))
        .ring_size(64);
    // y files its request 0.5 s into x's sleep (a condition, then the
    // offset the test is about), with 2.5 s of it left.
    wait_until(
        SETTLE,
        "x's join to sleep in the database, holding the ring's lock",
        || {
            db.client()
                .unwrap()
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE application_name = $1 AND wait_event = 'PgSleep')",
                    &[&app],
                )
                .unwrap()
                .get(0)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let y = y.start().unwrap();
    let x = x.join().unwrap();
    db.client()
        .unwrap()
        .batch_execute(&format!(
            "DROP TRIGGER slow_{app} ON leasering.join_requests"
        ))
        .unwrap();
    // Before y's first renewal (TTL/3 = 10 s after its join), compare its
    // local lease with the database's.
    let in_db: f64 = db
        .client()
        .unwrap()
        .query_one(
            "SELECT extract(epoch FROM expires_at - now())::float8 FROM leasering.members
             WHERE ring_id = $1 AND node_id = 'y'",
            &[&ring],
        )
        .unwrap()
        .get(0);
    let local = y
        .status()
        .lease_left
        .expect("y holds a lease")
        .as_secs_f64();
    assert!(
        local < in_db,
        "y's local lease ({local:.3} s left) outlasts its lease in the database ({in_db:.3} s left)"
    );
    x.stop().unwrap();
    y.stop().unwrap();
}
