//! The independent checker of a chaos run: a pure function from what the
//! member processes logged (and what the harness recorded) to a [`Report`].
//! It never looks at the library's state, only at the logs merged on the
//! one CLOCK_MONOTONIC clock of the machine. Intervals, overlaps and token
//! order are the testkit's oracle's (`leasering_testkit::oracle`); what is
//! chaos-specific is judged here, on the oracle's intervals.
//!
//! What it judges, and how:
//!
//! * **Ownership intervals.** Each member process (a *run*) logs
//!   `Acquired`/`Released` with the instant each change took effect. A
//!   partition is active on a run from an `Acquired` to the next `Released`
//!   of it, both instants included. A run killed with `SIGKILL` is active
//!   until the instant the harness sent the signal (the harness kills only
//!   members of a settled ring, whose logs have been quiet for a while, so
//!   nothing was in flight that its log could have missed); a gracefully
//!   stopped run must have released everything itself (else: an anomaly).
//! * **Overlaps**: two runs active on one partition at one instant
//!   (closed intervals: a release at `t` and an acquisition at `t` by
//!   another run overlap), every pair.
//! * **Token regressions**: per partition, in order of acquisition, a token
//!   not greater than one of an earlier *other* run, or lower than its own
//!   run's earlier one.
//! * **Coverage**: for each fault, from its `from` instant (its start, or the
//!   moment the database came back) to `to` (the next fault), the longest
//!   time any partition was active nowhere; it must stay under the fault's
//!   bound.
//! * **Stale writes accepted**: (a) the sink's own record of accepted
//!   writes that went against its order (a lower token than stored, or the
//!   same token from another node — counted by a trigger in the database),
//!   and (b) accepted writes whose snapshot was taken (`t0`) after *another*
//!   run had already acquired that partition with a higher token: the
//!   writer's `owned_partitions()` still listed a partition it had lost.
//!   Writes merely *delivered* late (taken while owner, then paused) are
//!   not stale in this sense: the sink orders them by token. Rejected
//!   writes that fail test (b) are counted apart, as snapshot violations.
//!   Both tests are sound: each flags only what the library's guarantees
//!   exclude, with no slack on the shared clock.
//! * **User overlaps** (the drain workload, guarantee 6): two members' units
//!   of user work on one partition that intersect, judged by the oracle
//!   (`History::judge_work`) on the `work-start` / `work-end` lines. Only
//!   work under a running lease counts: a unit that went on past a
//!   `LeaseExpired` / `Evicted` release of its partition (a member frozen
//!   mid-unit, its lease ended, the next owner started) is protected by
//!   tokens, not by the drain — such units are counted apart (`work_cut`),
//!   and so are the overlaps they alone cause (`fenced_overlaps`), in the
//!   detail line. Every other intersection — across a drained (graceful)
//!   handoff, or of two owners outright — is a user overlap and fails the
//!   run.
//! * **Isolation of a frozen member** (guarantee 5): for a fault that
//!   freezes a member while another joins or leaves, the longest gap of
//!   every partition *except* those the frozen member holds (or is
//!   assigned by the change) from the change to the thaw, against the
//!   graceful bound: they must not wait for the frozen member.

use std::collections::HashMap;

use leasering_testkit::member_log::{Ev, WriteRec};
pub use leasering_testkit::oracle::End;
use leasering_testkit::oracle::{self, judge, History, Interval, WorkOverlap};

/// One member process and what it logged.
#[derive(Debug, Clone)]
pub struct Run {
    /// Unique per process, e.g. `m3#2`.
    pub name: String,
    pub events: Vec<Ev>,
    pub writes: Vec<WriteRec>,
    pub end: End,
}

/// A window over which coverage is judged after one fault.
#[derive(Debug, Clone)]
pub struct FaultSpan {
    pub kind: String,
    pub label: String,
    /// Uncovered time counts from here (fault start, or database back).
    pub from: u64,
    /// ...to here (start of the next fault, or of the final shutdown).
    pub to: u64,
    pub bound_ms: u64,
}

/// A window in which a frozen member must delay nobody but its own
/// partitions (guarantee 5): from a join or leave to the thaw.
#[derive(Debug, Clone)]
pub struct IsolationSpan {
    pub kind: String,
    pub label: String,
    pub from: u64,
    pub to: u64,
    pub bound_ms: u64,
    /// The partitions left out: those the frozen member held, or that the
    /// change gave it.
    pub exempt: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Input {
    pub ring_size: u32,
    pub runs: Vec<Run>,
    pub faults: Vec<FaultSpan>,
    pub isolation: Vec<IsolationSpan>,
    /// Accepted writes against the sink's order, counted in the database.
    pub sink_anomalies: u64,
    /// Membership rows left after every member stopped.
    pub leaked_rows: u64,
    /// Problems found while collecting the input (unreadable logs, members
    /// that failed), reported as anomalies.
    pub notes: Vec<String>,
}

/// Coverage after one fault.
#[derive(Debug, Clone)]
pub struct Coverage {
    pub kind: String,
    pub label: String,
    pub bound_ms: u64,
    pub worst_ns: u64,
    pub partition: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub transitions: u64,
    pub overlaps: u64,
    /// Units of user work of two members on one partition intersecting
    /// while both were under a running lease.
    pub user_overlaps: u64,
    /// ...intersecting only past a lease's end (tokens' business).
    pub fenced_overlaps: u64,
    /// Units of user work (per partition).
    pub work_units: u64,
    /// Units that went on past their member's lease (or were stopped by a
    /// release that could not wait).
    pub work_cut: u64,
    /// Handoffs of user work between members, and those of them the drain
    /// held back (the old unit ran past the release).
    pub work_handoffs: u64,
    pub drained_handoffs: u64,
    pub token_regressions: u64,
    pub stale_writes: u64,
    pub snapshot_violations: u64,
    pub max_uncovered_ms: u64,
    pub faults: usize,
    pub leaked_rows: u64,
    pub writes_accepted: u64,
    pub writes_rejected: u64,
    pub coverage: Vec<Coverage>,
    /// Per isolation span, the worst gap of the partitions judged.
    pub isolation: Vec<Coverage>,
    pub anomalies: Vec<String>,
    /// The first few of each kind of violation, for the failure message.
    pub examples: Vec<String>,
}

const EXAMPLES_PER_KIND: usize = 5;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Report {
    /// The one summary line of a run.
    pub fn summary_line(&self) -> String {
        format!(
            "chaos: transitions={} overlaps={} user_overlaps={} token_regressions={} stale_writes={} max_uncovered_ms={} faults={} leaked_rows={}",
            self.transitions,
            self.overlaps,
            self.user_overlaps,
            self.token_regressions,
            self.stale_writes,
            self.max_uncovered_ms,
            self.faults,
            self.leaked_rows
        )
    }

    /// Coverage results over their bound (after faults, and for the
    /// partitions a frozen member must not delay).
    pub fn coverage_violations(&self) -> Vec<&Coverage> {
        self.coverage
            .iter()
            .chain(&self.isolation)
            .filter(|c| c.worst_ns >= c.bound_ms * 1_000_000)
            .collect()
    }

    /// Everything that makes the run fail, in words; empty when it passed.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.overlaps > 0 {
            v.push(format!("{} overlaps", self.overlaps));
        }
        if self.user_overlaps > 0 {
            v.push(format!("{} user-work overlaps", self.user_overlaps));
        }
        if self.token_regressions > 0 {
            v.push(format!("{} token regressions", self.token_regressions));
        }
        if self.stale_writes > 0 {
            v.push(format!("{} stale writes accepted", self.stale_writes));
        }
        if self.snapshot_violations > 0 {
            v.push(format!(
                "{} writes from snapshots listing a partition another member had taken",
                self.snapshot_violations
            ));
        }
        for c in self.coverage_violations() {
            v.push(format!(
                "after {} ({}): partition {} uncovered for {:.1} ms, bound {} ms",
                c.label,
                c.kind,
                c.partition,
                ms(c.worst_ns),
                c.bound_ms
            ));
        }
        if self.leaked_rows > 0 {
            v.push(format!("{} membership rows left behind", self.leaked_rows));
        }
        for a in &self.anomalies {
            v.push(format!("log anomaly: {a}"));
        }
        v
    }
}

/// Judges a run. Pure: same input, same report.
pub fn check(input: &Input) -> Report {
    let mut report = Report {
        faults: input.faults.len(),
        leaked_rows: input.leaked_rows,
        anomalies: input.notes.clone(),
        ..Report::default()
    };
    let n = input.ring_size as usize;
    let mut history = History::with_ring_size(input.ring_size);
    for run in &input.runs {
        let id = history.add_run(&run.name);
        for ev in &run.events {
            history.logged(id, ev);
        }
        history.end(id, run.end);
    }
    report.anomalies.extend(history.anomalies().iter().cloned());
    // Every run has ended: no interval is open any more.
    let ivs: Vec<Interval> = history.closed().to_vec();
    let name = |iv: &Interval| history.name(iv.run);

    let mut examples: HashMap<&'static str, usize> = HashMap::new();
    let mut example = |kind: &'static str, text: String, out: &mut Vec<String>| {
        let c = examples.entry(kind).or_insert(0);
        if *c < EXAMPLES_PER_KIND {
            out.push(format!("{kind}: {text}"));
        }
        *c += 1;
    };

    let verdict = judge(&ivs);
    report.transitions = verdict.transitions;
    report.overlaps = verdict.overlaps.len() as u64;
    report.token_regressions = verdict.regressions.len() as u64;
    for o in &verdict.overlaps {
        let text = format!(
            "partition {}: {} (token {}, [{}, {}]) and {} (token {}, [{}, {}]), {:.3} ms",
            o.partition(),
            name(&o.a),
            o.a.token,
            o.a.from,
            o.a.to,
            name(&o.b),
            o.b.token,
            o.b.from,
            o.b.to,
            ms(o.ns())
        );
        example("overlap", text, &mut report.examples);
    }
    for r in &verdict.regressions {
        let text = format!(
            "partition {}: {} acquired with token {} at {} after {} had token {}",
            r.later.partition,
            name(&r.later),
            r.later.token,
            r.later.from,
            name(&r.earlier),
            r.earlier.token
        );
        example("token regression", text, &mut report.examples);
    }

    let end = input.runs.iter().map(|r| r.end.at()).max().unwrap_or(0);
    let work = history.judge_work(end);
    report.anomalies.extend(work.anomalies.iter().cloned());
    report.user_overlaps = work.user_overlaps.len() as u64;
    report.fenced_overlaps = work.fenced_overlaps.len() as u64;
    report.work_units = work.units;
    report.work_cut = work.cut;
    report.work_handoffs = work.handoffs;
    report.drained_handoffs = work.drained;
    let describe = |o: &WorkOverlap| {
        format!(
            "partition {}: {} worked [{}, {}]{} and {} [{}, {}]{}, {:.3} ms while both leases ran",
            o.partition(),
            history.name(o.a.run),
            o.a.from,
            o.a.to,
            if o.a.cut { " (cut)" } else { "" },
            history.name(o.b.run),
            o.b.from,
            o.b.to,
            if o.b.cut { " (cut)" } else { "" },
            ms(o.protected_ns)
        )
    };
    for o in &work.user_overlaps {
        example("user overlap", describe(o), &mut report.examples);
    }

    let coverage = oracle::Coverage::new(&ivs, input.ring_size);
    for f in &input.faults {
        let (worst_ns, partition) = coverage.worst_gap(f.from, f.to);
        report.max_uncovered_ms = report.max_uncovered_ms.max(worst_ns / 1_000_000);
        report.coverage.push(Coverage {
            kind: f.kind.clone(),
            label: f.label.clone(),
            bound_ms: f.bound_ms,
            worst_ns,
            partition,
        });
    }
    for f in &input.isolation {
        let exempt: std::collections::HashSet<u32> = f.exempt.iter().copied().collect();
        let (worst_ns, partition) =
            coverage.worst_gap_among(f.from, f.to, |p| !exempt.contains(&p));
        report.isolation.push(Coverage {
            kind: f.kind.clone(),
            label: format!(
                "{} (isolation: {} partitions left out)",
                f.label,
                exempt.len()
            ),
            bound_ms: f.bound_ms,
            worst_ns,
            partition,
        });
    }

    // Stale writes (b): per partition, acquisitions (each interval is one)
    // in time order with the highest token so far, and the highest among
    // runs other than its owner.
    let mut acqs: Vec<Vec<(u64, u64, usize)>> = vec![Vec::new(); n];
    for iv in &ivs {
        acqs[iv.partition as usize].push((iv.from, iv.token, iv.run.0));
    }
    let mut best: Vec<Vec<(u64, u64, usize, u64)>> = Vec::with_capacity(n);
    for a in acqs.iter_mut() {
        a.sort_unstable();
        let mut out = Vec::with_capacity(a.len());
        let (mut t1, mut r1, mut t2) = (0u64, usize::MAX, 0u64);
        for &(at, token, run) in a.iter() {
            if run == r1 {
                t1 = t1.max(token);
            } else if token > t1 {
                t2 = t1;
                t1 = token;
                r1 = run;
            } else {
                t2 = t2.max(token);
            }
            out.push((at, t1, r1, t2));
        }
        best.push(out);
    }
    let superseded = |run: usize, p: u32, token: u64, t0: u64| -> Option<u64> {
        let b = best.get(p as usize)?;
        let i = b.partition_point(|e| e.0 < t0);
        let &(_, t1, r1, t2) = b.get(i.checked_sub(1)?)?;
        let other = if r1 != run { t1 } else { t2 };
        (other > token).then_some(other)
    };
    report.stale_writes = input.sink_anomalies;
    if input.sink_anomalies > 0 {
        report.examples.push(format!(
            "stale write: the sink's trigger recorded {} accepted writes against its token order",
            input.sink_anomalies
        ));
    }
    for (ri, run) in input.runs.iter().enumerate() {
        for w in &run.writes {
            report.writes_accepted += w.accepted.len() as u64;
            report.writes_rejected += w.rejected.len() as u64;
            for (accepted, list) in [(true, &w.accepted), (false, &w.rejected)] {
                for &(p, token) in list.iter() {
                    if let Some(newer) = superseded(ri, p, token, w.t0) {
                        let text = format!(
                            "{} wrote partition {p} with token {token} from a snapshot taken at {} after another member acquired it with token {newer}",
                            run.name, w.t0
                        );
                        if accepted {
                            report.stale_writes += 1;
                            example("stale write", text, &mut report.examples);
                        } else {
                            report.snapshot_violations += 1;
                            example("snapshot violation", text, &mut report.examples);
                        }
                    }
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn acq(at: u64, token: u64, parts: &[u32]) -> Ev {
        Ev::Acquired {
            at: at * MS,
            token,
            epoch: token,
            parts: parts.to_vec(),
        }
    }

    fn rel(at: u64, parts: &[u32]) -> Ev {
        Ev::Released {
            at: at * MS,
            reason: "Handoff".into(),
            epoch: 0,
            parts: parts.to_vec(),
            drain: false,
        }
    }

    fn drained(at: u64, parts: &[u32]) -> Ev {
        Ev::Released {
            at: at * MS,
            reason: "Handoff".into(),
            epoch: 0,
            parts: parts.to_vec(),
            drain: true,
        }
    }

    fn expired(at: u64, parts: &[u32]) -> Ev {
        Ev::Released {
            at: at * MS,
            reason: "LeaseExpired".into(),
            epoch: 0,
            parts: parts.to_vec(),
            drain: false,
        }
    }

    fn work(from: u64, to: u64, parts: &[u32]) -> [Ev; 2] {
        [
            Ev::WorkStart {
                at: from * MS,
                parts: parts.to_vec(),
            },
            Ev::WorkEnd {
                at: to * MS,
                parts: parts.to_vec(),
                cut: false,
            },
        ]
    }

    fn run(name: &str, events: Vec<Ev>, end: End) -> Run {
        Run {
            name: name.into(),
            events,
            writes: Vec::new(),
            end,
        }
    }

    fn exited(at: u64) -> End {
        End::Exited(at * MS)
    }

    fn input(runs: Vec<Run>) -> Input {
        Input {
            ring_size: 4,
            runs,
            ..Input::default()
        }
    }

    /// a holds 0..4 from 0 ms, hands 2 and 3 to b at 100 ms (b acquires at
    /// 101 ms), both stop at 1000 ms.
    fn clean() -> Input {
        input(vec![
            run(
                "a",
                vec![
                    acq(0, 1, &[0, 1, 2, 3]),
                    rel(100, &[2, 3]),
                    rel(1000, &[0, 1]),
                ],
                exited(1000),
            ),
            run(
                "b",
                vec![acq(101, 2, &[2, 3]), rel(1000, &[2, 3])],
                exited(1000),
            ),
        ])
    }

    #[test]
    fn a_clean_handoff_passes() {
        let r = check(&clean());
        assert_eq!(r.overlaps, 0);
        assert_eq!(r.token_regressions, 0);
        assert_eq!(r.transitions, 6);
        assert!(r.violations().is_empty(), "{:?}", r.violations());
        assert_eq!(
            r.summary_line(),
            "chaos: transitions=6 overlaps=0 user_overlaps=0 token_regressions=0 stale_writes=0 max_uncovered_ms=0 faults=0 leaked_rows=0"
        );
    }

    /// `clean()` with a drained handoff and user work: a works on 2 from
    /// 50 to 130 ms and releases it (with a drain) at 100 ms; b acquires it
    /// at `b_acq` and works from `b_work` ms.
    fn with_work(b_acq: u64, b_work: u64) -> Input {
        let mut i = clean();
        let a = &mut i.runs[0].events;
        a[1] = drained(100, &[2, 3]);
        a.splice(1..1, work(50, 130, &[2]));
        let b = &mut i.runs[1].events;
        b[0] = acq(b_acq, 2, &[2, 3]);
        b.splice(1..1, work(b_work, 900, &[2]));
        i
    }

    #[test]
    fn user_work_overlapping_across_a_drained_handoff_is_flagged() {
        let r = check(&with_work(131, 132));
        assert!(r.violations().is_empty(), "{:?}", r.violations());
        assert_eq!(
            (r.work_units, r.work_handoffs, r.drained_handoffs),
            (2, 1, 1)
        );
        // b began while a's unit still ran: the drain did not hold the
        // handoff back (ownership itself never overlapped).
        let r = check(&with_work(101, 110));
        assert_eq!((r.overlaps, r.user_overlaps), (0, 1), "{:?}", r.examples);
        assert!(
            r.violations().iter().any(|v| v == "1 user-work overlaps"),
            "{:?}",
            r.violations()
        );
        assert!(
            r.examples
                .iter()
                .any(|e| e.starts_with("user overlap: partition 2: a worked")),
            "{:?}",
            r.examples
        );
        assert!(r.summary_line().contains(" user_overlaps=1 "));
    }

    #[test]
    fn user_work_past_a_lease_that_ended_is_counted_apart() {
        // a's lease ran out during the drain (the second, forced release of
        // 2 at 105 ms): its unit went on to 130 ms, b started at 110 ms.
        let mut i = with_work(106, 110);
        i.runs[0].events.insert(4, expired(105, &[2, 3]));
        let r = check(&i);
        assert!(r.violations().is_empty(), "{:?}", r.violations());
        assert_eq!((r.user_overlaps, r.fenced_overlaps, r.work_cut), (0, 1, 1));
    }

    #[test]
    fn other_members_must_not_wait_for_a_frozen_one() {
        let mut i = clean();
        i.runs[1].events[0] = acq(400, 2, &[2, 3]); // 2, 3 uncovered 100..400 ms
        let span = |exempt: Vec<u32>| IsolationSpan {
            kind: "join_while_frozen".into(),
            label: "#1 b joined while a was frozen".into(),
            from: 50 * MS,
            to: 900 * MS,
            bound_ms: 200,
            exempt,
        };
        i.isolation = vec![span(vec![2, 3])];
        let r = check(&i);
        assert!(r.violations().is_empty(), "{:?}", r.violations());
        i.isolation = vec![span(vec![2])];
        let r = check(&i);
        let v = r.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("partition 3 uncovered for 300.0 ms, bound 200 ms"),
            "{v:?}"
        );
    }

    #[test]
    fn a_synthetic_overlap_is_flagged() {
        let mut i = clean();
        // b acquires partition 2 at 99 ms, a releases it at 100 ms.
        i.runs[1].events[0] = acq(99, 2, &[2, 3]);
        let r = check(&i);
        assert_eq!(r.overlaps, 2, "{:?}", r.examples);
        assert!(r.violations().iter().any(|v| v.contains("2 overlaps")));
        assert!(r.examples[0].contains("partition 2"), "{:?}", r.examples);
    }

    #[test]
    fn touching_intervals_overlap() {
        // Closed intervals: a releases 2 and 3 at 100 ms, b acquires them
        // at 100 ms.
        let mut i = clean();
        i.runs[1].events[0] = acq(100, 2, &[2, 3]);
        assert_eq!(check(&i).overlaps, 2);
    }

    #[test]
    fn an_overlap_with_a_non_neighbour_is_flagged() {
        // a holds partition 0 until 1000 ms; b holds it from 100 to 200 ms,
        // then c from 300 ms: c overlaps a though b came between them.
        let i = input(vec![
            run("a", vec![acq(0, 1, &[0]), rel(1000, &[0])], exited(1000)),
            run("b", vec![acq(100, 2, &[0]), rel(200, &[0])], exited(1000)),
            run("c", vec![acq(300, 3, &[0]), rel(400, &[0])], exited(1000)),
        ]);
        let r = check(&i);
        assert_eq!(r.overlaps, 2, "{:?}", r.examples);
        assert!(
            r.examples.iter().any(|e| e.contains(" and c ")),
            "{:?}",
            r.examples
        );
    }

    #[test]
    fn a_killed_member_owns_until_the_kill() {
        let mk = |b_at: u64| {
            input(vec![
                run("a", vec![acq(0, 1, &[0, 1, 2, 3])], End::Killed(500 * MS)),
                run(
                    "b",
                    vec![acq(b_at, 2, &[0, 1, 2, 3]), rel(1000, &[0, 1, 2, 3])],
                    exited(1000),
                ),
            ])
        };
        let after = check(&mk(2500));
        assert_eq!(after.overlaps, 0);
        assert!(after.anomalies.is_empty());
        assert_eq!(check(&mk(400)).overlaps, 4);
    }

    #[test]
    fn token_regressions_and_shared_tokens_are_flagged() {
        let mut i = clean();
        i.runs[1].events[0] = acq(101, 1, &[2, 3]);
        let r = check(&i);
        assert_eq!(r.token_regressions, 2, "equal token of another member");
        i.runs[0].events[0] = acq(0, 5, &[0, 1, 2, 3]);
        assert_eq!(check(&i).token_regressions, 2, "lower token");
        // The same member re-acquiring with the same token is fine (fence
        // then barrier within one epoch).
        let same = input(vec![run(
            "a",
            vec![
                acq(0, 3, &[0]),
                rel(10, &[0]),
                acq(20, 3, &[0]),
                rel(30, &[0]),
            ],
            exited(30),
        )]);
        assert_eq!(check(&same).token_regressions, 0);
    }

    #[test]
    fn uncovered_time_is_measured_per_fault_from_its_start() {
        let mut i = clean();
        i.runs[1].events[0] = acq(400, 2, &[2, 3]); // 300 ms uncovered from 100 ms
        i.faults = vec![
            FaultSpan {
                kind: "restart".into(),
                label: "restart a".into(),
                from: 50 * MS,
                to: 900 * MS,
                bound_ms: 1000,
            },
            FaultSpan {
                kind: "join".into(),
                label: "late".into(),
                from: 250 * MS,
                to: 900 * MS,
                bound_ms: 100,
            },
        ];
        let r = check(&i);
        assert_eq!(r.coverage[0].worst_ns, 300 * MS);
        assert_eq!(
            r.coverage[1].worst_ns,
            150 * MS,
            "counted from the fault's start"
        );
        assert_eq!(r.max_uncovered_ms, 300);
        let v = r.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("late") && v[0].contains("bound 100 ms"),
            "{v:?}"
        );
        // A partition never covered in the window counts whole.
        i.runs[1].events = vec![];
        let r = check(&i);
        assert_eq!(r.coverage[0].worst_ns, 800 * MS);
    }

    fn write(t0: u64, accepted: &[(u32, u64)], rejected: &[(u32, u64)]) -> WriteRec {
        WriteRec {
            t0: t0 * MS,
            t1: t0 * MS + 1,
            accepted: accepted.to_vec(),
            rejected: rejected.to_vec(),
        }
    }

    #[test]
    fn stale_writes_are_those_from_snapshots_taken_after_another_owner_took_over() {
        let mut i = clean();
        // Before the handoff: fine. A snapshot taken at 99 ms but delivered
        // late is fine too (t0 is what counts).
        i.runs[0].writes = vec![write(50, &[(2, 1)], &[]), write(99, &[(2, 1)], &[])];
        i.runs[1].writes = vec![write(200, &[(2, 2), (3, 2)], &[])];
        let r = check(&i);
        assert_eq!((r.stale_writes, r.snapshot_violations), (0, 0));
        assert_eq!((r.writes_accepted, r.writes_rejected), (4, 0));
        // a's snapshot at 150 ms still lists partition 2, which b took at 101 ms.
        i.runs[0].writes.push(write(150, &[(2, 1)], &[(3, 1)]));
        let r = check(&i);
        assert_eq!(r.stale_writes, 1);
        assert_eq!(r.snapshot_violations, 1);
        assert!(r
            .violations()
            .iter()
            .any(|v| v.contains("1 stale writes accepted")));
        // The database's own count adds up.
        i.sink_anomalies = 2;
        assert_eq!(check(&i).stale_writes, 3);
    }

    #[test]
    fn a_member_writing_after_taking_a_partition_back_is_not_stale() {
        // a: token 1, b: token 2 from 101 ms to 300 ms, a again with token 3.
        let mut i = input(vec![
            run(
                "a",
                vec![
                    acq(0, 1, &[0]),
                    rel(100, &[0]),
                    acq(301, 3, &[0]),
                    rel(1000, &[0]),
                ],
                exited(1000),
            ),
            run("b", vec![acq(101, 2, &[0]), rel(300, &[0])], exited(1000)),
        ]);
        i.runs[0].writes = vec![write(400, &[(0, 3)], &[])];
        i.runs[1].writes = vec![write(200, &[(0, 2)], &[])];
        let r = check(&i);
        assert_eq!((r.stale_writes, r.snapshot_violations), (0, 0));
        // b writing with token 2 after a took it back with 3: stale.
        i.runs[1].writes.push(write(350, &[], &[(0, 2)]));
        assert_eq!(check(&i).snapshot_violations, 1);
    }

    #[test]
    fn inconsistent_logs_and_leaks_are_reported() {
        let mut i = clean();
        i.runs[1].events.push(rel(1001, &[0]));
        i.runs[0].events.pop(); // a stops gracefully holding 0 and 1
        i.leaked_rows = 3;
        let r = check(&i);
        let v = r.violations();
        assert!(v.iter().any(|x| x.contains("without holding")), "{v:?}");
        assert!(v.iter().any(|x| x.contains("still holding 2")), "{v:?}");
        assert!(v.iter().any(|x| x.contains("3 membership rows")), "{v:?}");
        assert!(r.summary_line().ends_with("leaked_rows=3"));
    }
}
