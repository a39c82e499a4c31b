//! The **drain** measure (the crate docs, guarantee 6): members with a drain
//! timeout, each with the testkit's drain workload ([`Worker`], as in the
//! claims tests) doing 200 ms units of user work on its partitions, join and
//! leave until over 1,000 partitions have moved between owners. The user
//! work of two members on one partition must never intersect (the oracle's
//! [`History::judge_work`] over the workers' `work-start`/`work-end`
//! records). Latency: from the old owner's `Released` to the new owner's
//! `Acquired`, which includes the drain and then the claim's move. This
//! file owns the drain ring, the records' analysis and the section's
//! title, rows, counts and line (`LEASERING_BENCH_HANDOFF_ONLY=drain` runs
//! it alone).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use leasering::{NodeBuilder, RingNode};
use leasering_testkit::member_log::Ev;
use leasering_testkit::oracle::{self, End, History, Ns, ReleaseKind, RunId, Work, WorkOverlap};
use leasering_testkit::rng::Rng;
use leasering_testkit::worker::{Sink, WorkConfig, Worker};
use leasering_testkit::TestPostgres;

use super::stat_row;
use super::support::*;

/// A small ring, so that every join and leave moves a couple of dozen
/// partitions.
const DRAIN_RING: u32 = 128;
/// Members at rest; one more joins, then the oldest leaves, in turn.
const DRAIN_MEMBERS: usize = 5;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A unit of user work (the `tests/it/one_owner/claims.rs` workload's): well under the
/// drain timeout, so that a drain always ends with the unit.
const DRAIN_UNIT: Duration = Duration::from_millis(200);

#[derive(Default)]
pub(crate) struct Drained {
    pub(crate) latency_ms: Vec<f64>,
    drain_ms: Vec<f64>,
    claim_ms: Vec<f64>,
    handoffs: usize,
    /// The oracle's handoffs of user work ([`oracle::WorkVerdict::handoffs`]).
    work_handoffs: u64,
    user_overlaps: Vec<WorkOverlap>,
    /// The first few user-work overlaps, in words.
    described: Vec<String>,
    pub(crate) overlaps: u64,
    pub(crate) regressions: u64,
    units: u64,
    /// Drained releases whose guard the old owner's worker kept until its
    /// unit of work on those partitions ended.
    kept: usize,
    /// Drained releases whose guard it let go at once (no unit ran on them).
    dropped_at_once: usize,
    /// Releases that gave the user no guard (the lease ran out, eviction).
    pub(crate) unguarded: usize,
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

pub(crate) fn drain(db: &TestPostgres, target: usize) -> Drained {
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
pub(crate) fn drain_title(d: &Drained) -> String {
    format!(
        "Drain: {} members + 1 joining and leaving in turn ({} cycles), ring {DRAIN_RING}, drain timeout {:.0} s, {:.0} ms units of user work:",
        DRAIN_MEMBERS,
        d.cycles,
        DRAIN_TIMEOUT.as_secs_f64(),
        ms(DRAIN_UNIT),
    )
}

/// The drain's rows of the report's table.
pub(crate) fn drain_rows(d: &Drained) -> Vec<Vec<String>> {
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
pub(crate) fn print_drain_counts(d: &Drained) {
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
pub(crate) fn drain_line(d: &Drained) -> String {
    format!(
        "handoff drain handoffs={} user_overlaps={} p50_ms={:.2}",
        d.handoffs,
        d.user_overlaps.len(),
        stats(&d.latency_ms).p50
    )
}
