//! The one judge of ownership histories (docs/protocol.md §11, "Guarantees and their assumptions"): who held which
//! partition when, whether two *runs* ever held one partition at once, and
//! whether fencing tokens rose from owner to owner. The integration tests,
//! the chaos harness, the benches and the demo all use it, so that they
//! agree on what an overlap is.
//!
//! # Model
//!
//! * A **run** is one member incarnation (one process, one `RingNode`),
//!   named by a string. Two runs may share a node id (a restart); they are
//!   still different owners.
//! * Every time is on one clock: CLOCK_MONOTONIC nanoseconds ([`Ns`]),
//!   shared by every process of the machine. [`ns`] converts an `Instant`.
//! * A [`History`] pairs each run's `Acquired`/`Released` records, in the
//!   order the run emitted them, into [`Interval`]s `[acquired, released]`,
//!   **closed at both ends**. An interval still open when the history is
//!   read ends at an instant the caller gives (the `kill -9` instant, or
//!   "now"). Records that do not pair up (a release of a partition not
//!   held, an acquisition of one already held) are *anomalies*.
//! * An interval whose release is stamped *before* its acquisition is
//!   **empty** (the run never was active): it counts for tokens, not for
//!   overlaps or coverage.
//!
//! # Judgements
//!
//! * **Overlap**: two intervals of *different* runs on one partition that
//!   intersect — touching counts (a release at `t` and another run's
//!   acquisition at `t` is an overlap). All pairs are checked: per
//!   partition, intervals sorted by start and swept with the set of those
//!   still running, `O(n log n + overlapping pairs)`.
//! * **Token regression**: per partition, in order of acquisition, a token
//!   that is not strictly greater than every token of an earlier *other*
//!   run, or lower than an earlier token of its own run (equal is fine
//!   within one run: it re-activated within one unbroken ownership).
//! * **Coverage**: the longest time within a window that a partition was
//!   active nowhere ([`Coverage`]); only intervals of positive length cover.
//!
//! [`judge`] does it for a finished history; [`Online`] does the same as
//! intervals close, for a live display (the demo).
//!
//! # User work (the drain workload)
//!
//! A history also pairs each run's *units of user work*
//! ([`History::work_started`], [`History::work_ended`], the `work-start` /
//! `work-end` lines of [`member_log`](crate::member_log)) into [`Work`]
//! intervals, closed at both ends like ownership, and
//! [`History::judge_work`] judges them against the ownership records:
//!
//! * A unit is **protected** only while its run's lease runs: work that goes
//!   on past a *forced* release of its partition (`LeaseExpired`,
//!   `Evicted`: "stop now", [`ReleaseKind::Forced`]) is cut there — the
//!   drain cannot hold a handoff back for a member whose lease has ended,
//!   and fencing tokens protect what such a member does next. A unit the
//!   worker marked `cut` without a forced release on record (it found the
//!   lease lapsed when it ended, or was stopped by a release without a
//!   drain) is protected only up to the end of its ownership interval.
//!   Everything else — inside the ownership interval, and past a graceful
//!   release with a drain guard until the unit ended — is protected.
//! * A **user overlap** is two units of *different* runs on one partition
//!   whose protected parts intersect (touching counts): across a drained
//!   handoff the next owner started while the old owner's unit still ran
//!   (or two owners overlapped outright). It must never happen
//!   (guarantee 6).
//! * A **fenced overlap** is two units that intersect only where one of them
//!   was no longer protected — the old owner's work outlived its lease (a
//!   frozen process): counted apart, with the units **cut** by a lease's
//!   end ([`WorkVerdict::cut`]).
//! * **Handoffs** of user work: per partition, in order of start, a unit of
//!   another run than the one before; **drained** handoffs are those where
//!   the earlier unit ran past its run's drained release — the drain held
//!   the handoff back.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Nanoseconds of CLOCK_MONOTONIC.
pub type Ns = u64;

/// An `Instant` on the oracle's clock.
pub fn ns(at: Instant) -> Ns {
    leasering::monotonic_ns(at)
}

/// Now on the oracle's clock.
pub fn now() -> Ns {
    ns(Instant::now())
}

/// A run of a [`History`], by the order it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub usize);

/// One run's activity on one partition: `[from, to]`, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub run: RunId,
    pub partition: u32,
    pub token: u64,
    pub from: Ns,
    pub to: Ns,
    /// `false` when the run still held the partition as the history was
    /// read, or when it ended without a release (killed): `to` is then the
    /// end instant given, not a release.
    pub released: bool,
    /// Released gracefully with a drain guard ([`ReleaseKind::Drained`]).
    pub drained: bool,
}

impl Interval {
    /// Released before it was acquired: never active.
    pub fn is_empty(&self) -> bool {
        self.to < self.from
    }

    /// Active at `t` (both ends included).
    pub fn contains(&self, t: Ns) -> bool {
        self.from <= t && t <= self.to
    }

    /// Both active at some instant on the same partition (by any runs).
    pub fn intersects(&self, other: &Interval) -> bool {
        self.partition == other.partition
            && !self.is_empty()
            && !other.is_empty()
            && self.from <= other.to
            && other.from <= self.to
    }

    /// The order of acquisition used by every judgement: by start, then
    /// token, run and end, so that ties are broken alike everywhere.
    fn order(&self, other: &Interval) -> Ordering {
        (self.partition, self.from, self.token, self.run, self.to).cmp(&(
            other.partition,
            other.from,
            other.token,
            other.run,
            other.to,
        ))
    }

    /// Whether `self`, acquired after `earlier` (in [`order`](Self::order)),
    /// breaks the token rule against it.
    fn regresses_against(&self, earlier: &Interval) -> bool {
        if self.run == earlier.run {
            self.token < earlier.token
        } else {
            self.token <= earlier.token
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It stopped (gracefully, or on its own) at this instant: it must have
    /// released everything itself.
    Exited(Ns),
    /// `SIGKILL` sent at this instant: whatever it held, it held until then.
    Killed(Ns),
}

impl End {
    pub fn at(self) -> Ns {
        match self {
            End::Exited(t) | End::Killed(t) => t,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Open {
    run: RunId,
    token: u64,
    from: Ns,
}

impl Open {
    /// The interval of this holding of `partition`, ended at `to`.
    fn until(self, partition: u32, to: Ns, released: bool) -> Interval {
        Interval {
            run: self.run,
            partition,
            token: self.token,
            from: self.from,
            to,
            released,
            drained: false,
        }
    }
}

/// How a run released partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseKind {
    /// Gracefully, without a drain guard (a handoff or a stop without
    /// `drain_timeout`).
    Plain,
    /// Gracefully, with a drain guard: its claims are given back once the
    /// user's work has stopped, and a `Forced` release of the same
    /// partitions may follow while that drain runs (the lease ran out).
    Drained,
    /// `LeaseExpired` or `Evicted`: the lease ended, stop at once.
    Forced,
}

impl ReleaseKind {
    /// The kind of a logged release: its reason (`Debug` of
    /// `leasering::ReleaseReason`) and whether a drain guard came with it.
    pub fn of(reason: &str, drain: bool) -> ReleaseKind {
        match reason {
            "LeaseExpired" | "Evicted" => ReleaseKind::Forced,
            _ if drain => ReleaseKind::Drained,
            _ => ReleaseKind::Plain,
        }
    }
}

/// One unit of user work of a run on one partition: `[from, to]`, both
/// ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub run: RunId,
    pub partition: u32,
    pub from: Ns,
    pub to: Ns,
    /// The worker marked it `cut`: stopped by a release that could not
    /// wait, or found at its end to have outlived the lease.
    pub cut: bool,
    /// `false` when no `work-end` closed it (the run was killed, or it
    /// still ran as the history was read).
    pub ended: bool,
}

/// Ownership records of many runs, paired into intervals.
///
/// Feed each run's records in the order that run emitted them (the order of
/// its event channel or its log file); the runs may be fed interleaved in
/// any way.
#[derive(Debug, Clone, Default)]
pub struct History {
    names: Vec<String>,
    by_name: HashMap<String, RunId>,
    ring_size: Option<u32>,
    /// Per partition, the runs holding it now.
    open: Vec<Vec<Open>>,
    closed: Vec<Interval>,
    anomalies: Vec<String>,
    /// Partitions released with a drain guard and not acquired again since,
    /// per run: a `Forced` release of them (the drain cut short) is no
    /// anomaly.
    draining: HashSet<(RunId, u32)>,
    /// Every forced release (`LeaseExpired`, `Evicted`), held or draining:
    /// where a run's protected work ends.
    forced: Vec<(RunId, u32, Ns)>,
    /// Units of work in progress: their start.
    work_open: HashMap<(RunId, u32), Ns>,
    work: Vec<Work>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// A history that reports partitions `>= ring_size` as anomalies.
    pub fn with_ring_size(ring_size: u32) -> History {
        History {
            ring_size: Some(ring_size),
            ..History::default()
        }
    }

    /// A new run (names need not be unique).
    pub fn add_run(&mut self, name: &str) -> RunId {
        let id = RunId(self.names.len());
        self.names.push(name.to_string());
        self.by_name.entry(name.to_string()).or_insert(id);
        id
    }

    /// The first run of that name, added if there is none.
    pub fn run_named(&mut self, name: &str) -> RunId {
        match self.by_name.get(name) {
            Some(id) => *id,
            None => self.add_run(name),
        }
    }

    pub fn name(&self, run: RunId) -> &str {
        &self.names[run.0]
    }

    pub fn runs(&self) -> usize {
        self.names.len()
    }

    fn held(&mut self, p: u32) -> &mut Vec<Open> {
        let i = p as usize;
        if self.open.len() <= i {
            self.open.resize_with(i + 1, Vec::new);
        }
        &mut self.open[i]
    }

    fn in_ring(&mut self, run: RunId, p: u32, what: &str) -> bool {
        match self.ring_size {
            Some(n) if p >= n => {
                let text = format!("{} {what} partition {p} outside the ring", self.name(run));
                self.anomalies.push(text);
                false
            }
            _ => true,
        }
    }

    /// `run` activated `partitions` with `token` at `at`.
    pub fn acquired(&mut self, run: RunId, partitions: &[u32], token: u64, at: Ns) {
        for &p in partitions {
            if !self.in_ring(run, p, "acquired") {
                continue;
            }
            self.draining.remove(&(run, p));
            let held = self.held(p);
            let before = held
                .iter()
                .position(|o| o.run == run)
                .map(|i| held.remove(i));
            held.push(Open {
                run,
                token,
                from: at,
            });
            if let Some(o) = before {
                // Both acquisitions stay on record (each is judged for its
                // token); the first ends where the second begins.
                self.closed.push(o.until(p, at, false));
                let text = format!(
                    "{} acquired partition {p} at {at} while holding it",
                    self.name(run)
                );
                self.anomalies.push(text);
            }
        }
    }

    /// `run` released `partitions` at `at` (gracefully, without a drain
    /// guard, for all this history can tell).
    pub fn released(&mut self, run: RunId, partitions: &[u32], at: Ns) {
        self.released_as(run, partitions, at, ReleaseKind::Plain)
    }

    /// `run` released `partitions` at `at`, in the manner `kind`. A forced
    /// release of partitions whose drain is running (released with a
    /// guard, not acquired since) cuts the drain short: no anomaly.
    pub fn released_as(&mut self, run: RunId, partitions: &[u32], at: Ns, kind: ReleaseKind) {
        for &p in partitions {
            if !self.in_ring(run, p, "released") {
                continue;
            }
            if kind == ReleaseKind::Forced {
                self.forced.push((run, p, at));
            }
            let held = self.held(p);
            match held.iter().position(|o| o.run == run) {
                Some(i) => {
                    let o = held.remove(i);
                    let mut iv = o.until(p, at, true);
                    iv.drained = kind == ReleaseKind::Drained;
                    self.closed.push(iv);
                    if iv.drained {
                        self.draining.insert((run, p));
                    }
                }
                None if kind == ReleaseKind::Forced && self.draining.remove(&(run, p)) => {}
                None => {
                    let text = format!(
                        "{} released partition {p} at {at} without holding it",
                        self.name(run)
                    );
                    self.anomalies.push(text);
                }
            }
        }
    }

    /// Records an event of the library (other kinds are ignored).
    pub fn event(&mut self, run: RunId, event: &leasering::Event) {
        match event {
            leasering::Event::Acquired {
                partitions,
                token,
                at,
                ..
            } => self.acquired(run, partitions, *token, ns(*at)),
            leasering::Event::Released {
                partitions,
                at,
                reason,
                drain,
                ..
            } => {
                let kind = match reason {
                    leasering::ReleaseReason::LeaseExpired | leasering::ReleaseReason::Evicted => {
                        ReleaseKind::Forced
                    }
                    _ if drain.is_some() => ReleaseKind::Drained,
                    _ => ReleaseKind::Plain,
                };
                self.released_as(run, partitions, ns(*at), kind)
            }
            _ => {}
        }
    }

    /// Records a line of a member process's log (other kinds are ignored).
    pub fn logged(&mut self, run: RunId, ev: &crate::member_log::Ev) {
        use crate::member_log::Ev;
        match ev {
            Ev::Acquired {
                at, token, parts, ..
            } => self.acquired(run, parts, *token, *at),
            Ev::Released {
                at,
                parts,
                reason,
                drain,
                ..
            } => self.released_as(run, parts, *at, ReleaseKind::of(reason, *drain)),
            Ev::WorkStart { at, parts } => self.work_started(run, parts, *at),
            Ev::WorkEnd { at, parts, cut } => self.work_ended(run, parts, *at, *cut),
            Ev::Joined { .. } | Ev::View { .. } => {}
        }
    }

    /// `run` began a unit of user work on `partitions` at `at`.
    pub fn work_started(&mut self, run: RunId, partitions: &[u32], at: Ns) {
        for &p in partitions {
            if !self.in_ring(run, p, "worked on") {
                continue;
            }
            if let Some(from) = self.work_open.insert((run, p), at) {
                self.work.push(Work {
                    run,
                    partition: p,
                    from,
                    to: at,
                    cut: false,
                    ended: false,
                });
                let text = format!(
                    "{} began work on partition {p} at {at} while working on it",
                    self.name(run)
                );
                self.anomalies.push(text);
            }
        }
    }

    /// `run`'s work on `partitions` ended at `at`; `cut`: it was stopped.
    pub fn work_ended(&mut self, run: RunId, partitions: &[u32], at: Ns, cut: bool) {
        for &p in partitions {
            if !self.in_ring(run, p, "worked on") {
                continue;
            }
            match self.work_open.remove(&(run, p)) {
                Some(from) => self.work.push(Work {
                    run,
                    partition: p,
                    from,
                    to: at,
                    cut,
                    ended: true,
                }),
                None => {
                    let text = format!(
                        "{} ended work on partition {p} at {at} without working on it",
                        self.name(run)
                    );
                    self.anomalies.push(text);
                }
            }
        }
    }

    /// `run` ended: what it still holds is held until `end.at()`. A run that
    /// exited still holding partitions is an anomaly. Returns how many it
    /// still held.
    pub fn end(&mut self, run: RunId, end: End) -> usize {
        let mut left: Vec<u32> = Vec::new();
        for (p, held) in self.open.iter_mut().enumerate() {
            if let Some(i) = held.iter().position(|o| o.run == run) {
                let o = held.remove(i);
                left.push(p as u32);
                self.closed.push(o.until(p as u32, end.at(), false));
            }
        }
        if let (End::Exited(_), Some(first)) = (end, left.first()) {
            let text = format!(
                "{} stopped gracefully still holding {} partitions (first {first})",
                self.name(run),
                left.len()
            );
            self.anomalies.push(text);
        }
        // Work still running ran until then (a kill cuts a unit whose end
        // was never logged).
        let mut working: Vec<u32> = Vec::new();
        self.work_open.retain(|&(r, p), from| {
            if r != run {
                return true;
            }
            working.push(p);
            self.work.push(Work {
                run,
                partition: p,
                from: *from,
                to: end.at(),
                cut: false,
                ended: false,
            });
            false
        });
        working.sort_unstable();
        if let (End::Exited(_), Some(first)) = (end, working.first()) {
            let text = format!(
                "{} stopped gracefully still working on {} partitions (first {first})",
                self.name(run),
                working.len()
            );
            self.anomalies.push(text);
        }
        left.len()
    }

    /// The units of work that ended so far (or were closed by
    /// [`end`](Self::end)).
    pub fn work(&self) -> &[Work] {
        &self.work
    }

    /// Every unit of work: the ended ones, and those still running ending
    /// at `open_until`.
    pub fn work_until(&self, open_until: Ns) -> Vec<Work> {
        let mut out = self.work.clone();
        out.extend(
            self.work_open
                .iter()
                .map(|(&(run, partition), &from)| Work {
                    run,
                    partition,
                    from,
                    to: open_until,
                    cut: false,
                    ended: false,
                }),
        );
        out
    }

    /// The judgement of the user work (see the module docs): units still
    /// running, and ownership still held, end at `open_until`.
    pub fn judge_work(&self, open_until: Ns) -> WorkVerdict {
        judge_work(
            &self.intervals(open_until),
            &self.forced,
            &self.work_until(open_until),
            |r| self.name(r).to_string(),
        )
    }

    /// The runs holding `partition` now (after the records fed so far).
    pub fn holders(&self, partition: u32) -> impl Iterator<Item = RunId> + '_ {
        self.open
            .get(partition as usize)
            .into_iter()
            .flatten()
            .map(|o| o.run)
    }

    /// The partitions `run` holds now, in order.
    pub fn holding(&self, run: RunId) -> Vec<u32> {
        (0..self.open.len())
            .filter(|&p| self.open[p].iter().any(|o| o.run == run))
            .map(|p| p as u32)
            .collect()
    }

    /// The one run holding `partition` now; `None` when none or several do.
    pub fn sole_holder(&self, partition: u32) -> Option<RunId> {
        match self.open.get(partition as usize).map(Vec::as_slice) {
            Some([only]) => Some(only.run),
            _ => None,
        }
    }

    /// The intervals that ended so far (released, or closed by [`end`](Self::end)).
    pub fn closed(&self) -> &[Interval] {
        &self.closed
    }

    /// Moves the closed intervals out (for [`Online`], which keeps only
    /// recent ones).
    pub fn take_closed(&mut self) -> Vec<Interval> {
        std::mem::take(&mut self.closed)
    }

    /// Every interval: the closed ones, and those still open ending at
    /// `open_until`.
    pub fn intervals(&self, open_until: Ns) -> Vec<Interval> {
        let mut out = self.closed.clone();
        for (p, held) in self.open.iter().enumerate() {
            out.extend(held.iter().map(|o| o.until(p as u32, open_until, false)));
        }
        out
    }

    /// Records that did not pair up, in words.
    pub fn anomalies(&self) -> &[String] {
        &self.anomalies
    }

    /// [`judge`] of [`intervals`](Self::intervals)`(open_until)`.
    pub fn judge(&self, open_until: Ns) -> Verdict {
        judge(&self.intervals(open_until))
    }

    /// An overlap in words, times relative to `zero` in seconds.
    pub fn describe_overlap(&self, o: &Overlap, zero: Ns) -> String {
        format!(
            "partition {}: {} and {} both active for {:.3} ms ({} and {})",
            o.a.partition,
            self.name(o.a.run),
            self.name(o.b.run),
            o.ns() as f64 / 1e6,
            span(&o.a, zero),
            span(&o.b, zero)
        )
    }

    /// A token regression in words, times relative to `zero` in seconds.
    pub fn describe_regression(&self, r: &Regression, zero: Ns) -> String {
        format!(
            "partition {}: {} acquired with token {} at {} after {} had token {} (at {})",
            r.later.partition,
            self.name(r.later.run),
            r.later.token,
            secs(r.later.from, zero),
            self.name(r.earlier.run),
            r.earlier.token,
            secs(r.earlier.from, zero)
        )
    }
}

fn secs(t: Ns, zero: Ns) -> String {
    if t >= zero {
        format!("{:.4}s", (t - zero) as f64 / 1e9)
    } else {
        format!("-{:.4}s", (zero - t) as f64 / 1e9)
    }
}

fn span(iv: &Interval, zero: Ns) -> String {
    format!(
        "token {} [{}, {}{}]",
        iv.token,
        secs(iv.from, zero),
        secs(iv.to, zero),
        if iv.released { "" } else { " (not released)" }
    )
}

/// Two intervals of different runs that intersect; `a` was acquired first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    pub a: Interval,
    pub b: Interval,
}

impl Overlap {
    fn of(x: Interval, y: Interval) -> Overlap {
        if x.order(&y) == Ordering::Greater {
            Overlap { a: y, b: x }
        } else {
            Overlap { a: x, b: y }
        }
    }

    pub fn partition(&self) -> u32 {
        self.a.partition
    }

    /// How long both were active (0 when they only touch).
    pub fn ns(&self) -> Ns {
        self.a.to.min(self.b.to) - self.a.from.max(self.b.from)
    }
}

/// An acquisition (`later`) whose token breaks the rule against an earlier
/// one (`earlier`, the greatest earlier token of another run, or of its own
/// run when that is the one it fell below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regression {
    pub earlier: Interval,
    pub later: Interval,
}

/// The judgement of a set of intervals.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Every overlapping pair.
    pub overlaps: Vec<Overlap>,
    /// Every acquisition that breaks the token rule (each counted once).
    pub regressions: Vec<Regression>,
    /// Changes of owner, per partition in order of acquisition (a
    /// partition's first owner counts as one).
    pub transitions: u64,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.overlaps.is_empty() && self.regressions.is_empty()
    }
}

/// The intervals sorted by partition and acquisition, grouped by partition.
fn per_partition(ivs: &[Interval]) -> Vec<Vec<Interval>> {
    let mut sorted = ivs.to_vec();
    sorted.sort_by(Interval::order);
    sorted
        .chunk_by(|a, b| a.partition == b.partition)
        .map(<[Interval]>::to_vec)
        .collect()
}

/// Overlaps, token regressions and transitions of `ivs` (any order, any
/// partitions).
pub fn judge(ivs: &[Interval]) -> Verdict {
    let mut v = Verdict::default();
    for part in per_partition(ivs) {
        sweep_overlaps(&part, &mut v.overlaps);
        scan_tokens(&part, &mut v.regressions);
        let mut last = None;
        for iv in &part {
            if last != Some(iv.run) {
                v.transitions += 1;
                last = Some(iv.run);
            }
        }
    }
    v
}

/// Every overlapping pair of `ivs`.
pub fn overlaps(ivs: &[Interval]) -> Vec<Overlap> {
    judge(ivs).overlaps
}

/// Every acquisition of `ivs` that breaks the token rule.
pub fn token_regressions(ivs: &[Interval]) -> Vec<Regression> {
    judge(ivs).regressions
}

/// One partition's intervals, in acquisition order: a sweep with the
/// intervals still running at each start. Every interval left in `live`
/// at a start intersects the new one (it began before and has not ended),
/// so the work is the sort plus the pairs.
fn sweep_overlaps(part: &[Interval], out: &mut Vec<Overlap>) {
    let mut live: Vec<Interval> = Vec::new();
    for iv in part.iter().filter(|iv| !iv.is_empty()) {
        live.retain(|l| l.to >= iv.from);
        out.extend(
            live.iter()
                .filter(|l| l.run != iv.run)
                .map(|l| Overlap { a: *l, b: *iv }),
        );
        live.push(*iv);
    }
}

/// One partition's intervals, in acquisition order: each token against the
/// greatest earlier token of another run and the greatest of its own.
fn scan_tokens(part: &[Interval], out: &mut Vec<Regression>) {
    // The interval with the greatest token so far, and the one with the
    // greatest token among the other runs than that one's.
    let mut top: Option<Interval> = None;
    let mut second: Option<Interval> = None;
    let mut own: HashMap<RunId, Interval> = HashMap::new();
    for iv in part {
        let other = match top {
            Some(t) if t.run != iv.run => Some(t),
            _ => second,
        };
        let against = other.filter(|o| iv.regresses_against(o)).or_else(|| {
            own.get(&iv.run)
                .copied()
                .filter(|o| iv.regresses_against(o))
        });
        if let Some(earlier) = against {
            out.push(Regression {
                earlier,
                later: *iv,
            });
        }
        if own.get(&iv.run).is_none_or(|o| iv.token > o.token) {
            own.insert(iv.run, *iv);
        }
        match top {
            Some(t) if iv.token <= t.token => {
                if t.run != iv.run && second.is_none_or(|s| iv.token > s.token) {
                    second = Some(*iv);
                }
            }
            Some(t) => {
                if t.run != iv.run {
                    second = Some(t);
                }
                top = Some(*iv);
            }
            None => top = Some(*iv),
        }
    }
}

/// Two units of work of different runs on one partition that intersect;
/// `a` began first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkOverlap {
    pub a: Work,
    pub b: Work,
    /// How long both ran while protected (0 when they only touch, or for a
    /// fenced overlap).
    pub protected_ns: Ns,
}

impl WorkOverlap {
    pub fn partition(&self) -> u32 {
        self.a.partition
    }
}

/// The judgement of the user work of a history ([`History::judge_work`]).
#[derive(Debug, Clone, Default)]
pub struct WorkVerdict {
    /// Units of work (one per partition a unit covered).
    pub units: u64,
    /// Units whose protected part is shorter than the unit: it went on past
    /// its run's lease (or was stopped by a release that could not wait).
    pub cut: u64,
    /// Per partition, in order of start, a unit of another run than the
    /// one before.
    pub handoffs: u64,
    /// Handoffs whose earlier unit ran past its run's drained release.
    pub drained: u64,
    /// Pairs whose protected parts intersect: must be none.
    pub user_overlaps: Vec<WorkOverlap>,
    /// Pairs that intersect only where one was no longer protected.
    pub fenced_overlaps: Vec<WorkOverlap>,
    /// Work that cannot be matched with its run's ownership, in words.
    pub anomalies: Vec<String>,
}

/// The protected part of a unit: up to the first forced release of its
/// partition by its run since the ownership it started under; for a unit
/// marked `cut` without such a release, up to the end of that ownership.
/// `None`: not protected at all (it began after its lease had ended).
fn protected(w: &Work, own: Option<&Interval>, forced: &[Ns]) -> Option<(Ns, Ns)> {
    let since = own.map_or(w.from, |i| i.from);
    let fence = forced.iter().copied().find(|&x| x >= since && x <= w.to);
    let end = match (fence, own) {
        (Some(x), _) => x,
        (None, Some(i)) if w.cut => w.to.min(i.to.max(w.from)),
        _ => w.to,
    };
    (end >= w.from).then_some((w.from, end))
}

/// [`History::judge_work`] on its parts: ownership intervals, forced
/// releases `(run, partition, at)`, units of work; `name` names runs in
/// anomalies.
pub fn judge_work(
    ivs: &[Interval],
    forced: &[(RunId, u32, Ns)],
    work: &[Work],
    name: impl Fn(RunId) -> String,
) -> WorkVerdict {
    let mut v = WorkVerdict::default();
    let mut owns: HashMap<(RunId, u32), Vec<Interval>> = HashMap::new();
    for iv in ivs {
        owns.entry((iv.run, iv.partition)).or_default().push(*iv);
    }
    for list in owns.values_mut() {
        list.sort_by_key(|i| (i.from, i.to));
    }
    let mut fences: HashMap<(RunId, u32), Vec<Ns>> = HashMap::new();
    for &(run, p, at) in forced {
        fences.entry((run, p)).or_default().push(at);
    }
    for list in fences.values_mut() {
        list.sort_unstable();
    }
    // Per unit: the ownership it began under (the last acquisition of its
    // partition by its run at or before its start) and its protected part.
    struct Judged {
        w: Work,
        own: Option<Interval>,
        prot: Option<(Ns, Ns)>,
    }
    let mut per: HashMap<u32, Vec<Judged>> = HashMap::new();
    for w in work {
        v.units += 1;
        let key = (w.run, w.partition);
        let own = owns.get(&key).and_then(|l| {
            let i = l.partition_point(|i| i.from <= w.from);
            i.checked_sub(1).map(|i| l[i])
        });
        if own.is_none() {
            v.anomalies.push(format!(
                "{} worked on partition {} from {} without having acquired it",
                name(w.run),
                w.partition,
                w.from
            ));
        }
        let prot = protected(w, own.as_ref(), fences.get(&key).map_or(&[], Vec::as_slice));
        if w.cut || prot.is_none_or(|(_, end)| end < w.to) {
            v.cut += 1;
        }
        per.entry(w.partition)
            .or_default()
            .push(Judged { w: *w, own, prot });
    }
    let mut parts: Vec<u32> = per.keys().copied().collect();
    parts.sort_unstable();
    for p in parts {
        let mut list = per.remove(&p).unwrap_or_default();
        list.sort_by_key(|j| (j.w.from, j.w.to, j.w.run));
        // Handoffs, in order of start.
        for pair in list.windows(2) {
            let (old, new) = (&pair[0], &pair[1]);
            if old.w.run != new.w.run {
                v.handoffs += 1;
                if old.own.is_some_and(|i| i.drained && old.w.to > i.to) {
                    v.drained += 1;
                }
            }
        }
        // Overlaps: a sweep with the units still running at each start.
        let mut live: Vec<usize> = Vec::new();
        for (k, b) in list.iter().enumerate() {
            live.retain(|&i| list[i].w.to >= b.w.from);
            for &i in &live {
                let a = &list[i];
                if a.w.run == b.w.run {
                    continue;
                }
                let both = match (a.prot, b.prot) {
                    (Some(x), Some(y)) if x.0 <= y.1 && y.0 <= x.1 => {
                        Some(x.1.min(y.1) - x.0.max(y.0))
                    }
                    _ => None,
                };
                let o = WorkOverlap {
                    a: a.w,
                    b: b.w,
                    protected_ns: both.unwrap_or(0),
                };
                match both {
                    Some(_) => v.user_overlaps.push(o),
                    None => v.fenced_overlaps.push(o),
                }
            }
            live.push(k);
        }
    }
    v
}

/// The run holding `partition` at `t`, among `ivs` (several: an overlap).
pub fn holders_at(ivs: &[Interval], partition: u32, t: Ns) -> Vec<RunId> {
    let mut runs: Vec<RunId> = ivs
        .iter()
        .filter(|iv| iv.partition == partition && !iv.is_empty() && iv.contains(t))
        .map(|iv| iv.run)
        .collect();
    runs.sort_unstable();
    runs.dedup();
    runs
}

/// Per partition, when it was active somewhere: the union of its intervals
/// of positive length (an instant's activity covers nothing).
#[derive(Debug, Clone)]
pub struct Coverage {
    /// Per partition, sorted disjoint spans `[from, to]`; touching ones merged.
    spans: Vec<Vec<(Ns, Ns)>>,
}

impl Coverage {
    /// Coverage of partitions `0..ring_size` by `ivs`.
    pub fn new(ivs: &[Interval], ring_size: u32) -> Coverage {
        let mut spans: Vec<Vec<(Ns, Ns)>> = vec![Vec::new(); ring_size as usize];
        for part in per_partition(ivs) {
            let Some(list) = spans.get_mut(part[0].partition as usize) else {
                continue;
            };
            for iv in part.iter().filter(|iv| iv.to > iv.from) {
                match list.last_mut() {
                    Some(last) if iv.from <= last.1 => last.1 = last.1.max(iv.to),
                    _ => list.push((iv.from, iv.to)),
                }
            }
        }
        Coverage { spans }
    }

    /// The longest stretch of `[lo, hi]` during which `partition` was
    /// active nowhere.
    pub fn longest_gap(&self, partition: u32, lo: Ns, hi: Ns) -> Ns {
        longest_gap(
            self.spans
                .get(partition as usize)
                .map_or(&[], Vec::as_slice),
            lo,
            hi,
        )
    }

    /// The longest gap of any partition within `[lo, hi]`, and the (first)
    /// partition that had it.
    pub fn worst_gap(&self, lo: Ns, hi: Ns) -> (Ns, u32) {
        self.worst_gap_among(lo, hi, |_| true)
    }

    /// [`worst_gap`](Self::worst_gap) of the partitions `p` for which
    /// `which(p)` holds (for a judgement that leaves some out, such as those
    /// a frozen member holds).
    pub fn worst_gap_among(&self, lo: Ns, hi: Ns, which: impl Fn(u32) -> bool) -> (Ns, u32) {
        let mut worst = (0, 0);
        for (p, spans) in self.spans.iter().enumerate() {
            if !which(p as u32) {
                continue;
            }
            let g = longest_gap(spans, lo, hi);
            if g > worst.0 {
                worst = (g, p as u32);
            }
        }
        worst
    }
}

/// The longest stretch of `[lo, hi]` not covered by `spans` (sorted,
/// disjoint, non-touching).
pub fn longest_gap(spans: &[(Ns, Ns)], lo: Ns, hi: Ns) -> Ns {
    if hi <= lo {
        return 0;
    }
    let mut cursor = lo;
    let mut best = 0;
    let start = spans.partition_point(|c| c.1 <= lo);
    for c in &spans[start..] {
        if c.0 >= hi {
            break;
        }
        if c.0 > cursor {
            best = best.max(c.0 - cursor);
        }
        cursor = cursor.max(c.1);
        if cursor >= hi {
            break;
        }
    }
    if cursor < hi {
        best = best.max(hi - cursor);
    }
    best
}

/// The judgement of [`judge`], made as intervals close: for a live count
/// (the demo's). Only closed intervals are judged — one whose release has
/// not arrived yet cannot be claimed to overlap anything — so the result
/// does not depend on the order in which runs' records arrive, and equals
/// [`judge`]'s once every run has ended (unless a horizon made it forget).
#[derive(Debug, Clone, Default)]
pub struct Online {
    history: History,
    /// Per partition, the closed intervals kept, each with whether it was
    /// found to regress already.
    kept: HashMap<u32, Vec<(Interval, bool)>>,
    horizon: Option<Ns>,
    intervals: u64,
    overlaps: u64,
    regressions: u64,
    first_overlaps: Vec<Overlap>,
    first_regressions: Vec<Regression>,
}

/// How many examples of each kind [`Online`] keeps.
const ONLINE_EXAMPLES: usize = 5;

impl Online {
    pub fn new() -> Online {
        Online::default()
    }

    /// Forgets, on a partition with many intervals, those that ended more
    /// than `horizon` before the newest end: bounded memory on long runs.
    /// Only records arriving later than that could be missed (a false
    /// negative, never a false positive).
    pub fn with_horizon(horizon: Ns) -> Online {
        Online {
            horizon: Some(horizon),
            ..Online::default()
        }
    }

    /// The history underneath (run names, anomalies, current holders).
    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn acquired(&mut self, run: &str, partitions: &[u32], token: u64, at: Ns) {
        let r = self.history.run_named(run);
        self.history.acquired(r, partitions, token, at);
        self.absorb();
    }

    pub fn released(&mut self, run: &str, partitions: &[u32], at: Ns) {
        let r = self.history.run_named(run);
        self.history.released(r, partitions, at);
        self.absorb();
    }

    fn absorb(&mut self) {
        for new in self.history.take_closed() {
            self.judge_one(new);
        }
    }

    fn judge_one(&mut self, new: Interval) {
        self.intervals += 1;
        let list = self.kept.entry(new.partition).or_default();
        let mut new_regresses = None;
        for (old, flagged) in list.iter_mut() {
            if old.run != new.run && old.intersects(&new) {
                self.overlaps += 1;
                if self.first_overlaps.len() < ONLINE_EXAMPLES {
                    self.first_overlaps.push(Overlap::of(*old, new));
                }
            }
            if old.order(&new) == Ordering::Less {
                if new_regresses.is_none() && new.regresses_against(old) {
                    new_regresses = Some(*old);
                }
            } else if !*flagged && old.regresses_against(&new) {
                *flagged = true;
                self.regressions += 1;
                if self.first_regressions.len() < ONLINE_EXAMPLES {
                    self.first_regressions.push(Regression {
                        earlier: new,
                        later: *old,
                    });
                }
            }
        }
        if let Some(earlier) = new_regresses {
            self.regressions += 1;
            if self.first_regressions.len() < ONLINE_EXAMPLES {
                self.first_regressions.push(Regression {
                    earlier,
                    later: new,
                });
            }
        }
        list.push((new, new_regresses.is_some()));
        if let Some(h) = self.horizon {
            if list.len() > 64 {
                let newest = list.iter().map(|(i, _)| i.to).max().unwrap_or(new.to);
                list.retain(|(i, _)| i.to.saturating_add(h) > newest);
            }
        }
    }

    /// Closed intervals judged.
    pub fn intervals(&self) -> u64 {
        self.intervals
    }

    /// Overlapping pairs found so far.
    pub fn overlaps(&self) -> u64 {
        self.overlaps
    }

    /// Acquisitions found to break the token rule so far.
    pub fn regressions(&self) -> u64 {
        self.regressions
    }

    /// The first few overlaps found.
    pub fn first_overlaps(&self) -> &[Overlap] {
        &self.first_overlaps
    }

    /// The first few regressions found.
    pub fn first_regressions(&self) -> &[Regression] {
        &self.first_regressions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const MS: Ns = 1_000_000;

    /// A history of runs named `a`, `b`, ... from `(run, acquire ms,
    /// release ms, token)` on partition 0.
    fn hist(spec: &[(usize, u64, Option<u64>, u64)]) -> History {
        let mut h = History::new();
        let runs: Vec<RunId> = ["a", "b", "c", "d"].iter().map(|n| h.add_run(n)).collect();
        for &(r, from, to, token) in spec {
            h.acquired(runs[r], &[0], token, from * MS);
            if let Some(to) = to {
                h.released(runs[r], &[0], to * MS);
            }
        }
        h
    }

    fn verdict(spec: &[(usize, u64, Option<u64>, u64)], open_until: u64) -> Verdict {
        hist(spec).judge(open_until * MS)
    }

    #[test]
    fn a_clean_handoff_has_no_overlap_and_rising_tokens() {
        let v = verdict(&[(0, 0, Some(10), 1), (1, 11, Some(20), 2)], 100);
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.transitions, 2);
    }

    #[test]
    fn an_overlap_of_neighbours_is_found() {
        let v = verdict(&[(0, 0, Some(10), 1), (1, 9, Some(20), 2)], 100);
        assert_eq!(v.overlaps.len(), 1);
        let o = v.overlaps[0];
        assert_eq!((o.a.run, o.b.run, o.ns()), (RunId(0), RunId(1), MS));
    }

    #[test]
    fn an_overlap_of_non_neighbours_is_found() {
        // a holds 0..100; b holds 10..20, c 30..40: c overlaps a, though
        // b comes between them in order of acquisition (a check of
        // neighbours only sees a–b).
        let v = verdict(
            &[
                (0, 0, Some(100), 1),
                (1, 10, Some(20), 2),
                (2, 30, Some(40), 3),
            ],
            200,
        );
        let pairs: Vec<(usize, usize)> =
            v.overlaps.iter().map(|o| (o.a.run.0, o.b.run.0)).collect();
        assert_eq!(pairs, vec![(0, 1), (0, 2)]);
        // b and c are disjoint, so not every pair of a partition is one.
        let v = verdict(
            &[
                (0, 0, Some(100), 1),
                (1, 10, Some(20), 2),
                (1, 30, Some(40), 3),
            ],
            200,
        );
        assert_eq!(v.overlaps.len(), 2, "both of b's intervals overlap a");
    }

    #[test]
    fn touching_closed_intervals_overlap() {
        let v = verdict(&[(0, 0, Some(10), 1), (1, 10, Some(20), 2)], 100);
        assert_eq!(v.overlaps.len(), 1, "release at t, acquisition at t");
        assert_eq!(v.overlaps[0].ns(), 0);
        // The same run re-acquiring at the instant it released is no overlap.
        let v = verdict(&[(0, 0, Some(10), 1), (0, 10, Some(20), 1)], 100);
        assert!(v.is_clean(), "{v:?}");
    }

    #[test]
    fn a_release_stamped_before_its_acquisition_is_empty() {
        let h = hist(&[(0, 50, Some(40), 1), (1, 45, Some(60), 2)]);
        let v = h.judge(100 * MS);
        assert!(v.overlaps.is_empty(), "{v:?}");
        assert!(h.intervals(0)[0].is_empty());
        // Only b covers: [45, 60] of [0, 100].
        assert_eq!(
            Coverage::new(&h.intervals(0), 1).longest_gap(0, 0, 100 * MS),
            45 * MS
        );
    }

    #[test]
    fn open_intervals_end_where_told() {
        let h = hist(&[(0, 0, None, 1), (1, 50, Some(60), 2)]);
        assert_eq!(
            h.judge(40 * MS).overlaps.len(),
            0,
            "a's end given before b came"
        );
        assert_eq!(h.judge(50 * MS).overlaps.len(), 1, "touching");
        let ivs = h.intervals(70 * MS);
        let a = ivs.iter().find(|i| i.run == RunId(0)).unwrap();
        assert!(!a.released && a.to == 70 * MS);
        assert_eq!(h.sole_holder(0), Some(RunId(0)));
        assert_eq!(
            (h.holding(RunId(0)), h.holding(RunId(1))),
            (vec![0], vec![])
        );
    }

    #[test]
    fn ending_a_run_closes_what_it_held() {
        let mut h = hist(&[(0, 0, None, 1)]);
        let b = h.add_run("b2");
        h.acquired(b, &[1], 2, 5 * MS);
        assert_eq!(h.end(RunId(0), End::Killed(30 * MS)), 1);
        assert!(h.anomalies().is_empty(), "a kill may leave partitions held");
        assert_eq!(h.closed()[0].to, 30 * MS);
        assert_eq!(h.end(b, End::Exited(40 * MS)), 1);
        assert!(
            h.anomalies()[0].contains("b2 stopped gracefully still holding 1 partitions (first 1)")
        );
        assert_eq!(h.holders(0).count() + h.holders(1).count(), 0);
    }

    #[test]
    fn records_that_do_not_pair_up_are_anomalies() {
        let mut h = History::with_ring_size(4);
        let a = h.add_run("a");
        h.released(a, &[1], 5);
        h.acquired(a, &[2], 1, 10);
        h.acquired(a, &[2], 2, 20);
        h.acquired(a, &[9], 2, 20);
        let text = h.anomalies().join("\n");
        assert!(
            text.contains("a released partition 1 at 5 without holding it"),
            "{text}"
        );
        assert!(
            text.contains("a acquired partition 2 at 20 while holding it"),
            "{text}"
        );
        assert!(
            text.contains("a acquired partition 9 outside the ring"),
            "{text}"
        );
        // Both acquisitions of 2 are on record.
        assert_eq!(h.intervals(30).len(), 2);
    }

    #[test]
    fn a_token_lower_than_an_earlier_owners_is_a_regression() {
        let v = verdict(&[(0, 0, Some(10), 5), (1, 11, Some(20), 3)], 100);
        let r = v.regressions[0];
        assert_eq!(
            (v.regressions.len(), r.earlier.token, r.later.token),
            (1, 5, 3)
        );
        // Against every earlier owner, not only the previous one.
        let v = verdict(&[(0, 0, None, 5), (1, 11, None, 7), (2, 21, None, 6)], 0);
        assert_eq!(v.regressions.len(), 1);
        assert_eq!(v.regressions[0].earlier.run, RunId(1));
    }

    #[test]
    fn an_equal_token_is_fine_only_within_one_run() {
        // (run, acquired at; released at once) with tokens, and how many
        // acquisitions break the rule.
        type Case = (&'static [(usize, u64, u64)], usize, &'static str);
        let cases: [Case; 5] = [
            (&[(0, 0, 3), (1, 11, 3)], 1, "equal token of another run"),
            (
                &[(0, 0, 3), (0, 20, 3)],
                0,
                "fence then barrier within one epoch",
            ),
            (
                &[(0, 0, 3), (0, 20, 2)],
                1,
                "lower than its own earlier token",
            ),
            (
                &[(0, 0, 1), (1, 11, 2), (0, 21, 2)],
                1,
                "back, not above the other",
            ),
            (&[(0, 0, 1), (1, 11, 2), (0, 21, 3)], 0, "back, above both"),
        ];
        for (acqs, expected, why) in cases {
            let spec: Vec<_> = acqs
                .iter()
                .map(|&(r, at, t)| (r, at, Some(at + 5), t))
                .collect();
            let v = verdict(&spec, 100);
            assert_eq!(v.regressions.len(), expected, "{why}: {v:?}");
            assert!(v.overlaps.is_empty(), "{why}");
        }
    }

    #[test]
    fn partitions_are_judged_apart() {
        let mut h = History::new();
        let (a, b) = (h.add_run("a"), h.add_run("b"));
        h.acquired(a, &[0, 1], 1, 0);
        h.acquired(b, &[2], 1, 5);
        h.released(a, &[0, 1], 10);
        h.acquired(b, &[0], 2, 11);
        let v = h.judge(20);
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.transitions, 4);
        assert_eq!(holders_at(&h.intervals(20), 0, 10), vec![a]);
        assert_eq!(holders_at(&h.intervals(20), 0, 11), vec![b]);
        assert!(holders_at(&h.intervals(20), 3, 11).is_empty());
    }

    #[test]
    fn gaps_are_measured_within_the_window() {
        // Partition 0: [10, 20] and [30, 40] ms; partition 1 never held.
        let h = hist(&[(0, 10, Some(20), 1), (1, 30, Some(40), 2)]);
        let c = Coverage::new(&h.intervals(0), 2);
        assert_eq!(c.longest_gap(0, 0, 50 * MS), 10 * MS);
        assert_eq!(c.longest_gap(0, 12 * MS, 38 * MS), 10 * MS);
        assert_eq!(c.longest_gap(0, 12 * MS, 18 * MS), 0);
        assert_eq!(c.longest_gap(0, 41 * MS, 45 * MS), 4 * MS);
        assert_eq!(c.worst_gap(12 * MS, 38 * MS), (26 * MS, 1));
        assert_eq!(
            c.worst_gap_among(12 * MS, 38 * MS, |p| p != 1),
            (10 * MS, 0)
        );
        // Touching intervals leave no gap; an instant's activity covers nothing.
        let h = hist(&[
            (0, 10, Some(20), 1),
            (1, 20, Some(40), 2),
            (2, 45, Some(45), 3),
        ]);
        let c = Coverage::new(&h.intervals(0), 1);
        assert_eq!(c.longest_gap(0, 10 * MS, 50 * MS), 10 * MS);
    }

    #[test]
    fn longest_gap_edges() {
        let c = [(10, 20), (30, 40)];
        assert_eq!(longest_gap(&c, 0, 50), 10);
        assert_eq!(longest_gap(&c, 12, 38), 10);
        assert_eq!(longest_gap(&c, 12, 18), 0);
        assert_eq!(longest_gap(&c, 15, 32), 10);
        assert_eq!(longest_gap(&c, 41, 45), 4);
        assert_eq!(longest_gap(&[], 5, 9), 4);
        assert_eq!(longest_gap(&c, 9, 9), 0);
    }

    #[test]
    fn the_sweep_agrees_with_every_pair_checked_by_hand() {
        let mut rng = Rng::new(11);
        for _ in 0..300 {
            let ivs = random_intervals(&mut rng, 3);
            let mut expected = 0;
            for (i, x) in ivs.iter().enumerate() {
                for y in &ivs[i + 1..] {
                    if x.run != y.run && x.intersects(y) {
                        expected += 1;
                    }
                }
            }
            assert_eq!(overlaps(&ivs).len(), expected, "{ivs:?}");
        }
    }

    #[test]
    fn online_agrees_with_judge_in_any_arrival_order() {
        let mut rng = Rng::new(5);
        for _ in 0..300 {
            let ivs = random_intervals(&mut rng, 2);
            let batch = judge(&ivs);
            // Feed as records, releases arriving in a random order.
            let mut closing = ivs.clone();
            rng.shuffle(&mut closing);
            let mut online = Online::new();
            for iv in &closing {
                let name = format!("r{}", iv.run.0);
                online.acquired(&name, &[iv.partition], iv.token, iv.from);
                online.released(&name, &[iv.partition], iv.to);
            }
            assert_eq!(online.intervals(), ivs.len() as u64);
            assert_eq!(online.overlaps(), batch.overlaps.len() as u64, "{ivs:?}");
            assert_eq!(
                online.regressions(),
                batch.regressions.len() as u64,
                "{ivs:?}"
            );
        }
    }

    #[test]
    fn online_judges_only_closed_intervals() {
        let mut o = Online::new();
        // b's records arrive first, a's release last.
        o.acquired("b", &[2], 2, 5);
        o.acquired("a", &[2], 1, 0);
        o.released("b", &[2], 20);
        assert_eq!(
            o.overlaps(),
            0,
            "a's interval is still open: not judged yet"
        );
        o.released("a", &[2], 6);
        assert_eq!(o.overlaps(), 1);
        assert_eq!(o.first_overlaps()[0].a.token, 1);
        let text = o.history().describe_overlap(&o.first_overlaps()[0], 0);
        assert!(
            text.starts_with("partition 2: a and b both active"),
            "{text}"
        );
        o.acquired("c", &[2], 2, 30);
        o.released("c", &[2], 40);
        assert_eq!(o.regressions(), 1, "c's token equals b's");
    }

    /// Runs `a` and `b` from member-log lines (times in ms), ended at 1 s.
    fn work_history(a: &str, b: &str) -> History {
        let mut h = History::with_ring_size(4);
        for (name, text) in [("a", a), ("b", b)] {
            let run = h.add_run(name);
            let text: String = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (t, rest) = l.split_once(' ').unwrap();
                    format!("{} {rest}\n", t.parse::<u64>().unwrap() * MS)
                })
                .collect();
            let (evs, errs) = crate::member_log::parse_events(&text);
            assert!(errs.is_empty(), "{errs:?}");
            for ev in &evs {
                h.logged(run, ev);
            }
            h.end(run, End::Exited(1000 * MS));
        }
        h
    }

    /// a holds partition 0 from 0 ms and works on it from 10 to 150 ms; it
    /// releases it at 100 ms with a drain guard. b: `b`.
    fn handoff(b: &str) -> History {
        work_history(
            "0 acquired 1 1 0
             10 work-start 0
             100 released Handoff 2 0 drain
             150 work-end 0",
            b,
        )
    }

    #[test]
    fn a_drained_handoff_has_no_user_overlap() {
        let h = handoff(
            "160 acquired 2 2 0
             170 work-start 0
             300 work-end 0
             400 released Stopping 2 0 drain",
        );
        assert!(h.anomalies().is_empty(), "{:?}", h.anomalies());
        let v = h.judge_work(1000 * MS);
        assert!(
            v.user_overlaps.is_empty() && v.fenced_overlaps.is_empty(),
            "{v:?}"
        );
        assert_eq!((v.units, v.handoffs, v.drained, v.cut), (2, 1, 1, 0));
        assert!(v.anomalies.is_empty(), "{:?}", v.anomalies);
        assert!(h.judge(1000 * MS).is_clean());
    }

    #[test]
    fn work_of_the_next_owner_during_a_drain_is_a_user_overlap() {
        // The guard was dropped at once (the mutation): b started at 120 ms
        // while a's unit ran until 150 ms. Ownership never overlapped.
        let h = handoff(
            "110 acquired 2 2 0
             120 work-start 0
             300 work-end 0
             400 released Stopping 2 0",
        );
        assert!(h.judge(1000 * MS).is_clean());
        let v = h.judge_work(1000 * MS);
        assert_eq!(v.user_overlaps.len(), 1, "{v:?}");
        let o = v.user_overlaps[0];
        assert_eq!((o.a.run, o.b.run, o.partition()), (RunId(0), RunId(1), 0));
        assert_eq!(o.protected_ns, 30 * MS);
        assert!(v.fenced_overlaps.is_empty());
        // Touching counts, as for ownership.
        let h = handoff(
            "110 acquired 2 2 0
             150 work-start 0
             300 work-end 0
             400 released Stopping 2 0",
        );
        assert_eq!(h.judge_work(1000 * MS).user_overlaps.len(), 1);
    }

    #[test]
    fn work_past_a_lease_that_ended_is_cut_not_a_user_overlap() {
        // a's lease ran out during the drain (a forced release of the
        // draining partition at 120 ms: no anomaly); b took over at 130 ms.
        let b = "130 acquired 2 2 0
                 135 work-start 0
                 300 work-end 0
                 400 released Stopping 2 0";
        let h = work_history(
            "0 acquired 1 1 0
             10 work-start 0
             100 released Handoff 2 0 drain
             120 released LeaseExpired 2 0
             150 work-end 0 cut",
            b,
        );
        assert!(h.anomalies().is_empty(), "{:?}", h.anomalies());
        let v = h.judge_work(1000 * MS);
        assert!(v.user_overlaps.is_empty(), "{v:?}");
        assert_eq!((v.fenced_overlaps.len(), v.cut), (1, 1));
        // b starting before the lease ended (at 115 ms) is a user overlap
        // all the same: the drain should still have held it back.
        let h = work_history(
            "0 acquired 1 1 0
             10 work-start 0
             100 released Handoff 2 0 drain
             120 released LeaseExpired 2 0
             150 work-end 0 cut",
            &b.replace("135 work-start", "115 work-start")
                .replace("130 acquired", "112 acquired"),
        );
        assert_eq!(h.judge_work(1000 * MS).user_overlaps.len(), 1);
        // A held partition fenced at 100 ms, the unit stopped late (a frozen
        // process, so not marked cut): fenced.
        let h = work_history(
            "0 acquired 1 1 0
             10 work-start 0
             100 released LeaseExpired 1 0
             150 work-end 0",
            b,
        );
        let v = h.judge_work(1000 * MS);
        assert_eq!(
            (v.user_overlaps.len(), v.fenced_overlaps.len(), v.cut),
            (0, 1, 1)
        );
        // A unit marked cut with no forced release on record (it found its
        // lease lapsed) is protected up to its ownership's end only.
        let h = handoff(b);
        assert_eq!(h.judge_work(1000 * MS).user_overlaps.len(), 1, "not cut");
        let h = work_history(
            "0 acquired 1 1 0
             10 work-start 0
             100 released Handoff 2 0 drain
             150 work-end 0 cut",
            b,
        );
        let v = h.judge_work(1000 * MS);
        assert_eq!((v.user_overlaps.len(), v.fenced_overlaps.len()), (0, 1));
    }

    #[test]
    fn work_records_that_do_not_pair_up_are_anomalies() {
        let h = work_history(
            "0 acquired 1 1 0
             10 work-start 0
             20 work-start 0
             30 work-end 0
             40 work-end 0
             50 released LeaseExpired 1 0
             60 released LeaseExpired 1 0",
            "5 work-start 1",
        );
        let text = h.anomalies().join("\n");
        assert!(
            text.contains("a began work on partition 0 at 20000000 while working"),
            "{text}"
        );
        assert!(
            text.contains("a ended work on partition 0 at 40000000 without"),
            "{text}"
        );
        assert!(
            text.contains("a released partition 0 at 60000000 without holding it"),
            "{text}"
        );
        assert!(
            text.contains("b stopped gracefully still working on 1 partitions"),
            "{text}"
        );
        let v = h.judge_work(1000 * MS);
        assert!(
            v.anomalies[0].contains("b worked on partition 1"),
            "{:?}",
            v.anomalies
        );
        // A kill ends the unit in progress at the kill, without an anomaly.
        let mut h = History::new();
        let a = h.add_run("a");
        h.acquired(a, &[0], 1, 0);
        h.work_started(a, &[0], 5);
        h.end(a, End::Killed(50));
        assert!(h.anomalies().is_empty(), "{:?}", h.anomalies());
        assert_eq!(h.work()[0].to, 50);
    }

    /// Up to 8 intervals of 3 runs on `parts` partitions, with coarse times
    /// and tokens so that ties, touching ends and empty intervals happen.
    /// Each run's intervals of a partition are disjoint (a run holds a
    /// partition once at a time).
    fn random_intervals(rng: &mut Rng, parts: u32) -> Vec<Interval> {
        let mut out: Vec<Interval> = Vec::new();
        let n = rng.range(0, 8);
        for _ in 0..n {
            let run = RunId(rng.below(3) as usize);
            let partition = rng.below(parts as u64) as u32;
            let from = rng.below(20);
            let to = if rng.chance(0.1) {
                from.saturating_sub(1)
            } else {
                from + rng.below(6)
            };
            let iv = Interval {
                run,
                partition,
                token: rng.range(1, 5),
                from,
                to,
                released: true,
                drained: false,
            };
            let clash = out.iter().any(|o| {
                o.run == run
                    && o.partition == partition
                    && o.from.min(o.to) <= iv.from.max(iv.to)
                    && iv.from.min(iv.to) <= o.from.max(o.to)
            });
            if !clash {
                out.push(iv);
            }
        }
        out
    }
}
