//! The demo's event-based overlap check: the testkit's oracle
//! ([`leasering_testkit::oracle::Online`]), fed by the journal in time
//! order, with the demo's `Instant`s and wording. It judges, per partition,
//! every pair of two *different* members' closed activity intervals
//! (`Acquired.at ..= Released.at`, one monotonic clock) and the fencing
//! token order; an interval whose end is not known yet (its `Released`
//! still in flight) is judged once it closes, so the result does not depend
//! on the order in which events arrive. The second, independent check (a
//! sampler of `owned_partitions()`) is the testkit's
//! [`Sampler`](leasering_testkit::Sampler).

use std::time::{Duration, Instant};

use leasering_testkit::oracle::{ns, Online};

/// The event-based checker.
pub struct Checker {
    start: Instant,
    online: Online,
}

/// Closed intervals that ended this long before the newest end of their
/// partition are forgotten on long runs. Only events that arrive later than
/// this could be missed (a false negative, never a false positive).
const KEEP: Duration = Duration::from_secs(120);

impl Checker {
    pub fn new(start: Instant) -> Checker {
        Checker {
            start,
            online: Online::with_horizon(KEEP.as_nanos() as u64),
        }
    }

    pub fn acquired(&mut self, member: &str, partitions: &[u32], token: u64, at: Instant) {
        self.online.acquired(member, partitions, token, ns(at));
    }

    pub fn released(&mut self, member: &str, partitions: &[u32], at: Instant) {
        self.online.released(member, partitions, ns(at));
    }

    /// Overlapping pairs of intervals found so far.
    pub fn overlaps(&self) -> u64 {
        self.online.overlaps()
    }

    /// Acquisitions whose token did not rise above an earlier owner's.
    pub fn regressions(&self) -> u64 {
        self.online.regressions()
    }

    /// Closed intervals judged.
    pub fn intervals(&self) -> u64 {
        self.online.intervals()
    }

    /// A few overlaps and token regressions, described, times in seconds
    /// since the demo started (empty when there were none).
    pub fn examples(&self) -> Vec<String> {
        let h = self.online.history();
        let zero = ns(self.start);
        let overlaps = self.online.first_overlaps().iter();
        let regressions = self.online.first_regressions().iter();
        overlaps
            .map(|o| h.describe_overlap(o, zero))
            .chain(regressions.map(|r| h.describe_regression(r, zero)))
            .collect()
    }
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
        let mut c = Checker::new(s);
        c.acquired("a", &[0, 1], 1, t(s, 0));
        c.released("a", &[0, 1], t(s, 10));
        c.acquired("b", &[0], 2, t(s, 11));
        c.released("b", &[0], t(s, 20));
        assert_eq!((c.overlaps(), c.regressions(), c.intervals()), (0, 0, 3));
        c.acquired("c", &[0], 1, t(s, 30));
        c.released("c", &[0], t(s, 40));
        assert_eq!(c.regressions(), 1, "c's token is below a's and b's");
        assert!(
            c.examples()[0].contains("c acquired with token 1"),
            "{:?}",
            c.examples()
        );
    }

    #[test]
    fn overlaps_are_found_in_any_arrival_order() {
        let s = Instant::now();
        let mut c = Checker::new(s);
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
        assert!(
            c.examples()[0].starts_with("partition 2: a and b"),
            "{:?}",
            c.examples()
        );
    }

    #[test]
    fn the_same_member_and_never_active_intervals_are_not_overlaps() {
        let s = Instant::now();
        let mut c = Checker::new(s);
        c.acquired("a", &[3], 1, t(s, 0));
        c.released("a", &[3], t(s, 10));
        c.acquired("a", &[3], 2, t(s, 10));
        c.released("a", &[3], t(s, 15));
        // Released before it was acquired (a lease deadline passed first).
        c.acquired("b", &[3], 3, t(s, 50));
        c.released("b", &[3], t(s, 49));
        c.acquired("d", &[3], 4, t(s, 50));
        c.released("d", &[3], t(s, 60));
        c.released("z", &[3], t(s, 60));
        assert_eq!(c.overlaps(), 0);
        assert_eq!(c.regressions(), 0);
    }
}
