//! A user of drained handoffs (DESIGN §4.0 rule 7, guarantee 6), for tests
//! and benches: a [`DrainWorker`] does units of "user work" on every
//! partition its member owns, and keeps the [`DrainGuard`] of a released
//! partition until the unit in progress on it has ended. Every unit is
//! recorded in a [`WorkLog`] on the oracle's clock, so that a test or a
//! bench can judge the *user's* work, not just the member's ownership: two
//! members' units on one partition that intersect are an overlap of user
//! work, which a drained handoff must never produce.
//!
//! The worker follows [`DrainGuard`]'s contract as a service would:
//!
//! * a unit works on the snapshot of `owned_partitions()` taken when it
//!   starts, and its recorded start is read *before* that snapshot (so the
//!   recorded interval covers the real one);
//! * a `Released` with a guard whose partitions the unit in progress works
//!   on is kept until that unit ends (its end is recorded first, then the
//!   guard dropped); otherwise it is dropped at once — nothing runs on them;
//! * a `Released` without a guard (a lease that ran out, an eviction, or no
//!   drain timeout configured) means "stop now": the unit in progress ends
//!   at once if it works on any of those partitions.
//!
//! Units should be shorter than the member's drain timeout: at the timeout
//! the next owner starts whether or not the unit has ended (the tokens are
//! what protects a store then).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use leasering::{DrainGuard, Event, RingNode};

use crate::oracle::{self, Ns};

/// One unit of user work of one worker on one partition: `[from, to]` on the
/// oracle's clock, both ends included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkUnit {
    /// The worker (its member's node id).
    pub worker: String,
    pub from: Ns,
    pub to: Ns,
}

/// Two units of different workers on one partition that intersect (touching
/// counts); `a` started first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkOverlap {
    pub partition: u32,
    pub a: WorkUnit,
    pub b: WorkUnit,
}

/// Every unit of work of any number of workers, per partition. Cloning
/// shares the log.
#[derive(Debug, Clone, Default)]
pub struct WorkLog {
    units: Arc<Mutex<BTreeMap<u32, Vec<WorkUnit>>>>,
}

impl WorkLog {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Vec<WorkUnit>>> {
        // A panicking worker must not hide the record from the judge.
        self.units.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `worker` worked on `partitions` from `from` to `to`.
    pub fn record(&self, worker: &str, partitions: &[u32], from: Ns, to: Ns) {
        let mut w = self.lock();
        for &p in partitions {
            w.entry(p).or_default().push(WorkUnit {
                worker: worker.to_string(),
                from,
                to,
            });
        }
    }

    /// Every unit so far, per partition, sorted by start.
    pub fn snapshot(&self) -> BTreeMap<u32, Vec<WorkUnit>> {
        let mut all = self.lock().clone();
        for units in all.values_mut() {
            units.sort_by_key(|u| (u.from, u.to));
        }
        all
    }

    /// How many (partition, unit) records there are.
    pub fn units(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Every pair of units of different workers on one partition that
    /// intersect (all pairs: sorted by start, each unit against the later
    /// ones that start before it ends).
    pub fn overlaps(&self) -> Vec<WorkOverlap> {
        let mut out = Vec::new();
        for (p, units) in self.snapshot() {
            for (k, a) in units.iter().enumerate() {
                for b in units[k + 1..].iter().take_while(|b| b.from <= a.to) {
                    if a.worker != b.worker {
                        out.push(WorkOverlap {
                            partition: p,
                            a: a.clone(),
                            b: b.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Handoffs of user work: per partition, consecutive units (by start)
    /// of different workers.
    pub fn handoffs(&self) -> usize {
        self.snapshot()
            .values()
            .map(|u| u.windows(2).filter(|x| x[0].worker != x[1].worker).count())
            .sum()
    }

    /// The end of `worker`'s last unit on `partition` that started at or
    /// before `at` (the unit in progress at `at`, or the one before it).
    pub fn last_end(&self, partition: u32, worker: &str, at: Ns) -> Option<Ns> {
        self.lock()
            .get(&partition)?
            .iter()
            .filter(|u| u.worker == worker && u.from <= at)
            .map(|u| u.to)
            .max()
    }
}

/// Messages to the work thread.
enum Control {
    /// End unit `seq` now (a release without a guard touched it).
    Abort(u64),
    /// End the unit in progress and exit.
    Stop,
}

/// What the event thread needs to know of the unit in progress.
#[derive(Default)]
struct Current {
    /// The unit's sequence number.
    seq: u64,
    /// Its partitions, ascending; empty between units.
    batch: Vec<u32>,
    /// Guards of released partitions it works on: dropped when it ends.
    kept: Vec<DrainGuard>,
}

/// Counters of a [`DrainWorker`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// Guards kept until the unit in progress ended.
    pub kept: u64,
    /// Guards dropped at once (no unit in progress on their partitions).
    pub dropped_at_once: u64,
    /// Units ended early by a release without a guard.
    pub aborted: u64,
}

/// A member's user: units of work on its partitions, drained handoffs
/// honoured (see the [module docs](self)). Stop it with
/// [`stop`](DrainWorker::stop); dropping it ends the work thread without
/// stopping the member.
pub struct DrainWorker {
    node: RingNode,
    control: Sender<Control>,
    stats: Arc<Mutex<WorkerStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl DrainWorker {
    /// Starts the worker of `node`, whose events `events` delivers (a
    /// receiver from [`leasering::Builder::subscribe`], so that no release
    /// is missed), recording into `log` units of `unit` each.
    pub fn start(
        node: RingNode,
        events: Receiver<Event>,
        log: WorkLog,
        unit: Duration,
    ) -> DrainWorker {
        DrainWorker::start_with_tee(node, events, log, unit, None)
    }

    /// Like [`start`](DrainWorker::start), and forwards every event to
    /// `tee` once the worker has taken its guard out (`drain` is `None` in
    /// the copy): a consumer that keeps events (a recorder, a bench's log)
    /// would otherwise hold every drain until its timeout.
    pub fn start_with_tee(
        node: RingNode,
        events: Receiver<Event>,
        log: WorkLog,
        unit: Duration,
        tee: Option<Sender<Event>>,
    ) -> DrainWorker {
        let (control, control_rx) = crossbeam_channel::unbounded();
        let current: Arc<Mutex<Current>> = Arc::default();
        let stats: Arc<Mutex<WorkerStats>> = Arc::default();
        let id = node.node_id().to_string();
        let on_events = {
            let (current, stats, control) = (current.clone(), stats.clone(), control.clone());
            std::thread::Builder::new()
                .name(format!("drain-events-{id}"))
                .spawn(move || events_loop(events, current, stats, control, tee))
                .expect("spawn the worker's event thread")
        };
        let work = {
            let (node, current, stats) = (node.clone(), current, stats.clone());
            std::thread::Builder::new()
                .name(format!("drain-work-{id}"))
                .spawn(move || work_loop(node, current, stats, log, unit, control_rx))
                .expect("spawn the worker's work thread")
        };
        DrainWorker {
            node,
            control,
            stats,
            threads: vec![on_events, work],
        }
    }

    /// The member.
    pub fn node(&self) -> &RingNode {
        &self.node
    }

    /// The worker's counters so far.
    pub fn stats(&self) -> WorkerStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the member gracefully — `stop()` waits for its drains, which
    /// this worker ends as its units finish — then the worker; returns the
    /// member's `stop()` result and the worker's counters.
    pub fn stop(mut self) -> (leasering::Result<()>, WorkerStats) {
        let result = self.node.stop();
        let _ = self.control.send(Control::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (result, self.stats())
    }
}

impl Drop for DrainWorker {
    fn drop(&mut self) {
        // The work thread holds a clone of the node: without this it would
        // keep the member alive for ever. (The event thread ends when the
        // member stops and its channel disconnects.)
        let _ = self.control.send(Control::Stop);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn events_loop(
    events: Receiver<Event>,
    current: Arc<Mutex<Current>>,
    stats: Arc<Mutex<WorkerStats>>,
    control: Sender<Control>,
    tee: Option<Sender<Event>>,
) {
    for mut ev in events {
        if let Event::Released {
            partitions, drain, ..
        } = &mut ev
        {
            let guard = drain.take();
            // Decided under the lock the work thread takes to start and to
            // end a unit: either the unit in progress works on one of these
            // partitions (then it keeps the guard, or is cut short), or no
            // unit does — `owns()` was false before this event was sent, so
            // every later snapshot leaves them out.
            let mut cur = lock(&current);
            let busy = partitions
                .iter()
                .any(|p| cur.batch.binary_search(p).is_ok());
            match guard {
                Some(g) if busy => {
                    cur.kept.push(g);
                    lock(&stats).kept += 1;
                }
                Some(g) => {
                    drop(cur);
                    drop(g);
                    lock(&stats).dropped_at_once += 1;
                }
                None if busy => {
                    let _ = control.send(Control::Abort(cur.seq));
                }
                None => {}
            }
        }
        if let Some(tee) = &tee {
            let _ = tee.send(ev);
        }
    }
}

/// How long an idle worker (no partitions) waits before looking again: a
/// newly acquired partition is worked on within this.
const IDLE_POLL: Duration = Duration::from_millis(1);

fn work_loop(
    node: RingNode,
    current: Arc<Mutex<Current>>,
    stats: Arc<Mutex<WorkerStats>>,
    log: WorkLog,
    unit: Duration,
    control: Receiver<Control>,
) {
    let id = node.node_id().to_string();
    loop {
        let (seq, from, batch) = {
            let mut cur = lock(&current);
            cur.seq += 1;
            // Read before the snapshot: the recorded unit starts no later
            // than the real one.
            let from = oracle::now();
            cur.batch = node.owned_partitions().iter().collect();
            (cur.seq, from, cur.batch.clone())
        };
        let wait = if batch.is_empty() { IDLE_POLL } else { unit };
        let until = Instant::now() + wait;
        let mut stop = false;
        loop {
            match control.recv_deadline(until) {
                Ok(Control::Abort(s)) if s == seq => {
                    lock(&stats).aborted += 1;
                    break;
                }
                Ok(Control::Abort(_)) => continue, // for a unit that has ended
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    stop = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        let kept = {
            let mut cur = lock(&current);
            // The end is on record before any guard of this unit goes: the
            // next owner can only start after it.
            let to = oracle::now();
            if !batch.is_empty() {
                log.record(&id, &batch, from, to);
            }
            cur.batch.clear();
            std::mem::take(&mut cur.kept)
        };
        drop(kept);
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_pairs_of_different_workers_that_intersect_and_touching_counts() {
        let log = WorkLog::default();
        log.record("a", &[1, 2], 0, 10);
        log.record("a", &[1], 10, 20); // the same worker again: no overlap
        log.record("b", &[2], 10, 30); // touches a's [0, 10] on 2
        log.record("b", &[1], 21, 30); // after a's last unit on 1
        log.record("c", &[1], 25, 26); // inside b's unit on 1
        let o = log.overlaps();
        let pairs: Vec<(u32, &str, &str)> = o
            .iter()
            .map(|o| (o.partition, o.a.worker.as_str(), o.b.worker.as_str()))
            .collect();
        assert_eq!(pairs, vec![(1, "b", "c"), (2, "a", "b")]);
        // 1: a, a, b, c → 2 handoffs; 2: a, b → 1.
        assert_eq!(log.handoffs(), 3);
        assert_eq!(log.units(), 6);
    }

    #[test]
    fn last_end_is_that_of_the_unit_in_progress_or_the_one_before() {
        let log = WorkLog::default();
        log.record("a", &[7], 0, 10);
        log.record("a", &[7], 11, 20);
        log.record("b", &[7], 30, 40);
        assert_eq!(log.last_end(7, "a", 15), Some(20));
        assert_eq!(log.last_end(7, "a", 25), Some(20));
        assert_eq!(log.last_end(7, "a", 5), Some(10));
        assert_eq!(log.last_end(7, "b", 5), None);
        assert_eq!(log.last_end(8, "a", 5), None);
    }
}
