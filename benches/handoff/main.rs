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
//! * **join / leave by pool**: the same cycle, three ways of giving the
//!   joiner its pool, interleaved rep by rep so that the machine's load
//!   falls on all three alike. `join`/`leave`: one pool shared by every
//!   joiner (after the discarded first rep its connections, and their
//!   backends' caches, are reused: a rep opens no connection). `join_warm`/
//!   `leave_warm`: a fresh pool per joiner whose connections are all open
//!   before `start()` is timed — what a service that builds its pool at
//!   process start has (r2d2's default `build()`). `join_cold`/`leave_cold`:
//!   a fresh, lazily connecting pool per joiner — `start()` and the leave
//!   pay for forking PostgreSQL backends.
//! * **at rest**: statements and transactions per member per second of the
//!   16 members (`pg_stat_statements`, `pg_stat_database.xact_commit`).
//! * **frozen member** (the crate docs, guarantee 5): 3 in-process members and
//!   one member *process*, TTL 10 s; the process is frozen (`SIGSTOP`) and,
//!   while it is, members join and leave again: the time from `start()`
//!   until the joiner holds every partition of its share whose claim the
//!   frozen member does *not* hold, and from `stop()` until the leaver's
//!   partitions are active elsewhere.
//! * **drain** (the crate docs, guarantee 6): members with a drain timeout,
//!   each with the testkit's drain workload ([`Worker`], as in
//!   `tests/claims.rs`) doing 200 ms units of user work on its partitions;
//!   members join and leave until over 1,000 partitions have moved between
//!   owners; the user work of two members on one partition must never
//!   intersect (the oracle's [`History::judge_work`] over the workers'
//!   `work-start`/`work-end` records). Latency: from the old owner's
//!   `Released` to the new owner's `Acquired`, which includes the drain
//!   (the rest of the unit in progress, until its `work-end`) and then the
//!   claim's move.
//!
//! Every run also checks, from the merged events (and the member processes'
//! logs), with the testkit's oracle, that no partition was ever active on
//! two members at once.
//!
//! `LEASERING_BENCH_QUICK=1` shortens the run; `LEASERING_BENCH_REPS`,
//! `LEASERING_BENCH_CRASH_REPS`, `LEASERING_BENCH_FROZEN_REPS` and
//! `LEASERING_BENCH_DRAIN_HANDOFFS` set the repetitions.
//! `LEASERING_BENCH_HANDOFF_ONLY=drain` runs the drain section alone (its
//! table, its counts and its `handoff drain` line); `=burst` the bursts
//! (`burst.rs`), `=budget` the move budget's joins (`budget.rs`:
//! `LEASERING_BENCH_BUDGET_REPS` reps each, without a budget and with
//! `max_moving` 64 and 16), `=notifications` the notifications a change
//! costs (`notifications.rs`), `=join` the join and leave cycles.

mod budget;
mod burst;
mod notifications;
#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use leasering::{Event, NodeBuilder, RingNode};
use leasering_testkit::member_log::{parse_events, Ev};
use leasering_testkit::oracle::{self, End, History, Ns, ReleaseKind, RunId, Work, WorkOverlap};
use leasering_testkit::rng::Rng;
use leasering_testkit::worker::{Sink, WorkConfig, Worker};
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
        let e = first.view().epoch();
        self.nodes.iter().all(|(_, n)| {
            let v = n.view();
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

    /// Like [`settled`](Self::settled), except that partitions in `blocked`
    /// (claims a frozen member process holds) are active nowhere here.
    fn settled_except(&self, blocked: &BTreeSet<u32>) -> bool {
        let Some((_, first)) = self.nodes.first() else {
            return true;
        };
        let e = first.view().epoch();
        self.nodes.iter().all(|(_, n)| {
            let v = n.view();
            let want: BTreeSet<u32> = v
                .partitions_of(n.node_id())
                .into_iter()
                .filter(|p| !blocked.contains(p))
                .collect();
            v.epoch() == e && n.owned_partitions().iter().collect::<BTreeSet<u32>>() == want
        })
    }

    fn wait_settled_except(&mut self, blocked: &BTreeSet<u32>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.settled_except(blocked) {
            assert!(
                Instant::now() < deadline,
                "ring {} did not settle (but for the frozen member's claims)",
                self.ring
            );
            self.pump(Duration::from_millis(2));
        }
        self.pump(Duration::ZERO);
    }
}

/// One join/leave measure (one way of giving the joiner its pool): the
/// cycle's times and its phases, replayed from every member's events.
#[derive(Default)]
struct JoinLeave {
    join_ms: Vec<f64>,
    leave_ms: Vec<f64>,
    start_call_ms: Vec<f64>,
    stop_call_ms: Vec<f64>,
    // Phases of a join: the old owners' releases, then the joiner's
    // activation (its take of the claims).
    released_ms: Vec<f64>,
    activated_ms: Vec<f64>,
    leave_notified_ms: Vec<f64>,
    leave_adopted_ms: Vec<f64>,
    leave_activated_ms: Vec<f64>,
    failures: usize,
}

impl JoinLeave {
    /// A member `name` joins `fleet` with `pool`, then leaves; recorded
    /// unless it is a warm-up (`record` false).
    fn cycle(&mut self, fleet: &mut Fleet, pool: Pool, name: &str, record: bool) {
        fleet.wait_settled(Duration::from_secs(30));
        let (i, t0, node) = fleet.start(pool, name);
        let started = Instant::now();
        let share = node.view().partitions_of(name);
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
        if !record {
            return;
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
        // transaction and NOTIFY), then the successors activate (their
        // take of the freed claims).
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
                    self.leave_notified_ms
                        .push(ms(first.saturating_duration_since(t1)));
                    self.leave_adopted_ms
                        .push(ms(last.saturating_duration_since(t1)));
                    self.leave_activated_ms
                        .push(ms(l.saturating_duration_since(*last)));
                }
                if let Some(r) = last_release {
                    self.released_ms
                        .push(ms(r.saturating_duration_since(started)));
                    self.activated_ms.push(ms(j.saturating_duration_since(r)));
                }
                self.join_ms.push(ms(j.saturating_duration_since(t0)));
                self.leave_ms.push(ms(l.saturating_duration_since(t1)));
                self.start_call_ms.push(ms(started - t0));
                self.stop_call_ms.push(ms(stopped - t1));
            }
            _ => self.failures += 1,
        }
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

// ---- frozen member ------------------------------------------------------------

/// TTL of the frozen-member ring (the first design measured version 1 at 10 s).
const FROZEN_TTL: Duration = Duration::from_secs(10);

/// How long one freeze lasts at most. Why several short freezes rather
/// than one long one: the measure is of joins while the frozen member's
/// lease is still *live* — a join after it ended waits for nobody and would
/// flatter the number — and each freeze may start anywhere in the frozen
/// member's renewal cycle (every ttl/3), so its lease runs at least
/// 10 − 3.3 = 6.7 s more: 4.5 s leaves room for the last join of a freeze
/// (each join is also checked against the lease's end, read from the
/// database). It also stays within the lag bound (ttl/2 = 5 s): a member
/// woken later than that behind a changed ring has its renewals refused
/// until it catches up, and may be evicted; the next freeze should start
/// from a settled ring, not from a rejoin. So the member is woken
/// (`SIGCONT`), the ring settles, and it is frozen again.
const FREEZE_WINDOW: Duration = Duration::from_millis(4500);

const FROZEN_NODE: &str = "frozen";

#[derive(Default)]
struct Frozen {
    join_ms: Vec<f64>,
    leave_ms: Vec<f64>,
    /// Per join, how many partitions of the joiner's share waited for the
    /// frozen member's claims.
    waiting: Vec<f64>,
    windows: usize,
    /// Per freeze, from `SIGCONT` until the woken member had adopted the
    /// ring's epoch and the ring was settled.
    resettle_ms: Vec<f64>,
    /// Joins that completed after the frozen member's lease had ended.
    late: usize,
    /// Joins whose share was all the frozen member's (nothing to measure).
    skipped: usize,
    failures: usize,
    /// `status().waiting_for` naming anything but the frozen member's
    /// claims in the joiner's share.
    odd_waits: Vec<String>,
    overlaps: u64,
    regressions: u64,
    anomalies: usize,
}

/// What the database says of member `node` of `ring`: the partitions whose
/// claims it holds, whether it has acknowledged the ring's epoch, and when
/// its lease ends.
fn member_state(
    c: &mut postgres::Client,
    ring: &str,
    node: &str,
) -> (BTreeSet<u32>, bool, Option<SystemTime>) {
    let row = c
        .query_opt(
            "SELECT m.expires_at, m.acked_epoch >= r.epoch,
                    (SELECT array_agg(c.partition) FROM leasering.claims c
                     WHERE c.ring_id = m.ring_id AND c.holder = m.incarnation)
             FROM leasering.members m JOIN leasering.rings r ON r.ring_id = m.ring_id
             WHERE m.ring_id = $1 AND m.node_id = $2",
            &[&ring, &node],
        )
        .unwrap_or_else(|e| panic!("read member {node}: {e}"));
    match row {
        Some(r) => {
            let claims: Option<Vec<i32>> = r.get(2);
            let claims = claims.unwrap_or_default().into_iter().map(|p| p as u32);
            (claims.collect(), r.get(1), Some(r.get(0)))
        }
        None => (BTreeSet::new(), false, None),
    }
}

/// The newest epoch a member process's log says it has adopted.
fn adopted_epoch(path: &Path) -> u64 {
    read_log(path)
        .iter()
        .filter_map(|e| match e {
            Ev::View { epoch, .. } | Ev::Joined { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the member process is awake and settled: it has adopted the
/// ring's epoch and holds the claims of exactly its share, and the
/// in-process members hold theirs. With `acked`, also until its lease row
/// acknowledges that epoch — which comes with its next renewal (up to
/// ttl/3 later): frozen again before that, the changes it has not
/// acknowledged would count towards the lag bound from before the freeze.
fn wait_process_settled(
    fleet: &mut Fleet,
    c: &mut postgres::Client,
    log: &Path,
    acked: bool,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let (claims, has_acked, _) = member_state(c, &fleet.ring, FROZEN_NODE);
        let view = fleet.nodes[0].1.view();
        let share: BTreeSet<u32> = view.partitions_of(FROZEN_NODE).into_iter().collect();
        let adopted = adopted_epoch(log) >= view.epoch();
        if !share.is_empty()
            && claims == share
            && adopted
            && (has_acked || !acked)
            && fleet.settled()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the frozen-member ring did not settle: it holds {} claims of its {} partitions, adopted the epoch: {adopted}, acknowledged it: {has_acked}",
            claims.len(),
            share.len()
        );
        fleet.pump(Duration::from_millis(5));
    }
}

fn frozen_member(db: &TestPostgres, reps: usize, dir: &Path) -> Frozen {
    let mut out = Frozen::default();
    let mut fleet = Fleet::new("handoff-frozen", FROZEN_TTL);
    for k in 0..3 {
        let name = format!("f{k}");
        fleet.start(pool(db, &name, 3), &name);
    }
    let log = dir.join("frozen.log");
    let child = spawn_member(db, &fleet.ring, FROZEN_NODE, FROZEN_TTL, &log);
    let mut client = db.client().expect("a client for the frozen-member measure");
    // One pool for every joiner, as in the `join` measure (its first join,
    // a warm-up, opens the connections), so that the two compare.
    let jpool = pool(db, "frozen-joiner", 3);
    let mut rep = 0;
    while out.join_ms.len() + out.skipped < reps && out.windows < 4 * reps.max(1) {
        wait_process_settled(&mut fleet, &mut client, &log, true, Duration::from_secs(60));
        child.signal(libc::SIGSTOP);
        let frozen_at = Instant::now();
        // A statement it sent just before may still commit; then nothing
        // it holds can change until it wakes.
        std::thread::sleep(Duration::from_millis(20));
        let (held, _, expires) = member_state(&mut client, &fleet.ring, FROZEN_NODE);
        let lease_end = instant_of(expires.expect("the frozen member's lease"));
        let window_end = (frozen_at + FREEZE_WINDOW).min(lease_end - Duration::from_millis(1500));
        out.windows += 1;
        while Instant::now() < window_end && out.join_ms.len() + out.skipped < reps {
            let record = rep > 0;
            let name = format!("fj-{rep}");
            rep += 1;
            let (i, t0, node) = fleet.start(jpool.clone(), &name);
            let share = node.view().partitions_of(&name);
            let (blocked, live): (Vec<u32>, Vec<u32>) =
                share.iter().partition(|p| held.contains(p));
            let joined = if live.is_empty() {
                None
            } else {
                fleet.until(
                    Duration::from_secs(10),
                    "the joiner's share but the frozen member's claims",
                    |h| live.iter().all(|p| h.holder(*p) == Some(i)),
                )
            };
            // What it still waits for, and for whom: the frozen member's
            // claims in its share, nothing else.
            let waiting = node.status().waiting_for;
            let for_frozen: BTreeSet<u32> = waiting
                .iter()
                .filter(|(who, _)| who == FROZEN_NODE)
                .flat_map(|(_, ps)| ps.iter().copied())
                .collect();
            let others: Vec<&(String, Vec<u32>)> =
                waiting.iter().filter(|(w, _)| w != FROZEN_NODE).collect();
            if joined.is_some()
                && (!others.is_empty() || for_frozen != blocked.iter().copied().collect())
                && out.odd_waits.len() < 5
            {
                out.odd_waits.push(format!(
                    "{name}: waits for {waiting:?}; its share has {} of the frozen member's claims",
                    blocked.len()
                ));
            }
            fleet.wait_settled_except(&held, Duration::from_secs(30));
            let leaving: Vec<u32> = node.owned_partitions().iter().collect();
            let t1 = Instant::now();
            node.stop().unwrap_or_else(|e| panic!("stop: {e}"));
            fleet.remove(i);
            let left = fleet.until(
                Duration::from_secs(10),
                "the leaver's partitions to move",
                |h| leaving.iter().all(|p| h.holder(*p).is_some_and(|j| j != i)),
            );
            fleet.wait_settled_except(&held, Duration::from_secs(30));
            if !record {
                continue; // warm-up: the joiner pool's connections are opened here
            }
            if live.is_empty() {
                out.skipped += 1;
                continue;
            }
            match (joined, left) {
                (Some(j), Some(l)) => {
                    if j >= lease_end {
                        out.late += 1;
                    }
                    out.join_ms.push(ms(j.saturating_duration_since(t0)));
                    out.leave_ms.push(ms(l.saturating_duration_since(t1)));
                    out.waiting.push(blocked.len() as f64);
                }
                _ => out.failures += 1,
            }
        }
        child.signal(libc::SIGCONT);
        let woken = Instant::now();
        wait_process_settled(
            &mut fleet,
            &mut client,
            &log,
            false,
            Duration::from_secs(60),
        );
        out.resettle_ms.push(ms(woken.elapsed()));
    }
    child.stop();
    let exited = oracle::now();
    fleet
        .replay
        .add_process_log(FROZEN_NODE, &read_log(&log), End::Exited(exited));
    for (_, n) in &fleet.nodes {
        n.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    }
    fleet.pump(Duration::from_millis(50));
    let v = fleet.replay.verdict();
    out.overlaps = v.overlaps.len() as u64;
    out.regressions = v.regressions.len() as u64;
    out.anomalies = fleet.replay.anomalies().len();
    for d in fleet.replay.describe_overlaps(&v, Instant::now(), 3) {
        eprintln!("frozen member: overlap {d}");
    }
    out
}

// ---- drained handoffs -----------------------------------------------------------

/// A small ring, so that every join and leave moves a couple of dozen
/// partitions.
const DRAIN_RING: u32 = 128;
/// Members at rest; one more joins, then the oldest leaves, in turn.
const DRAIN_MEMBERS: usize = 5;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A unit of user work (the `tests/claims.rs` workload's): well under the
/// drain timeout, so that a drain always ends with the unit.
const DRAIN_UNIT: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Drained {
    latency_ms: Vec<f64>,
    drain_ms: Vec<f64>,
    claim_ms: Vec<f64>,
    handoffs: usize,
    /// The oracle's handoffs of user work ([`oracle::WorkVerdict::handoffs`]).
    work_handoffs: u64,
    user_overlaps: Vec<WorkOverlap>,
    /// The first few user-work overlaps, in words.
    described: Vec<String>,
    overlaps: u64,
    regressions: u64,
    units: u64,
    /// Drained releases whose guard the old owner's worker kept until its
    /// unit of work on those partitions ended.
    kept: usize,
    /// Drained releases whose guard it let go at once (no unit ran on them).
    dropped_at_once: usize,
    /// Releases that gave the user no guard (the lease ran out, eviction).
    unguarded: usize,
    /// Handoffs that took the whole drain timeout or more.
    timed_out: usize,
    /// What the oracle could not match (ownership or work), in words.
    anomalies: Vec<String>,
    cycles: usize,
}

/// Every member's records — ownership events and units of work, as its
/// worker handed them to its sink (`log_ownership`) — by member instance,
/// each member's in the order it emitted them.
type Records = Arc<Mutex<Vec<(usize, Ev)>>>;

fn lock_records(r: &Records) -> MutexGuard<'_, Vec<(usize, Ev)>> {
    // A panicking worker must not hide its records from the judge.
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A partition that moved from one member instance to another.
struct Handoff {
    released: Ns,
    acquired: Ns,
    /// Index in the records of the release: its drain guard held back
    /// every partition it names.
    release: usize,
}

/// Every handoff in `log`: per partition, an acquisition by a member other
/// than the one whose release came last before it.
fn handoffs_of(log: &[(usize, Ev)]) -> Vec<Handoff> {
    // (at, acquired, member, index in the log)
    let mut per: BTreeMap<u32, Vec<(Ns, bool, usize, usize)>> = BTreeMap::new();
    for (k, (who, e)) in log.iter().enumerate() {
        let (parts, at, acquired) = match e {
            Ev::Acquired { parts, at, .. } => (parts, *at, true),
            Ev::Released { parts, at, .. } => (parts, *at, false),
            _ => continue,
        };
        for p in parts {
            per.entry(*p).or_default().push((at, acquired, *who, k));
        }
    }
    let mut out = Vec::new();
    for evs in per.values_mut() {
        evs.sort_unstable();
        let mut last: Option<(usize, Ns, usize)> = None;
        for &(at, acquired, who, k) in evs.iter() {
            if !acquired {
                last = Some((who, at, k));
            } else if let Some((from, released, release)) = last.take() {
                if from != who {
                    out.push(Handoff {
                        released,
                        acquired: at,
                        release,
                    });
                }
            }
        }
    }
    out
}

/// Per member instance and partition: its units of work `(from, to)` and
/// the moments it acquired the partition, from the records.
#[derive(Default)]
struct WorkIndex {
    units: HashMap<(usize, u32), Vec<(Ns, Ns)>>,
    acquired: HashMap<(usize, u32), Vec<Ns>>,
}

impl WorkIndex {
    fn new(work: &[Work], instance_of: &HashMap<RunId, usize>, log: &[(usize, Ev)]) -> WorkIndex {
        let mut ix = WorkIndex::default();
        for w in work {
            ix.units
                .entry((instance_of[&w.run], w.partition))
                .or_default()
                .push((w.from, w.to));
        }
        for (who, e) in log {
            if let Ev::Acquired { parts, at, .. } = e {
                for p in parts {
                    ix.acquired.entry((*who, *p)).or_default().push(*at);
                }
            }
        }
        ix
    }

    /// When `who`'s worker let go of the guard of its release of `parts` at
    /// `at`: the end of its last unit of work on them that still ran then —
    /// the unit in progress, or one whose `owned_partitions()` snapshot was
    /// taken just before the release (no later unit of it works on them
    /// until it acquires them again). `None`: no unit did, the guard went
    /// at once.
    fn drain_end(&self, who: usize, parts: &[u32], at: Ns) -> Option<Ns> {
        parts
            .iter()
            .filter_map(|&p| {
                let again = self
                    .acquired
                    .get(&(who, p))
                    .and_then(|a| a.iter().copied().find(|&t| t > at))
                    .unwrap_or(Ns::MAX);
                self.units
                    .get(&(who, p))?
                    .iter()
                    .filter(|&&(from, to)| to > at && from < again)
                    .map(|&(_, to)| to)
                    .max()
            })
            .max()
    }
}

/// Members of the drain ring, each with the testkit's drain workload
/// ([`Worker`]); the workers hand their records to one shared log.
struct DrainFleet {
    members: Vec<(usize, RingNode, Worker)>,
    /// By member instance.
    names: Vec<String>,
    records: Records,
}

impl DrainFleet {
    fn start(&mut self, db: &TestPostgres) {
        let i = self.names.len();
        let name = format!("d{i:03}");
        let mut b: NodeBuilder = RingNode::builder(pool(db, &name, 3), "handoff-drain")
            .node_id(name.clone())
            .ring_size(DRAIN_RING)
            .lease_ttl(Duration::from_secs(30))
            .drain_timeout(DRAIN_TIMEOUT)
            .start_timeout(Duration::from_secs(30));
        let rx = b.subscribe();
        let node = b.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
        // The worker is the subscription's only consumer, and the bench
        // keeps its records, not the events: a kept event would hold its
        // drain guard, hence the drain, until the timeout.
        let sink: Sink = {
            let records = self.records.clone();
            Arc::new(move |ev| lock_records(&records).push((i, ev)))
        };
        let cfg = WorkConfig {
            unit_min: DRAIN_UNIT,
            unit_max: DRAIN_UNIT,
            // One unit at a time on all of the member's partitions.
            lanes: 1,
            seed: 0xd7a1 ^ i as u64,
            log_ownership: true,
            ..WorkConfig::default()
        };
        let w = Worker::start(node.clone(), rx, cfg, sink);
        self.members.push((i, node, w));
        self.names.push(name);
    }

    fn stop_oldest(&mut self) {
        let (_, node, w) = self.members.remove(0);
        // `stop()` waits for the drains, which the worker ends as its units
        // finish: the member first, then its worker.
        node.stop().unwrap_or_else(|e| panic!("stop: {e}"));
        w.stop();
    }

    fn settled(&self) -> bool {
        let Some((_, first, _)) = self.members.first() else {
            return true;
        };
        let e = first.view().epoch();
        self.members.iter().all(|(_, n, _)| {
            let v = n.view();
            v.epoch() == e && n.owned_partitions().len() == v.partitions_of(n.node_id()).len()
        })
    }

    fn wait_settled(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.settled() {
            assert!(Instant::now() < deadline, "the drain ring did not settle");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn handoffs(&self) -> usize {
        let log = lock_records(&self.records).clone();
        handoffs_of(&log).len()
    }
}

fn drain(db: &TestPostgres, target: usize) -> Drained {
    let mut fleet = DrainFleet {
        members: Vec::new(),
        names: Vec::new(),
        records: Records::default(),
    };
    // Every change waits for the ring to settle, here and in the teardown
    // too: a member stopped before its predecessor's partitions reached it
    // would pass them on one change later, and that handoff's latency would
    // include the next member's drain as well as the first.
    //
    // A random pause before each change: a settle ends just after some
    // worker's unit ended (that drain was the last thing waited for), so a
    // change made at once would always find that worker's next unit just
    // begun, and the drains would all be near a whole unit long.
    let mut rng = Rng::new(0xd7a1);
    let mut pause = || {
        let unit_ms = DRAIN_UNIT.as_millis() as u64;
        std::thread::sleep(Duration::from_millis(rng.below(unit_ms)));
    };
    for _ in 0..DRAIN_MEMBERS {
        pause();
        fleet.start(db);
        fleet.wait_settled(Duration::from_secs(60));
    }
    let mut out = Drained::default();
    // Churn: a member joins, the ring settles (every drain has ended and
    // every partition is active on its new owner), the oldest member
    // leaves, it settles again — each time while the workers are mid-unit.
    while fleet.handoffs() < target && out.cycles < target / 10 + 20 {
        pause();
        fleet.start(db);
        fleet.wait_settled(Duration::from_secs(30));
        pause();
        fleet.stop_oldest();
        fleet.wait_settled(Duration::from_secs(30));
        out.cycles += 1;
    }
    while !fleet.members.is_empty() {
        pause();
        fleet.stop_oldest();
        fleet.wait_settled(Duration::from_secs(30));
    }
    // Every worker has stopped: nothing is added to the records any more.
    let log = std::mem::take(&mut *lock_records(&fleet.records));

    // The oracle's history of the records, ownership and work alike.
    let mut h = History::with_ring_size(DRAIN_RING);
    let runs: Vec<RunId> = fleet.names.iter().map(|n| h.add_run(n)).collect();
    for (i, e) in &log {
        h.logged(runs[*i], e);
    }
    let end = oracle::now();
    for r in &runs {
        h.end(*r, End::Exited(end));
    }
    let instance_of: HashMap<RunId, usize> =
        runs.iter().enumerate().map(|(i, r)| (*r, i)).collect();
    let index = WorkIndex::new(h.work(), &instance_of, &log);

    // Each release's drain: until the old owner's unit in progress on any
    // partition of it ended (its one guard held them all back), or none
    // (no unit ran on them: the guard went at once).
    let mut drain_end: HashMap<usize, Option<Ns>> = HashMap::new();
    for (k, (who, e)) in log.iter().enumerate() {
        let Ev::Released {
            at,
            parts,
            reason,
            drain,
            ..
        } = e
        else {
            continue;
        };
        let ended = index.drain_end(*who, parts, *at);
        drain_end.insert(k, ended);
        match ReleaseKind::of(reason, *drain) {
            ReleaseKind::Drained if ended.is_some() => out.kept += 1,
            ReleaseKind::Drained => out.dropped_at_once += 1,
            ReleaseKind::Forced => out.unguarded += 1,
            ReleaseKind::Plain => {}
        }
    }
    for hd in handoffs_of(&log) {
        let end = drain_end[&hd.release]
            .unwrap_or(hd.released)
            .max(hd.released);
        let lat = (hd.acquired - hd.released) as f64 / 1e6;
        out.latency_ms.push(lat);
        out.drain_ms.push((end - hd.released) as f64 / 1e6);
        out.claim_ms
            .push(hd.acquired.saturating_sub(end) as f64 / 1e6);
        if lat >= ms(DRAIN_TIMEOUT) {
            out.timed_out += 1;
        }
    }
    out.handoffs = out.latency_ms.len();

    let wv = h.judge_work(end);
    let t0 = log.first().map_or(end, |(_, e)| e.at());
    let ms_of = |t: Ns| t.saturating_sub(t0) as f64 / 1e6;
    out.described = wv
        .user_overlaps
        .iter()
        .take(3)
        .map(|o| {
            format!(
                "partition {}: {} worked {:.1}..{:.1} ms, {} {:.1}..{:.1} ms ({:.1} ms both protected)",
                o.partition(),
                h.name(o.a.run),
                ms_of(o.a.from),
                ms_of(o.a.to),
                h.name(o.b.run),
                ms_of(o.b.from),
                ms_of(o.b.to),
                o.protected_ns as f64 / 1e6,
            )
        })
        .collect();
    out.work_handoffs = wv.handoffs;
    out.units = wv.units;
    out.user_overlaps = wv.user_overlaps;
    out.anomalies = h.anomalies().iter().chain(&wv.anomalies).cloned().collect();
    let v = h.judge(end);
    out.overlaps = v.overlaps.len() as u64;
    out.regressions = v.regressions.len() as u64;
    out
}

/// The drain part of the report's title.
fn drain_title(d: &Drained) -> String {
    format!(
        "Drain: {} members + 1 joining and leaving in turn ({} cycles), ring {DRAIN_RING}, drain timeout {:.0} s, {:.0} ms units of user work:",
        DRAIN_MEMBERS,
        d.cycles,
        DRAIN_TIMEOUT.as_secs_f64(),
        ms(DRAIN_UNIT),
    )
}

/// The drain's rows of the report's table.
fn drain_rows(d: &Drained) -> Vec<Vec<String>> {
    vec![
        stat_row(
            "drain: old owner's Released until the new owner's Acquired, drain included (ms)",
            &stats(&d.latency_ms),
            1.0,
        ),
        stat_row(
            "  of which the old owner's unit in progress ran on (ms)",
            &stats(&d.drain_ms),
            1.0,
        ),
        stat_row("  then the claim moved (ms)", &stats(&d.claim_ms), 1.0),
    ]
}

/// The drain's counts, and the first user-work overlaps and anomalies.
fn print_drain_counts(d: &Drained) {
    println!(
        "drain: {} handoffs ({} of user work), {} user-work overlaps, ownership overlaps {}, token regressions {}, \
         {} units, guards kept to a unit's end {} / dropped at once {}, releases without a guard (lease expired, evicted) {}, \
         handoffs >= the drain timeout {}",
        d.handoffs,
        d.work_handoffs,
        d.user_overlaps.len(),
        d.overlaps,
        d.regressions,
        d.units,
        d.kept,
        d.dropped_at_once,
        d.unguarded,
        d.timed_out,
    );
    for o in &d.described {
        println!("  user-work overlap: {o}");
    }
    for a in d.anomalies.iter().take(3) {
        println!("  anomaly: {a}");
    }
}

/// The drain's result line.
fn drain_line(d: &Drained) -> String {
    format!(
        "handoff drain handoffs={} user_overlaps={} p50_ms={:.2}",
        d.handoffs,
        d.user_overlaps.len(),
        stats(&d.latency_ms).p50
    )
}

/// A row of statistics, in `unit`s.
fn stat_row(name: &str, s: &Stats, unit: f64) -> Vec<String> {
    vec![
        name.to_string(),
        s.n.to_string(),
        f(s.min / unit, 2),
        f(s.p50 / unit, 2),
        f(s.p90 / unit, 2),
        f(s.p99 / unit, 2),
        f(s.max / unit, 2),
    ]
}

fn main() {
    // RUST_LOG=leasering=info shows the library's own account of each step.
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    print_machine("handoff");
    let q = quick();
    let reps = env_usize("LEASERING_BENCH_REPS", if q { 20 } else { 150 });
    let crash_reps = env_usize("LEASERING_BENCH_CRASH_REPS", if q { 3 } else { 10 });
    let frozen_reps = env_usize("LEASERING_BENCH_FROZEN_REPS", if q { 20 } else { 200 });
    let drain_handoffs = env_usize("LEASERING_BENCH_DRAIN_HANDOFFS", if q { 200 } else { 1000 });
    let rest_window =
        Duration::from_secs(env_usize("LEASERING_BENCH_REST_S", if q { 12 } else { 30 }) as u64);

    let (db, pss) = start_pg(300, &[]);
    println!(
        "# PostgreSQL {} (loopback, fsync off){}",
        pg_version(&db),
        if pss { ", pg_stat_statements on" } else { "" }
    );
    let burst_rounds = env_usize("LEASERING_BENCH_BURST_ROUNDS", if q { 10 } else { 40 });
    let run_bursts = || -> Vec<burst::Burst> {
        [2, 4]
            .into_iter()
            .map(|k| burst::burst(&db, pss, k, burst_rounds))
            .collect()
    };
    let budget_reps = env_usize("LEASERING_BENCH_BUDGET_REPS", if q { 1 } else { 3 });
    let run_budgets = || -> Vec<budget::Budgeted> {
        [None, Some(64), Some(16)]
            .into_iter()
            .map(|m| budget::budget(&db, m, budget_reps))
            .collect()
    };
    let only = std::env::var("LEASERING_BENCH_HANDOFF_ONLY").unwrap_or_default();
    match only.as_str() {
        "" | "join" => {}
        "budget" => {
            let budgets = run_budgets();
            budget::report(&budgets);
            println!("loadavg after: {}", loadavg());
            return;
        }
        "notifications" => {
            notifications::notifications(&db, if q { 10 } else { 40 });
            return;
        }
        "burst" => {
            let bursts = run_bursts();
            burst::report(&bursts);
            println!("loadavg after: {}", loadavg());
            return;
        }
        "drain" => {
            let drained = drain(&db, drain_handoffs);
            println!();
            println!("{}", drain_title(&drained));
            print_table(
                &["measure", "n", "min", "p50", "p90", "p99", "max"],
                &drain_rows(&drained),
            );
            print_drain_counts(&drained);
            println!("loadavg after: {}", loadavg());
            println!();
            println!("{}", drain_line(&drained));
            return;
        }
        other => panic!(
            "LEASERING_BENCH_HANDOFF_ONLY={other}: the sections that run alone are `join`, `drain`, `burst`, `budget` and `notifications`"
        ),
    }

    // ---- join and leave ----------------------------------------------------
    let mut fleet = Fleet::new("handoff", Duration::from_secs(30));
    for k in 0..MEMBERS {
        let name = format!("m{k:02}");
        fleet.start(pool(&db, &name, 3), &name);
    }
    fleet.wait_settled(Duration::from_secs(60));
    let jpool = pool(&db, "joiner", 3);
    let mut shared = JoinLeave::default();
    let mut warm = JoinLeave::default();
    let mut cold = JoinLeave::default();
    for rep in 0..reps + 1 {
        // The first rep is a warm-up: the shared joiner pool's connections
        // are opened in it (and the database's caches filled).
        let record = rep > 0;
        shared.cycle(&mut fleet, jpool.clone(), &format!("joiner-{rep}"), record);
        // Built (its connections open) before `start()` is timed.
        let name = format!("warm-{rep}");
        let wpool = warm_pool(&db, &name, 3);
        warm.cycle(&mut fleet, wpool, &name, record);
        let name = format!("cold-{rep}");
        cold.cycle(&mut fleet, pool(&db, &name, 3), &name, record);
    }
    let mut failures = shared.failures + warm.failures + cold.failures;
    fleet.wait_settled(Duration::from_secs(30));
    let overlaps = fleet.replay.verdict().overlaps.len() as u64;
    if only == "join" {
        let row = stat_row;
        println!();
        println!("Join and leave, {MEMBERS} members + 1, ring {RING_SIZE}, TTL 30 s:");
        print_table(
            &["measure", "n", "min", "p50", "p90", "p99", "max"],
            &[
                row("join (ms)", &stats(&shared.join_ms), 1.0),
                row(
                    "  start() returned (ms)",
                    &stats(&shared.start_call_ms),
                    1.0,
                ),
                row(
                    "  then old owners released (ms)",
                    &stats(&shared.released_ms),
                    1.0,
                ),
                row(
                    "  then the joiner activated (ms)",
                    &stats(&shared.activated_ms),
                    1.0,
                ),
                row("leave (ms)", &stats(&shared.leave_ms), 1.0),
                row("  stop() returned (ms)", &stats(&shared.stop_call_ms), 1.0),
                row(
                    "  first other member adopted the leave (ms)",
                    &stats(&shared.leave_notified_ms),
                    1.0,
                ),
                row(
                    "  last other member adopted the leave (ms)",
                    &stats(&shared.leave_adopted_ms),
                    1.0,
                ),
                row(
                    "  then the successors activated (ms)",
                    &stats(&shared.leave_activated_ms),
                    1.0,
                ),
                row("join_warm (ms)", &stats(&warm.join_ms), 1.0),
                row("join_cold (ms)", &stats(&cold.join_ms), 1.0),
            ],
        );
        println!("overlaps: {overlaps}; failed repetitions: {failures}");
        println!("loadavg after: {}", loadavg());
        println!();
        for (what, v) in [
            ("join", &shared.join_ms),
            ("join_warm", &warm.join_ms),
            ("join_cold", &cold.join_ms),
            ("leave", &shared.leave_ms),
            ("leave_warm", &warm.leave_ms),
            ("leave_cold", &cold.leave_ms),
        ] {
            let st = stats(v);
            println!("handoff {what} p50_ms={:.2} p99_ms={:.2}", st.p50, st.p99);
        }
        for (_, n) in &fleet.nodes {
            let _ = n.stop();
        }
        return;
    }

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
    let dir = std::env::temp_dir().join(format!("leasering-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // ---- version 2: a frozen member, drained handoffs ------------------------
    let frozen = frozen_member(&db, frozen_reps, &dir);
    let drained = drain(&db, drain_handoffs);
    let bursts = run_bursts();
    let budgets = run_budgets();
    notifications::notifications(&db, if q { 10 } else { 40 });

    // ---- crash (kill -9 of a member process) ----------------------------------
    let ttl = Duration::from_secs(2);
    let mut crash = Fleet::new("handoff-crash", ttl);
    for k in 0..MEMBERS - 1 {
        let name = format!("s{k:02}");
        crash.start(pool(&db, &name, 3), &name);
    }
    crash.wait_settled(Duration::from_secs(60));
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
            let share = crash.nodes[0].1.view().partitions_of(&victim);
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
    let j = stats(&shared.join_ms);
    let l = stats(&shared.leave_ms);
    let sc = stats(&shared.start_call_ms);
    let so = stats(&shared.stop_call_ms);
    let jr = stats(&shared.released_ms);
    let ln = stats(&shared.leave_notified_ms);
    let lad = stats(&shared.leave_adopted_ms);
    let lac = stats(&shared.leave_activated_ms);
    let ja = stats(&shared.activated_ms);
    let jw = stats(&warm.join_ms);
    let lw = stats(&warm.leave_ms);
    let jc = stats(&cold.join_ms);
    let lc = stats(&cold.leave_ms);
    let c = stats(&crash_ms);
    let al = stats(&after_lease_ms);
    let ttl_ms = ms(ttl);
    println!();
    println!("Handoff latency, {MEMBERS} members + 1, ring {RING_SIZE}, TTL 30 s ({} join/leave cycles per pool), crash TTL 2 s ({} kills):", j.n, c.n);
    let row = stat_row;
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
                "join_warm: the same, fresh pool opened before start() (ms)",
                &jw,
                1.0,
            ),
            row("  start() returned (ms)", &stats(&warm.start_call_ms), 1.0),
            row(
                "join_cold: the same, fresh lazily connecting pool (ms)",
                &jc,
                1.0,
            ),
            row("  start() returned (ms)", &stats(&cold.start_call_ms), 1.0),
            row(
                "leave: stop() until its partitions are active elsewhere (ms)",
                &l,
                1.0,
            ),
            row("  stop() returned (ms)", &so, 1.0),
            row("  first other member adopted the leave (ms)", &ln, 1.0),
            row("  last other member adopted the leave (ms)", &lad, 1.0),
            row("  then the successors activated (ms)", &lac, 1.0),
            row(
                "leave_warm: the same, fresh pool opened before start() (ms)",
                &lw,
                1.0,
            ),
            row("  stop() returned (ms)", &stats(&warm.stop_call_ms), 1.0),
            row(
                "leave_cold: the same, fresh lazily connecting pool (ms)",
                &lc,
                1.0,
            ),
            row("  stop() returned (ms)", &stats(&cold.stop_call_ms), 1.0),
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
    println!();
    let fj = stats(&frozen.join_ms);
    let fl = stats(&frozen.leave_ms);
    let dl = stats(&drained.latency_ms);
    println!(
        "Version 2. Frozen member: 3 members + 1 member process (SIGSTOP), ring {RING_SIZE}, TTL 10 s, {} joins and leaves in {} freezes of <= {:.1} s. {}",
        fj.n,
        frozen.windows,
        FREEZE_WINDOW.as_secs_f64(),
        drain_title(&drained),
    );
    let mut rows = vec![
        row(
            "frozen_member: start() until the joiner holds its share but the frozen member's claims (ms)",
            &fj,
            1.0,
        ),
        row(
            "  partitions of the share waiting for the frozen member",
            &stats(&frozen.waiting),
            1.0,
        ),
        row(
            "frozen_member_leave: stop() until its partitions are active elsewhere (ms)",
            &fl,
            1.0,
        ),
    ];
    rows.extend(drain_rows(&drained));
    print_table(&["measure", "n", "min", "p50", "p90", "p99", "max"], &rows);
    println!(
        "frozen member: overlaps {}, token regressions {}, unpaired events {}, joins completed after its lease ended {}, joins taking nothing from live members {}, failed {}; \
         after each SIGCONT settled again in {} ms",
        frozen.overlaps,
        frozen.regressions,
        frozen.anomalies,
        frozen.late,
        frozen.skipped,
        frozen.failures,
        frozen
            .resettle_ms
            .iter()
            .map(|x| f(*x, 0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for w in &frozen.odd_waits {
        println!("  odd wait: {w}");
    }
    print_drain_counts(&drained);
    println!("targets (DESIGN §10): join while a member is frozen p99 <= 50 ms; 0 user-work overlaps over >= 1,000 drained handoffs");
    burst::report(&bursts);
    budget::report(&budgets);
    println!("loadavg after: {}", loadavg());
    println!();
    println!("handoff join p50_ms={:.2} p99_ms={:.2}", j.p50, j.p99);
    println!(
        "handoff join_warm p50_ms={:.2} p99_ms={:.2}",
        jw.p50, jw.p99
    );
    println!(
        "handoff join_cold p50_ms={:.2} p99_ms={:.2}",
        jc.p50, jc.p99
    );
    println!("handoff leave p50_ms={:.2} p99_ms={:.2}", l.p50, l.p99);
    println!(
        "handoff leave_warm p50_ms={:.2} p99_ms={:.2}",
        lw.p50, lw.p99
    );
    println!(
        "handoff leave_cold p50_ms={:.2} p99_ms={:.2}",
        lc.p50, lc.p99
    );
    println!(
        "handoff frozen_member p50_ms={:.2} p99_ms={:.2}",
        fj.p50, fj.p99
    );
    println!(
        "handoff frozen_member_leave p50_ms={:.2} p99_ms={:.2}",
        fl.p50, fl.p99
    );
    println!("{}", drain_line(&drained));
    for b in &bursts {
        println!("{}", burst::burst_line(b));
    }
    for b in &bursts {
        println!("{}", burst::burst_cost_line(b));
    }
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
    println!(
        "handoff_v2_extra frozen_overlaps={} frozen_late_joins={} drain_ownership_overlaps={} drain_p99_ms={:.2} drain_unguarded_releases={}",
        frozen.overlaps + frozen.regressions,
        frozen.late,
        drained.overlaps + drained.regressions,
        dl.p99,
        drained.unguarded
    );
    drop(db);
}
