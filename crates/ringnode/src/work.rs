//! The simulated worker of a demo member with `--drain` (drained handoffs,
//! docs/protocol.md §4). Its unit of work on a partition takes the drain
//! time to finish; when partitions are released it keeps the release's
//! [`DrainGuard`] until the unit in progress on them is done, so their next
//! owner starts only after this member's work has stopped — and the band
//! can show the drain while it runs.
//!
//! The worker has no thread of its own: the member's event collector drives
//! it (it waits for the next event or the next drain's end, whichever comes
//! first), so a drain ends on time even when no event arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use leasering::{DrainGuard, Event, ReleaseReason};
use parking_lot::Mutex;

/// One drain in progress: the guard of one `Released` event.
struct Drain<G> {
    partitions: Vec<u32>,
    released: Instant,
    done_at: Instant,
    /// Held until the unit of work ends; dropping it gives the claims back.
    _guard: G,
}

/// A drain that is over: the unit of work ended, or was cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    pub partitions: Vec<u32>,
    /// When the partitions were released (`owns()` false from then on).
    pub released: Instant,
    /// When the guard was dropped.
    pub at: Instant,
    /// Cut short: the member's local lease ran out (a `Released` with
    /// [`ReleaseReason::LeaseExpired`] means "stop now"), or the member is
    /// gone.
    pub cut: bool,
}

/// A member's worker; `G` is the guard it keeps (a [`DrainGuard`], or
/// anything in unit tests, which cannot make one).
pub struct Work<G = DrainGuard> {
    unit: Duration,
    drains: Mutex<Vec<Drain<G>>>,
    /// Its member crashed: the worker died with it and drains nothing more
    /// (a crash's `Released` still carries a guard).
    dead: AtomicBool,
}

impl Work<DrainGuard> {
    /// Takes the drain guard out of a `Released` event: the event then goes
    /// on to the journal without it, where it waits for the reordering
    /// window and would otherwise hold the handoff back by that much.
    /// Returns the drains a `LeaseExpired` release cut short.
    pub fn on_event(&self, event: &mut Event) -> Vec<Drained> {
        let Event::Released {
            partitions,
            reason,
            at,
            drain,
            ..
        } = event
        else {
            return Vec::new();
        };
        match drain.take() {
            Some(guard) => {
                self.start(partitions.clone(), *at, guard);
                Vec::new()
            }
            None if *reason == ReleaseReason::LeaseExpired => self.cut(partitions, *at),
            None => Vec::new(),
        }
    }
}

impl<G> Work<G> {
    pub fn new(unit: Duration) -> Work<G> {
        Work {
            unit,
            drains: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
        }
    }

    /// Starts a drain of `partitions`, released at `released`: the unit of
    /// work in progress on them ends one unit later.
    pub fn start(&self, partitions: Vec<u32>, released: Instant, guard: G) {
        if self.dead.load(Ordering::SeqCst) {
            return; // the guard drops here: no work is left to finish
        }
        self.drains.lock().push(Drain {
            partitions,
            released,
            done_at: released + self.unit,
            _guard: guard,
        });
    }

    /// When the next drain ends, if one runs.
    pub fn next_due(&self) -> Option<Instant> {
        self.drains.lock().iter().map(|d| d.done_at).min()
    }

    /// Ends the drains whose unit of work is done by `now`.
    pub fn due(&self, now: Instant) -> Vec<Drained> {
        self.take(|d| d.done_at <= now, |d| (d.done_at, false))
    }

    /// Ends at once the drains that share a partition with `partitions`:
    /// their member's local lease ran out at `at`, their work must stop.
    pub fn cut(&self, partitions: &[u32], at: Instant) -> Vec<Drained> {
        self.take(
            |d| d.partitions.iter().any(|p| partitions.contains(p)),
            |_| (at, true),
        )
    }

    /// Ends every drain: the member is gone.
    pub fn abandon(&self, now: Instant) -> Vec<Drained> {
        self.take(|_| true, |_| (now, true))
    }

    /// The member crashed at `at`: every drain ends, and none starts again.
    pub fn kill(&self, at: Instant) -> Vec<Drained> {
        self.dead.store(true, Ordering::SeqCst);
        self.abandon(at)
    }

    /// The partitions whose drain runs, ascending.
    pub fn draining(&self) -> Vec<u32> {
        let mut ps: Vec<u32> = self
            .drains
            .lock()
            .iter()
            .flat_map(|d| d.partitions.iter().copied())
            .collect();
        ps.sort_unstable();
        ps
    }

    /// Removes the drains `which` selects, dropping their guards after the
    /// lock is released (a guard's drop wakes the member's threads).
    fn take(
        &self,
        which: impl Fn(&Drain<G>) -> bool,
        end: impl Fn(&Drain<G>) -> (Instant, bool),
    ) -> Vec<Drained> {
        let ended: Vec<Drain<G>> = {
            let mut drains = self.drains.lock();
            let (ended, kept) = std::mem::take(&mut *drains).into_iter().partition(which);
            *drains = kept;
            ended
        };
        ended
            .into_iter()
            .map(|d| {
                let (at, cut) = end(&d);
                Drained {
                    partitions: d.partitions,
                    released: d.released,
                    at,
                    cut,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_lasts_one_unit_unless_cut() {
        let s = Instant::now();
        let ms = |n| s + Duration::from_millis(n);
        let w: Work<()> = Work::new(Duration::from_millis(100));
        w.start(vec![5, 6], ms(0), ());
        w.start(vec![1], ms(50), ());
        assert_eq!(w.draining(), vec![1, 5, 6]);
        assert_eq!(w.next_due(), Some(ms(100)));
        assert!(w.due(ms(99)).is_empty());
        let done = w.due(ms(120));
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0],
            Drained {
                partitions: vec![5, 6],
                released: ms(0),
                at: ms(100),
                cut: false
            }
        );
        assert_eq!(w.draining(), vec![1]);
        // The lease ran out: the work on partition 1 stops at once.
        let cut = w.cut(&[1, 9], ms(130));
        assert_eq!((cut.len(), cut[0].at, cut[0].cut), (1, ms(130), true));
        assert_eq!(w.next_due(), None);
        w.start(vec![2], ms(140), ());
        assert!(w.cut(&[3], ms(150)).is_empty());
        assert_eq!(w.abandon(ms(160)).len(), 1);
        assert!(w.draining().is_empty());
        // Crashed: what drains stops, and a crash's own release drains nothing.
        w.start(vec![4], ms(170), ());
        assert_eq!(w.kill(ms(180)).len(), 1);
        w.start(vec![4, 5], ms(181), ());
        assert!(w.draining().is_empty());
    }
}
