//! Handoff latency in real deployments, on a throwaway PostgreSQL (loopback,
//! fsync off), for the README's "Running in production":
//!
//! * **pooler**: 8 members (ring of 1024, TTL `LEASERING_BENCH_TTL_MS`,
//!   default 3000: a renewal every second); a 9th joins and leaves again,
//!   `LEASERING_BENCH_REPS` times (default 10), four ways: straight to the
//!   server with notifications on (`direct`) and off (`direct-polling`),
//!   through PgBouncer in session mode with notifications on
//!   (`pgbouncer-session`), and in transaction mode with
//!   `pooling(Pooling::Transaction)`
//!   (`pgbouncer-transaction`, 4 server connections for everyone). `join`:
//!   from `start()` until the joiner holds its whole share and nobody else
//!   holds any of it; `leave`: from `stop()` until every partition of the
//!   leaver's share is held by another member. Sampled every millisecond.
//! * **pool size**: the same cycle straight to the server, notifications on,
//!   but every member's pool (sizes 3, 4, 8, 16) is shared with an
//!   application: four threads per pool that each check a connection out,
//!   hold it for 5 ms (no work for the server, so that its load is the same
//!   for every size), give it back and pause 1 ms, all the time.
//!
//! * **failover**: 4 members (TTL as above, ring of 1024) reach a primary
//!   with a synchronous standby through the testkit's TCP proxy; the
//!   primary is killed (`SIGQUIT`), the standby promoted, the proxy
//!   repointed. `settled`: from the kill until every member holds its share
//!   again on the new primary; `join_after`: a 5th member started right
//!   then, from `start()` until it holds its share — with the default
//!   [`failover_grace`](leasering::NodeBuilder::failover_grace) (a TTL and the
//!   margin: the new primary's grace period) and with `0` (a deployment
//!   that only promotes synchronous standbys). `LEASERING_BENCH_REPS`
//!   failovers each (at most 3).
//!
//! `LEASERING_BENCH_DEPLOY=pooler`, `=pool` or `=failover` runs one section. Every
//! section also checks with the sampler that no partition was ever held by
//! two members at once. One `deploy <section> <mode> join_p50_ms=...` line
//! per measure.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasering::{NodeBuilder, RingNode};
use leasering_testkit::{PgBouncer, PoolMode, Sampler, TcpProxy, TestPostgres};
use support::*;

const RING_SIZE: u32 = 1024;
const MEMBERS: usize = 8;

/// How a member reaches the database.
#[derive(Clone, Copy, Debug)]
enum Route {
    Direct { notify: bool },
    Bouncer(PoolMode),
}

struct Setup<'a> {
    db: &'a TestPostgres,
    bouncer: Option<&'a PgBouncer>,
    route: Route,
    ttl: Duration,
    pool_size: u32,
    /// Application threads per pool (shared-pool section).
    app_threads: usize,
}

struct App {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl App {
    /// `n` threads using `pool` all the time, as an application sharing it.
    fn start(pool: &Pool, n: usize) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let (pool, stop) = (pool.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Held without work for the database: the load on
                        // the server is the same for every pool size, only
                        // the competition for the pool's slots changes.
                        if let Ok(c) = pool.get_timeout(Duration::from_secs(1)) {
                            std::thread::sleep(Duration::from_millis(5));
                            drop(c);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        App { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Setup<'_> {
    fn pool(&self, name: &str) -> Pool {
        match (self.route, self.bouncer) {
            (Route::Bouncer(_), Some(b)) => b
                .pool(name, self.pool_size)
                .unwrap_or_else(|e| panic!("pool: {e}")),
            _ => pool(self.db, name, self.pool_size),
        }
    }

    fn builder(&self, pool: Pool, ring: &str, name: &str) -> NodeBuilder {
        let b = RingNode::builder(pool, ring)
            .node_id(name)
            .ring_size(RING_SIZE)
            .lease_ttl(self.ttl)
            .start_timeout(Duration::from_secs(30));
        match self.route {
            Route::Direct { notify } => b.pooling(if notify {
                leasering::Pooling::Session
            } else {
                leasering::Pooling::SessionPolling
            }),
            Route::Bouncer(PoolMode::Session) => b,
            Route::Bouncer(PoolMode::Transaction) => b.pooling(leasering::Pooling::Transaction),
        }
    }
}

/// A 1 ms sampler of who owns what among `nodes` (as they come and go).
fn sample(nodes: &Arc<Mutex<Vec<RingNode>>>) -> Sampler {
    let sampled = nodes.clone();
    Sampler::start(Duration::from_millis(1), move || {
        sampled
            .lock()
            .unwrap()
            .iter()
            .map(|n| (n.node_id().to_string(), n.clone()))
            .collect()
    })
}

fn settled(nodes: &[RingNode]) -> bool {
    let e = nodes[0].view().epoch();
    nodes.iter().all(|n| {
        let v = n.view();
        v.epoch() == e
            && v.members().len() == nodes.len()
            && n.owned_partitions().to_vec() == v.partitions_of(n.node_id())
    })
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            eprintln!("timed out after {timeout:?} waiting for {what}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Measured {
    join_ms: Vec<f64>,
    leave_ms: Vec<f64>,
    failures: usize,
    overlaps: u64,
}

/// Join/leave cycles of a 9th member on a ring of 8.
fn cycles(setup: &Setup<'_>, ring: &str, reps: usize) -> Measured {
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let mut apps = Vec::new();
    for k in 0..MEMBERS {
        let name = format!("m{k}");
        let p = setup.pool(&name);
        if setup.app_threads > 0 {
            apps.push(App::start(&p, setup.app_threads));
        }
        let n = setup
            .builder(p, ring, &name)
            .start()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        nodes.lock().unwrap().push(n);
    }
    let sampler = sample(&nodes);
    let mut out = Measured {
        join_ms: Vec::new(),
        leave_ms: Vec::new(),
        failures: 0,
        overlaps: 0,
    };
    let settle = Duration::from_secs(60);
    for rep in 0..=reps {
        let fleet = nodes.lock().unwrap().clone();
        if wait("the ring to settle", settle, || settled(&fleet)).is_none() {
            out.failures += 1;
            continue;
        }
        let name = format!("j{rep}");
        let p = setup.pool(&name);
        let app = (setup.app_threads > 0).then(|| App::start(&p, setup.app_threads));
        let b = setup.builder(p, ring, &name);
        let t0 = Instant::now();
        let joiner = b.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
        nodes.lock().unwrap().push(joiner.clone());
        let share = joiner.view().partitions_of(&name);
        let joined = wait("the joiner's share", settle, || {
            let others = &fleet;
            share.iter().all(|p| joiner.owns(*p))
                && others.iter().all(|n| share.iter().all(|p| !n.owns(*p)))
        });
        let all = nodes.lock().unwrap().clone();
        if wait("the ring to settle with the joiner", settle, || {
            settled(&all)
        })
        .is_none()
        {
            out.failures += 1;
        }
        let t1 = Instant::now();
        joiner.stop().unwrap_or_else(|e| panic!("stop {name}: {e}"));
        nodes.lock().unwrap().retain(|n| n.node_id() != name);
        let left = wait("the leaver's partitions to move", settle, || {
            share.iter().all(|p| fleet.iter().any(|n| n.owns(*p)))
        });
        if let Some(app) = app {
            app.stop();
        }
        // The first cycle is a warm-up.
        if rep == 0 {
            continue;
        }
        match (joined, left) {
            (Some(j), Some(l)) => {
                out.join_ms.push(ms(j - t0));
                out.leave_ms.push(ms(l - t1));
            }
            _ => out.failures += 1,
        }
    }
    let report = sampler.finish();
    out.overlaps = report.overlaps;
    for n in nodes.lock().unwrap().drain(..) {
        let _ = n.stop();
    }
    for a in apps {
        a.stop();
    }
    out
}

/// One failover under 4 members, then a 5th joins: (settled, join_after),
/// or `None` if either timed out; and the overlaps the sampler saw.
fn failover_once(ttl: Duration, grace: Option<Duration>, ring: &str) -> (Option<(f64, f64)>, u64) {
    let (primary, standby) = TestPostgres::with_standby(true)
        .unwrap_or_else(|e| panic!("a primary and its standby: {e}"));
    let proxy = TcpProxy::start(([127, 0, 0, 1], primary.port()).into())
        .unwrap_or_else(|e| panic!("proxy: {e}"));
    let start = |name: &str| {
        let pool = primary
            .pool_via(proxy.port(), 4)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut b = RingNode::builder(pool, ring)
            .node_id(name)
            .ring_size(RING_SIZE)
            .lease_ttl(ttl)
            .start_timeout(Duration::from_secs(30));
        if let Some(g) = grace {
            b = b.failover_grace(g);
        }
        b.start().unwrap_or_else(|e| panic!("start {name}: {e}"))
    };
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(
        (0..4).map(|k| start(&format!("f{k}"))).collect(),
    ));
    let sampler = sample(&nodes);
    let settle = Duration::from_secs(60);
    let fleet = nodes.lock().unwrap().clone();
    let mut out = None;
    if wait("four members to settle", settle, || settled(&fleet)).is_some() {
        let t0 = Instant::now();
        primary.stop_immediate().unwrap_or_else(|e| panic!("{e}"));
        standby.promote().unwrap_or_else(|e| panic!("{e}"));
        proxy.set_target(([127, 0, 0, 1], standby.port()).into());
        proxy.cut();
        let back = wait("the ring to settle on the new primary", settle, || {
            settled(&fleet)
        });
        let t1 = Instant::now();
        let joiner = start("f4");
        nodes.lock().unwrap().push(joiner.clone());
        let share = joiner.view().partitions_of("f4");
        let joined = wait("the joiner's share", settle, || {
            share.iter().all(|p| joiner.owns(*p))
                && fleet.iter().all(|n| share.iter().all(|p| !n.owns(*p)))
        });
        if let (Some(b), Some(j)) = (back, joined) {
            out = Some((ms(b - t0), ms(j - t1)));
        }
    }
    let overlaps = sampler.finish().overlaps;
    for n in nodes.lock().unwrap().drain(..) {
        let _ = n.stop();
    }
    (out, overlaps)
}

fn line(section: &str, mode: &str, m: &Measured) -> String {
    let j = stats(&m.join_ms);
    let l = stats(&m.leave_ms);
    format!(
        "deploy {section} {mode}: join_p50_ms={} join_p99_ms={} join_max_ms={} leave_p50_ms={} leave_p99_ms={} leave_max_ms={} n={} failures={} overlaps={}",
        f(j.p50, 1),
        f(j.p99, 1),
        f(j.max, 1),
        f(l.p50, 1),
        f(l.p99, 1),
        f(l.max, 1),
        m.join_ms.len(),
        m.failures,
        m.overlaps
    )
}

fn main() {
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    print_machine("deploy");
    let reps = env_usize("LEASERING_BENCH_REPS", if quick() { 3 } else { 10 });
    let ttl = Duration::from_millis(env_usize("LEASERING_BENCH_TTL_MS", 3000) as u64);
    let only = std::env::var("LEASERING_BENCH_DEPLOY").unwrap_or_default();
    let (db, _) = start_pg(300, &[]);
    println!(
        "# PostgreSQL {} (loopback, fsync off), TTL {ttl:?}, {reps} reps",
        pg_version(&db)
    );
    let mut lines = Vec::new();
    if only.is_empty() || only == "pooler" {
        let session = PgBouncer::start(&db, PoolMode::Session, 200)
            .unwrap_or_else(|e| panic!("pgbouncer: {e}"));
        let transaction = PgBouncer::start(&db, PoolMode::Transaction, 4)
            .unwrap_or_else(|e| panic!("pgbouncer: {e}"));
        let routes: [(&str, Route, Option<&PgBouncer>); 4] = [
            ("direct", Route::Direct { notify: true }, None),
            ("direct-polling", Route::Direct { notify: false }, None),
            (
                "pgbouncer-session",
                Route::Bouncer(PoolMode::Session),
                Some(&session),
            ),
            (
                "pgbouncer-transaction",
                Route::Bouncer(PoolMode::Transaction),
                Some(&transaction),
            ),
        ];
        for (name, route, bouncer) in routes {
            let setup = Setup {
                db: &db,
                bouncer,
                route,
                ttl,
                pool_size: 4,
                app_threads: 0,
            };
            let m = cycles(&setup, &format!("pooler-{name}"), reps);
            let l = line("pooler", name, &m);
            println!("{l}");
            lines.push(l);
        }
    }
    if only.is_empty() || only == "pool" {
        for size in [3u32, 4, 8, 16] {
            let setup = Setup {
                db: &db,
                bouncer: None,
                route: Route::Direct { notify: true },
                ttl,
                pool_size: size,
                app_threads: 4,
            };
            let m = cycles(&setup, &format!("pool-{size}"), reps);
            let l = line("shared-pool", &format!("size={size}"), &m);
            println!("{l}");
            lines.push(l);
        }
    }
    if only.is_empty() || only == "failover" {
        for (name, grace) in [("default", None), ("0", Some(Duration::ZERO))] {
            let (mut settled_ms, mut join_ms) = (Vec::new(), Vec::new());
            let (mut failures, mut overlaps) = (0, 0);
            for rep in 0..reps.min(3) {
                let (m, o) = failover_once(ttl, grace, &format!("failover-{name}-{rep}"));
                overlaps += o;
                match m {
                    Some((s, j)) => {
                        settled_ms.push(s);
                        join_ms.push(j);
                    }
                    None => failures += 1,
                }
            }
            let (s, j) = (stats(&settled_ms), stats(&join_ms));
            let l = format!(
                "deploy failover grace={name}: settled_p50_ms={} settled_max_ms={} join_after_p50_ms={} join_after_max_ms={} n={} failures={failures} overlaps={overlaps}",
                f(s.p50, 1),
                f(s.max, 1),
                f(j.p50, 1),
                f(j.max, 1),
                join_ms.len()
            );
            println!("{l}");
            lines.push(l);
        }
    }
    println!();
    for l in lines {
        println!("{l}");
    }
}
