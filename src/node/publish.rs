//! Making the session core's [`Output`] visible, in order: the hot path
//! first (a released partition stops answering before anyone hears of it),
//! then the events to every subscriber, the log lines and metrics, and last
//! the threads it asks to wake. Called with the session's write lock held,
//! so events leave in the order of the state changes.

use std::time::Instant;

use super::Inner;
use crate::event::{DrainGuard, Event, ReleaseReason};
use crate::protocol::output::{Effect, Output};
use crate::protocol::Session;
use crate::telemetry::{Gauges, Renewed};

impl Inner {
    /// Reads `now`, runs `step` on the session under its write lock, and
    /// publishes what it produced. Returns the output's flags (its effects
    /// are consumed).
    pub(crate) fn update(&self, step: impl FnOnce(&mut Session, Instant) -> Output) -> Output {
        let mut session = self.session.write();
        let out = step(&mut session, Instant::now());
        self.publish(&session, out)
    }

    /// See the module docs. Returns `out` without its effects.
    pub(crate) fn publish(&self, session: &Session, mut out: Output) -> Output {
        let own = session.ownership();
        self.hot
            .publish(&out.effects, own.valid_until(), own.view_epoch(), || {
                own.active()
            });
        let mut refused = false;
        let (mut fenced, mut evicted) = (false, false);
        for effect in std::mem::take(&mut out.effects) {
            match &effect {
                Effect::RenewalRefused { .. } => refused = true,
                Effect::Released { reason, .. } => {
                    fenced |= *reason == ReleaseReason::LeaseExpired;
                    evicted |= *reason == ReleaseReason::Evicted;
                }
                _ => {}
            }
            if let Some(event) = self.describe(effect) {
                self.emit(event);
            }
        }
        if fenced {
            self.telemetry.self_fenced();
        }
        // An eviction with nothing to release (a member that had fenced
        // itself already) shows only as the rejoin it asks for.
        if evicted || out.rejoin {
            self.telemetry.evicted();
        }
        if let Some(ok) = out.renewal {
            self.telemetry.renewal(match (ok, refused) {
                (true, _) => Renewed::Ok,
                (false, true) => Renewed::Refused,
                (false, false) => Renewed::Failed,
            });
        }
        if out.reconciled > 0 {
            log::info!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                node = self.node_id.as_str(), claims = out.reconciled;
                "node {}: giving back {} claims the database says it holds but it does not use",
                self.node_id, out.reconciled);
            self.telemetry.reconciled(out.reconciled);
        }
        self.set_gauges(session);
        if out.wake_fence {
            self.client.wake_fence();
        }
        if out.wake_watcher {
            self.client.wake_work();
        }
        if out.wake_cleanup {
            self.client.wake_changes();
        }
        out
    }

    /// Logs an effect, counts it, and turns it into the event subscribers
    /// get, if it is one.
    fn describe(&self, effect: Effect) -> Option<Event> {
        let node = &self.node_id;
        match effect {
            Effect::Released {
                partitions,
                reason,
                epoch,
                at,
                drain,
            } => {
                log_release(&self.cfg.ring_id, node, partitions.len(), reason, epoch);
                self.telemetry.released(partitions.len(), reason);
                let drain = drain.map(|d| {
                    DrainGuard::new(self.uid, d.id, d.deadline, self.client.drained.0.clone())
                });
                Some(Event::Released {
                    partitions,
                    reason,
                    epoch,
                    at,
                    drain,
                })
            }
            Effect::Acquired {
                partitions,
                token,
                epoch,
                at,
                waited,
                cause,
            } => {
                log::info!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                    node = node.as_str(), epoch = epoch, token = token,
                    partitions = partitions.len(), cause = cause.as_str(),
                    handoff_ms = waited.unwrap_or_default().as_secs_f64() * 1000.0;
                    "node {node}: acquired {} partitions, token {token}, epoch {epoch}, handoff ({}) took {:.2} ms",
                    partitions.len(), cause.as_str(), waited.unwrap_or_default().as_secs_f64() * 1000.0);
                self.telemetry.acquired(partitions.len(), waited, cause);
                Some(Event::Acquired {
                    partitions,
                    token,
                    epoch,
                    at,
                })
            }
            Effect::ViewChanged { epoch, members, at } => {
                Some(Event::ViewChanged { epoch, members, at })
            }
            Effect::Joined {
                epoch,
                positions,
                removed,
                at,
            } => {
                log::info!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                    node = node.as_str(), epoch = epoch, vnodes = positions.len();
                    "node {node}: joined ring {:?} at epoch {epoch} with positions {positions:?}{}",
                    self.cfg.ring_id,
                    if removed.is_empty() { String::new() } else { format!(", removing expired members {removed:?}") });
                Some(Event::Joined {
                    epoch,
                    positions,
                    at,
                })
            }
            Effect::RenewalRefused { ring_epoch } => {
                log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                    node = node.as_str(), ring_epoch = ring_epoch;
                    "node {node}: renewal refused: this member's acknowledged epoch has trailed ring epoch {ring_epoch}, without advancing, for over {:?}",
                    self.cfg.lag_limit());
                None
            }
            Effect::MembersRemoved {
                removed,
                epoch,
                late_by,
            } => {
                self.telemetry.removed_members(removed.len());
                log::info!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                    node = node.as_str(), removed = removed.len(),
                    late_ms = late_by.as_secs_f64() * 1000.0;
                    "node {node}: removed expired members {removed:?} ({:.1} ms after the lease ended), epoch {epoch:?}",
                    late_by.as_secs_f64() * 1000.0);
                None
            }
        }
    }

    /// Sets the member's gauges from `session` (after every output, and at
    /// every heartbeat so that the lease time left keeps moving).
    pub(crate) fn set_gauges(&self, session: &Session) {
        // Without the feature nothing reads them: not even the health.
        if cfg!(not(feature = "metrics")) {
            return;
        }
        let now = Instant::now();
        let own = session.ownership();
        let lease_left = own
            .valid_until()
            .and_then(|v| v.checked_duration_since(now))
            .unwrap_or_default();
        self.telemetry.state(Gauges {
            active: if lease_left.is_zero() {
                0
            } else {
                own.active_count()
            },
            pending: own.pending_count(),
            waiting: session.waiting_count() as u32,
            draining: session.draining_count() as u32,
            ring_partitions: self.cfg.ring_size,
            unassigned: unassigned_partitions(session),
            moves_pending: if self.cfg.max_moving.is_some() {
                session.view().map_or(0, |v| v.moves_pending() as u32)
            } else {
                0
            },
            epoch: own.view_epoch(),
            ring_epoch: session.ring_epoch(),
            lease_left,
            healthy: self.unhealthy_reason(session, now).is_none(),
        });
    }

    /// Sends `ev` to every subscriber, dropping those that went away.
    fn emit(&self, ev: Event) {
        let mut subs = self.subscribers.lock();
        subs.retain(|tx| tx.send(ev.clone()).is_ok());
    }
}

/// Partitions of the ring that the placement gives to no member
/// (`leasering_partitions_unassigned`): all of them while every member is
/// ineligible (not ready, or cordoned); with capacities, what does not fit.
fn unassigned_partitions(session: &Session) -> u32 {
    session.view().map_or(0, |v| v.unassigned())
}

fn log_release(ring: &str, node: &str, n: usize, reason: ReleaseReason, epoch: u64) {
    let why = format!("{reason:?}");
    match reason {
        ReleaseReason::Handoff => log::info!(target: "leasering",
            ring = ring, node = node, epoch = epoch, partitions = n, reason = why.as_str();
            "node {node}: released {n} partitions to their new owners (epoch {epoch})"),
        ReleaseReason::LeaseExpired => log::warn!(target: "leasering",
            ring = ring, node = node, epoch = epoch, partitions = n, reason = why.as_str();
            "node {node}: local lease ran out without a renewal: self-fenced, released {n} partitions"),
        ReleaseReason::Evicted => log::warn!(target: "leasering",
            ring = ring, node = node, epoch = epoch, partitions = n, reason = why.as_str();
            "node {node}: lease lost in the database: released {n} partitions, rejoining"),
        _ => log::info!(target: "leasering",
            ring = ring, node = node, epoch = epoch, partitions = n, reason = why.as_str();
            "node {node}: released {n} partitions ({reason:?})"),
    }
}
