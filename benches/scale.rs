//! Hundreds of members on one local PostgreSQL (ring size 16384, TTL 30 s):
//!
//! **Fleet**: n members, each with a [`Client`](leasering::Client) (and a
//! pool of at most 2 connections) of its own — the honest model of n
//! single-member processes — for n = 256, 512, 1024 and 2048 (each size in
//! a child process of its own, against one PostgreSQL whose
//! `max_connections` is 2n + 100: a member holds one connection at rest and
//! borrows a second while it takes, gives back or joins):
//!
//! * **settle**: n members call `start()` at the same instant; the time
//!   until the ring is settled (every member's view at the final epoch,
//!   nothing pending, every partition active exactly once);
//! * **at rest**: database statements and transactions per second, the
//!   database's CPU, the members' CPU, resident memory per member, and the
//!   connections the members hold (`backends_at_rest`: checked out of
//!   their pools; a pool keeps the ones given back idle until its idle
//!   timeout, `pool_idle`);
//! * **rolling restart** of 64 members, one after the other (`stop()`, then
//!   `start()` with the same node id): overlaps (must be 0, checked over the
//!   merged events of every member) and the longest time a partition was
//!   active nowhere, per restart.
//!
//! It prints `scale fleet members=<n> settle_s=… backends_at_rest=…
//! backends_peak=… start_failures=… notifies=… db_cpu_s=…
//! rss_per_member_kb=…` (`notifies`: the NOTIFYs of the cold start;
//! `db_cpu_s`: the database's CPU during it).
//!
//! **Multi-ring** (`LEASERING_BENCH_SCALE_MULTI`, default on): 16 clients
//! (processes, in one process here) × 64 rings, every client a member of
//! every ring (1,024 memberships): the connections held at rest (one per
//! client) and the statements per second at rest (one renewal per client
//! per heartbeat: 16 / 10 s), in one line `scale multi …`.
//!
//! **Through PgBouncer** (`LEASERING_BENCH_SCALE_BOUNCER`, default 2048
//! members; `0` skips it): a second PostgreSQL with the default
//! `max_connections = 100`, PgBouncer in transaction mode in front of it
//! (80 server connections), and n members, each with a client of its own,
//! with `Pooling::Transaction` (no notifications) (TTL 9 s:
//! a heartbeat every 3 s, which is what a change waits for without
//! notifications), then a rolling restart of 16. One line:
//! `deploy pgbouncer-fleet members=<n> max_connections=100 settle_s=…
//! start_failures=… overlaps=… restart_p50_ms=… restart_max_ms=…
//! gap_p50_ms=… gap_max_ms=… heartbeat_ms=3000`.
//!
//! `LEASERING_BENCH_QUICK=1` runs 64 and 256 members with shorter windows;
//! `LEASERING_BENCH_SCALE_SIZES=64,256,512` picks the sizes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use leasering::{Event, RingNode};
use leasering_testkit::{PgBouncer, PoolMode, TestPostgres};
use support::*;

const RING_SIZE: u32 = 16384;
const POOL_SIZE: u32 = 2;
const CHILD_ENV: &str = "LEASERING_BENCH_SCALE_CHILD";
/// The port of the PgBouncer a `bouncer:<n>` child goes through.
const BOUNCER_PORT_ENV: &str = "LEASERING_BENCH_SCALE_BOUNCER_PORT";
/// Without notifications a change waits for a heartbeat: a TTL of 9 s
/// makes it 3 s.
const BOUNCER_TTL: Duration = Duration::from_secs(9);

fn bouncer_members() -> Option<usize> {
    match std::env::var("LEASERING_BENCH_SCALE_BOUNCER") {
        Ok(v) => v.trim().parse().ok().filter(|n| *n > 0),
        Err(_) => Some(if quick() { 256 } else { 2048 }),
    }
}

fn sizes() -> Vec<usize> {
    if let Ok(s) = std::env::var("LEASERING_BENCH_SCALE_SIZES") {
        return s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    }
    if quick() {
        vec![64, 256]
    } else {
        vec![256, 512, 1024, 2048]
    }
}

fn main() {
    if let Ok(n) = std::env::var(CHILD_ENV) {
        if n == "multi" {
            multi();
        } else if let Some(n) = n.strip_prefix("bouncer:") {
            let port = std::env::var(BOUNCER_PORT_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
                .expect("the parent passes PgBouncer's port");
            child(n.parse().expect("member count"), Some(port));
        } else {
            child(n.parse().expect("member count"), None);
        }
        return;
    }
    print_machine("scale");
    let sizes = sizes();
    let max_n = sizes.iter().copied().max().unwrap_or(64) as u32;
    let max_connections = (max_n * POOL_SIZE + 100).max(MULTI_CLIENTS as u32 * 4 + 100);
    let (db, pss) = start_pg(max_connections, &[]);
    println!(
        "# PostgreSQL {} (loopback, fsync off), max_connections {}{}",
        pg_version(&db),
        max_connections,
        if pss { ", pg_stat_statements on" } else { "" }
    );
    let started = Instant::now();
    let mut summary = Vec::new();
    let multi = std::env::var("LEASERING_BENCH_SCALE_MULTI").map_or(true, |v| v != "0");
    let runs: Vec<String> = sizes
        .iter()
        .map(|n| n.to_string())
        .chain(multi.then(|| "multi".to_string()))
        .collect();
    for n in runs {
        run_child(&n, &db, pss, None, &mut summary);
    }
    if let Some(n) = bouncer_members() {
        // A server as a DBA leaves it: 100 connections, the bouncer's 80
        // and room for the bench's own statistics queries.
        let (small, small_pss) = start_pg(100, &[]);
        let bouncer = PgBouncer::start(&small, PoolMode::Transaction, 80)
            .unwrap_or_else(|e| panic!("pgbouncer: {e}"));
        run_child(
            &format!("bouncer:{n}"),
            &small,
            small_pss,
            Some(bouncer.port()),
            &mut summary,
        );
    }
    println!();
    println!(
        "# scale total {:.1} s; loadavg {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    for l in summary {
        println!("{l}");
    }
}

/// Runs one size (`n`, `multi` or `bouncer:<n>`) in a child process of its
/// own, echoing its output and keeping its summary lines.
fn run_child(
    n: &str,
    db: &TestPostgres,
    pss: bool,
    bouncer: Option<u16>,
    summary: &mut Vec<String>,
) {
    let t = Instant::now();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, n)
        .env("LEASERING_TEST_DATABASE_URL", db.url())
        .env(
            "LEASERING_BENCH_DB_PID",
            db.pid().map_or(String::new(), |p| p.to_string()),
        )
        .env("LEASERING_BENCH_PSS", if pss { "1" } else { "" })
        .stdout(Stdio::piped());
    if let Some(port) = bouncer {
        cmd.env(BOUNCER_PORT_ENV, port.to_string());
    }
    let mut kid = cmd.spawn().expect("spawn the scale child");
    for line in BufReader::new(kid.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        if line.starts_with("scale ")
            || line.starts_with("scale_extra ")
            || line.starts_with("deploy ")
        {
            summary.push(line);
        }
    }
    let status = kid.wait().expect("wait for the scale child");
    println!("# {n}: {:.1} s (child {status})", t.elapsed().as_secs_f64());
    if !status.success() {
        summary.push(format!("scale members={n} FAILED ({status})"));
    }
}

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

struct Member {
    node: RingNode,
}

/// Settled: every member joined, at one epoch, nothing pending, and the
/// active sets add up to the ring.
fn settled(members: &[Member]) -> bool {
    let mut epoch = None;
    let mut active = 0u64;
    for m in members {
        let s = m.node.status();
        if !s.joined || s.pending != 0 || *epoch.get_or_insert(s.epoch) != s.epoch {
            return false;
        }
        active += s.active as u64;
    }
    active == RING_SIZE as u64
}

/// What keeps a fleet from settling, when it does not: which of the
/// conditions of [`settled`] fail, and for how many members.
fn print_unsettled(members: &[Member]) {
    let st: Vec<_> = members.iter().map(|m| m.node.status()).collect();
    let mut epochs: Vec<u64> = st.iter().map(|s| s.epoch).collect();
    epochs.sort_unstable();
    let top = *epochs.last().unwrap_or(&0);
    let behind = epochs.iter().filter(|e| **e != top).count();
    let pending: Vec<_> = st.iter().filter(|s| s.pending != 0).collect();
    let waited: std::collections::BTreeMap<&str, usize> = pending
        .iter()
        .flat_map(|s| s.waiting_for.iter())
        .fold(Default::default(), |mut m, (who, ps)| {
            *m.entry(who.as_str()).or_default() += ps.len();
            m
        });
    println!(
        "  not settled ({}): {} not joined, {behind} behind epoch {top} (lowest {}), {} with pending partitions ({} in all), {} draining, active {} of {RING_SIZE}, renewal failures {}; waited for: {:?}; errors: {:?}",
        pool_events(),
        st.iter().filter(|s| !s.joined).count(),
        epochs.first().unwrap_or(&0),
        pending.len(),
        pending.iter().map(|s| s.pending as u64).sum::<u64>(),
        st.iter().filter(|s| s.draining != 0).count(),
        st.iter().map(|s| s.active as u64).sum::<u64>(),
        st.iter().map(|s| s.renewal_failures).sum::<u64>(),
        waited.iter().take(8).collect::<Vec<_>>(),
        st.iter().filter_map(|s| s.last_error.as_deref()).take(3).collect::<Vec<_>>(),
    );
}

/// One fleet of `n` members, each with a client of its own: straight to
/// the server, or through PgBouncer (transaction mode) on `bouncer`.
fn child(n: usize, bouncer: Option<u16>) {
    // RUST_LOG=leasering=warn shows evictions, refused renewals, retries.
    let _ = env_logger::builder().format_timestamp_millis().try_init();
    let q = quick();
    let db = TestPostgres::from_env()
        .ok()
        .flatten()
        .expect("the parent passes the database URL");
    let db_pid: Option<u32> = std::env::var("LEASERING_BENCH_DB_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let pss = std::env::var("LEASERING_BENCH_PSS").is_ok_and(|v| v == "1");
    let ring = format!("scale-{n}-{}", std::process::id());
    let rest_window = Duration::from_secs(if q { 10 } else { 20 });
    let restarts = n.min(if q || bouncer.is_some() { 16 } else { 64 });
    // LEASERING_BENCH_SCALE_SETTLE_S: how long to wait for the fleet to
    // settle (default 300 s).
    let settle_timeout = Duration::from_secs(
        std::env::var("LEASERING_BENCH_SCALE_SETTLE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let db_cpu = || db_pid.map_or(0.0, tree_cpu_s);

    println!();
    match bouncer {
        None => println!("## {n} members, each with a client of its own, ring {RING_SIZE}, TTL 30 s, pools of {POOL_SIZE}"),
        Some(port) => println!(
            "## {n} members through PgBouncer (transaction mode, port {port}, 80 server connections, max_connections 100), each with a client of its own, notifications off, ring {RING_SIZE}, TTL {BOUNCER_TTL:?}, pools of {POOL_SIZE}"
        ),
    }
    let rss0 = rss_kb();
    let mut hub = EventHub::default();
    // Built before the clock starts; each is handed over (taken) to its
    // member, so that a stopped member's pool, and the idle connections it
    // keeps (r2d2 closes them only after its idle timeout), go with it —
    // as when a restarted process exits. (Kept here, 64 restarts' pools
    // held 128 idle backends and the 51st restart found the server full.)
    let pools: Vec<std::cell::Cell<Option<Pool>>> = (0..n + restarts)
        .map(|k| {
            let app = format!("n{:03}", k % n);
            std::cell::Cell::new(Some(match bouncer {
                None => counted_pool(&db, &app),
                Some(port) => bouncer_pool(&db, port, &app),
            }))
        })
        .collect();
    // The first members' pools, for their `state()` at rest; dropped
    // before the rolling restart.
    let measured: Vec<Pool> = pools[..n]
        .iter()
        .map(|c| {
            let p = c.take().expect("not handed over yet");
            let q = p.clone();
            c.set(Some(p));
            q
        })
        .collect();
    let next_pool = std::cell::Cell::new(0usize);
    let builder = |name: &str| {
        let p = pools[next_pool.get()]
            .take()
            .expect("each pool is handed over once");
        next_pool.set(next_pool.get() + 1);
        let b = RingNode::builder(p, ring.clone())
            .node_id(name)
            .ring_size(RING_SIZE)
            .start_timeout(Duration::from_secs(240));
        match bouncer {
            None => b,
            Some(_) => b
                .lease_ttl(BOUNCER_TTL)
                .pooling(leasering::Pooling::Transaction),
        }
    };

    // ---- everyone starts at once ------------------------------------------
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::new();
    for k in 0..n {
        let mut b = builder(&format!("n{k:03}"));
        hub.add(k, b.subscribe());
        let barrier = barrier.clone();
        handles.push(
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = b.start();
                    (r, t.elapsed())
                })
                .unwrap(),
        );
    }
    reset_statements(&db);
    let activity = ActivitySampler::start(&db);
    let cpu_a = (db_cpu(), own_cpu_s());
    let notifies0 = leasering::telemetry::notifications_sent();
    barrier.wait();
    let t0 = Instant::now();
    let mut members = Vec::new();
    let mut start_ms = Vec::new();
    let mut start_errors = Vec::new();
    for (k, h) in handles.into_iter().enumerate() {
        let (r, took) = h.join().unwrap();
        match r {
            Ok(node) => {
                members.push(Member { node });
                start_ms.push(ms(took));
            }
            Err(e) => start_errors.push(format!("n{k:03}: {e}")),
        }
    }
    let all_started = t0.elapsed();
    let mut replay = Replay::new(RING_SIZE);
    let mut last_change = t0;
    let apply = |hub: &mut EventHub, replay: &mut Replay, last_change: &mut Instant| {
        for (i, e) in hub.drain() {
            if matches!(e, Event::Acquired { .. } | Event::Released { .. }) {
                *last_change = (*last_change).max(e.at());
            }
            replay.apply(i, &e);
        }
    };
    let mut is_settled = false;
    let mut next_report = Duration::from_secs(60);
    while t0.elapsed() < settle_timeout {
        apply(&mut hub, &mut replay, &mut last_change);
        if settled(&members) {
            is_settled = true;
            break;
        }
        if t0.elapsed() >= next_report {
            print!("  after {:.0} s:", t0.elapsed().as_secs_f64());
            print_unsettled(&members);
            next_report += Duration::from_secs(30);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    apply(&mut hub, &mut replay, &mut last_change);
    let observed = t0.elapsed();
    let start_pool_events = pool_events();
    if !is_settled {
        print_unsettled(&members);
    }
    let settle_s = if is_settled {
        (last_change - t0).as_secs_f64()
    } else {
        f64::NAN
    };
    let cpu_b = (db_cpu(), own_cpu_s());
    let notifies = leasering::telemetry::notifications_sent() - notifies0;
    let start_costly = if pss {
        costly_statements(&db, 6)
    } else {
        Vec::new()
    };
    let (start_activity, backends_peak) = activity.finish(10);
    let st = stats(&start_ms);
    for e in start_errors.iter().take(5) {
        println!("start error: {e}");
    }

    // ---- at rest -------------------------------------------------------------
    // After every member's first renewal (its heartbeat opens a connection
    // then) and PostgreSQL's delayed flush of transaction counts.
    let quiet_from = t0 + all_started + Duration::from_secs(12);
    std::thread::sleep(
        quiet_from
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(2)),
    );
    apply(&mut hub, &mut replay, &mut last_change);
    reset_statements(&db);
    let c0 = db_counters(&db, pss);
    let (db0, own0) = (db_cpu(), own_cpu_s());
    std::thread::sleep(rest_window);
    let c1 = db_counters(&db, pss);
    let (db1, own1) = (db_cpu(), own_cpu_s());
    let secs = (c1.at.unwrap() - c0.at.unwrap()).as_secs_f64();
    let stmt_s = c1
        .statements
        .zip(c0.statements)
        .map(|(a, b)| (a - b) as f64 / secs);
    let xact_s = (c1.xact_commit - c0.xact_commit - 2) as f64 / secs;
    let db_cpu_pct = (db1 - db0) / secs * 100.0;
    let members_cpu_pct = (own1 - own0) / secs * 100.0;
    let rss_per_member = rss_kb().saturating_sub(rss0) as f64 / members.len().max(1) as f64;
    let (held_at_rest, pool_idle) = measured.iter().fold((0u32, 0u32), |(h, i), p| {
        let s = p.state();
        (
            h + s.connections - s.idle_connections,
            i + s.idle_connections,
        )
    });
    let top = if pss {
        costly_statements(&db, 4)
    } else {
        Vec::new()
    };
    apply(&mut hub, &mut replay, &mut last_change);
    let rest_changes = hub
        .log
        .iter()
        .filter(|(_, e)| e.at() > c0.at.unwrap())
        .count();

    // ---- rolling restart -----------------------------------------------------
    drop(measured);
    let mut restart_ms = Vec::new();
    let mut gap_ms = Vec::new();
    let mut next_instance = n;
    let mut windows = Vec::new();
    let mut restart_failures = 0;
    print_churn(&db, "before the rolling restart");
    reset_statements(&db);
    let restart_cpu0 = (db_cpu(), own_cpu_s());
    let restart_started = Instant::now();
    if is_settled {
        for k in 0..restarts {
            let old = members.remove(0);
            let name = old.node.node_id().to_string();
            let t_a = Instant::now();
            if let Err(e) = old.node.stop() {
                println!("stop {name}: {e}");
            }
            drop(old);
            let mut b = builder(&name);
            let rx = b.subscribe();
            let node = match b.start() {
                Ok(node) => node,
                Err(e) => {
                    println!("restart {name}: {e}");
                    restart_failures += 1;
                    continue;
                }
            };
            let instance = next_instance;
            next_instance += 1;
            hub.add(instance, rx);
            let share = node.view().partitions_of(&name);
            members.push(Member { node });
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut done_at = None;
            // The replayed state is the one at the latest event applied.
            let mut latest = t_a;
            while Instant::now() < deadline {
                for (i, e) in hub.wait_drain(Duration::from_millis(20)) {
                    replay.apply(i, &e);
                    let change = matches!(e, Event::Acquired { .. } | Event::Released { .. });
                    if change {
                        latest = latest.max(e.at());
                    }
                    if done_at.is_none()
                        && change
                        && replay.covered_once_without(None)
                        && share.iter().all(|p| replay.holder(*p) == Some(instance))
                    {
                        done_at = Some(latest);
                    }
                }
                if done_at.is_some() {
                    break;
                }
            }
            // Let every member settle before the next restart.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !settled(&members) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            for (i, e) in hub.drain() {
                replay.apply(i, &e);
            }
            match done_at {
                Some(at) => {
                    restart_ms.push(ms(at - t_a));
                    windows.push((t_a, at));
                }
                None => {
                    println!(
                        "restart {k} ({name}, instance {instance}) did not complete (stopped at {:.3}s)",
                        t_a.saturating_duration_since(t0).as_secs_f64()
                    );
                    restart_failures += 1;
                }
            }
        }
    }
    let restart_total = restart_started.elapsed();
    let restart_cpu = (db_cpu() - restart_cpu0.0, own_cpu_s() - restart_cpu0.1);
    let restart_costly = if pss {
        costly_statements(&db, 6)
    } else {
        Vec::new()
    };
    print_churn(&db, "after the rolling restart");
    let verdict = replay.verdict();
    let overlaps = verdict.overlaps.len() as u64;
    for d in replay.describe_overlaps(&verdict, t0, 10) {
        println!("OVERLAP {d}");
    }
    let coverage = replay.coverage();
    for (a, b) in &windows {
        gap_ms.push(longest_gap_ms(&coverage, *a, *b));
    }
    let rs = stats(&restart_ms);
    let gs = stats(&gap_ms);

    print_table(
        &["measure", "value"],
        &[
            vec![
                "members started / failed".into(),
                format!("{} / {}", members.len(), start_errors.len()),
            ],
            vec![
                "start(): p50 / max (s)".into(),
                format!("{:.2} / {:.2}", st.p50 / 1000.0, st.max / 1000.0),
            ],
            vec![
                "all start() calls returned after (s)".into(),
                f(all_started.as_secs_f64(), 2),
            ],
            vec!["settled: last handoff after (s)".into(), f(settle_s, 2)],
            vec![
                "settled: observed by polling after (s)".into(),
                f(observed.as_secs_f64(), 2),
            ],
            vec![
                "members' pools until then: connections".into(),
                start_pool_events.clone(),
            ],
            vec![
                "CPU during the start: database / members (s)".into(),
                format!("{:.1} / {:.1}", cpu_b.0 - cpu_a.0, cpu_b.1 - cpu_a.1),
            ],
            vec![
                format!("at rest over {secs:.0} s: statements/s"),
                stmt_s.map_or("n/a".into(), |v| f(v, 1)),
            ],
            vec!["at rest: transactions/s".into(), f(xact_s, 1)],
            vec![
                "at rest: statements per member per s".into(),
                stmt_s.map_or("n/a".into(), |v| f(v / n as f64, 3)),
            ],
            vec![
                "at rest: database CPU (% of a core)".into(),
                f(db_cpu_pct, 1),
            ],
            vec![
                "at rest: members' CPU (% of a core)".into(),
                f(members_cpu_pct, 1),
            ],
            vec!["at rest: ownership events".into(), rest_changes.to_string()],
            vec!["RSS per member (KiB)".into(), f(rss_per_member, 0)],
            vec![
                format!("rolling restart of {restarts}: total (s)"),
                f(restart_total.as_secs_f64(), 1),
            ],
            vec![
                "restart: stop() until back in its share, p50 / max (ms)".into(),
                format!("{:.1} / {:.1}", rs.p50, rs.max),
            ],
            vec![
                "restart: longest partition gap, p50 / max (ms)".into(),
                format!("{:.1} / {:.1}", gs.p50, gs.max),
            ],
            vec!["restart failures".into(), restart_failures.to_string()],
            vec![
                "overlaps (whole run, from events)".into(),
                overlaps.to_string(),
            ],
        ],
    );
    println!(
        "start: what the database's backends were doing (samples every 50 ms; active ones only):"
    );
    for (n, what) in &start_activity {
        println!("  {n:>7} samples: {what}");
    }
    println!("start: costliest statements (time includes lock waits):");
    for (calls, total, mean, q) in &start_costly {
        println!("  {calls:>7} calls {total:>9.1} ms total {mean:>7.3} ms mean: {q}");
    }
    for (calls, total, mean, q) in &top {
        println!("  at rest {calls:>7} calls {total:>9.1} ms total {mean:>7.3} ms mean: {q}");
    }
    println!(
        "rolling restart: database CPU {:.1} s, members' CPU {:.1} s; costliest statements:",
        restart_cpu.0, restart_cpu.1
    );
    for (calls, total, mean, q) in &restart_costly {
        println!("  {calls:>7} calls {total:>9.1} ms total {mean:>7.3} ms mean: {q}");
    }
    if bouncer.is_some() {
        println!(
            "deploy pgbouncer-fleet members={n} max_connections=100 settle_s={settle_s:.2} start_failures={} overlaps={overlaps} restart_p50_ms={:.1} restart_max_ms={:.1} gap_p50_ms={:.1} gap_max_ms={:.1} restart_failures={restart_failures} heartbeat_ms={}",
            start_errors.len(),
            rs.p50,
            rs.max,
            gs.p50,
            gs.max,
            (BOUNCER_TTL / 3).as_millis()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    }
    println!(
        "scale fleet members={n} settle_s={settle_s:.2} backends_at_rest={held_at_rest} backends_peak={backends_peak} start_failures={} notifies={notifies} db_cpu_s={:.1} rss_per_member_kb={rss_per_member:.0}",
        start_errors.len(),
        cpu_b.0 - cpu_a.0
    );
    println!(
        "scale members={n} settle_s={settle_s:.2} rolling_restart_overlaps={overlaps} db_statements_per_s={:.1} rss_per_member_kb={rss_per_member:.0} pool_idle={pool_idle}",
        stmt_s.unwrap_or(xact_s)
    );
    println!(
        "scale_extra members={n} start_failures={} restart_failures={restart_failures} restart_p50_ms={:.1} restart_max_ms={:.1} gap_p50_ms={:.1} gap_max_ms={:.1} db_cpu_rest_pct={db_cpu_pct:.1} members_cpu_rest_pct={members_cpu_pct:.1}",
        start_errors.len(),
        rs.p50,
        rs.max,
        gs.p50,
        gs.max
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Leave without 500 graceful leaves (each would be an epoch for all the
    // others): the process exits, the connections close, the ring is
    // abandoned (its name is unique to this run).
    std::process::exit(0);
}

/// What the members' pools did, from r2d2's events: connections opened
/// and closed, borrows that timed out, and the slowest open.
#[derive(Debug, Default)]
struct PoolEvents {
    opened: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicU64,
    timeouts: std::sync::atomic::AtomicU64,
}

static POOL_EVENTS: PoolEvents = PoolEvents {
    opened: std::sync::atomic::AtomicU64::new(0),
    closed: std::sync::atomic::AtomicU64::new(0),
    timeouts: std::sync::atomic::AtomicU64::new(0),
};

#[derive(Debug)]
struct CountEvents;

impl r2d2::HandleEvent for CountEvents {
    fn handle_acquire(&self, _: r2d2::event::AcquireEvent) {
        POOL_EVENTS
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn handle_release(&self, _: r2d2::event::ReleaseEvent) {
        POOL_EVENTS
            .closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn handle_timeout(&self, _: r2d2::event::TimeoutEvent) {
        POOL_EVENTS
            .timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// "opened=… closed=… borrow_timeouts=…" of every member's pool so far.
fn pool_events() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "opened={} closed={} borrow_timeouts={}",
        POOL_EVENTS.opened.load(Relaxed),
        POOL_EVENTS.closed.load(Relaxed),
        POOL_EVENTS.timeouts.load(Relaxed)
    )
}

/// A member's pool straight to the server: [`POOL_SIZE`] connections at
/// most, opened lazily, its events counted ([`pool_events`]).
fn counted_pool(db: &TestPostgres, app: &str) -> Pool {
    let mut config = db.config();
    config
        .application_name(app)
        .connect_timeout(Duration::from_secs(30));
    r2d2::Pool::builder()
        .max_size(POOL_SIZE)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .event_handler(Box::new(CountEvents))
        .build_unchecked(r2d2_postgres::PostgresConnectionManager::new(
            config,
            r2d2_postgres::postgres::NoTls,
        ))
}

/// A pool of at most [`POOL_SIZE`] connections through the PgBouncer on
/// `port`, opened lazily, as the user and database of `db`.
fn bouncer_pool(db: &TestPostgres, port: u16, app: &str) -> Pool {
    let base = db.config();
    let mut config = r2d2_postgres::postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(base.get_user().unwrap_or("postgres"))
        .dbname(base.get_dbname().unwrap_or("postgres"))
        .application_name(app)
        .connect_timeout(Duration::from_secs(30));
    r2d2::Pool::builder()
        .max_size(POOL_SIZE)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .build_unchecked(r2d2_postgres::PostgresConnectionManager::new(
            config,
            r2d2_postgres::postgres::NoTls,
        ))
}

/// Samples `pg_stat_activity` while the members start: which statements
/// the busy backends are in, and what they wait for (lock, LWLock, CPU).
struct ActivitySampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(std::collections::HashMap<String, u64>, i64)>,
}

impl ActivitySampler {
    fn start(db: &TestPostgres) -> ActivitySampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut client = db.client().expect("a client for the activity sampler");
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut counts = std::collections::HashMap::new();
            let mut peak = 0i64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = client.query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[],
                ) {
                    peak = peak.max(r.get(0));
                }
                let rows = client
                    .query(
                        "SELECT coalesce(wait_event_type || ':' || wait_event, 'running'),
                                regexp_replace(left(query, 48), '\\s+', ' ', 'g')
                         FROM pg_stat_activity
                         WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                        &[],
                    )
                    .unwrap_or_default();
                for r in rows {
                    let what = format!("{:<28} {}", r.get::<_, String>(0), r.get::<_, String>(1));
                    *counts.entry(what).or_insert(0u64) += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (counts, peak)
        });
        ActivitySampler { stop, handle }
    }

    /// The `n` most frequent (samples, what) pairs, and the most client
    /// backends seen at once.
    fn finish(self, n: usize) -> (Vec<(u64, String)>, i64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (counts, peak) = self.handle.join().unwrap_or_default();
        let mut v: Vec<(u64, String)> = counts.into_iter().map(|(k, c)| (c, k)).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(n);
        (v, peak)
    }
}

/// Clients of the multi-ring run, and rings each is a member of.
const MULTI_CLIENTS: usize = 16;
const MULTI_RINGS: usize = 64;

/// The multi-ring run: 16 clients, each a member of 64 rings (ring size
/// 1024, TTL 30 s), started client by client in parallel; the connections
/// they hold at rest, their threads, and the statements per second at
/// rest.
fn multi() {
    let _ = env_logger::builder().format_timestamp_millis().try_init();
    let db = TestPostgres::from_env()
        .ok()
        .flatten()
        .expect("the parent passes the database URL");
    let pss = std::env::var("LEASERING_BENCH_PSS").is_ok_and(|v| v == "1");
    let q = quick();
    let rest_window = Duration::from_secs(if q { 12 } else { 30 });
    let tag = std::process::id();
    println!();
    println!("## multi-ring: {MULTI_CLIENTS} clients x {MULTI_RINGS} rings (ring 1024, TTL 30 s), pools of 4");
    let threads0 = leasering_threads();
    let pools: Vec<Pool> = (0..MULTI_CLIENTS)
        .map(|c| pool(&db, &format!("c{c:02}"), 4))
        .collect();
    let t0 = Instant::now();
    let handles: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(c, p)| {
            let client = leasering::Client::new(p.clone());
            std::thread::spawn(move || {
                let members: Vec<RingNode> = (0..MULTI_RINGS)
                    .map(|r| {
                        client
                            .member(format!("multi-{tag}-{r}"))
                            .node_id(format!("c{c:02}"))
                            .start_timeout(Duration::from_secs(120))
                            .start()
                            .expect("start a membership")
                    })
                    .collect();
                (client, members)
            })
        })
        .collect();
    let clients: Vec<(leasering::Client, Vec<RingNode>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let started = t0.elapsed();
    let all: Vec<&RingNode> = clients.iter().flat_map(|(_, m)| m.iter()).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let ok = all.iter().all(|m| {
            let s = m.status();
            s.joined && s.pending == 0 && m.view().members().len() == MULTI_CLIENTS
        });
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = t0.elapsed();
    let threads = leasering_threads() - threads0;
    // Past every membership's first renewal and the flush of counters.
    std::thread::sleep(Duration::from_secs(12));
    reset_statements(&db);
    let c0 = db_counters(&db, pss);
    std::thread::sleep(rest_window);
    let c1 = db_counters(&db, pss);
    let secs = (c1.at.unwrap() - c0.at.unwrap()).as_secs_f64();
    let stmt_s = c1
        .statements
        .zip(c0.statements)
        .map(|(a, b)| (a - b) as f64 / secs);
    let held: u32 = pools
        .iter()
        .map(|p| {
            let s = p.state();
            s.connections - s.idle_connections
        })
        .sum();
    let expected = MULTI_CLIENTS as f64 / 10.0;
    println!(
        "started in {:.2} s, settled in {:.2} s; {threads} leasering threads; at rest over {secs:.0} s: {} statements/s ({expected:.1} expected: one renewal per client per 10 s), {held} connections held",
        started.as_secs_f64(),
        settled.as_secs_f64(),
        stmt_s.map_or("n/a".into(), |v| f(v, 2)),
    );
    println!(
        "scale multi clients={MULTI_CLIENTS} rings={MULTI_RINGS} memberships={} settle_s={:.2} backends_at_rest={held} threads={threads} statements_per_s_at_rest={} expected_per_s={expected:.1}",
        all.len(),
        settled.as_secs_f64(),
        stmt_s.map_or("n/a".into(), |v| f(v, 2)),
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// How many of this process's threads are leasering's.
fn leasering_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|n| n.starts_with("leasering-"))
                .count()
        })
        .unwrap_or(0)
}
