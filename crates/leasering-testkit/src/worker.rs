//! The drain workload (docs/protocol.md §4): a user's worker that does
//! units of work on the partitions its member owns and holds back their
//! handoff with the drain guard until the unit in progress has ended — the
//! way a service is meant to use `NodeBuilder::drain_timeout`. Shared by the
//! in-process drain test (`tests/it/one_owner/claims.rs`), the member process
//! (`leasering-member`, this crate's bin: the chaos harness's members) and the handoff
//! bench's drain section (`benches/handoff.rs`), so that all of them do
//! the same thing and log it in the same [`member_log`](crate::member_log)
//! lines.
//!
//! How it works:
//!
//! * The partitions are split into `lanes` (partition `p` goes to lane
//!   `p % lanes`), one thread each, so that units on different partitions
//!   begin and end at different moments. A lane takes an
//!   `owned_partitions()` snapshot, marks `work-start` for its partitions in
//!   it, works for a random time in `unit_min..=unit_max`, marks
//!   `work-end`, and starts over.
//! * A graceful `Released` (handoff, stop) with a drain guard: each lane
//!   concerned gets a clone of the guard and drops it once its unit in
//!   progress has ended — after the `work-end` mark, so that the mark is
//!   taken before the next owner can start. A lane between units drops it
//!   at once: its next snapshot cannot list the released partitions
//!   (`owns()` is false from the release on), so no unit of it runs on them.
//! * `Released { LeaseExpired | Evicted }` (or a release without a drain
//!   guard) cannot wait: the lanes stop the work on those partitions at
//!   once (`work-end … cut`). A unit that ends finding the local lease
//!   lapsed (the process was frozen through it, say) is marked `cut` too:
//!   it did not run under the drain's protection, whatever the events said.
//! * The mutation [`WorkConfig::drop_guards_at_once`] drops every guard as
//!   it arrives while the work goes on: the handoff is then no longer
//!   drained, which the oracle's user-work judgement must catch.
//!
//! The worker calls `node.owned_partitions()` and `node.status()` only;
//! it never stops the node. Stop the node first (`stop()` waits for the
//! drains, which needs the lanes running), then the worker.
//!
//! This file is compiled into the member process through `#[path]`, like
//! the log format: it uses only `std`, the library and the library's own
//! dependencies, and reaches the log format and the generator as
//! `crate::member_log` and `crate::rng`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use leasering::{DrainGuard, Event, ReleaseReason, RingNode};

use crate::member_log::Ev;
use crate::rng::Rng;

/// Where the worker's records go: the member process writes them to its
/// event log; a test collects them.
pub type Sink = Arc<dyn Fn(Ev) + Send + Sync>;

/// How an idle lane (nothing to work on) looks again without being woken.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// What the worker does.
#[derive(Debug, Clone)]
pub struct WorkConfig {
    /// Shortest unit of work.
    pub unit_min: Duration,
    /// Longest unit of work.
    pub unit_max: Duration,
    /// Threads, each working on the partitions `p` with `p % lanes == lane`.
    pub lanes: u32,
    /// Seeds the unit lengths.
    pub seed: u64,
    /// The mutation: drop every drain guard the moment it arrives while the
    /// unit in progress goes on — the drain then protects nothing.
    pub drop_guards_at_once: bool,
    /// Also hand every ownership event (as a [`member_log`](crate::member_log)
    /// record) to the sink, in the order the member emitted them: for a test
    /// that judges a history of its own. The member process logs them itself.
    pub log_ownership: bool,
}

impl Default for WorkConfig {
    fn default() -> WorkConfig {
        WorkConfig {
            unit_min: Duration::from_millis(20),
            unit_max: Duration::from_millis(200),
            lanes: 4,
            seed: 0,
            drop_guards_at_once: false,
            log_ownership: false,
        }
    }
}

/// The log record of an ownership event (`None` for other kinds).
pub fn record_of(event: &Event) -> Option<Ev> {
    let ns = leasering::monotonic_ns;
    Some(match event {
        Event::Acquired {
            partitions,
            token,
            epoch,
            at,
            ..
        } => Ev::Acquired {
            at: ns(*at),
            token: *token,
            epoch: *epoch,
            parts: partitions.clone(),
        },
        Event::Released {
            partitions,
            reason,
            epoch,
            at,
            drain,
            ..
        } => Ev::Released {
            at: ns(*at),
            reason: format!("{reason:?}"),
            epoch: *epoch,
            parts: partitions.clone(),
            drain: drain.is_some(),
        },
        Event::Joined { epoch, at, .. } => Ev::Joined {
            at: ns(*at),
            epoch: *epoch,
        },
        Event::ViewChanged {
            epoch, members, at, ..
        } => Ev::View {
            at: ns(*at),
            epoch: *epoch,
            members: *members as u32,
        },
        _ => return None,
    })
}

enum Msg {
    /// A drain guard of partitions of this lane: drop it once no unit on
    /// them runs.
    Guard(DrainGuard),
    /// Stop working on these partitions at once.
    Cut(Vec<u32>),
    /// Partitions were acquired: an idle lane looks again.
    Wake,
    /// Finish the unit in progress and end.
    Stop,
}

/// A running worker of one member. [`stop`](Worker::stop) it after the node.
pub struct Worker {
    lanes: Vec<Sender<Msg>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn now_ns() -> u64 {
    leasering::monotonic_ns(Instant::now())
}

impl Worker {
    /// Starts working for `node`; `events` must be a subscription of that
    /// node that sees every event (from `NodeBuilder::subscribe`, before the
    /// start), and no one else's: the worker holds the guards of its copies.
    pub fn start(node: RingNode, events: Receiver<Event>, cfg: WorkConfig, sink: Sink) -> Worker {
        let lanes = cfg.lanes.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let name = node.node_id().to_string();
        for lane in 0..lanes {
            let (tx, rx) = unbounded();
            senders.push(tx);
            let l = Lane {
                node: node.clone(),
                lane,
                lanes,
                rx,
                rng: Rng::new(cfg.seed ^ (u64::from(lane) << 40) ^ 0x776f_726b),
                cfg: cfg.clone(),
                sink: sink.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("work-{name}-{lane}"))
                    .spawn(move || l.run())
                    .expect("spawn a work lane"),
            );
        }
        let dispatch = Dispatch {
            lanes: senders.clone(),
            cfg,
            sink,
            stop: stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("work-{name}-events"))
                .spawn(move || dispatch.run(events))
                .expect("spawn the work events thread"),
        );
        Worker {
            lanes: senders,
            stop,
            threads,
        }
    }

    /// Lets every lane finish its unit in progress, and ends the worker.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in &self.lanes {
            let _ = l.send(Msg::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The events thread: hands guards and cuts to the lanes concerned.
struct Dispatch {
    lanes: Vec<Sender<Msg>>,
    cfg: WorkConfig,
    sink: Sink,
    stop: Arc<AtomicBool>,
}

impl Dispatch {
    fn lanes_of(&self, partitions: &[u32]) -> Vec<(usize, Vec<u32>)> {
        let n = self.lanes.len();
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); n];
        for p in partitions {
            per[*p as usize % n].push(*p);
        }
        per.into_iter()
            .enumerate()
            .filter(|(_, ps)| !ps.is_empty())
            .collect()
    }

    fn run(self, events: Receiver<Event>) {
        // Until the node stops (its channels disconnect) or the worker does.
        while !self.stop.load(Ordering::SeqCst) {
            let ev = match events.recv_timeout(IDLE_POLL) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => continue,
            };
            if self.cfg.log_ownership {
                if let Some(rec) = record_of(&ev) {
                    (self.sink)(rec);
                }
            }
            match ev {
                Event::Acquired { partitions, .. } => {
                    for (lane, _) in self.lanes_of(&partitions) {
                        let _ = self.lanes[lane].send(Msg::Wake);
                    }
                }
                Event::Released {
                    partitions,
                    reason,
                    drain,
                    ..
                } => {
                    let can_wait =
                        matches!(reason, ReleaseReason::Handoff | ReleaseReason::Stopping);
                    match drain {
                        Some(g) if can_wait && !self.cfg.drop_guards_at_once => {
                            for (lane, _) in self.lanes_of(&partitions) {
                                let _ = self.lanes[lane].send(Msg::Guard(g.clone()));
                            }
                        }
                        // The mutation: the guard goes at once, the work
                        // goes on.
                        Some(g) if can_wait => drop(g),
                        _ => {
                            for (lane, ps) in self.lanes_of(&partitions) {
                                let _ = self.lanes[lane].send(Msg::Cut(ps));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

struct Lane {
    node: RingNode,
    lane: u32,
    lanes: u32,
    rx: Receiver<Msg>,
    rng: Rng,
    cfg: WorkConfig,
    sink: Sink,
}

/// What a lane does next, after the messages between two units.
enum Next {
    Work,
    End,
}

impl Lane {
    /// Between units nothing of this lane runs: guards that came in belong
    /// to units that have ended (or to partitions that no unit will start
    /// on), so they go at once.
    fn between(&self, msg: Msg) -> Next {
        match msg {
            Msg::Guard(g) => drop(g),
            Msg::Cut(_) | Msg::Wake => {}
            Msg::Stop => return Next::End,
        }
        Next::Work
    }

    fn unit(&mut self) -> Duration {
        let (lo, hi) = (self.cfg.unit_min, self.cfg.unit_max.max(self.cfg.unit_min));
        let us = self.rng.range(lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(us)
    }

    fn run(mut self) {
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(m) => {
                        if let Next::End = self.between(m) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let owned = self.node.owned_partitions();
            let mut parts: Vec<u32> = owned
                .iter()
                .filter(|p| p % self.lanes == self.lane)
                .collect();
            if parts.is_empty() {
                match self.rx.recv_timeout(IDLE_POLL) {
                    Ok(m) => {
                        if let Next::End = self.between(m) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            // Read after the snapshot: the work begins no earlier.
            (self.sink)(Ev::WorkStart {
                at: now_ns(),
                parts: parts.clone(),
            });
            let until = Instant::now() + self.unit();
            let mut guards: Vec<DrainGuard> = Vec::new();
            let mut stopping = false;
            while !parts.is_empty() {
                match self.rx.recv_deadline(until) {
                    Ok(Msg::Guard(g)) => guards.push(g),
                    Ok(Msg::Cut(ps)) => {
                        let (cut, rest): (Vec<u32>, Vec<u32>) =
                            parts.iter().partition(|p| ps.contains(p));
                        parts = rest;
                        if !cut.is_empty() {
                            (self.sink)(Ev::WorkEnd {
                                at: now_ns(),
                                parts: cut,
                                cut: true,
                            });
                        }
                    }
                    Ok(Msg::Wake) => {}
                    Ok(Msg::Stop) => stopping = true,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            if !parts.is_empty() {
                // A unit that outlived the local lease (its process was
                // frozen, say) ran unprotected for a while, whether or not
                // a `LeaseExpired` reached it first.
                let lapsed = self.node.status().lease_left.is_none();
                (self.sink)(Ev::WorkEnd {
                    at: now_ns(),
                    parts,
                    cut: lapsed,
                });
            }
            // Only now, after the mark: the next owners start after it.
            drop(guards);
            if stopping {
                return;
            }
        }
    }
}
