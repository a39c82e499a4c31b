//! Clocks. Lease deadlines are `Instant`s (CLOCK_MONOTONIC); the lock-free
//! hot path compares against `CLOCK_MONOTONIC_COARSE`, which costs a few
//! nanoseconds instead of ~24 but lags the precise clock by up to one tick.
//! Deadlines published to the hot path are therefore moved *earlier* by the
//! coarse clock's resolution, so the hot path stops no later than the
//! precise deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we pass.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        // Fail closed: a clock that cannot be read is "after any deadline".
        return u64::MAX;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// The vDSO's own `clock_gettime`, once resolved: 0 = not yet looked up,
/// 1 = not available (use libc's), else the function's address.
static VDSO_CLOCK_GETTIME: AtomicUsize = AtomicUsize::new(0);

/// Looks up the kernel's vDSO `clock_gettime` (the function libc's
/// `clock_gettime` ends up calling). Calling it directly skips libc's
/// wrapper — about a quarter of the cost of a coarse-clock read, which is
/// most of the cost of `owns()`. Used only if it agrees with libc's.
#[cold]
fn resolve_vdso() -> usize {
    let found = (|| {
        // SAFETY: RTLD_NOLOAD never loads anything; it returns a handle to
        // the vDSO that the dynamic loader mapped at start (or null).
        let handle = unsafe {
            libc::dlopen(
                c"linux-vdso.so.1".as_ptr(),
                libc::RTLD_LAZY | libc::RTLD_NOLOAD,
            )
        };
        if handle.is_null() {
            return None;
        }
        let sym = [c"__vdso_clock_gettime", c"__kernel_clock_gettime"]
            .iter()
            // SAFETY: dlsym on a valid handle with a NUL-terminated name.
            .map(|name| unsafe { libc::dlsym(handle, name.as_ptr()) })
            .find(|p| !p.is_null())?;
        // SAFETY: the vDSO exports clock_gettime with libc's signature.
        let f: ClockGettime =
            unsafe { std::mem::transmute::<*mut libc::c_void, ClockGettime>(sym) };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let before = read(libc::CLOCK_MONOTONIC_COARSE);
        // SAFETY: as above; it only writes into `ts`.
        let rc = unsafe { f(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        let got = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let after = read(libc::CLOCK_MONOTONIC_COARSE);
        (rc == 0 && before <= got && got <= after).then_some(sym as usize)
    })();
    let v = found.filter(|a| *a > 1).unwrap_or(1);
    VDSO_CLOCK_GETTIME.store(v, Ordering::Relaxed);
    v
}

/// `CLOCK_MONOTONIC_COARSE` now, in nanoseconds (`u64::MAX` if the clock
/// cannot be read, so that every deadline counts as passed).
#[inline]
pub(crate) fn coarse_now_ns() -> u64 {
    let mut f = VDSO_CLOCK_GETTIME.load(Ordering::Relaxed);
    if f == 0 {
        f = resolve_vdso();
    }
    if f == 1 {
        return read(libc::CLOCK_MONOTONIC_COARSE);
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `f` is the vDSO's clock_gettime, checked in resolve_vdso; it
    // only writes into the timespec we pass.
    let rc = unsafe {
        std::mem::transmute::<usize, ClockGettime>(f)(libc::CLOCK_MONOTONIC_COARSE, &mut ts)
    };
    if rc != 0 {
        return read(libc::CLOCK_MONOTONIC_COARSE);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    fn the_vdso_clock_agrees_with_libc() {
        for _ in 0..1000 {
            let before = read(libc::CLOCK_MONOTONIC_COARSE);
            let got = coarse_now_ns();
            let after = read(libc::CLOCK_MONOTONIC_COARSE);
            assert!(
                before <= got && got <= after,
                "{before} <= {got} <= {after}"
            );
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(
            VDSO_CLOCK_GETTIME.load(Ordering::Relaxed) > 1,
            "the vDSO clock_gettime was not found"
        );
    }

    #[test]
    fn hot_deadline_is_before_the_precise_one() {
        let v = Instant::now() + std::time::Duration::from_secs(1);
        assert!(hot_deadline_ns(Some(v)) < monotonic_ns(v));
        assert_eq!(hot_deadline_ns(None), 0);
    }
}
