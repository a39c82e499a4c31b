//! Placement and routing against a real PostgreSQL: the balanced placement
//! through joins, leaves and a crash (both overlap checkers watching),
//! weights, a mismatched placement, member metadata, and a
//! [`RingObserver`] agreeing with the members.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use leasering::{ErrorKind, Placement, RingNode, RingObserver, RingView};

const SETTLE: Duration = Duration::from_secs(30);

/// Every member's count is strictly within one partition of its weighted
/// fair share `ring_size · w / W`.
fn assert_within_one_of_share(view: &RingView) {
    let total: u64 = view.members().iter().map(|m| m.weight() as u64).sum();
    let n = view.ring_size() as u64;
    let mut sum = 0;
    for m in view.members() {
        let share = n as f64 * m.weight() as f64 / total as f64;
        let c = m.partition_count() as f64;
        assert!(
            (c - share).abs() < 1.0,
            "{} holds {c} partitions, its share is {share:.2} (epoch {}, {} members)",
            m.node_id(),
            view.epoch(),
            view.members().len()
        );
        sum += m.partition_count();
    }
    assert_eq!(sum, view.ring_size(), "every partition has an owner");
}

fn owners(view: &RingView) -> Vec<Option<String>> {
    (0..view.ring_size())
        .map(|p| view.owner_of(p).map(str::to_string))
        .collect()
}

fn settle(nodes: &[RingNode], size: u32, what: &str) {
    wait_until(SETTLE, what, || {
        covered_exactly_once(nodes, size) && settled(nodes)
    });
    // Views built by different paths (the absorber's own, a delta, a full
    // read) place every partition alike.
    let first = owners(&nodes[0].ring());
    for n in &nodes[1..] {
        assert_eq!(
            owners(&n.ring()),
            first,
            "{} disagrees with {}",
            n.node_id(),
            nodes[0].node_id()
        );
    }
}

#[test]
fn a_balanced_ring_keeps_shares_within_one_and_moves_the_minimum_through_joins_leaves_and_a_crash()
{
    init_logs();
    let ring = ring_name("balanced");
    let size = 1000u32;
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder::default();
    let sampler = start_sampler(nodes.clone());
    // Weights 8, 16, 8, 24, 8, 8: shares are not whole numbers.
    let weights = [8u32, 16, 8, 24, 8, 8];
    let mut before: Option<RingView> = None;
    for (i, w) in weights.iter().enumerate() {
        let name = format!("b{i}");
        let n = recorder.start(
            builder(pool(4), &ring, &name)
                .ring_size(size)
                .vnode_count(*w)
                .placement(Placement::Balanced),
        );
        nodes.lock().unwrap().push(n);
        let all = nodes.lock().unwrap().clone();
        settle(&all, size, &format!("{} balanced members to settle", i + 1));
        let view = all[0].ring();
        assert_eq!(view.placement(), Placement::Balanced);
        assert_within_one_of_share(&view);
        if let Some(old) = &before {
            // A join moves partitions only to the joiner.
            let (o, v) = (owners(old), owners(&view));
            let moved = (0..size as usize).filter(|p| o[*p] != v[*p]).count();
            assert!(
                (0..size as usize).all(|p| o[p] == v[p] || v[p].as_deref() == Some(&name)),
                "a partition moved between two members that did not change"
            );
            assert_eq!(
                moved as u32,
                view.member(&name).unwrap().partition_count(),
                "the joiner's partitions are exactly the ones that moved"
            );
        }
        before = Some(view);
    }
    let all = nodes.lock().unwrap().clone();
    // A graceful leave moves only the leaver's partitions.
    let leaver = all[3].clone();
    let old = owners(&leaver.ring());
    leaver.stop().unwrap();
    let rest: Vec<RingNode> = all
        .iter()
        .filter(|n| n.node_id() != "b3")
        .cloned()
        .collect();
    *nodes.lock().unwrap() = rest.clone();
    settle(&rest, size, "5 members to settle after b3 left");
    let view = rest[0].ring();
    assert_within_one_of_share(&view);
    let v = owners(&view);
    assert!(
        (0..size as usize).all(|p| old[p] == v[p] || old[p].as_deref() == Some("b3")),
        "a leave moved a partition that was not the leaver's"
    );
    // A crash: the member vanishes without a leave; its partitions move when
    // its lease ends, to the others, shares within one again.
    let crashed = rest[1].clone();
    crashed.crash();
    let alive: Vec<RingNode> = rest
        .iter()
        .filter(|n| n.node_id() != crashed.node_id())
        .cloned()
        .collect();
    *nodes.lock().unwrap() = alive.clone();
    settle(&alive, size, "4 members to settle after a crash");
    assert_within_one_of_share(&alive[0].ring());
    // The table the database stored (read whole by a new observer) is the
    // one the members computed change by change.
    let late = RingObserver::builder(pool(2), &ring).start().unwrap();
    wait_until(SETTLE, "a new observer to read the members' epoch", || {
        late.view().epoch() == alive[0].ring().epoch()
    });
    assert_eq!(late.view().placement(), Placement::Balanced);
    assert_eq!(
        owners(&late.view()),
        owners(&alive[0].ring()),
        "stored table != members' tables"
    );
    late.stop();
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    for n in &alive {
        n.stop().unwrap();
    }
}

#[test]
fn a_mismatched_placement_is_a_typed_error_naming_both() {
    init_logs();
    let ring = ring_name("mismatch");
    let first = builder(pool(4), &ring, "p0")
        .ring_size(64)
        .placement(Placement::Balanced)
        .start()
        .unwrap();
    let err = builder(pool(4), &ring, "p1")
        .ring_size(64)
        .start()
        .expect_err("a hashed member must not join a balanced ring");
    assert_eq!(err.kind(), ErrorKind::PlacementMismatch, "{err}");
    assert_eq!(
        err.placements(),
        Some((Placement::Balanced, Placement::Hashed))
    );
    assert!(
        err.to_string().contains("balanced") && err.to_string().contains("hashed"),
        "{err}"
    );
    assert!(
        first.status().is_healthy(),
        "the ring's member is unaffected"
    );
    first.stop().unwrap();
}

#[test]
fn bad_metadata_and_a_bad_placement_name_are_typed_errors() {
    let err = builder(pool(4), "r", "n")
        .metadata("x".repeat(leasering::MAX_METADATA_LEN + 1))
        .start()
        .expect_err("oversized metadata");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_eq!(err.setting(), Some("metadata"));
    let err = "rendezvous".parse::<Placement>().unwrap_err();
    assert_eq!(err.setting(), Some("placement"));
    assert!(err.to_string().contains("rendezvous"), "{err}");
}

#[test]
fn metadata_reaches_every_view_and_the_observer() {
    init_logs();
    let ring = ring_name("metadata");
    let a = builder(pool(4), &ring, "a")
        .ring_size(64)
        .metadata("10.0.0.1:8080")
        .start()
        .unwrap();
    // An observer started first reads it with the ring; b's metadata then
    // arrives in the change (notification) to a and to the observer.
    let obs = RingObserver::builder(pool(2), &ring).start().unwrap();
    let b = builder(pool(4), &ring, "b")
        .ring_size(64)
        .metadata("10.0.0.2:8080 zone=b ~ +1:x")
        .start()
        .unwrap();
    let c = builder(pool(4), &ring, "c").ring_size(64).start().unwrap();
    let want = |v: &RingView| {
        v.member("a").and_then(|m| m.metadata()) == Some("10.0.0.1:8080")
            && v.member("b").and_then(|m| m.metadata()) == Some("10.0.0.2:8080 zone=b ~ +1:x")
            && v.member("c").is_some_and(|m| m.metadata().is_none())
    };
    wait_until(
        SETTLE,
        "every view (and the observer's) to show a's and b's metadata",
        || [&a, &b, &c].iter().all(|n| want(&n.ring())) && want(&obs.view()),
    );
    // A late observer gets it from a full read.
    let late = RingObserver::builder(pool(2), &ring).start().unwrap();
    assert!(want(&late.view()), "{:?}", late.view().members());
    let p = (0..64)
        .find(|p| a.ring().owner_of(*p) == Some("b"))
        .unwrap();
    let owner = obs.owner_of(p).unwrap();
    assert_eq!(
        (owner.node_id(), owner.metadata()),
        ("b", Some("10.0.0.2:8080 zone=b ~ +1:x"))
    );
    for n in [a, b, c] {
        n.stop().unwrap();
    }
    obs.stop();
    late.stop();
}

fn observer_agrees_through_churn(placement: Placement) {
    init_logs();
    let ring = ring_name(&format!("observe_{placement}"));
    let size = 1024u32;
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("key-{i}").into_bytes()).collect();
    let obs = RingObserver::builder(pool(2), &ring)
        .poll_interval(Duration::from_millis(200))
        .start()
        .unwrap();
    let views = obs.subscribe();
    let start = |name: String| {
        builder(pool(4), &ring, &name)
            .ring_size(size)
            .placement(placement)
            .start()
            .unwrap()
    };
    let mut nodes: Vec<RingNode> = (0..8).map(|i| start(format!("o{i}"))).collect();
    // Members' views, by epoch, sampled while the ring changes: the truth
    // the observer's views must match epoch for epoch.
    let truth: Arc<Mutex<BTreeMap<u64, Vec<Option<String>>>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let shared_nodes = Arc::new(Mutex::new(nodes.clone()));
    let sampler = {
        let (truth, stop, shared_nodes) = (truth.clone(), stop.clone(), shared_nodes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for n in shared_nodes.lock().unwrap().iter() {
                    let v = n.ring();
                    truth
                        .lock()
                        .unwrap()
                        .entry(v.epoch())
                        .or_insert_with(|| owners(&v));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let agree = |nodes: &[RingNode]| {
        let v = nodes[0].ring();
        nodes.iter().all(|n| n.ring().epoch() == v.epoch())
            && obs.view().epoch() == v.epoch()
            && keys.iter().all(|k| {
                obs.owner_of_key(k).map(|m| m.node_id().to_string())
                    == v.owner_of(leasering::partition_for(k, size))
                        .map(str::to_string)
            })
    };
    // Each agreed view goes into the truth too: the sampler may not run
    // between the members' adopting an epoch and the next change.
    let record_agreed = |nodes: &[RingNode]| {
        let v = nodes[0].ring();
        truth
            .lock()
            .unwrap()
            .entry(v.epoch())
            .or_insert_with(|| owners(&v));
    };
    wait_until(
        SETTLE,
        "the observer and 8 members to agree on 1000 keys",
        || agree(&nodes),
    );
    record_agreed(&nodes);
    // Churn: two leave, two join, one crashes; agreement after each settles
    // (after a crash: once its lease has ended and it is removed).
    for round in 0..3 {
        let mut crashed: Option<String> = None;
        match round {
            0 => {
                let gone = nodes.remove(2);
                gone.stop().unwrap();
                nodes.push(start("o8".into()));
            }
            1 => {
                let gone = nodes.remove(0);
                gone.stop().unwrap();
                nodes.push(start("o9".into()));
            }
            _ => {
                let gone = nodes.remove(1);
                gone.crash();
                crashed = Some(gone.node_id().to_string());
            }
        }
        *shared_nodes.lock().unwrap() = nodes.clone();
        let what = match &crashed {
            Some(c) => format!("agreement after churn round {round}, {c} removed"),
            None => format!("agreement after churn round {round}"),
        };
        wait_until(SETTLE, &what, || {
            agree(&nodes)
                && crashed
                    .as_deref()
                    .is_none_or(|c| nodes[0].ring().member(c).is_none())
        });
        record_agreed(&nodes);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    // Every view the observer adopted is one the members had at that
    // epoch: during a handoff it answers the old owner or the new one.
    let truth = truth.lock().unwrap();
    let mut matched = 0;
    let mut seen = 0;
    for v in views.try_iter() {
        seen += 1;
        assert!(v.epoch() > 0);
        if let Some(t) = truth.get(&v.epoch()) {
            assert_eq!(
                &owners(&v),
                t,
                "the observer's view at epoch {} is not the ring's",
                v.epoch()
            );
            matched += 1;
        }
    }
    // Changes that arrive together are adopted as one view: at least the
    // first and one per churn round.
    assert!(seen >= 4, "the observer adopted only {seen} views");
    assert!(
        matched >= 4,
        "only {matched} of the observer's {seen} views were compared"
    );
    for n in nodes {
        n.stop().unwrap();
    }
    obs.stop();
}

#[test]
fn an_observer_agrees_with_the_members_through_churn_hashed() {
    observer_agrees_through_churn(Placement::Hashed);
}

#[test]
fn an_observer_agrees_with_the_members_through_churn_balanced() {
    observer_agrees_through_churn(Placement::Balanced);
}

#[test]
fn an_observer_of_a_ring_that_does_not_exist_yet_follows_it_once_created() {
    init_logs();
    let ring = ring_name("later");
    let obs = RingObserver::builder(pool(2), &ring)
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    assert!(obs.owner_of_key(b"k").is_none());
    assert_eq!(obs.view().members().len(), 0);
    let n = builder(pool(4), &ring, "first")
        .ring_size(32)
        .start()
        .unwrap();
    wait_until(
        SETTLE,
        "the observer to see the ring's first member",
        || {
            obs.owner_of_key(b"k")
                .is_some_and(|m| m.node_id() == "first")
        },
    );
    assert_eq!(obs.view().ring_size(), 32);
    n.stop().unwrap();
    obs.stop();
}
