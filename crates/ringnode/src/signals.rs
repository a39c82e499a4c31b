//! SIGINT, SIGTERM and SIGHUP as a flag the main loops poll, through plain
//! `sigaction` (libc is already a dependency of the crate). The first signal
//! asks for a clean shutdown (members stopped, database torn down, terminal
//! restored); a second SIGINT while that is under way exits at once.
//!
//! In the terminal UI the terminal is in raw mode, so Ctrl+C arrives as a
//! key, not as SIGINT; these handlers then matter for `kill` and a closed
//! terminal (SIGHUP).

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe operations here: an atomic swap and _exit.
    let previous = RECEIVED.swap(sig, Ordering::SeqCst);
    if previous != 0 && sig == libc::SIGINT {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Installs the handlers. Failures are ignored: the default action (exit)
/// remains, which still leaves no PostgreSQL behind (the throwaway server
/// dies with this process).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a plain handler function and an
        // empty mask is a valid argument; the handler is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// A signal's name, for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
