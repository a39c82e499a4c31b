//! The **frozen member** measure (the crate docs, guarantee 5): 3 members in
//! this process and one member *process*, TTL 10 s; the process is frozen
//! (`SIGSTOP`) and, while it is, members join and leave again — the time
//! from `start()` until the joiner holds every partition of its share whose
//! claim the frozen member does *not* hold, and from `stop()` until the
//! leaver's partitions are active elsewhere. This file owns the measure
//! (the freezes, the database's view of the frozen member, the waits for a
//! settled ring) and its title, rows, counts and lines in the report.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use leasering_testkit::member_log::Ev;
use leasering_testkit::oracle::{self, End};
use leasering_testkit::{instant_of, TestPostgres};

use super::fleet::Fleet;
use super::support::*;
use super::{read_log, spawn_member, stat_row, RING_SIZE};

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
pub(crate) struct Frozen {
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
    pub(crate) late: usize,
    /// Joins whose share was all the frozen member's (nothing to measure).
    skipped: usize,
    failures: usize,
    /// `status().waiting_for` naming anything but the frozen member's
    /// claims in the joiner's share.
    odd_waits: Vec<String>,
    pub(crate) overlaps: u64,
    pub(crate) regressions: u64,
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

pub(crate) fn frozen_member(db: &TestPostgres, reps: usize, dir: &Path) -> Frozen {
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

/// The frozen member's part of the report's title.
pub(crate) fn frozen_title(frozen: &Frozen) -> String {
    let fj = stats(&frozen.join_ms);
    format!(
        "Frozen member: 3 members + 1 member process (SIGSTOP), ring {RING_SIZE}, TTL 10 s, {} joins and leaves in {} freezes of <= {:.1} s.",
        fj.n,
        frozen.windows,
        FREEZE_WINDOW.as_secs_f64(),
    )
}

/// The frozen member's rows of the report's table.
pub(crate) fn frozen_rows(frozen: &Frozen) -> Vec<Vec<String>> {
    let fj = stats(&frozen.join_ms);
    let fl = stats(&frozen.leave_ms);
    let row = stat_row;
    vec![
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
    ]
}

/// The frozen member's counts, and the first odd waits.
pub(crate) fn print_frozen_counts(frozen: &Frozen) {
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
}

/// The frozen member's result lines.
pub(crate) fn print_frozen_lines(frozen: &Frozen) {
    let fj = stats(&frozen.join_ms);
    let fl = stats(&frozen.leave_ms);
    println!(
        "handoff frozen_member p50_ms={:.2} p99_ms={:.2}",
        fj.p50, fj.p99
    );
    println!(
        "handoff frozen_member_leave p50_ms={:.2} p99_ms={:.2}",
        fl.p50, fl.p99
    );
}
