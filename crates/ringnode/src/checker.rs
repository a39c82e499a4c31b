//! Two independent, sound overlap checks: neither ever reports an overlap
//! that did not happen.
//!
//! * [`Checker`] builds, per partition, the intervals of activity of every
//!   member from its events (`Acquired.at` .. `Released.at`, one monotonic
//!   clock) and reports two *different* members' intervals that intersect.
//!   Only closed intervals are judged — an interval whose end is not known
//!   yet (its `Released` still in flight) cannot be claimed to overlap
//!   anything — so the result is independent of the order in which events
//!   arrive and complete once every member has stopped.
//! * [`Sampler`] reads every member's `owned_partitions()` over and over and
//!   reports partition `p` when member X held it, with the same token, in
//!   two consecutive reads while member Y held it in a read made between
//!   them. The same token means X's ownership did not break in between
//!   (a re-activation would carry a strictly greater token, after Y's).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leasering::{OwnedPartitions, RingNode};

#[derive(Debug, Clone, Copy)]
struct Interval {
    member: u32,
    token: u64,
    from: Instant,
    to: Instant,
}

/// The event-based checker.
pub struct Checker {
    start: Instant,
    names: Vec<String>,
    index: HashMap<String, u32>,
    /// (member, partition) -> (token, since)
    open: HashMap<(u32, u32), (u64, Instant)>,
    /// Per partition, closed intervals (recent ones; see `prune`).
    closed: Vec<Vec<Interval>>,
    overlaps: u64,
    regressions: u64,
    intervals: u64,
    examples: Vec<String>,
}

/// Closed intervals older than this (relative to the newest end seen on the
/// partition) are forgotten on long runs. Only events that arrive later than
/// this could be missed (a false negative, never a false positive).
const KEEP: Duration = Duration::from_secs(120);

impl Checker {
    pub fn new(ring_size: u32, start: Instant) -> Checker {
        Checker {
            start,
            names: Vec::new(),
            index: HashMap::new(),
            open: HashMap::new(),
            closed: vec![Vec::new(); ring_size as usize],
            overlaps: 0,
            regressions: 0,
            intervals: 0,
            examples: Vec::new(),
        }
    }

    fn member(&mut self, name: &str) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        i
    }

    pub fn acquired(&mut self, member: &str, partitions: &[u32], token: u64, at: Instant) {
        let m = self.member(member);
        for &p in partitions {
            self.open.insert((m, p), (token, at));
        }
    }

    pub fn released(&mut self, member: &str, partitions: &[u32], at: Instant) {
        let m = self.member(member);
        for &p in partitions {
            let Some((token, from)) = self.open.remove(&(m, p)) else {
                continue;
            };
            if at <= from {
                continue; // never active: nothing to judge
            }
            let Some(list) = self.closed.get_mut(p as usize) else {
                continue;
            };
            let new = Interval {
                member: m,
                token,
                from,
                to: at,
            };
            self.intervals += 1;
            for old in list.iter() {
                if old.member == m {
                    continue;
                }
                if new.from < old.to && old.from < new.to {
                    self.overlaps += 1;
                    if self.examples.len() < 5 {
                        let (a, b) = (&self.names[old.member as usize], &self.names[m as usize]);
                        let t = |i: Instant| crate::util::since(self.start, i);
                        self.examples.push(format!(
                            "partition {p}: {a} active {:.4}..{:.4}s and {b} active {:.4}..{:.4}s",
                            t(old.from),
                            t(old.to),
                            t(new.from),
                            t(new.to)
                        ));
                    }
                } else {
                    // Disjoint: the later owner's token must be the greater.
                    let (first, second) = if old.to <= new.from {
                        (old, &new)
                    } else {
                        (&new, old)
                    };
                    if second.token <= first.token {
                        self.regressions += 1;
                    }
                }
            }
            list.push(new);
            if list.len() > 64 {
                let newest = list.iter().map(|i| i.to).max().unwrap_or(at);
                list.retain(|i| i.to + KEEP > newest);
            }
        }
    }

    /// Overlapping pairs of intervals found so far.
    pub fn overlaps(&self) -> u64 {
        self.overlaps
    }

    /// Pairs of successive owners whose tokens did not increase.
    pub fn regressions(&self) -> u64 {
        self.regressions
    }

    /// Closed intervals judged.
    pub fn intervals(&self) -> u64 {
        self.intervals
    }

    /// A few overlaps, described (empty when there were none).
    pub fn examples(&self) -> &[String] {
        &self.examples
    }
}

/// Live counters of a running [`Sampler`].
#[derive(Default)]
pub struct SampleStats {
    pub samples: AtomicU64,
    pub overlaps: AtomicU64,
}

/// The sampling checker, on its own thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    pub stats: Arc<SampleStats>,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl Sampler {
    /// Samples `members()` (name and node of every member that may hold
    /// partitions) every `every`.
    pub fn start<F>(every: Duration, members: F) -> Sampler
    where
        F: Fn() -> Vec<(String, RingNode)> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SampleStats::default());
        let (flag, counters) = (stop.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name("ringnode-sampler".into())
            .spawn(move || {
                let mut seen: HashSet<(u32, String, String)> = HashSet::new();
                let mut examples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let nodes = members();
                    let first: Vec<OwnedPartitions> =
                        nodes.iter().map(|(_, n)| n.owned_partitions()).collect();
                    let second: Vec<OwnedPartitions> =
                        nodes.iter().map(|(_, n)| n.owned_partitions()).collect();
                    let held: Vec<Vec<(u32, u64)>> = first.iter().map(with_tokens).collect();
                    let held2: Vec<Vec<(u32, u64)>> = second.iter().map(with_tokens).collect();
                    for x in 0..nodes.len() {
                        for &(p, token) in &held[x] {
                            if held2[x].binary_search(&(p, token)).is_err() {
                                continue;
                            }
                            for y in 0..nodes.len() {
                                if y == x {
                                    continue;
                                }
                                let between = if y > x { &held[y] } else { &held2[y] };
                                if between.binary_search_by_key(&p, |e| e.0).is_ok() {
                                    let key = (p, nodes[x].0.clone(), nodes[y].0.clone());
                                    if seen.insert(key) {
                                        counters.overlaps.fetch_add(1, Ordering::Relaxed);
                                        if examples.len() < 5 {
                                            examples.push(format!(
                                                "partition {p} held by {} and {} at once",
                                                nodes[x].0, nodes[y].0
                                            ));
                                        }
                                    }
                                }
                            }
                        }
                    }
                    counters.samples.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(every);
                }
                examples
            })
            .ok();
        Sampler {
            stop,
            stats,
            handle,
        }
    }

    /// Stops sampling; returns descriptions of the overlaps seen.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn with_tokens(o: &OwnedPartitions) -> Vec<(u32, u64)> {
    o.iter()
        .filter_map(|p| o.token(p).map(|t| (p, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn disjoint_intervals_are_fine_and_tokens_are_checked() {
        let s = Instant::now();
        let mut c = Checker::new(4, s);
        c.acquired("a", &[0, 1], 1, t(s, 0));
        c.released("a", &[0, 1], t(s, 10));
        c.acquired("b", &[0], 2, t(s, 11));
        c.released("b", &[0], t(s, 20));
        assert_eq!((c.overlaps(), c.regressions(), c.intervals()), (0, 0, 3));
        c.acquired("c", &[0], 1, t(s, 30));
        c.released("c", &[0], t(s, 40));
        assert_eq!(c.regressions(), 2);
    }

    #[test]
    fn overlaps_are_found_in_any_arrival_order() {
        let s = Instant::now();
        let mut c = Checker::new(4, s);
        // b's events arrive first, a's release last.
        c.acquired("b", &[2], 2, t(s, 5));
        c.acquired("a", &[2], 1, t(s, 0));
        c.released("b", &[2], t(s, 20));
        assert_eq!(
            c.overlaps(),
            0,
            "a's interval is still open: not judged yet"
        );
        c.released("a", &[2], t(s, 6));
        assert_eq!(c.overlaps(), 1);
        assert_eq!(c.examples().len(), 1);
    }

    #[test]
    fn same_member_and_empty_intervals_are_not_overlaps() {
        let s = Instant::now();
        let mut c = Checker::new(4, s);
        c.acquired("a", &[3], 1, t(s, 0));
        c.released("a", &[3], t(s, 10));
        c.acquired("a", &[3], 2, t(s, 5));
        c.released("a", &[3], t(s, 15));
        c.acquired("b", &[3], 3, t(s, 50));
        c.released("b", &[3], t(s, 50));
        c.released("z", &[3], t(s, 60));
        assert_eq!(c.overlaps(), 0);
    }
}
