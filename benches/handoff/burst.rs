//! The **burst** section (issue 17): 16 members (TTL 3 s, ring 1024), and
//! round after round, `k` of them leave gracefully while `k` new ones join,
//! every `stop()` and `start()` released at the same instant by a barrier —
//! a rolling deploy's step, where views disagree for a moment and two
//! members may wait for one claim. Between rounds the ring settles.
//!
//! **Uncovered** is judged by sampling, not from events: a thread reads
//! every member's `owned_partitions()` every millisecond; a partition is
//! uncovered from the first sample in which it is active nowhere to the
//! first in which it is active again. Every such interval of every round
//! counts once. The testkit's overlap sampler runs beside it.
//!
//! **Cost**: the statements of the rounds (`pg_stat_statements`, all
//! statements of the database) and the NOTIFYs the members sent
//! ([`leasering::telemetry::notifications_sent`]), per handoff — one
//! `Acquired` event, a set of partitions that one take activated — and per
//! round.

use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use leasering::{Event, RingNode};
use leasering_testkit::rng::Rng;
use leasering_testkit::sampler::Sampler;
use leasering_testkit::TestPostgres;

use super::support::*;

const RING_SIZE: u32 = 1024;
const MEMBERS: usize = 16;
const TTL: Duration = Duration::from_secs(3);

type Members = Arc<Mutex<Vec<(String, RingNode)>>>;

/// What the rounds of one `k` measured.
pub struct Burst {
    pub k: usize,
    pub rounds: usize,
    /// Every uncovered interval, in ms.
    pub uncovered_ms: Vec<f64>,
    /// The same, split: partitions a leaver held before its round, those a
    /// joiner holds after it, the rest.
    pub uncovered_leaving_ms: Vec<f64>,
    pub uncovered_joining_ms: Vec<f64>,
    pub uncovered_other_ms: Vec<f64>,
    /// `stop()` and `start()` calls of the rounds, in ms.
    pub stop_ms: Vec<f64>,
    pub start_ms: Vec<f64>,
    /// Per round: from the barrier to the ring settled again, in ms.
    pub settle_ms: Vec<f64>,
    pub overlaps: u64,
    pub failed_rounds: usize,
    /// `Acquired` events during the rounds.
    pub handoffs: u64,
    /// NOTIFYs the members sent during the rounds.
    pub notifies: u64,
    /// Statements of the rounds (`None` without `pg_stat_statements`).
    pub statements: Option<i64>,
}

/// CPU seconds of this process (the members and the samplers).
fn own_cpu_s() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some((f.first()? + f.get(1)?) as f64 / tick)
        })
        .unwrap_or(0.0)
}

/// The coverage sampler: uncovered intervals (ms) of the partitions, read
/// from every member's `owned_partitions()` every millisecond.
struct Coverage {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(u32, Instant, Instant)>>,
}

impl Coverage {
    fn start(members: Members) -> Coverage {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("coverage-sampler".into())
            .spawn(move || {
                let mut since: Vec<Option<Instant>> = vec![None; RING_SIZE as usize];
                let mut intervals = Vec::new();
                let mut covered = vec![false; RING_SIZE as usize];
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let nodes: Vec<RingNode> = members
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(_, n)| n.clone())
                        .collect();
                    covered.iter_mut().for_each(|c| *c = false);
                    for n in &nodes {
                        for p in n.owned_partitions().iter() {
                            covered[p as usize] = true;
                        }
                    }
                    let now = Instant::now();
                    for (p, c) in covered.iter().enumerate() {
                        match (since[p], *c) {
                            (None, false) => since[p] = Some(now),
                            (Some(t), true) => {
                                intervals.push((p as u32, t, now));
                                since[p] = None;
                            }
                            _ => {}
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                intervals
            })
            .expect("spawn the coverage sampler");
        Coverage { stop, handle }
    }

    fn finish(self) -> Vec<(u32, Instant, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("the coverage sampler")
    }
}

fn builder(db: &TestPostgres, ring: &str, name: &str) -> (leasering::NodeBuilder, Receiver<Event>) {
    let mut b = RingNode::builder(pool(db, name, 3), ring.to_string())
        .node_id(name)
        .ring_size(RING_SIZE)
        .lease_ttl(TTL)
        .start_timeout(Duration::from_secs(30));
    let rx = b.subscribe();
    (b, rx)
}

fn settled(members: &Members) -> bool {
    let nodes = members.lock().unwrap();
    let Some((_, first)) = nodes.first() else {
        return true;
    };
    let e = first.view().epoch();
    let mut seen = 0;
    let all = nodes.iter().all(|(_, n)| {
        let v = n.view();
        let owned = n.owned_partitions().len();
        seen += owned;
        v.epoch() == e && owned == v.partitions_of(n.node_id()).len()
    });
    all && seen == RING_SIZE as usize
}

fn wait_settled(members: &Members, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !settled(members) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// `rounds` rounds of `k` leaves and `k` joins at one instant.
pub fn burst(db: &TestPostgres, pss: bool, k: usize, rounds: usize) -> Burst {
    let ring = format!("burst-{k}");
    let members: Members = Arc::default();
    let mut events: Vec<(String, Receiver<Event>)> = Vec::new();
    for i in 0..MEMBERS {
        let name = format!("b{k}-m{i:02}");
        let (b, rx) = builder(db, &ring, &name);
        let node = b.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
        events.push((name.clone(), rx));
        members.lock().unwrap().push((name, node));
    }
    assert!(
        wait_settled(&members, Duration::from_secs(60)),
        "ring {ring} did not settle before the bursts"
    );
    let overlap_view = members.clone();
    let overlap = Sampler::start(Duration::from_millis(1), move || {
        overlap_view.lock().unwrap().clone()
    });
    let coverage = Coverage::start(members.clone());
    for (_, rx) in &events {
        while rx.try_recv().is_ok() {}
    }
    let notifies0 = leasering::telemetry::notifications_sent();
    if pss {
        reset_statements(db);
    }
    let stmts0 = pss.then(|| db_counters(db, true).statements).flatten();
    let cpu0 = (db_counters(db, pss).cpu_s, own_cpu_s());
    let mut rng = Rng::new(0xb0b5 + k as u64);
    let mut settle_ms = Vec::new();
    let mut failed_rounds = 0;
    let (mut stop_ms, mut start_ms) = (Vec::new(), Vec::new());
    // Per round: its span, the leavers' partitions, the joiners'.
    let mut spans: Vec<(Instant, Instant, HashSet<u32>, HashSet<u32>)> = Vec::new();
    for round in 0..rounds {
        // The leavers stay in the sampled list until their stop() returns:
        // until then they may own partitions.
        let leaving: Vec<(String, RingNode)> = {
            let mut nodes = members.lock().unwrap().clone();
            (0..k)
                .map(|_| {
                    let i = rng.below(nodes.len() as u64) as usize;
                    nodes.remove(i)
                })
                .collect()
        };
        let left_parts: HashSet<u32> = leaving
            .iter()
            .flat_map(|(_, n)| n.owned_partitions().iter().collect::<Vec<_>>())
            .collect();
        let joiner_names: Vec<String> = (0..k).map(|i| format!("b{k}-r{round}-{i}")).collect();
        let joining: Vec<(String, leasering::NodeBuilder)> = (0..k)
            .map(|i| {
                let name = format!("b{k}-r{round}-{i}");
                let (b, rx) = builder(db, &ring, &name);
                events.push((name.clone(), rx));
                (name, b)
            })
            .collect();
        let barrier = Arc::new(Barrier::new(2 * k + 1));
        let mut threads: Vec<std::thread::JoinHandle<Result<(bool, f64), String>>> = Vec::new();
        for (name, node) in leaving {
            let (barrier, members) = (barrier.clone(), members.clone());
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let stopped = node.stop().map_err(|e| format!("stop {name}: {e}"));
                let took = ms(t.elapsed());
                members.lock().unwrap().retain(|(n, _)| *n != name);
                stopped?;
                Ok((true, took))
            }));
        }
        for (name, b) in joining {
            let (barrier, members) = (barrier.clone(), members.clone());
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let node = b.start().map_err(|e| format!("start {name}: {e}"))?;
                let took = ms(t.elapsed());
                members.lock().unwrap().push((name, node));
                Ok((false, took))
            }));
        }
        // Before the barrier: a leaver's local release may come before this
        // thread runs again.
        let t0 = Instant::now();
        barrier.wait();
        let mut ok = true;
        for t in threads {
            match t.join().expect("a burst thread") {
                Ok((true, d)) => stop_ms.push(d),
                Ok((false, d)) => start_ms.push(d),
                Err(e) => {
                    println!("burst k={k} round {round}: {e}");
                    ok = false;
                }
            }
        }
        if ok && wait_settled(&members, Duration::from_secs(30)) {
            settle_ms.push(ms(t0.elapsed()));
            let joined_parts: HashSet<u32> = members
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, _)| joiner_names.contains(n))
                .flat_map(|(_, n)| n.owned_partitions().iter().collect::<Vec<_>>())
                .collect();
            spans.push((t0, Instant::now(), left_parts, joined_parts));
        } else {
            println!("burst k={k} round {round}: the ring did not settle within 30 s");
            failed_rounds += 1;
        }
    }
    let stmts1 = pss.then(|| db_counters(db, true).statements).flatten();
    let cpu1 = (db_counters(db, pss).cpu_s, own_cpu_s());
    if pss && std::env::var("LEASERING_BENCH_BURST_STATEMENTS").is_ok() {
        for (calls, total, mean, q) in costly_statements(db, 12) {
            println!("  {calls:>6} calls {total:>8.1} ms total {mean:>6.2} ms mean: {q}");
        }
    }
    println!(
        "burst k={k}: CPU per round: database {:.1} ms, members (and the samplers) {:.1} ms",
        (cpu1.0 - cpu0.0) * 1000.0 / rounds as f64,
        (cpu1.1 - cpu0.1) * 1000.0 / rounds as f64
    );
    let notifies = leasering::telemetry::notifications_sent() - notifies0;
    let intervals = coverage.finish();
    let all_events: Vec<(String, Event)> = events
        .iter()
        .flat_map(|(n, rx)| rx.try_iter().map(|e| (n.clone(), e)).collect::<Vec<_>>())
        .collect();
    let uncovered_ms: Vec<f64> = intervals.iter().map(|(_, a, b)| ms(*b - *a)).collect();
    let (mut uncovered_leaving_ms, mut uncovered_joining_ms, mut uncovered_other_ms) =
        (Vec::new(), Vec::new(), Vec::new());
    for (p, a, b) in &intervals {
        let span = spans.iter().find(|(s, e, _, _)| *a >= *s && *a <= *e);
        let d = ms(*b - *a);
        match span {
            Some((_, _, left, _)) if left.contains(p) => uncovered_leaving_ms.push(d),
            Some((_, _, _, joined)) if joined.contains(p) => uncovered_joining_ms.push(d),
            _ => uncovered_other_ms.push(d),
        }
    }
    let report = overlap.finish();
    for e in &report.examples {
        println!("OVERLAP {e}");
    }
    let handoffs = all_events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Acquired { .. }))
        .count() as u64;
    for (_, n) in members.lock().unwrap().drain(..) {
        let _ = n.stop();
    }
    Burst {
        k,
        rounds,
        uncovered_ms,
        uncovered_leaving_ms,
        uncovered_joining_ms,
        uncovered_other_ms,
        stop_ms,
        start_ms,
        settle_ms,
        overlaps: report.overlaps,
        failed_rounds,
        handoffs,
        notifies,
        statements: stmts0.zip(stmts1).map(|(a, b)| b - a),
    }
}

/// The line scripts read.
pub fn burst_line(b: &Burst) -> String {
    let u = stats(&b.uncovered_ms);
    let z = |x: f64| if x.is_finite() { x } else { 0.0 };
    format!(
        "handoff burst k={} rounds={} uncovered_p50_ms={:.1} uncovered_p99_ms={:.1} uncovered_max_ms={:.1} overlaps={}",
        b.k,
        b.rounds - b.failed_rounds,
        z(u.p50),
        z(u.p99),
        z(u.max),
        b.overlaps
    )
}

/// What the rounds cost: NOTIFYs and statements per handoff and per round.
pub fn burst_cost_line(b: &Burst) -> String {
    let h = b.handoffs.max(1) as f64;
    let r = b.rounds.max(1) as f64;
    let notifies = b.notifies as f64;
    let stmts = b
        .statements
        .map_or("?".to_string(), |s| format!("{:.1}", s as f64 / h));
    let stmts_round = b
        .statements
        .map_or("?".to_string(), |s| format!("{:.1}", s as f64 / r));
    format!(
        "handoff burst_cost k={} handoffs={} notifies_per_handoff={:.2} statements_per_handoff={stmts} notifies_per_round={:.1} statements_per_round={stmts_round}",
        b.k,
        b.handoffs,
        notifies / h,
        notifies / r
    )
}

/// The section's table, counts and lines.
pub fn report(bursts: &[Burst]) {
    println!();
    println!(
        "Bursts: {MEMBERS} members, ring {RING_SIZE}, TTL {} s; each round k graceful leaves and k joins at one instant, settled between rounds; uncovered = active nowhere, sampled every 1 ms:",
        TTL.as_secs()
    );
    let rows: Vec<Vec<String>> = bursts
        .iter()
        .flat_map(|b| {
            let row = |what: &str, v: &[f64]| {
                let u = stats(v);
                vec![
                    format!("k={}: {what}", b.k),
                    u.n.to_string(),
                    f(u.min, 1),
                    f(u.p50, 1),
                    f(u.p90, 1),
                    f(u.p99, 1),
                    f(u.max, 1),
                ]
            };
            [
                row("uncovered (ms)", &b.uncovered_ms),
                row("  a leaver's partitions", &b.uncovered_leaving_ms),
                row("  a joiner's partitions", &b.uncovered_joining_ms),
                row("  others", &b.uncovered_other_ms),
                row("stop() (ms)", &b.stop_ms),
                row("start() (ms)", &b.start_ms),
                row("round settled (ms)", &b.settle_ms),
            ]
        })
        .collect();
    print_table(&["measure", "n", "min", "p50", "p90", "p99", "max"], &rows);
    println!("targets (issue 17): uncovered max <= 100 ms, p99 <= 50 ms for k = 2 and k = 4");
    println!();
    for b in bursts {
        println!("{}", burst_line(b));
    }
    for b in bursts {
        println!("{}", burst_cost_line(b));
    }
}
