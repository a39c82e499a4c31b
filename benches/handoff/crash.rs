//! The **crash** measure: a ring of [`MEMBERS`] − 1 members in this process
//! (TTL 2 s) and a member *process* (the `leasering-member` bin) killed
//! with `kill -9` at a random moment of its renewal cycle, rep by rep; the
//! time until its partitions are active elsewhere, also as a multiple of
//! the TTL and against the end of its lease in the database. This file
//! owns the measure and its rows and line in the report.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use leasering_testkit::oracle::History;
use leasering_testkit::rng::Rng;
use leasering_testkit::{instant_of, TestPostgres};

use super::fleet::Fleet;
use super::support::*;
use super::{read_log, spawn_member, stat_row, MEMBERS};

/// Partitions a member process's log says it holds now.
fn held_in_log(path: &Path) -> usize {
    let mut h = History::new();
    let run = h.add_run("victim");
    for e in &read_log(path) {
        h.logged(run, e);
    }
    h.holding(run).len()
}

/// What the kills measured.
pub(crate) struct Crash {
    ttl: Duration,
    /// Per kill: from `kill -9` until its partitions were covered.
    crash_ms: Vec<f64>,
    /// Per kill: when they were covered, from the end of its lease in the
    /// database (negative: before it).
    pub(crate) after_lease_ms: Vec<f64>,
    pub(crate) failures: usize,
    /// Partitions active on two members at once in the replayed events.
    pub(crate) overlaps: u64,
}

impl Crash {
    /// The kills measured.
    pub(crate) fn kills(&self) -> usize {
        stats(&self.crash_ms).n
    }
}

/// Kills `reps` member processes of ring `handoff-crash`, one at a time,
/// each with its event log in `dir`.
pub(crate) fn crash(db: &TestPostgres, reps: usize, dir: &Path) -> Crash {
    let mut failures = 0;
    let ttl = Duration::from_secs(2);
    let mut crash = Fleet::new("handoff-crash", ttl);
    for k in 0..MEMBERS - 1 {
        let name = format!("s{k:02}");
        crash.start(pool(db, &name, 3), &name);
    }
    crash.wait_settled(Duration::from_secs(60));
    let mut rng = Rng::new(0xc4a5);
    let mut crash_ms = Vec::new();
    let mut after_lease_ms = Vec::new();
    for rep in 0..reps {
        crash.wait_settled(Duration::from_secs(30));
        let victim = format!("victim-{rep}");
        let events = dir.join(format!("{victim}.log"));
        let child = spawn_member(db, &crash.ring, &victim, ttl, &events);
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
    Crash {
        ttl,
        crash_ms,
        after_lease_ms,
        failures,
        overlaps: crash_overlaps,
    }
}

/// The crash rows of the full report's table.
pub(crate) fn crash_rows(crash: &Crash) -> Vec<Vec<String>> {
    let c = stats(&crash.crash_ms);
    let al = stats(&crash.after_lease_ms);
    let ttl_ms = ms(crash.ttl);
    let row = stat_row;
    vec![
        row("crash: kill -9 until covered (ms)", &c, 1.0),
        row("crash: kill -9 until covered (× TTL)", &c, ttl_ms),
        row(
            "crash: covered after the database lease ended (ms)",
            &al,
            1.0,
        ),
    ]
}

/// The crash's result line.
pub(crate) fn crash_line(crash: &Crash) -> String {
    let c = stats(&crash.crash_ms);
    let ttl_ms = ms(crash.ttl);
    format!(
        "handoff crash p50_over_ttl={:.3} max_over_ttl={:.3}",
        c.p50 / ttl_ms,
        c.max / ttl_ms
    )
}
