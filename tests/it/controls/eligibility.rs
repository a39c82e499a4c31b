//! Eligibility (issue 19, items 1 and 2) on a real PostgreSQL: the
//! readiness gate (`NodeBuilder::start_unready`, `RingNode::set_ready`) and
//! cordons (`leasering::cordon`), one mechanism: an ineligible member is a
//! live member that owns nothing, and becoming ineligible sheds its
//! partitions with drain, as on any view change.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use leasering::{ErrorKind, Event, ReleaseReason, RingNode};

const SETTLE: Duration = Duration::from_secs(30);

/// Whether `n` is gated: it owns nothing and its view gives it nothing.
fn holds_nothing(n: &RingNode) -> bool {
    n.owned_partitions().is_empty() && n.view().partitions_of(n.node_id()).is_empty()
}

/// A rolling deploy: each new member starts not ready, warms up for 1 s
/// (sampled every millisecond: it holds nothing, its view gives it nothing,
/// and nobody waits for it), then becomes ready; then an old member stops.
/// No overlap at any time, and the ring ends covered exactly once.
#[test]
fn a_rolling_deploy_with_a_warm_up_never_assigns_an_unready_member() {
    init_logs();
    let ring = ring_name("elig_roll");
    let size = 128u32;
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let n = recorder.start(builder(pool(4), &ring, &format!("old{i}")).ring_size(size));
        nodes.lock().unwrap().push(n);
    }
    let all = nodes.lock().unwrap().clone();
    wait_until(SETTLE, "3 members to settle", || {
        covered_exactly_once(&all, size) && settled(&all)
    });
    let sampler = start_sampler(nodes.clone());
    for i in 0..3 {
        let new = recorder.start(
            builder(pool(4), &ring, &format!("new{i}"))
                .ring_size(size)
                .start_unready(),
        );
        nodes.lock().unwrap().push(new.clone());
        let status = new.status();
        assert!(
            status.joined && !status.ready && !status.eligible,
            "{status:?}"
        );
        // The warm-up.
        let warm_until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < warm_until {
            assert!(
                holds_nothing(&new),
                "an unready member was given partitions"
            );
            let others: Vec<RingNode> = nodes
                .lock()
                .unwrap()
                .iter()
                .filter(|n| n.node_id() != new.node_id())
                .cloned()
                .collect();
            for o in &others {
                let view = o.view();
                if let Some(m) = view.member(new.node_id()) {
                    assert!(!m.is_eligible() && m.partition_count() == 0);
                }
                assert!(
                    o.status()
                        .waiting_for
                        .iter()
                        .all(|(who, _)| who != new.node_id()),
                    "a partition waits for the unready member"
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let all = nodes.lock().unwrap().clone();
        assert!(
            covered_exactly_once(&all, size),
            "the others keep the ring covered"
        );
        new.set_ready(true).unwrap();
        wait_until(SETTLE, "the ready member to take its share", || {
            !new.owned_partitions().is_empty() && covered_exactly_once(&all, size) && settled(&all)
        });
        assert!(new.status().eligible);
        // The old member it replaces goes.
        let old = nodes.lock().unwrap().remove(0);
        old.stop().unwrap();
        let all = nodes.lock().unwrap().clone();
        wait_until(
            SETTLE,
            "the ring to settle after the old member left",
            || covered_exactly_once(&all, size) && settled(&all),
        );
    }
    let all = nodes.lock().unwrap().clone();
    assert!(all.iter().all(|n| n.node_id().starts_with("new")));
    assert!(covered_exactly_once(&all, size));
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    for n in &all {
        n.stop().unwrap();
    }
}

/// `set_ready(false)` sheds everything as a handoff with drain (the next
/// owners start only once the guard is dropped) while the member stays
/// live and renews; `set_ready(true)` gets it a share back.
#[test]
fn readiness_taken_away_sheds_with_drain_and_given_back_restores_a_share() {
    init_logs();
    let ring = ring_name("elig_ready");
    let size = 64u32;
    let recorder = Recorder::default();
    let a = recorder.start(builder(pool(4), &ring, "a").ring_size(size));
    let mut bb = builder(pool(4), &ring, "b")
        .ring_size(size)
        .lease_ttl(Duration::from_secs(3))
        .drain_timeout(Duration::from_secs(20));
    // Not recorded: the recorder keeps the events it reads, drain guards
    // included, which would hold every drain to its timeout.
    let events = bb.subscribe();
    let b = bb.start().unwrap();
    let nodes = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let both = [a.clone(), b.clone()];
    wait_until(SETTLE, "a and b to settle", || {
        covered_exactly_once(&both, size) && settled(&both)
    });
    let sampler = start_sampler(nodes.clone());
    let hers = b.owned_partitions().to_vec();
    assert!(!hers.is_empty());
    while events.try_recv().is_ok() {}
    b.set_ready(false).unwrap();
    // The handoff, with its drain guard.
    let deadline = Instant::now() + SETTLE;
    let guard = loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Released {
                partitions,
                reason: ReleaseReason::Handoff,
                drain,
                ..
            }) => {
                assert_eq!(partitions, hers, "it sheds all it had");
                break drain.expect("a drain guard with drain_timeout set");
            }
            Ok(_) => {}
            Err(e) => panic!("no Released(Handoff) after set_ready(false): {e}"),
        }
    };
    assert!(b.owned_partitions().is_empty());
    // While the guard is held, a does not start on b's partitions.
    let hold_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < hold_until {
        assert!(
            hers.iter().all(|p| !a.owns(*p)),
            "a started during the drain"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(guard);
    wait_until(SETTLE, "a to own the whole ring", || {
        a.owned_partitions().len() == size as usize
    });
    // b stays a live member holding nothing, and renews.
    let renewals = b.status().renewals;
    wait_until(SETTLE, "b to renew while not ready", || {
        b.status().renewals >= renewals + 2
    });
    let st = b.status();
    assert!(
        st.joined && !st.ready && !st.eligible && !st.cordoned,
        "{st:?}"
    );
    assert!(holds_nothing(&b));
    assert!(a.view().member("b").is_some(), "b is still a member");
    b.set_ready(true).unwrap();
    wait_until(SETTLE, "b to get a share back", || {
        !b.owned_partitions().is_empty() && covered_exactly_once(&both, size) && settled(&both)
    });
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    // Unread events would keep the stop's drain guards alive.
    drop(events);
    a.stop().unwrap();
    b.stop().unwrap();
}

/// Every member not ready: nobody owns anything, and status says so.
#[test]
fn a_ring_of_unready_members_owns_nothing_and_says_so() {
    init_logs();
    let ring = ring_name("elig_none");
    let a = builder(pool(4), &ring, "a")
        .ring_size(32)
        .start_unready()
        .start()
        .unwrap();
    let st = a.status();
    assert!(holds_nothing(&a));
    assert_eq!(st.unassigned, 32, "{st:?}");
    a.set_ready(true).unwrap();
    wait_until(SETTLE, "a to own the ring once ready", || {
        a.owned_partitions().len() == 32
    });
    assert_eq!(a.status().unassigned, 0);
    a.stop().unwrap();
}

/// A cordon (the operators' library function, as `ringnode cordon` calls
/// it): the member sheds, stays live and says it is cordoned; restarted
/// under the same node id it rejoins holding nothing; uncordoned, it gets a
/// share back.
#[test]
fn a_cordon_empties_a_member_across_its_restart_until_lifted() {
    init_logs();
    let ring = ring_name("elig_cordon");
    let size = 64u32;
    let recorder = Recorder::default();
    let a = recorder.start(builder(pool(4), &ring, "a").ring_size(size));
    let b = recorder.start(builder(pool(4), &ring, "b").ring_size(size));
    let nodes = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let both = [a.clone(), b.clone()];
    wait_until(SETTLE, "a and b to settle", || {
        covered_exactly_once(&both, size) && settled(&both)
    });
    let sampler = start_sampler(nodes.clone());
    // An observer follows eligibility like any membership change.
    let observer = leasering::RingObserver::builder(pool(2), &ring)
        .start()
        .unwrap();
    let mut admin = db().client().unwrap();
    let epoch = leasering::cordon(&mut admin, "leasering", &ring, "b", true).unwrap();
    wait_until(SETTLE, "the observer to see b ineligible", || {
        let v = observer.view();
        v.member("b").is_some_and(|m| !m.is_eligible())
            && (0..size).all(|p| v.owner_of(p) == Some("a"))
    });
    assert!(epoch.is_some(), "a present member's eligibility changed");
    wait_until(SETTLE, "b to shed everything to a", || {
        holds_nothing(&b) && a.owned_partitions().len() == size as usize
    });
    wait_until(SETTLE, "b to see itself cordoned", || b.status().cordoned);
    let st = b.status();
    assert!(st.joined && st.ready && !st.eligible, "{st:?}");
    // Cordoning twice changes nothing.
    assert_eq!(
        leasering::cordon(&mut admin, "leasering", &ring, "b", true).unwrap(),
        None
    );
    // Restarted under the same node id: it joins holding nothing.
    b.stop().unwrap();
    let b2 = recorder.start(builder(pool(4), &ring, "b").ring_size(size));
    nodes.lock().unwrap().push(b2.clone());
    assert!(
        holds_nothing(&b2),
        "a cordoned node id rejoins holding nothing"
    );
    assert!(b2.status().cordoned);
    let watch_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < watch_until {
        assert!(holds_nothing(&b2));
        std::thread::sleep(Duration::from_millis(1));
    }
    leasering::cordon(&mut admin, "leasering", &ring, "b", false).unwrap();
    let both = [a.clone(), b2.clone()];
    wait_until(SETTLE, "b to get a share back once uncordoned", || {
        !b2.owned_partitions().is_empty() && covered_exactly_once(&both, size) && settled(&both)
    });
    assert!(!b2.status().cordoned);
    // A cordon of an absent node id is kept for when it comes.
    assert_eq!(
        leasering::cordon(&mut admin, "leasering", &ring, "c", true).unwrap(),
        None
    );
    let c = recorder.start(builder(pool(4), &ring, "c").ring_size(size));
    nodes.lock().unwrap().push(c.clone());
    assert!(holds_nothing(&c));
    wait_until(SETTLE, "the observer to see b eligible and c not", || {
        let v = observer.view();
        v.member("b").is_some_and(|m| m.is_eligible())
            && v.member("c").is_some_and(|m| !m.is_eligible())
    });
    observer.stop().unwrap();
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    for n in [a, b2, c] {
        n.stop().unwrap();
    }
}

/// Bad input to `cordon`: typed errors that name the value.
#[test]
fn a_cordon_of_an_unknown_ring_or_a_bad_node_id_is_a_typed_error() {
    init_logs();
    let ring = ring_name("elig_bad");
    let a = builder(pool(4), &ring, "a").ring_size(16).start().unwrap();
    let mut admin = db().client().unwrap();
    let err = leasering::cordon(&mut admin, "leasering", "no-such-ring", "a", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("no-such-ring"), "{err}");
    let err = leasering::cordon(&mut admin, "leasering", &ring, "", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    let err = leasering::cordon(&mut admin, "bad;schema", &ring, "a", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    let err = leasering::cordon(&mut admin, "no_such_schema", &ring, "a", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schema, "{err}");
    assert!(err.to_string().contains("no_such_schema"), "{err}");
    assert!(a.status().eligible);
    a.stop().unwrap();
}
