//! The **join / leave** measures: a ring of [`MEMBERS`] members (TTL 30 s)
//! that a 17th joins and then leaves, rep by rep, with three ways of giving
//! the joiner its pool (the shared one, a fresh one opened before `start()`,
//! a fresh lazily connecting one), interleaved so that the machine's load
//! falls on all three alike. This file owns the cycle, the timing of its
//! phases from the replayed events, and the measures' part of the report:
//! the `LEASERING_BENCH_HANDOFF_ONLY=join` table, the rows of the full
//! report's table and the `handoff join…`/`handoff leave…` lines.

use std::time::{Duration, Instant};

use leasering::Event;
use leasering_testkit::TestPostgres;

use super::fleet::Fleet;
use super::support::*;
use super::{stat_row, MEMBERS, RING_SIZE};

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

/// The join/leave measures, one per way of giving the joiner its pool.
pub(crate) struct Joins {
    shared: JoinLeave,
    warm: JoinLeave,
    cold: JoinLeave,
    /// Partitions active on two members at once in the replayed events.
    pub(crate) overlaps: u64,
}

impl Joins {
    /// Repetitions that did not complete, of the three measures.
    pub(crate) fn failures(&self) -> usize {
        self.shared.failures + self.warm.failures + self.cold.failures
    }

    /// The join/leave cycles measured per pool.
    pub(crate) fn cycles(&self) -> usize {
        stats(&self.shared.join_ms).n
    }
}

/// Starts the [`MEMBERS`] members of ring `handoff` and runs `reps` cycles
/// per pool (after a first one that is a warm-up); returns the fleet, still
/// running (the at-rest measure uses it), and the measures.
pub(crate) fn join_leave(db: &TestPostgres, reps: usize) -> (Fleet, Joins) {
    let mut fleet = Fleet::new("handoff", Duration::from_secs(30));
    for k in 0..MEMBERS {
        let name = format!("m{k:02}");
        fleet.start(pool(db, &name, 3), &name);
    }
    fleet.wait_settled(Duration::from_secs(60));
    let jpool = pool(db, "joiner", 3);
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
        let wpool = warm_pool(db, &name, 3);
        warm.cycle(&mut fleet, wpool, &name, record);
        let name = format!("cold-{rep}");
        cold.cycle(&mut fleet, pool(db, &name, 3), &name, record);
    }
    fleet.wait_settled(Duration::from_secs(30));
    let overlaps = fleet.replay.verdict().overlaps.len() as u64;
    let joins = Joins {
        shared,
        warm,
        cold,
        overlaps,
    };
    (fleet, joins)
}

/// The `LEASERING_BENCH_HANDOFF_ONLY=join` report: the table, the overlaps
/// and the failed repetitions, then the result lines.
pub(crate) fn print_join_only(joins: &Joins, failures: usize) {
    let Joins {
        shared,
        warm,
        cold,
        overlaps,
    } = joins;
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
    print_join_lines(joins);
}

/// The result lines, `handoff join p50_ms=… p99_ms=…` and the like.
pub(crate) fn print_join_lines(joins: &Joins) {
    let Joins {
        shared, warm, cold, ..
    } = joins;
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
}

/// The join/leave rows of the full report's table.
pub(crate) fn join_rows(joins: &Joins) -> Vec<Vec<String>> {
    let Joins {
        shared, warm, cold, ..
    } = joins;
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
    let row = stat_row;
    vec![
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
    ]
}
