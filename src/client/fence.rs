//! The fence thread (`leasering-fence-*`): at each member's local lease
//! deadline, releases everything the lease no longer covers and cuts its
//! drains short. It does no I/O, so that a renewal stuck in a dead socket
//! cannot delay it (the hot path checks the deadline itself anyway: this
//! thread makes the `Released` events and the state follow).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{members, sleep, stopping, Shared};
use crate::protocol::input::Input;

/// Longest wait with nothing to guard.
const IDLE_TICK: Duration = Duration::from_secs(3600);

pub(super) fn run(shared: &Arc<Shared>, shutdown: &Receiver<()>) {
    while !stopping(shutdown) {
        let mut wait = IDLE_TICK;
        let now = Instant::now();
        for m in members(shared) {
            if let Some(left) = m.frozen() {
                wait = wait.min(left);
                continue;
            }
            let deadline = m.session.read().fence_deadline();
            match deadline {
                Some(d) if d <= now => {
                    m.update(|s, now| s.step(Input::Tick, now));
                }
                Some(d) => wait = wait.min(d - now),
                None => {}
            }
        }
        if !sleep(shutdown, &shared.wake_fence.1, wait) {
            break;
        }
    }
}
