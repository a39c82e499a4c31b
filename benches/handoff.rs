//! Handoff latency and database load on a throwaway PostgreSQL (loopback,
//! fsync off):
//!
//! * **join**: 16 members (TTL 30 s); a 17th calls `start()`; the time until
//!   every partition is active on exactly one member and the joiner holds
//!   its whole share (replayed from every member's events, on one clock).
//! * **leave**: that joiner calls `stop()`; the time until each of its
//!   partitions is active on one of the others.
//! * **crash**: a member *process* (`tests/bin/member.rs`, the
//!   `leasering-member` bin) on a ring of 16 with TTL 2 s is killed with
//!   `kill -9` at a random moment of its renewal cycle; the time until its
//!   partitions are active elsewhere, also as a multiple of the TTL.
//! * **at rest**: statements and transactions per member per second of the
//!   16 members (`pg_stat_statements`, `pg_stat_database.xact_commit`).
//!
//! Every run also checks, from the merged events (and the killed processes'
//! logs), with the testkit's oracle, that no partition was ever active on
//! two members at once.
//!
//! `LEASERING_BENCH_QUICK=1` shortens the run; `LEASERING_BENCH_REPS` and
//! `LEASERING_BENCH_CRASH_REPS` set the repetitions.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use leasering::{Event, RingNode};
use leasering_testkit::member_log::{parse_events, Ev};
use leasering_testkit::oracle::History;
use leasering_testkit::rng::Rng;
use leasering_testkit::{instant_of, MemberArgs, MemberProcess, TestPostgres};
use support::*;

/// The member process, built by Cargo with the benches.
const MEMBER: &str = env!("CARGO_BIN_EXE_leasering-member");

const RING_SIZE: u32 = 1024;
const MEMBERS: usize = 16;

struct Fleet {
    ring: String,
    ttl: Duration,
    nodes: Vec<(usize, RingNode)>,
    hub: EventHub,
    replay: Replay,
    next_instance: usize,
}

impl Fleet {
    fn new(ring: &str, ttl: Duration) -> Fleet {
        Fleet {
            ring: ring.to_string(),
            ttl,
            nodes: Vec::new(),
            hub: EventHub::default(),
            replay: Replay::new(RING_SIZE),
            next_instance: 0,
        }
    }

    /// Starts a member; returns its instance index and the moment `start()`
    /// was called.
    fn start(&mut self, pool: Pool, name: &str) -> (usize, Instant, RingNode) {
        let mut b = RingNode::builder(pool, self.ring.clone())
            .node_id(name)
            .ring_size(RING_SIZE)
            .lease_ttl(self.ttl)
            .start_timeout(Duration::from_secs(30));
        let rx = b.subscribe();
        let t0 = Instant::now();
        let node = b.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let i = self.next_instance;
        self.next_instance += 1;
        self.hub.add(i, rx);
        self.nodes.push((i, node.clone()));
        (i, t0, node)
    }

    /// Applies what arrived to the replay.
    fn pump(&mut self, wait: Duration) {
        for (i, e) in self.hub.wait_drain(wait) {
            self.replay.apply(i, &e);
        }
    }

    /// Replays new events until `done(replay)` holds; returns the `at` of
    /// the event that made it hold (or now, if it already held).
    fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Replay) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        if done(&self.replay) {
            self.pump(Duration::ZERO);
            return Some(Instant::now());
        }
        // Events of different members can reach us out of order (each
        // member's channel is drained in turn): the replayed state is the
        // one at the latest event applied so far, hence the running maximum.
        let mut latest: Option<Instant> = None;
        while Instant::now() < deadline {
            let mut found = None;
            for (i, e) in self.hub.wait_drain(Duration::from_millis(20)) {
                self.replay.apply(i, &e);
                let change = matches!(e, Event::Acquired { .. } | Event::Released { .. });
                if change {
                    latest = latest.max(Some(e.at()));
                }
                if found.is_none() && change && done(&self.replay) {
                    found = latest;
                }
            }
            if found.is_some() {
                return found;
            }
        }
        eprintln!("timed out after {timeout:?} waiting for {what}");
        None
    }

    /// Every member's view at one epoch and every member holding exactly
    /// its share: the ring is settled.
    fn settled(&self) -> bool {
        let Some((_, first)) = self.nodes.first() else {
            return true;
        };
        let e = first.ring().epoch();
        self.nodes.iter().all(|(_, n)| {
            let v = n.ring();
            v.epoch() == e && n.owned_partitions().len() == v.partitions_of(n.node_id()).len()
        })
    }

    fn wait_settled(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.settled() {
            assert!(
                Instant::now() < deadline,
                "ring {} did not settle",
                self.ring
            );
            self.pump(Duration::from_millis(2));
        }
        self.pump(Duration::ZERO);
    }

    fn remove(&mut self, instance: usize) {
        self.nodes.retain(|(i, _)| *i != instance);
    }
}

/// Partitions a member process's log says it holds now.
fn held_in_log(path: &Path) -> usize {
    let mut h = History::new();
    let run = h.add_run("victim");
    for e in &read_log(path) {
        h.logged(run, e);
    }
    h.holding(run).len()
}

/// The complete lines of a member process's event log.
fn read_log(path: &Path) -> Vec<Ev> {
    parse_events(&std::fs::read_to_string(path).unwrap_or_default()).0
}

fn spawn_member(
    db: &TestPostgres,
    ring: &str,
    name: &str,
    ttl: Duration,
    events: &Path,
) -> MemberProcess {
    let url = db.url();
    let args = MemberArgs {
        exe: MEMBER,
        url: &url,
        ring,
        node: name,
        ttl,
        schema: "leasering",
        events,
    };
    MemberProcess::spawn(args).unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    // RUST_LOG=leasering=info shows the library's own account of each step.
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    print_machine("handoff");
    let q = quick();
    let reps = env_usize("LEASERING_BENCH_REPS", if q { 20 } else { 150 });
    let crash_reps = env_usize("LEASERING_BENCH_CRASH_REPS", if q { 3 } else { 10 });
    let rest_window =
        Duration::from_secs(env_usize("LEASERING_BENCH_REST_S", if q { 12 } else { 30 }) as u64);

    let (db, pss) = start_pg(300, &[]);
    println!(
        "# PostgreSQL {} (loopback, fsync off){}",
        pg_version(&db),
        if pss { ", pg_stat_statements on" } else { "" }
    );

    // ---- join and leave ----------------------------------------------------
    let mut fleet = Fleet::new("handoff", Duration::from_secs(30));
    for k in 0..MEMBERS {
        let name = format!("m{k:02}");
        fleet.start(pool(&db, &name, 3), &name);
    }
    fleet.wait_settled(Duration::from_secs(60));
    let jpool = pool(&db, "joiner", 3);
    let mut join_ms = Vec::new();
    let mut leave_ms = Vec::new();
    let mut start_call_ms = Vec::new();
    let mut stop_call_ms = Vec::new();
    // Phases of a join: the old owners' releases, then the joiner's
    // activation (acknowledgements + barrier).
    let mut released_ms = Vec::new();
    let mut activated_ms = Vec::new();
    let mut leave_notified_ms = Vec::new();
    let mut leave_adopted_ms = Vec::new();
    let mut leave_activated_ms = Vec::new();
    let mut failures = 0;
    for rep in 0..reps + 1 {
        fleet.wait_settled(Duration::from_secs(30));
        let name = format!("joiner-{rep}");
        let (i, t0, node) = fleet.start(jpool.clone(), &name);
        let started = Instant::now();
        let share = node.ring().partitions_of(&name);
        let joined = fleet.until(Duration::from_secs(10), "the joiner's share", |h| {
            h.covered_once_without(None) && share.iter().all(|p| h.holder(*p) == Some(i))
        });
        // Leave.
        fleet.wait_settled(Duration::from_secs(30));
        let t1 = Instant::now();
        node.stop().unwrap_or_else(|e| panic!("stop: {e}"));
        let stopped = Instant::now();
        fleet.remove(i);
        let left = fleet.until(
            Duration::from_secs(10),
            "the leaver's partitions to move",
            |h| h.covered_once_without(Some(i)),
        );
        if rep == 0 {
            continue; // warm-up: the joiner pool's connections are opened here
        }
        let last_release = fleet
            .hub
            .log
            .iter()
            .filter_map(|(who, e)| match e {
                Event::Released { at, .. } if *who != i && *at > t0 && *at <= t1 => Some(*at),
                _ => None,
            })
            .max();
        // Phases of a leave: the others adopt the leave's view (its
        // transaction and NOTIFY), then the successors activate (the
        // others' acknowledgements and the barrier).
        let adopted: Vec<Instant> = fleet
            .hub
            .log
            .iter()
            .filter_map(|(who, e)| match e {
                Event::ViewChanged { at, .. } if *who != i && *at > t1 => Some(*at),
                _ => None,
            })
            .collect();
        match (joined, left) {
            (Some(j), Some(l)) => {
                if let (Some(first), Some(last)) = (adopted.iter().min(), adopted.iter().max()) {
                    leave_notified_ms.push(ms(first.saturating_duration_since(t1)));
                    leave_adopted_ms.push(ms(last.saturating_duration_since(t1)));
                    leave_activated_ms.push(ms(l.saturating_duration_since(*last)));
                }
                if let Some(r) = last_release {
                    released_ms.push(ms(r.saturating_duration_since(started)));
                    activated_ms.push(ms(j.saturating_duration_since(r)));
                }
                join_ms.push(ms(j.saturating_duration_since(t0)));
                leave_ms.push(ms(l.saturating_duration_since(t1)));
                start_call_ms.push(ms(started - t0));
                stop_call_ms.push(ms(stopped - t1));
            }
            _ => failures += 1,
        }
    }
    fleet.wait_settled(Duration::from_secs(30));
    let overlaps = fleet.replay.verdict().overlaps.len() as u64;

    // ---- at rest ---------------------------------------------------------------
    // Past one renewal interval (every member's heartbeat has opened its
    // connection) and past PostgreSQL's delayed flush of the busy phase's
    // transaction counts (up to 10 s after a backend goes idle).
    std::thread::sleep(Duration::from_secs(12));
    reset_statements(&db);
    let c0 = db_counters(&db, pss);
    std::thread::sleep(rest_window);
    let c1 = db_counters(&db, pss);
    let secs = (c1.at.unwrap() - c0.at.unwrap()).as_secs_f64();
    let per = |d: i64| d as f64 / MEMBERS as f64 / secs;
    // Our two statistics reads per snapshot are transactions too.
    let xact_rate = per(c1.xact_commit - c0.xact_commit - 2);
    let stmt_rate = c1.statements.zip(c0.statements).map(|(a, b)| per(a - b));
    let top = if pss {
        top_statements(&db, 5)
    } else {
        Vec::new()
    };
    let db_cpu_pct = (c1.cpu_s - c0.cpu_s) / secs * 100.0;
    for (_, n) in &fleet.nodes {
        n.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    }

    // ---- crash (kill -9 of a member process) ----------------------------------
    let ttl = Duration::from_secs(2);
    let mut crash = Fleet::new("handoff-crash", ttl);
    for k in 0..MEMBERS - 1 {
        let name = format!("s{k:02}");
        crash.start(pool(&db, &name, 3), &name);
    }
    crash.wait_settled(Duration::from_secs(60));
    let dir = std::env::temp_dir().join(format!("leasering-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(0xc4a5);
    let mut crash_ms = Vec::new();
    let mut after_lease_ms = Vec::new();
    for rep in 0..crash_reps {
        crash.wait_settled(Duration::from_secs(30));
        let victim = format!("victim-{rep}");
        let events = dir.join(format!("{victim}.log"));
        let child = spawn_member(&db, &crash.ring, &victim, ttl, &events);
        // Wait until the victim holds its share and the others hold the rest.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let share = crash.nodes[0].1.ring().partitions_of(&victim);
            if !share.is_empty() && crash.settled() && held_in_log(&events) == share.len() {
                break;
            }
            assert!(Instant::now() < deadline, "the victim never got its share");
            crash.pump(Duration::from_millis(5));
        }
        // Kill at a random moment of the renewal cycle (renewals every ttl/3).
        std::thread::sleep(Duration::from_millis(rng.below(ttl.as_millis() as u64 / 3)));
        let killed = Instant::now();
        child.kill();
        crash
            .replay
            .add_killed_process(&victim, &read_log(&events), killed);
        let expires: Option<SystemTime> = db.client().ok().and_then(|mut c| {
            c.query_opt(
                "SELECT expires_at FROM leasering.members WHERE ring_id = $1 AND node_id = $2",
                &[&crash.ring, &victim],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0))
        });
        let covered = crash.until(
            Duration::from_secs(20),
            "the victim's partitions to be covered",
            |h| h.covered_once_without(None),
        );
        match covered {
            Some(at) => {
                crash_ms.push(ms(at - killed));
                if let Some(end) = expires {
                    let end = instant_of(end);
                    after_lease_ms.push(if at >= end {
                        ms(at - end)
                    } else {
                        -ms(end - at)
                    });
                }
            }
            None => failures += 1,
        }
    }
    crash.wait_settled(Duration::from_secs(30));
    let crash_overlaps = crash.replay.verdict().overlaps.len() as u64;
    for (_, n) in &crash.nodes {
        let _ = n.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);

    // ---- report -------------------------------------------------------------------
    let j = stats(&join_ms);
    let l = stats(&leave_ms);
    let sc = stats(&start_call_ms);
    let so = stats(&stop_call_ms);
    let jr = stats(&released_ms);
    let ln = stats(&leave_notified_ms);
    let lad = stats(&leave_adopted_ms);
    let lac = stats(&leave_activated_ms);
    let ja = stats(&activated_ms);
    let c = stats(&crash_ms);
    let al = stats(&after_lease_ms);
    let ttl_ms = ms(ttl);
    println!();
    println!("Handoff latency, {MEMBERS} members + 1, ring {RING_SIZE}, TTL 30 s ({} join/leave cycles), crash TTL 2 s ({} kills):", j.n, c.n);
    let row = |name: &str, s: &Stats, unit: f64| {
        vec![
            name.to_string(),
            s.n.to_string(),
            f(s.min / unit, 2),
            f(s.p50 / unit, 2),
            f(s.p90 / unit, 2),
            f(s.p99 / unit, 2),
            f(s.max / unit, 2),
        ]
    };
    print_table(
        &["measure", "n", "min", "p50", "p90", "p99", "max"],
        &[
            row(
                "join: start() until covered, joiner holds its share (ms)",
                &j,
                1.0,
            ),
            row("  start() returned (ms)", &sc, 1.0),
            row("  then old owners released (ms)", &jr, 1.0),
            row("  then the joiner activated (ms)", &ja, 1.0),
            row(
                "leave: stop() until its partitions are active elsewhere (ms)",
                &l,
                1.0,
            ),
            row("  stop() returned (ms)", &so, 1.0),
            row("  first other member adopted the leave (ms)", &ln, 1.0),
            row("  last other member adopted the leave (ms)", &lad, 1.0),
            row("  then the successors activated (ms)", &lac, 1.0),
            row("crash: kill -9 until covered (ms)", &c, 1.0),
            row("crash: kill -9 until covered (× TTL)", &c, ttl_ms),
            row(
                "crash: covered after the database lease ended (ms)",
                &al,
                1.0,
            ),
        ],
    );
    println!(
        "overlaps: join/leave {overlaps}, crash {crash_overlaps}; failed repetitions: {failures}"
    );
    println!();
    println!("At rest, {MEMBERS} members, TTL 30 s (renewal every 10 s), over {secs:.1} s:");
    print_table(
        &[
            "measure",
            "per member per s",
            "per member per renewal interval",
        ],
        &[
            vec![
                "statements (pg_stat_statements)".into(),
                stmt_rate.map_or("n/a".into(), |r| f(r, 3)),
                stmt_rate.map_or("n/a".into(), |r| f(r * 10.0, 2)),
            ],
            vec![
                "transactions (xact_commit)".into(),
                f(xact_rate, 3),
                f(xact_rate * 10.0, 2),
            ],
        ],
    );
    println!("database CPU at rest: {db_cpu_pct:.2} % of one core");
    for (calls, q) in &top {
        println!("  {calls:>6} calls: {q}");
    }
    println!("targets (DESIGN §9): join p50 <= 10 ms, p99 <= 50 ms; leave p50 <= 5 ms, p99 <= 25 ms; crash <= TTL + 200 ms; at rest <= 1 statement per member per renewal interval (0.1/s)");
    println!("loadavg after: {}", loadavg());
    println!();
    println!("handoff join p50_ms={:.2} p99_ms={:.2}", j.p50, j.p99);
    println!("handoff leave p50_ms={:.2} p99_ms={:.2}", l.p50, l.p99);
    println!(
        "handoff crash p50_over_ttl={:.3} max_over_ttl={:.3}",
        c.p50 / ttl_ms,
        c.max / ttl_ms
    );
    println!(
        "db_load statements_per_member_per_s={:.3} ttl_s=30",
        stmt_rate.unwrap_or(xact_rate)
    );
    println!("handoff_extra overlaps={} failed_reps={failures} xacts_per_member_per_s={xact_rate:.3} crash_after_lease_end_p50_ms={:.1} crash_after_lease_end_max_ms={:.1}", overlaps + crash_overlaps, al.p50, al.max);
    drop(db);
}
