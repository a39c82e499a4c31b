//! The second, independent overlap check: it never looks at events, only
//! at what members answer. A thread reads every member's
//! `owned_partitions()` over and over and reports partition `p` when member
//! X held it, with the same token, in two consecutive reads while member Y
//! held it in a read made between them.
//!
//! Sound despite non-atomic reads: X's two reads bracket Y's, and the same
//! token means X's ownership did not break in between (a re-activation
//! would carry a strictly greater token, after Y's). Used by the
//! integration tests and the demo.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use leasering::{OwnedPartitions, RingNode};

/// Live counters of a running [`Sampler`].
#[derive(Debug, Default)]
pub struct SampleStats {
    pub samples: AtomicU64,
    /// Distinct (partition, X, Y) found held at once.
    pub overlaps: AtomicU64,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Default)]
pub struct SampleReport {
    pub samples: u64,
    pub overlaps: u64,
    /// The first few overlaps, described.
    pub examples: Vec<String>,
}

impl SampleReport {
    /// Panics if any overlap was seen (a test helper).
    pub fn assert_no_overlap(&self) {
        assert!(
            self.overlaps == 0,
            "sampler saw {} overlaps in {} samples: {:?}",
            self.overlaps,
            self.samples,
            self.examples
        );
    }
}

/// The sampling checker, on its own thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    pub stats: Arc<SampleStats>,
    handle: Option<JoinHandle<Vec<String>>>,
}

/// How many overlaps a [`SampleReport`] describes.
const EXAMPLES: usize = 5;

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
            .name("overlap-sampler".into())
            .spawn(move || {
                let mut seen: HashSet<(u32, String, String)> = HashSet::new();
                let mut examples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let nodes = members();
                    for (p, x, y) in sample(&nodes) {
                        let key = (p, nodes[x].0.clone(), nodes[y].0.clone());
                        if seen.insert(key) {
                            counters.overlaps.fetch_add(1, Ordering::Relaxed);
                            if examples.len() < EXAMPLES {
                                examples.push(format!(
                                    "partition {p} held by {} and {} at once",
                                    nodes[x].0, nodes[y].0
                                ));
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

    pub fn samples(&self) -> u64 {
        self.stats.samples.load(Ordering::Relaxed)
    }

    pub fn overlaps(&self) -> u64 {
        self.stats.overlaps.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns what it saw.
    pub fn finish(mut self) -> SampleReport {
        self.stop.store(true, Ordering::Relaxed);
        let examples = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        SampleReport {
            samples: self.samples(),
            overlaps: self.overlaps(),
            examples,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One sample: every member read twice, in the same order. Returns
/// (partition, x, y) for X holding the partition with one token in both of
/// its reads and Y holding it in a read made between them.
fn sample(nodes: &[(String, RingNode)]) -> Vec<(u32, usize, usize)> {
    let first: Vec<Vec<(u32, u64)>> = nodes
        .iter()
        .map(|(_, n)| with_tokens(&n.owned_partitions()))
        .collect();
    let second: Vec<Vec<(u32, u64)>> = nodes
        .iter()
        .map(|(_, n)| with_tokens(&n.owned_partitions()))
        .collect();
    let mut found = Vec::new();
    for x in 0..nodes.len() {
        for &(p, token) in &first[x] {
            if second[x].binary_search(&(p, token)).is_err() {
                continue;
            }
            for y in (0..nodes.len()).filter(|&y| y != x) {
                // Read after X's first read and before its second.
                let between = if y > x { &first[y] } else { &second[y] };
                if between.binary_search_by_key(&p, |e| e.0).is_ok() {
                    found.push((p, x, y));
                }
            }
        }
    }
    found
}

fn with_tokens(o: &OwnedPartitions) -> Vec<(u32, u64)> {
    o.iter()
        .filter_map(|p| o.token(p).map(|t| (p, t)))
        .collect()
}
