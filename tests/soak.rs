//! A soak run: 16 members of one ring in this process, on 4 shared
//! [`Client`]s (4 members each, the way a process with several rings or
//! tenants runs them), with churn (leaves and joins, crashes, pauses past
//! the TTL) and a fenced sink (every member writes the partitions it owns,
//! with their tokens, every 100 ms, the way a user's service guards its
//! writes), while live heap bytes (a counting global allocator: what the
//! program holds, unlike resident memory, which also keeps what the
//! allocator has not returned to the system), resident memory, thread
//! count, open connections (`pg_stat_activity`) and rows per table are
//! sampled every few seconds. It ends with one line:
//!
//! ```text
//! soak: secs=<n> handoffs=<n> overlaps=<n> heap_growth_kb=<n> rss_growth_kb=<n> threads_growth=<n> connections_growth=<n> rows_growth=<n>
//! ```
//!
//! `handoffs`: partitions activated after the warm-up; `overlaps`: what
//! the sampler of `owned_partitions()` found held by two members at once
//! (plus, for runs short enough to keep every event, the oracle's judgement
//! of every member's events); each `*_growth` is the least-squares slope of
//! the samples taken after the warm-up, per hour.
//!
//! * `cargo test --test soak` runs the 60-second version
//!   (`soak_for_a_minute`), which asserts no overlap and no growth beyond
//!   what churn itself explains, on two *quiescent* samples (churn paused,
//!   ring settled): one after the warm-up, one at the end. Not on the
//!   slopes: over 45 s, one allocator arena or one pool's idle connection
//!   more, extrapolated to an hour, is noise that looks like a leak.
//! * `LEASERING_SOAK_SECS=7200 cargo test --release --test soak -- --ignored --nocapture`
//!   runs the long one (`soak`), which prints a sample line every 30 s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasering::{Client, Event, RingNode};
use leasering_testkit::fixtures::*;
use leasering_testkit::rng::Rng;

/// The system allocator, counting the bytes it has handed out and not yet
/// been given back: a leak grows this, allocator caching does not.
struct Counting;

static LIVE_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// SAFETY: every call goes to `System` unchanged; the counter is a side effect.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc(l);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(l.size() as i64, Ordering::Relaxed);
        std::alloc::System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc_zeroed(l);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        let q = std::alloc::System.realloc(p, l, new);
        if !q.is_null() {
            LIVE_BYTES.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MEMBERS: usize = 16;
/// Processes: the members share out over this many clients.
const CLIENTS: usize = 4;
const RING_SIZE: u32 = 512;
const TTL: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(60);

/// One sample of what could leak.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    heap_kb: f64,
    rss_kb: f64,
    threads: f64,
    connections: f64,
    rows: f64,
}

fn proc_status(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

struct Soak {
    schema: String,
    ring: String,
    nodes: Arc<Mutex<Vec<RingNode>>>,
    /// Each with a pool of its own; member k uses client k mod [`CLIENTS`].
    clients: Vec<Client>,
    handoffs: Arc<AtomicU64>,
    counting: Arc<AtomicBool>,
    recorder: Option<Recorder>,
    stale_writes: Arc<AtomicU64>,
    accepted_writes: Arc<AtomicU64>,
    stop_writers: Arc<AtomicBool>,
    writers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
    next_id: usize,
    /// Rows of leasering's tables, per table, at the last sample.
    last_rows: Vec<(String, i64)>,
}

const TABLES: [&str; 6] = [
    "members",
    "vnodes",
    "changes",
    "claims",
    "join_requests",
    "rings",
];

impl Soak {
    fn new(keep_events: bool) -> Soak {
        let schema = ring_name("soak");
        leasering::migrate(&mut db().client().unwrap(), &schema).unwrap();
        db().client()
            .unwrap()
            .batch_execute(&format!(
                "CREATE TABLE {schema}.sink (partition int PRIMARY KEY, token bigint NOT NULL, node_id text NOT NULL, writes bigint NOT NULL DEFAULT 1)"
            ))
            .unwrap();
        let clients = (0..CLIENTS)
            .map(|c| Client::new(named_pool(db(), &format!("soak-client-{c}"), 4)))
            .collect();
        Soak {
            ring: ring_name("soakring"),
            schema,
            nodes: Arc::new(Mutex::new(Vec::new())),
            clients,
            handoffs: Arc::new(AtomicU64::new(0)),
            counting: Arc::new(AtomicBool::new(false)),
            recorder: keep_events.then(Recorder::default),
            stale_writes: Arc::new(AtomicU64::new(0)),
            accepted_writes: Arc::new(AtomicU64::new(0)),
            stop_writers: Arc::new(AtomicBool::new(false)),
            writers: Vec::new(),
            started: Instant::now(),
            next_id: 0,
            last_rows: Vec::new(),
        }
    }

    /// Starts a member with a fresh node id, its event counter and its
    /// fenced writer.
    fn start_member(&mut self) {
        let name = format!("k{:05}", self.next_id);
        let client = &self.clients[self.next_id % CLIENTS];
        self.next_id += 1;
        let mut b = client
            .member(&self.ring)
            .node_id(&name)
            .start_timeout(Duration::from_secs(20))
            .schema(self.schema.clone())
            .create_schema(false)
            .ring_size(RING_SIZE)
            .lease_ttl(TTL)
            .vnode_count(4);
        let rx = b.subscribe();
        let recorded = self.recorder.as_ref().map(|_| b.subscribe());
        let node = b.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
        if let (Some(r), Some(rx)) = (&self.recorder, recorded) {
            r.watch(&name, rx);
        }
        let (handoffs, counting) = (self.handoffs.clone(), self.counting.clone());
        // Counts and drops: nothing of the events is kept.
        std::thread::spawn(move || {
            for ev in rx {
                if let Event::Acquired { partitions, .. } = ev {
                    if counting.load(Ordering::Relaxed) {
                        handoffs.fetch_add(partitions.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        self.writers.push(self.writer(node.clone()));
        self.nodes.lock().unwrap().push(node);
    }

    /// The fenced sink: every 100 ms, the partitions `node` owns, each with
    /// its token, in one statement that refuses a token below the stored
    /// one. Ends when the member stops or the soak ends.
    fn writer(&self, node: RingNode) -> std::thread::JoinHandle<()> {
        let (stop, stale, accepted) = (
            self.stop_writers.clone(),
            self.stale_writes.clone(),
            self.accepted_writes.clone(),
        );
        let sql = format!(
            "INSERT INTO {s}.sink AS k (partition, token, node_id)
             SELECT * FROM unnest($1::int[], $2::bigint[], $3::text[])
             ON CONFLICT (partition) DO UPDATE SET token = excluded.token, node_id = excluded.node_id,
                                                   writes = k.writes + 1
             WHERE k.token <= excluded.token",
            s = self.schema
        );
        std::thread::spawn(move || {
            let mut c = db().client().unwrap();
            while !stop.load(Ordering::Relaxed) && !node.status().stopped {
                let snap = node.owned_partitions();
                let ps: Vec<i32> = snap.iter().map(|p| p as i32).collect();
                let ts: Vec<i64> = snap
                    .iter()
                    .map(|p| snap.token(p).unwrap_or(0) as i64)
                    .collect();
                let ns: Vec<&str> = ps.iter().map(|_| node.node_id()).collect();
                if !ps.is_empty() {
                    if let Ok(n) = c.execute(&sql, &[&ps, &ts, &ns]) {
                        accepted.fetch_add(n, Ordering::Relaxed);
                        stale.fetch_add(ps.len() as u64 - n, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }

    fn settled(&self) -> bool {
        let all = self.nodes.lock().unwrap().clone();
        settled(&all) && covered_exactly_once(&all, RING_SIZE)
    }

    fn wait_settled(&self, what: &str) {
        wait_until(SETTLE, what, || self.settled());
    }

    /// One step of churn, drawn from `rng`.
    fn churn(&mut self, rng: &mut Rng) {
        let n = self.nodes.lock().unwrap().len();
        let i = rng.below(n as u64) as usize;
        match rng.below(100) {
            // A leave and a join.
            0..=49 => {
                let leaving = self.nodes.lock().unwrap().remove(i);
                leaving.stop().expect("a graceful leave");
                self.start_member();
            }
            // A crash and a replacement.
            50..=69 => {
                let crashed = self.nodes.lock().unwrap().remove(i);
                crashed.crash();
                self.start_member();
            }
            // A pause past the TTL: it fences itself and rejoins.
            70..=84 => {
                let n = self.nodes.lock().unwrap()[i].clone();
                n.pause_threads_for(TTL + TTL / 2);
            }
            _ => {}
        }
        self.writers.retain(|w| !w.is_finished());
    }

    fn sample(&mut self) -> Sample {
        let mut c = db().client().unwrap();
        let connections: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        let mut rows = Vec::new();
        for t in TABLES {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM {}.{t}", self.schema), &[])
                .unwrap()
                .get(0);
            rows.push((t.to_string(), n));
        }
        let total = rows.iter().map(|r| r.1).sum::<i64>();
        self.last_rows = rows;
        Sample {
            at_s: self.started.elapsed().as_secs_f64(),
            heap_kb: LIVE_BYTES.load(Ordering::Relaxed) as f64 / 1024.0,
            rss_kb: proc_status("VmRSS:"),
            threads: proc_status("Threads:"),
            connections: connections as f64,
            rows: total as f64,
        }
    }
}

struct Outcome {
    line: String,
    overlaps: u64,
    baseline: Sample,
    end: Sample,
    baseline_rows: Vec<(String, i64)>,
    end_rows: Vec<(String, i64)>,
}

/// Runs the soak for `secs` (at least 30), printing a sample line every
/// `print_every`.
fn run_soak(secs: u64, keep_events: bool, print_every: Duration) -> Outcome {
    init_logs();
    let secs = secs.max(30);
    let mut soak = Soak::new(keep_events);
    let mut rng = Rng::new(0x50a4);
    for _ in 0..MEMBERS {
        soak.start_member();
    }
    soak.wait_settled("16 members to settle");
    let sampler = start_sampler(soak.nodes.clone());
    let warmup = Duration::from_secs((secs / 4).min(60));
    let deadline = soak.started + Duration::from_secs(secs);
    let sample_every = Duration::from_secs(3);
    let churn_every = Duration::from_millis(1500);
    let mut samples: Vec<Sample> = Vec::new();
    let mut baseline: Option<(Sample, Vec<(String, i64)>)> = None;
    let (mut next_sample, mut next_churn, mut next_print) =
        (Instant::now(), Instant::now(), Instant::now() + print_every);
    // The last stretch is churn-free: the end sample is taken quiescent.
    let churn_until = deadline - Duration::from_secs(10).min(Duration::from_secs(secs / 6));
    while Instant::now() < deadline {
        let now = Instant::now();
        if baseline.is_none() && now >= soak.started + warmup {
            // The warmed-up, quiescent baseline.
            soak.wait_settled("the ring to settle for the baseline sample");
            let s = soak.sample();
            baseline = Some((s, soak.last_rows.clone()));
            soak.counting.store(true, Ordering::Relaxed);
            samples.clear();
            samples.push(s);
            next_sample = Instant::now() + sample_every;
        }
        if now >= next_sample {
            let s = soak.sample();
            if baseline.is_some() {
                samples.push(s);
            }
            next_sample = now + sample_every;
        }
        if now >= next_print {
            let s = samples.last().copied().unwrap_or_else(|| soak.sample());
            println!(
                "soak sample: t={:.0}s heap_kb={:.0} rss_kb={} threads={} connections={} rows={} handoffs={} stale_writes={} overlaps={}",
                s.at_s,
                s.heap_kb,
                s.rss_kb,
                s.threads,
                s.connections,
                s.rows,
                soak.handoffs.load(Ordering::Relaxed),
                soak.stale_writes.load(Ordering::Relaxed),
                sampler.overlaps()
            );
            next_print = now + print_every;
        }
        if now >= next_churn && now < churn_until {
            soak.churn(&mut rng);
            next_churn = Instant::now() + churn_every;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    soak.wait_settled("the ring to settle for the end sample");
    let end = soak.sample();
    samples.push(end);
    let end_rows = soak.last_rows.clone();
    let (baseline, baseline_rows) = baseline.expect("a baseline after the warm-up");
    let report = sampler.finish();
    let mut overlaps = report.overlaps;
    if let Some(r) = &soak.recorder {
        let (h, v) = r.verdict();
        overlaps += v.overlaps.len() as u64;
        assert!(
            v.regressions.is_empty(),
            "token regressions: {:?}",
            v.regressions
        );
        assert!(h.anomalies().is_empty(), "anomalies: {:?}", h.anomalies());
    }
    assert!(
        report.overlaps == 0,
        "the sampler saw overlaps: {:?}",
        report.examples
    );
    let per_hour = |f: fn(&Sample) -> f64| {
        let pts: Vec<(f64, f64)> = samples.iter().map(|s| (s.at_s, f(s))).collect();
        (slope(&pts) * 3600.0).round() as i64
    };
    let line = format!(
        "soak: secs={} handoffs={} overlaps={} heap_growth_kb={} rss_growth_kb={} threads_growth={} connections_growth={} rows_growth={}",
        soak.started.elapsed().as_secs(),
        soak.handoffs.load(Ordering::Relaxed),
        overlaps,
        per_hour(|s| s.heap_kb),
        per_hour(|s| s.rss_kb),
        per_hour(|s| s.threads),
        per_hour(|s| s.connections),
        per_hour(|s| s.rows),
    );
    println!(
        "soak: baseline {baseline:?} rows {baseline_rows:?}; end {end:?} rows {end_rows:?}; writes accepted {} stale {}",
        soak.accepted_writes.load(Ordering::Relaxed),
        soak.stale_writes.load(Ordering::Relaxed)
    );
    soak.stop_writers.store(true, Ordering::Relaxed);
    for n in soak.nodes.lock().unwrap().drain(..) {
        n.stop().expect("a graceful stop");
    }
    for w in soak.writers.drain(..) {
        let _ = w.join();
    }
    Outcome {
        line,
        overlaps,
        baseline,
        end,
        baseline_rows,
        end_rows,
    }
}

fn end_rows_of(rows: &[(String, i64)], table: &str) -> i64 {
    rows.iter().find(|r| r.0 == table).map_or(-1, |r| r.1)
}

/// The 60-second soak of `cargo test`. What it asserts, on the quiescent
/// baseline (after a 15 s warm-up) and end samples, and why each bound
/// cannot be broken by noise but is by a leak:
///
/// * no overlap (sampler and oracle), no token regression;
/// * `members`, `vnodes`, `join_requests`, `claims` and `rings` rows equal
///   at both (16 members, their vnodes, no request left); `changes` at most
///   the 1000 the ring keeps;
/// * threads at the end at most 8 above the baseline (the 4 clients keep
///   4 threads each whatever their members do; a member adds its counter
///   and its writer, which end with it: a member leaked per churn step
///   adds 2 threads a step, dozens over the run);
/// * connections at the end at most 16 above the baseline (4 clients ×
///   a pool of 4; a leaked member's writer keeps its own connection);
/// * resident memory and live heap at most 64 MiB above the baseline (the
///   events of the whole run are kept for the oracle; a leak of everything
///   a member allocates per churn step would be far more).
#[test]
fn soak_for_a_minute() {
    let secs = std::env::var("LEASERING_SOAK_SHORT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let o = run_soak(secs, true, Duration::from_secs(15));
    println!("{}", o.line);
    assert_eq!(o.overlaps, 0, "{}", o.line);
    for t in ["members", "vnodes", "join_requests", "claims", "rings"] {
        assert_eq!(
            end_rows_of(&o.end_rows, t),
            end_rows_of(&o.baseline_rows, t),
            "rows of {t} at the end vs after the warm-up (baseline {:?}, end {:?})",
            o.baseline_rows,
            o.end_rows
        );
    }
    assert!(
        end_rows_of(&o.end_rows, "changes") <= 1000,
        "the change log is trimmed to 1000 entries: {:?}",
        o.end_rows
    );
    assert!(
        o.end.threads <= o.baseline.threads + 8.0,
        "threads grew from {} to {} ({})",
        o.baseline.threads,
        o.end.threads,
        o.line
    );
    assert!(
        o.end.connections <= o.baseline.connections + 16.0,
        "connections grew from {} to {} ({})",
        o.baseline.connections,
        o.end.connections,
        o.line
    );
    assert!(
        o.end.heap_kb <= o.baseline.heap_kb + 64.0 * 1024.0,
        "live heap grew from {:.0} to {:.0} KiB ({})",
        o.baseline.heap_kb,
        o.end.heap_kb,
        o.line
    );
    assert!(
        o.end.rss_kb <= o.baseline.rss_kb + 64.0 * 1024.0,
        "resident memory grew from {} to {} KiB ({})",
        o.baseline.rss_kb,
        o.end.rss_kb,
        o.line
    );
}

/// The long soak: `LEASERING_SOAK_SECS` (default 1800) seconds, events not
/// kept (so that the run's own bookkeeping does not grow), a sample line
/// every 30 s, the `soak:` line at the end.
#[test]
#[ignore = "long: LEASERING_SOAK_SECS=7200 cargo test --release --test soak -- --ignored --nocapture"]
fn soak() {
    let secs = std::env::var("LEASERING_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let o = run_soak(secs, false, Duration::from_secs(30));
    println!("{}", o.line);
    assert_eq!(o.overlaps, 0, "{}", o.line);
}
