//! Stopping a member: local release, the leave transaction, and leaving
//! its client (whose threads stop with its last member) — all within
//! `stop_timeout`, even when a socket hangs. `Drop` does the same without
//! making the caller wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{short_id, Inner};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::input::Input;
use crate::telemetry::DbOp;

/// What became of a job run by [`bounded`].
pub(crate) enum Bounded<T> {
    /// It finished in time, with this result.
    Done(Result<T>),
    /// The deadline passed first; the job finishes (or stays stuck) on its
    /// own.
    TimedOut,
}

/// Runs `job` on a helper thread named `leasering-<what>` and waits for it
/// until `deadline`: a bound that holds even when the job is stuck in a
/// socket that never times out. Fails only if the thread cannot start.
pub(crate) fn bounded<T: Send + 'static>(
    what: &'static str,
    deadline: Instant,
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<Bounded<T>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(format!("leasering-{what}"))
        .spawn(move || {
            let _ = tx.send(job());
        })
        .map_err(|e| Error::spawn(what, e))?;
    Ok(match rx.recv_deadline(deadline) {
        Ok(result) => Bounded::Done(result),
        Err(_) => Bounded::TimedOut,
    })
}

impl Inner {
    /// `Drop` of the last handle: local ownership ends at once (nothing is
    /// reported after this returns), and the leave and the joining of the
    /// threads happen on a background thread, so the caller never waits for
    /// the database. Best-effort: errors are logged.
    pub(crate) fn stop_in_background(self: &Arc<Self>) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        self.update(|s, now| s.step(Input::Stop, now));
        let inner = Arc::clone(self);
        let name = format!("leasering-leave-{}", short_id(&self.node_id));
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = inner.shutdown(true) {
                log::warn!(target: "leasering", "node {}: stop on drop failed: {}", inner.node_id, e);
            }
        });
        if let Err(e) = spawned {
            // No thread for the leave: the lease will expire instead.
            log::warn!(target: "leasering",
                "node {}: could not start the leave thread ({e}); the lease will expire instead", self.node_id);
            self.stopped.store(true, Ordering::SeqCst);
            let _ = self
                .client
                .deregister_member(self.uid, Instant::now() + self.cfg.stop_timeout);
            self.subscribers.lock().clear();
        }
    }

    /// Stops the member: local release, then (if `leave`) the leave
    /// transaction, then the threads. Bounded by `stop_timeout`. Calling it
    /// again does nothing.
    ///
    /// Without a drain, the local release happens inside the leave, once
    /// the ring's lock is held (see [`Store::leave_releasing`]): the
    /// member's partitions are active nowhere only for the rest of that
    /// transaction. With a drain, the partitions are released first and
    /// drained, and the leave (which frees the claims) comes after.
    ///
    /// [`Store::leave_releasing`]: crate::store::Store::leave_releasing
    pub(crate) fn shutdown(self: &Arc<Self>, leave: bool) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        let deadline = started + self.cfg.stop_timeout;
        if leave {
            if self.cfg.drain_timeout.is_some() {
                self.update(|s, now| s.step(Input::Stop, now));
                self.wait_for_drains(deadline);
            }
        } else {
            // A crash cannot drain: no guard is handed out.
            self.update(|s, now| s.step(Input::Crash, now));
        }
        // Out of the client before the leave: nothing of the leave needs
        // its threads (its own connection, the local release in its
        // transaction), and when this was the client's last registration,
        // the leave's NOTIFY wakes the connection thread to end (see
        // `Shared::retire_member`).
        let retiring = self.client.retire_member(self.uid);
        let left = if leave {
            self.leave(deadline, started)
        } else {
            log::warn!(target: "leasering", "node {}: crashed on purpose (no leave)", self.node_id);
            Ok(())
        };
        // Whatever became of the leave (it failed, timed out, or never got
        // the lock): nothing is owned once stop() returns. A no-op if the
        // leave released already.
        self.update(|s, now| s.step(Input::Stop, now));
        let stuck = retiring.map_or_else(Vec::new, |r| r.join(deadline));
        self.subscribers.lock().clear();
        left?;
        if !stuck.is_empty() {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "threads {stuck:?} did not finish within stop_timeout {:?} (blocked in a database call); they exit when it returns",
                    self.cfg.stop_timeout
                ),
            ));
        }
        Ok(())
    }

    /// With drains: waits, within `deadline`, until every drain of the stop
    /// has ended (guards dropped, drain timeouts, or the lease ran out), so
    /// that the leave — which frees every claim — comes after the user's
    /// work has stopped.
    fn wait_for_drains(&self, deadline: Instant) {
        loop {
            // The client's work thread hands dropped guards to the session;
            // a lapsed lease cuts the drains (and says so) even if the
            // fence thread is late.
            self.update(|s, now| s.step(Input::Tick, now));
            let left = self.session.write().still_draining(Instant::now());
            if left == 0 {
                return;
            }
            if Instant::now() >= deadline {
                log::warn!(target: "leasering",
                    "node {}: stop_timeout reached with {left} partitions still draining; leaving anyway", self.node_id);
                return;
            }
            std::thread::sleep(
                Duration::from_millis(2).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// The leave transaction, on a helper thread bounded by `deadline`;
    /// it releases everything locally once it holds the ring's lock (a
    /// no-op after a drained stop, which released first).
    fn leave(self: &Arc<Self>, deadline: Instant, started: Instant) -> Result<()> {
        let _m = self.membership.lock();
        let handed_over = self.view().partitions_of(&self.node_id).len();
        let op = self.op(crate::trace::Kind::Leave);
        let (pool, store, inner) = (
            self.client.pool.clone(),
            self.store.clone(),
            Arc::clone(self),
        );
        let result = bounded("leave", deadline, move || {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut conn = pool
                .get(remaining.max(Duration::from_millis(1)), "leave")?;
            store.leave_releasing(&mut conn, || {
                inner.update(|s, now| s.step(Input::Stop, now));
            })
        })
        .and_then(|b| match b {
            Bounded::Done(r) => r,
            Bounded::TimedOut => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the leave did not finish within stop_timeout {:?} (database unreachable or stalled); the lease will expire instead",
                    self.cfg.stop_timeout
                ),
            )),
        });
        match &result {
            Ok(epoch) => {
                log::info!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                    node = self.node_id.as_str(), epoch = epoch.unwrap_or_default(),
                    leave_ms = started.elapsed().as_secs_f64() * 1000.0;
                    "node {}: left ring {:?} (epoch {epoch:?}) in {:.2} ms",
                    self.node_id, self.cfg.ring_id, started.elapsed().as_secs_f64() * 1000.0);
                self.finish_with(op, handed_over, "left");
            }
            Err(e) => {
                log::warn!(target: "leasering",
                    "node {}: leave failed, the lease will expire instead: {}", self.node_id, e);
                self.telemetry.db_error(DbOp::Leave, e.kind());
            }
        }
        result.map(|_| ())
    }
}
