//! Shared helpers of the integration tests: the throwaway PostgreSQL,
//! pools, starting members, waiting for conditions, and two independent
//! overlap checkers (one from events, one sampling `owned_partitions()`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leasering::{Builder, Event, RingNode};
use leasering_testkit::{unique_name, TestPostgres};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

/// An activity interval of one member on one partition: (node, token, from, until).
pub type Interval = (String, u64, Instant, Option<Instant>);

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The test binary's shared server (started once, torn down at exit).
pub fn db() -> &'static TestPostgres {
    match TestPostgres::shared() {
        Ok(db) => db,
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

pub fn pool_of(db: &TestPostgres, max: u32) -> Pool {
    db.pool(max).unwrap_or_else(|e| panic!("pool: {e}"))
}

pub fn pool(max: u32) -> Pool {
    pool_of(db(), max)
}

/// A pool whose connections carry `application_name` (so the database can
/// tell members apart) and never block long.
pub fn named_pool(db: &TestPostgres, app: &str, max: u32) -> Pool {
    let mut cfg = db.config();
    cfg.application_name(app);
    cfg.connect_timeout(Duration::from_secs(2));
    r2d2::Pool::builder()
        .max_size(max)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(PostgresConnectionManager::new(cfg, NoTls))
}

pub fn ring_name(prefix: &str) -> String {
    unique_name(prefix)
}

pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Polls `cond` every millisecond until it holds, or panics after
/// `timeout` with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Checks that the members' active sets are disjoint and cover the ring.
pub fn covered_exactly_once(nodes: &[RingNode], ring_size: u32) -> bool {
    let mut seen = vec![0u8; ring_size as usize];
    for n in nodes {
        for p in n.owned_partitions().iter() {
            seen[p as usize] += 1;
        }
    }
    seen.iter().all(|c| *c == 1)
}

/// A member's name and its event receiver.
type Subscription = (String, crossbeam_channel::Receiver<Event>);

/// Whether the ring has settled: every member's view at one epoch with all
/// of them in it, and each member holding exactly its share. (Coverage alone
/// can hold mid-handoff, while a joiner's partitions are still active on
/// their former owners.)
pub fn settled(nodes: &[RingNode]) -> bool {
    let Some(first) = nodes.first() else {
        return true;
    };
    let e = first.ring().epoch();
    nodes.iter().all(|n| {
        let view = n.ring();
        view.epoch() == e
            && view.members().len() == nodes.len()
            && n.owned_partitions().to_vec() == view.partitions_of(n.node_id())
    })
}

/// Records every member's events, on one clock, for the event-based overlap
/// and token checks.
///
/// Receivers are drained synchronously whenever events are read: an
/// asynchronous collector could lag behind one member while another's later
/// event is already in, and make a handoff look like an overlap.
#[derive(Clone, Default)]
pub struct Recorder {
    // (node, event)
    events: Arc<Mutex<Vec<(String, Event)>>>,
    receivers: Arc<Mutex<Vec<Subscription>>>,
}

impl Recorder {
    /// Starts a member with a subscription registered before its start, so
    /// every event it ever emits is recorded.
    pub fn start(&self, mut b: Builder) -> RingNode {
        let rx = b.subscribe();
        let node = b.start().unwrap_or_else(|e| panic!("start failed: {e}"));
        self.receivers
            .lock()
            .unwrap()
            .push((node.node_id().to_string(), rx));
        node
    }

    /// Every event so far, of every member.
    pub fn events(&self) -> Vec<(String, Event)> {
        let receivers = self.receivers.lock().unwrap();
        let mut events = self.events.lock().unwrap();
        for (name, rx) in receivers.iter() {
            events.extend(rx.try_iter().map(|e| (name.clone(), e)));
        }
        events.clone()
    }

    /// Intervals of activity per partition: (node, token, from, to).
    pub fn intervals(&self) -> HashMap<u32, Vec<Interval>> {
        let mut evs = self.events();
        evs.sort_by_key(|(_, e)| e.at());
        let mut open: HashMap<(String, u32), (u64, Instant)> = HashMap::new();
        let mut out: HashMap<u32, Vec<Interval>> = HashMap::new();
        for (node, e) in evs {
            match e {
                Event::Acquired {
                    partitions,
                    token,
                    at,
                    ..
                } => {
                    for p in partitions {
                        open.insert((node.clone(), p), (token, at));
                    }
                }
                Event::Released { partitions, at, .. } => {
                    for p in partitions {
                        if let Some((token, from)) = open.remove(&(node.clone(), p)) {
                            out.entry(p)
                                .or_default()
                                .push((node.clone(), token, from, Some(at)));
                        }
                    }
                }
                _ => {}
            }
        }
        for ((node, p), (token, from)) in open {
            out.entry(p).or_default().push((node, token, from, None));
        }
        for v in out.values_mut() {
            v.sort_by_key(|i| i.2);
        }
        out
    }

    /// Panics on any overlap of two members' activity on one partition, or
    /// a token that does not increase from owner to owner.
    pub fn assert_no_overlap_and_tokens_increase(&self) {
        let mut overlaps = Vec::new();
        let mut regressions = Vec::new();
        for (p, ivs) in self.intervals() {
            for w in ivs.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                let a_end = a.3;
                if a.0 != b.0 && a_end.is_none_or(|end| end > b.2) {
                    overlaps.push((p, a.clone(), b.clone()));
                }
                if a.0 != b.0 && b.1 <= a.1 {
                    regressions.push((p, a.0.clone(), a.1, b.0.clone(), b.1));
                }
            }
        }
        assert!(
            overlaps.is_empty(),
            "{} overlaps, first: {:?}",
            overlaps.len(),
            overlaps.first()
        );
        assert!(
            regressions.is_empty(),
            "{} token regressions, first: {:?}",
            regressions.len(),
            regressions.first()
        );
    }
}

/// Samples every member's `owned_partitions()` every millisecond on a
/// thread and records any instant at which two members both held a
/// partition. Sound despite non-atomic sampling: a partition counts only
/// if member X held it in two consecutive reads and Y held it in a read
/// made between them.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, Vec<String>)>>,
}

impl Sampler {
    pub fn start(nodes: Arc<Mutex<Vec<RingNode>>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = 0u64;
            let mut violations = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let members: Vec<RingNode> = nodes.lock().unwrap().clone();
                let first: Vec<Vec<u32>> = members
                    .iter()
                    .map(|n| n.owned_partitions().to_vec())
                    .collect();
                let second: Vec<Vec<u32>> = members
                    .iter()
                    .map(|n| n.owned_partitions().to_vec())
                    .collect();
                for x in 0..members.len() {
                    for p in &first[x] {
                        if second[x].binary_search(p).is_err() {
                            continue;
                        }
                        for y in 0..members.len() {
                            if y == x {
                                continue;
                            }
                            let between = if y > x { &first[y] } else { &second[y] };
                            if between.binary_search(p).is_ok() {
                                violations.push(format!(
                                    "partition {p} on {} and {}",
                                    members[x].node_id(),
                                    members[y].node_id()
                                ));
                            }
                        }
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (samples, violations)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; panics if any overlap was seen. Returns the sample count.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, violations) = self.handle.take().unwrap().join().unwrap();
        assert!(
            violations.is_empty(),
            "sampler saw {} overlaps: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
        samples
    }
}

/// A builder with test settings. The TTL is 10 s: membership tests do not
/// depend on it (joins and leaves are driven by notifications), and a
/// loaded machine must not make members fence themselves by accident.
/// Fault tests set a short TTL themselves.
pub fn builder(pool: Pool, ring: &str, node: &str) -> Builder {
    RingNode::builder(pool, ring)
        .node_id(node)
        .lease_ttl(Duration::from_secs(10))
        .start_timeout(Duration::from_secs(20))
}

/// Rows of `node` left in the tables of `schema`.
pub fn rows_of(db: &TestPostgres, schema: &str, ring: &str, node: &str) -> i64 {
    let mut c = db.client().expect("client");
    let members: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.members WHERE ring_id = $1 AND node_id = $2"),
            &[&ring, &node],
        )
        .unwrap()
        .get(0);
    let vnodes: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.vnodes WHERE ring_id = $1 AND node_id = $2"),
            &[&ring, &node],
        )
        .unwrap()
        .get(0);
    members + vnodes
}
