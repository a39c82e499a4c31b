//! The **move budget** section (issue 19): a ring of 1024 partitions held
//! by 4 members, each handoff drained for 200 ms (the old owner's guard is
//! held until the drain timeout, as a worker finishing its unit would);
//! then 4 members join at one instant. Without a budget the joins hand
//! over half the ring together; with `max_moving(m)` at most `m`
//! partitions are in motion at once.
//!
//! Measured per rep, from the instant the joins are released until every
//! member holds its 128 partitions: **time to balance**; the most
//! partitions **uncovered at once** (active nowhere, sampled every 1 ms);
//! the longest any partition stayed uncovered; the changes the ring went
//! through. The overlap sampler runs beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use leasering::{Event, Placement, RingNode};
use leasering_testkit::sampler::Sampler;
use leasering_testkit::TestPostgres;

use super::support::*;

const RING_SIZE: u32 = 1024;
const OLD: usize = 4;
const NEW: usize = 4;
const DRAIN: Duration = Duration::from_millis(200);

/// What the reps of one budget measured.
pub struct Budgeted {
    pub max_moving: Option<u32>,
    pub balance_ms: Vec<f64>,
    /// Per rep: the most partitions uncovered at once.
    pub uncovered_most: Vec<u32>,
    /// Per rep: the longest a partition stayed uncovered, in ms.
    pub uncovered_longest_ms: Vec<f64>,
    pub changes: Vec<u64>,
    pub overlaps: u64,
    pub failed: usize,
}

type Members = Arc<Mutex<Vec<RingNode>>>;

fn start(
    db: &TestPostgres,
    ring: &str,
    name: &str,
    max_moving: Option<u32>,
) -> (RingNode, Receiver<Event>) {
    let mut b = RingNode::builder(pool(db, name, 3), ring.to_string())
        .node_id(name)
        .ring_size(RING_SIZE)
        .placement(Placement::Balanced)
        .lease_ttl(Duration::from_secs(10))
        .drain_timeout(DRAIN)
        .start_timeout(Duration::from_secs(30));
    if let Some(m) = max_moving {
        b = b.max_moving(m);
    }
    // Never read: the guards it holds make every drain last its timeout.
    let rx = b.subscribe();
    (b.start().expect("start a member"), rx)
}

fn balanced(members: &Members, n: usize) -> bool {
    let nodes = members.lock().unwrap();
    let share = RING_SIZE as usize / n;
    nodes.len() == n
        && nodes.iter().all(|m| {
            let v = m.view();
            v.members().len() == n
                && m.owned_partitions().len() == share
                && v.partitions_of(m.node_id()).len() == share
        })
}

/// `reps` joins of 4 members to a ring of 4 with the budget `max_moving`.
pub fn budget(db: &TestPostgres, max_moving: Option<u32>, reps: usize) -> Budgeted {
    let tag = max_moving.map_or("none".to_string(), |m| m.to_string());
    let mut out = Budgeted {
        max_moving,
        balance_ms: Vec::new(),
        uncovered_most: Vec::new(),
        uncovered_longest_ms: Vec::new(),
        changes: Vec::new(),
        overlaps: 0,
        failed: 0,
    };
    for rep in 0..reps {
        let ring = format!("budget-{tag}-{rep}");
        let members: Members = Arc::new(Mutex::new(Vec::new()));
        let mut drains = Vec::new();
        for i in 0..OLD {
            let (n, rx) = start(db, &ring, &format!("old-{i}"), max_moving);
            drains.push(rx);
            members.lock().unwrap().push(n);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !balanced(&members, OLD) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let epoch0 = members.lock().unwrap()[0].view().epoch();
        let overlaps = {
            let m = members.clone();
            Sampler::start(Duration::from_millis(1), move || {
                m.lock()
                    .unwrap()
                    .iter()
                    .map(|n| (n.node_id().to_string(), n.clone()))
                    .collect()
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let coverage = {
            let (m, stop) = (members.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut since: Vec<Option<Instant>> = vec![None; RING_SIZE as usize];
                let (mut most, mut longest) = (0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let nodes = m.lock().unwrap().clone();
                    let mut seen = vec![false; RING_SIZE as usize];
                    for n in &nodes {
                        for p in n.owned_partitions().iter() {
                            seen[p as usize] = true;
                        }
                    }
                    let now = Instant::now();
                    let mut gone = 0;
                    for (p, s) in seen.iter().enumerate() {
                        match (*s, since[p]) {
                            (false, None) => since[p] = Some(now),
                            (true, Some(t)) => {
                                longest = longest.max(now - t);
                                since[p] = None;
                            }
                            _ => {}
                        }
                        gone += u32::from(!*s);
                    }
                    most = most.max(gone);
                    std::thread::sleep(Duration::from_millis(1));
                }
                (most, longest)
            })
        };
        let barrier = Arc::new(Barrier::new(NEW + 1));
        let joiners: Vec<_> = (0..NEW)
            .map(|i| {
                let (db_pool, ring, barrier) = (
                    pool(db, &format!("new-{rep}-{i}"), 3),
                    ring.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    let mut b = RingNode::builder(db_pool, ring)
                        .node_id(format!("new-{i}"))
                        .ring_size(RING_SIZE)
                        .placement(Placement::Balanced)
                        .lease_ttl(Duration::from_secs(10))
                        .drain_timeout(DRAIN)
                        .start_timeout(Duration::from_secs(30));
                    if let Some(m) = max_moving {
                        b = b.max_moving(m);
                    }
                    let rx = b.subscribe();
                    barrier.wait();
                    (b.start().expect("start a joiner"), rx)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for j in joiners {
            let (n, rx) = j.join().expect("a joiner");
            drains.push(rx);
            members.lock().unwrap().push(n);
        }
        let deadline = t0 + Duration::from_secs(120);
        let mut ok = true;
        while !balanced(&members, OLD + NEW) {
            if Instant::now() > deadline {
                ok = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (most, longest) = coverage.join().expect("the coverage sampler");
        out.overlaps += overlaps.finish().overlaps;
        let nodes: Vec<RingNode> = members.lock().unwrap().drain(..).collect();
        if ok {
            out.balance_ms.push(ms(took));
            out.uncovered_most.push(most);
            out.uncovered_longest_ms.push(ms(longest));
            out.changes.push(nodes[0].view().epoch() - epoch0);
        } else {
            out.failed += 1;
        }
        drop(drains);
        for n in nodes {
            let _ = n.stop();
        }
    }
    out
}

/// The line scripts read.
pub fn budget_line(b: &Budgeted) -> String {
    let bal = stats(&b.balance_ms);
    let longest = stats(&b.uncovered_longest_ms);
    let z = |x: f64| if x.is_finite() { x } else { 0.0 };
    format!(
        "handoff budget max_moving={} join={OLD}+{NEW} ring={RING_SIZE} drain_ms={} reps={} balance_p50_ms={:.0} balance_max_ms={:.0} uncovered_most={} uncovered_longest_ms={:.1} changes_p50={} overlaps={}",
        b.max_moving.map_or("none".to_string(), |m| m.to_string()),
        DRAIN.as_millis(),
        b.balance_ms.len(),
        z(bal.p50),
        z(bal.max),
        b.uncovered_most.iter().max().copied().unwrap_or(0),
        z(longest.max),
        {
            let mut c = b.changes.clone();
            c.sort_unstable();
            c.get(c.len() / 2).copied().unwrap_or(0)
        },
        b.overlaps
    )
}

/// The section's lines, the unbudgeted join first.
pub fn report(all: &[Budgeted]) {
    println!();
    println!(
        "Move budget: {OLD} members of a ring of {RING_SIZE}, {NEW} join at one instant; each handoff drained {} ms; \
         balance = every member holds its {} partitions; uncovered = active nowhere, sampled every 1 ms:",
        DRAIN.as_millis(),
        RING_SIZE as usize / (OLD + NEW)
    );
    for b in all {
        if b.failed > 0 {
            println!(
                "  max_moving={:?}: {} reps did not balance within 120 s",
                b.max_moving, b.failed
            );
        }
    }
    println!();
    for b in all {
        println!("{}", budget_line(b));
    }
}
