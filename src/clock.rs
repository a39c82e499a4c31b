//! Clocks. Lease deadlines are `Instant`s (CLOCK_MONOTONIC); the lock-free
//! hot path compares against `CLOCK_MONOTONIC_COARSE`, which costs a few
//! nanoseconds instead of ~24 but lags the precise clock by up to one tick.
//! Deadlines published to the hot path are therefore moved *earlier* by the
//! coarse clock's resolution, so the hot path stops no later than the
//! precise deadline.

use std::sync::OnceLock;
use std::time::Instant;

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC_COARSE` now, in nanoseconds.
#[inline]
pub(crate) fn coarse_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// Resolution of the coarse clock (a scheduler tick, 1–10 ms), cached.
pub(crate) fn coarse_resolution_ns() -> u64 {
    static RES: OnceLock<u64> = OnceLock::new();
    *RES.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_getres only writes into the timespec we pass.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc == 0 {
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        } else {
            10_000_000
        }
    })
}

fn base() -> (Instant, u64) {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    *BASE.get_or_init(|| (Instant::now(), read(libc::CLOCK_MONOTONIC)))
}

/// `CLOCK_MONOTONIC` nanoseconds of an `Instant`: the same clock for every
/// process of a machine, so event times of several processes can be merged.
///
/// ```
/// let t = std::time::Instant::now();
/// let later = t + std::time::Duration::from_millis(5);
/// assert_eq!(leasering::monotonic_ns(later) - leasering::monotonic_ns(t), 5_000_000);
/// ```
pub fn monotonic_ns(at: Instant) -> u64 {
    let (base_instant, base_ns) = base();
    if at >= base_instant {
        base_ns + (at - base_instant).as_nanos() as u64
    } else {
        base_ns.saturating_sub((base_instant - at).as_nanos() as u64)
    }
}

/// The hot-path deadline for a lease valid until `valid_until`.
pub(crate) fn hot_deadline_ns(valid_until: Option<Instant>) -> u64 {
    match valid_until {
        Some(v) => monotonic_ns(v).saturating_sub(coarse_resolution_ns()),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_never_runs_ahead_of_the_precise_one() {
        for _ in 0..1000 {
            let c = coarse_now_ns();
            let p = monotonic_ns(Instant::now());
            assert!(c <= p + 1_000, "coarse {c} ahead of precise {p}");
        }
    }

    #[test]
    fn hot_deadline_is_before_the_precise_one() {
        let v = Instant::now() + std::time::Duration::from_secs(1);
        assert!(hot_deadline_ns(Some(v)) < monotonic_ns(v));
        assert_eq!(hot_deadline_ns(None), 0);
    }
}
