//! Shared helpers of the benches (`harness = false`): statistics, machine
//! facts, a throwaway PostgreSQL with statement statistics, pools, an event
//! hub that merges many members' events, a replay of who holds what (on the
//! testkit's oracle, which also judges overlaps and gaps of those events),
//! and database load counters. The seeded generator is the testkit's
//! (`leasering_testkit::rng`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use leasering::Event;
use leasering_testkit::member_log::Ev;
use leasering_testkit::oracle::{self, Coverage, End, History, RunId, Verdict};
use leasering_testkit::{TestPostgres, TestPostgresOptions};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// `LEASERING_BENCH_QUICK=1`: fewer repetitions, shorter windows (smoke runs).
pub fn quick() -> bool {
    std::env::var("LEASERING_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// An integer from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---- statistics -----------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn stats(values: &[f64]) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return Stats::default();
    }
    Stats {
        n: v.len(),
        min: v[0],
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- machine --------------------------------------------------------------

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Prints the machine line every bench starts with.
pub fn print_machine(bench: &str) {
    println!(
        "# {bench}: nproc={} cpu=\"{}\" loadavg=\"{}\"{}",
        nproc(),
        cpu_model(),
        loadavg(),
        if quick() { " QUICK" } else { "" }
    );
}

/// Resident set size of this process, in KiB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system, seconds) of process `pid` and all its children
/// (for the postmaster: every backend), from /proc.
pub fn tree_cpu_s(pid: u32) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(p) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0]=state f[1]=ppid ... f[11]=utime f[12]=stime
        let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        if p == pid || ppid == pid {
            let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += ut + st;
        }
    }
    total as f64 / tick
}

// ---- PostgreSQL -----------------------------------------------------------

/// A throwaway cluster with `pg_stat_statements` loaded (when the server has
/// it; Debian's `postgresql` package ships it).
pub fn start_pg(max_connections: u32, extra: &[(&str, &str)]) -> (TestPostgres, bool) {
    let settings: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut with_pss = settings.clone();
    with_pss.push((
        "shared_preload_libraries".into(),
        "pg_stat_statements".into(),
    ));
    with_pss.push(("pg_stat_statements.track".into(), "all".into()));
    with_pss.push(("pg_stat_statements.max".into(), "1000".into()));
    if let Ok(db) = TestPostgres::start_with(TestPostgresOptions {
        max_connections,
        extra_settings: with_pss,
    }) {
        let ok = match db.client() {
            Ok(mut c) => c
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .is_ok(),
            Err(_) => false,
        };
        if ok {
            return (db, true);
        }
        eprintln!("pg_stat_statements unavailable: counting pg_stat_database.xact_commit only");
    }
    let db = TestPostgres::start_with(TestPostgresOptions {
        max_connections,
        extra_settings: settings,
    })
    .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the bench: {e}"));
    (db, false)
}

pub fn pg_version(db: &TestPostgres) -> String {
    db.client()
        .ok()
        .and_then(|mut c| c.query_one("SHOW server_version", &[]).ok())
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|| "?".into())
}

/// A pool of at most `max` connections, opened lazily, tagged with
/// `application_name` = `app`; hundreds of members connect at once, hence
/// the generous timeout.
pub fn pool(db: &TestPostgres, app: &str, max: u32) -> Pool {
    db.named_pool(app, max, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("pool: {e}"))
}

/// A pool of `max` connections opened *before* this returns, the way a
/// service builds its pool at process start (r2d2's `build()` with its
/// default `min_idle` = `max_size` waits for all of them), tagged with
/// `application_name` = `app`.
pub fn warm_pool(db: &TestPostgres, app: &str, max: u32) -> Pool {
    let mut config = db.config();
    config
        .application_name(app)
        .connect_timeout(Duration::from_secs(30));
    let pool = r2d2::Pool::builder()
        .max_size(max)
        .connection_timeout(Duration::from_secs(30))
        .build(PostgresConnectionManager::new(config, NoTls))
        .unwrap_or_else(|e| panic!("warm pool: {e}"));
    let s = pool.state();
    assert_eq!(s.connections, max, "the warm pool opened every connection");
    pool
}

/// Counters of database work, read from the statistics views.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbCounters {
    pub at: Option<Instant>,
    /// `pg_stat_database.xact_commit` of the database.
    pub xact_commit: i64,
    /// Sum of `pg_stat_statements.calls`, without the statistics queries
    /// themselves; `None` without the extension.
    pub statements: Option<i64>,
    /// CPU seconds of the postmaster and its backends.
    pub cpu_s: f64,
}

pub fn db_counters(db: &TestPostgres, pss: bool) -> DbCounters {
    let mut c = db.client().expect("stats client");
    let _ = c.batch_execute("SELECT pg_stat_clear_snapshot()");
    let xact: i64 = c
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(0);
    let statements = pss.then(|| {
        c.query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
             WHERE query NOT ILIKE '%pg_stat%' AND query NOT ILIKE '%server_version%'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
    });
    DbCounters {
        at: Some(Instant::now()),
        xact_commit: xact,
        statements,
        cpu_s: db.pid().map_or(0.0, tree_cpu_s),
    }
}

/// The busiest statements (by calls) since the last reset, for the tables.
pub fn top_statements(db: &TestPostgres, n: i64) -> Vec<(i64, String)> {
    let Ok(mut c) = db.client() else {
        return Vec::new();
    };
    c.query(
        "SELECT calls, regexp_replace(left(query, 90), '\\s+', ' ', 'g') FROM pg_stat_statements
         WHERE query NOT ILIKE '%pg_stat%' ORDER BY calls DESC LIMIT $1",
        &[&n],
    )
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    .unwrap_or_default()
}

/// The statements that cost the database most (by total execution time)
/// since the last reset: (calls, total ms, mean ms, query).
pub fn costly_statements(db: &TestPostgres, n: i64) -> Vec<(i64, f64, f64, String)> {
    let Ok(mut c) = db.client() else {
        return Vec::new();
    };
    c.query(
        "SELECT calls, total_exec_time, mean_exec_time,
                regexp_replace(left(query, 70), '\\s+', ' ', 'g')
         FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat%'
         ORDER BY total_exec_time DESC LIMIT $1",
        &[&n],
    )
    .map(|rows| {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    })
    .unwrap_or_default()
}

/// Size and churn of the leasering tables: (table, live rows, dead rows,
/// updates, HOT updates, KiB).
pub fn table_churn(db: &TestPostgres) -> Vec<(String, i64, i64, i64, i64, i64)> {
    let Ok(mut c) = db.client() else {
        return Vec::new();
    };
    let _ = c.batch_execute("SELECT pg_stat_clear_snapshot()");
    c.query(
        "SELECT relname::text, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd,
                pg_total_relation_size(relid) / 1024
         FROM pg_stat_user_tables WHERE schemaname = 'leasering' ORDER BY relname",
        &[],
    )
    .map(|rows| {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect()
    })
    .unwrap_or_default()
}

pub fn print_churn(db: &TestPostgres, when: &str) {
    for (t, live, dead, upd, hot, kb) in table_churn(db) {
        if t == "members" || t == "rings" {
            println!(
                "  {when}: {t}: {live} live, {dead} dead rows, {upd} updates ({hot} HOT), {kb} KiB"
            );
        }
    }
}

pub fn reset_statements(db: &TestPostgres) {
    if let Ok(mut c) = db.client() {
        let _ = c.batch_execute("SELECT pg_stat_statements_reset()");
    }
}

// ---- events ---------------------------------------------------------------

/// Merges the events of many members (each identified by an instance index)
/// without a thread per member: one `Select` over all receivers.
#[derive(Default)]
pub struct EventHub {
    rxs: Vec<(usize, Receiver<Event>)>,
    /// Everything received, in the order received.
    pub log: Vec<(usize, Event)>,
}

impl EventHub {
    pub fn add(&mut self, instance: usize, rx: Receiver<Event>) {
        self.rxs.push((instance, rx));
    }

    /// Drains every receiver (disconnected ones are dropped); returns the
    /// new events sorted by `at`, and keeps them in `log`.
    pub fn drain(&mut self) -> Vec<(usize, Event)> {
        let mut out = Vec::new();
        self.rxs.retain(|(i, rx)| loop {
            match rx.try_recv() {
                Ok(e) => out.push((*i, e)),
                Err(crossbeam_channel::TryRecvError::Empty) => break true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => break false,
            }
        });
        out.sort_by_key(|(_, e)| e.at());
        self.log.extend(out.iter().cloned());
        out
    }

    /// Waits up to `timeout` for any event, then drains.
    pub fn wait_drain(&mut self, timeout: Duration) -> Vec<(usize, Event)> {
        if !self.rxs.is_empty() {
            let mut sel = Select::new();
            for (_, rx) in &self.rxs {
                sel.recv(rx);
            }
            let _ = sel.ready_timeout(timeout);
        } else {
            std::thread::sleep(timeout);
        }
        self.drain()
    }
}

/// Who holds each partition, replayed from events (of member instances) as
/// they are applied — for deciding when a handoff is complete — on the
/// testkit's oracle, whose judgement of the same replay gives the overlaps
/// and uncovered gaps at the end.
pub struct Replay {
    ring_size: u32,
    history: History,
    runs: HashMap<usize, RunId>,
    /// Per run, its instance (`None`: a member process, by its log).
    instances: Vec<Option<usize>>,
}

impl Replay {
    pub fn new(ring_size: u32) -> Replay {
        Replay {
            ring_size,
            history: History::with_ring_size(ring_size),
            runs: HashMap::new(),
            instances: Vec::new(),
        }
    }

    fn run(&mut self, instance: usize) -> RunId {
        if let Some(r) = self.runs.get(&instance) {
            return *r;
        }
        let r = self.history.add_run(&format!("instance {instance}"));
        self.runs.insert(instance, r);
        self.instances.push(Some(instance));
        r
    }

    /// Adds the log of a member process `name` killed at `killed` (its
    /// partitions held until then), for the overlap judgement.
    pub fn add_killed_process(&mut self, name: &str, log: &[Ev], killed: Instant) {
        self.add_process_log(name, log, End::Killed(oracle::ns(killed)));
    }

    /// Adds the log of a member process `name` that ended as `end` (killed,
    /// or exited after releasing everything), for the overlap judgement.
    pub fn add_process_log(&mut self, name: &str, log: &[Ev], end: End) {
        let r = self.history.add_run(name);
        self.instances.push(None);
        for e in log {
            self.history.logged(r, e);
        }
        self.history.end(r, end);
    }

    /// Applies one event of `instance` (each instance's in the order it
    /// emitted them).
    pub fn apply(&mut self, instance: usize, e: &Event) {
        let run = self.run(instance);
        self.history.event(run, e);
    }

    /// The one instance holding `p`, if exactly one does.
    pub fn holder(&self, p: u32) -> Option<usize> {
        self.instances[self.history.sole_holder(p)?.0]
    }

    /// Every partition held by exactly one instance, none of them `not`.
    pub fn covered_once_without(&self, not: Option<usize>) -> bool {
        let not = not.and_then(|i| self.runs.get(&i).copied());
        (0..self.ring_size).all(|p| {
            self.history
                .sole_holder(p)
                .is_some_and(|run| Some(run) != not)
        })
    }

    /// The oracle's judgement of everything applied (open intervals end now).
    pub fn verdict(&self) -> Verdict {
        self.history.judge(oracle::now())
    }

    /// The first `n` overlaps, described (times relative to `t0`).
    pub fn describe_overlaps(&self, v: &Verdict, t0: Instant, n: usize) -> Vec<String> {
        v.overlaps
            .iter()
            .take(n)
            .map(|o| self.history.describe_overlap(o, oracle::ns(t0)))
            .collect()
    }

    /// Coverage of the ring by everything applied (open intervals end now).
    pub fn coverage(&self) -> Coverage {
        Coverage::new(&self.history.intervals(oracle::now()), self.ring_size)
    }

    /// Records that did not pair up.
    pub fn anomalies(&self) -> &[String] {
        self.history.anomalies()
    }
}

/// The longest time any partition was active nowhere within `[from, to]`,
/// in milliseconds.
pub fn longest_gap_ms(coverage: &Coverage, from: Instant, to: Instant) -> f64 {
    coverage.worst_gap(oracle::ns(from), oracle::ns(to)).0 as f64 / 1e6
}

/// Prints a table: a header row and rows, columns right-aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = width[i])
                } else {
                    format!("{c:>w$}", w = width[i])
                }
            })
            .collect();
        println!("| {} |", s.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    println!(
        "|{}|",
        width
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 {
                format!(":{}", "-".repeat(*w + 1))
            } else {
                format!("{}:", "-".repeat(*w + 1))
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
}

pub fn f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}
