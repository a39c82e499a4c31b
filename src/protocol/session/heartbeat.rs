//! The session's heartbeat: when the next renewal (or rejoin) is due, and
//! what its answers do — extend the lease, fence, reconcile claims, and
//! check what the member relies on when the database's timeline changed.

use std::time::Instant;

use super::{local_instant, Session};
use crate::event::ReleaseReason;
use crate::protocol::input::Renewal;
use crate::protocol::output::{Effect, HeartbeatStep, Output};
use crate::protocol::{Status, Ticket};

impl Session {
    /// The heartbeat's next step.
    pub fn heartbeat_next(&mut self, now: Instant) -> HeartbeatStep {
        // A stopping member keeps its lease while its partitions drain.
        match self.own.status() {
            Status::Stopped if self.drains.is_empty() => HeartbeatStep::Stop,
            _ if self.next_renewal > now => HeartbeatStep::Wait(self.next_renewal - now),
            Status::Joining => HeartbeatStep::Rejoin,
            Status::Member | Status::Stopped => HeartbeatStep::Renew {
                ack: self.own.view_epoch(),
                ticket: self.ticket(),
            },
        }
    }

    /// The answer of a [`HeartbeatStep::Renew`] sent at `sent_at`.
    pub(in crate::protocol) fn renewed(
        &mut self,
        ticket: Ticket,
        reply: Renewal,
        sent_at: Instant,
        now: Instant,
    ) -> Output {
        let out = self.on_renewal(ticket, &reply, sent_at, now);
        self.next_renewal = if out.rejoin {
            now
        } else {
            now + self.cfg.heartbeat_interval
        };
        out
    }

    /// A renewal could not be made (no connection, a failed statement).
    pub(in crate::protocol) fn renewal_failed(&mut self, ticket: Ticket, now: Instant) -> Output {
        if self.earlier_membership(ticket) {
            // The membership it was for is gone; the new one's first
            // renewal is not due yet.
            return Output::default();
        }
        self.renewal_not_made(now);
        self.refused = false;
        self.next_renewal = now + self.cfg.retry();
        Output {
            renewal: Some(false),
            ..Output::default()
        }
    }

    /// A rejoin failed; the heartbeat tries again a little later.
    pub(in crate::protocol) fn rejoin_failed(&mut self, ticket: Ticket, now: Instant) -> Output {
        if !self.earlier_membership(ticket) {
            self.next_renewal = now + self.cfg.retry();
        }
        Output::default()
    }

    /// A renewal answer (the heartbeat's).
    fn on_renewal(
        &mut self,
        ticket: Ticket,
        reply: &Renewal,
        sent_at: Instant,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        if ticket.generation != self.generation || self.own.status() == Status::Joining {
            return out;
        }
        if self.own.status() == Status::Stopped {
            return self.renewed_while_stopping(reply, sent_at, now);
        }
        // If the local lease ran out before this answer (a pause, a slow
        // answer), what is released below stopped being reported at its
        // deadline.
        let released_at = self.stamp(now);
        let mut renewed = reply.renewed;
        if renewed.is_some() && !self.same_timeline(reply) {
            // Lost with the old timeline: stop everything, as if evicted.
            out.timeline_fence = self.timeline.zip(reply.timeline);
            self.stale_row = true;
            renewed = None;
        }
        match renewed {
            None => {
                let mut actions = self.own.fence(now);
                actions.extend(self.cut_drains(ReleaseReason::Evicted));
                actions.extend(self.own.evicted());
                self.push(&mut out, actions, released_at, now);
                self.forget_claims();
                out.wake_fence = true;
                out.rejoin = true;
                return out;
            }
            Some(false) => {
                self.renewal_not_made(now);
                self.refused = true;
                out.renewal = Some(false);
                out.effects.push(Effect::RenewalRefused {
                    ring_epoch: reply.epoch,
                });
            }
            Some(true) => {
                self.renewals += 1;
                self.last_renewed = Some(now);
                self.failing_since = None;
                self.refused = false;
                out.renewal = Some(true);
                let lapsed = !self.own.lease_runs(now);
                // A late answer fences first (inside `renewed`): the lease
                // it extends cannot make stale partitions or drains valid.
                let mut actions = self.own.renewed(sent_at, now);
                if lapsed {
                    actions.extend(self.cut_drains(ReleaseReason::LeaseExpired));
                }
                self.push(&mut out, actions, released_at, now);
                out.wake_fence = true;
                let reconciled = self.reconcile(&reply.held);
                if reconciled > 0 {
                    out.reconciled = reconciled;
                    out.wake_watcher = true;
                }
            }
        }
        self.ring_epoch = self.ring_epoch.max(reply.epoch);
        if reply.epoch > self.own.view_epoch() {
            self.hint = self.hint.max(reply.epoch);
            out.wake_watcher = true;
        }
        if self.resync {
            out.wake_watcher = true;
        }
        if let Some((node, ms)) = &reply.next_expiry {
            self.plan_cleanup(node, local_instant(now, *ms));
            out.wake_cleanup = true;
        }
        out
    }

    /// Timelines (docs/protocol.md §6; issue 11, 3b): whether a renewal that
    /// found this member's row may be relied on. The first timeline seen is
    /// remembered. A renewal from another one means the database was
    /// promoted from a standby or recovered to a point in time, and may
    /// have lost the last commits. What this member relies on is then
    /// checked against the answer (one statement, one snapshot): the ring's
    /// epoch is not behind the view's, and every claim it uses — active or
    /// draining, with its token — is still this incarnation's. If so
    /// (nothing it relies on was lost: synchronous replication, or the
    /// replay had caught up) the new timeline is adopted; if not, `false`:
    /// the member fences. Only on a change of timeline: on one timeline a
    /// renewal's answer may be older than a take's answer that arrived
    /// after it was sent, and such a check would fence healthy members.
    fn same_timeline(&mut self, reply: &Renewal) -> bool {
        let Some(now_on) = reply.timeline else {
            return true;
        };
        let Some(seen) = self.timeline else {
            self.timeline = Some(now_on);
            return true;
        };
        if seen == now_on {
            return true;
        }
        let listed = |c: &(u32, u64)| reply.held.binary_search(c).is_ok();
        let kept = reply.epoch >= self.own.view_epoch()
            && self.own.active().all(|c| listed(&c))
            && self
                .drains
                .values()
                .all(|(claims, _)| claims.iter().all(listed));
        if kept {
            self.timeline = Some(now_on);
            // Nothing it relies on was lost, but the view under its epoch
            // may have been (changes lost and others made since): read it
            // again whole; the lag and the hints start from the answer.
            self.resync = true;
            // Marks of this member's takes may be lost with the old
            // timeline, and releases were told on the old primary: take
            // everything waiting again (after the grace, if any).
            self.recheck.extend(self.waiting_for.keys().copied());
            self.ring_epoch = reply.epoch;
            self.hint = 0;
            self.deltas.clear();
        }
        kept
    }

    /// While `stop()` waits for drains the lease is kept (the leave frees
    /// the claims only after the drains): a renewal only extends it, or —
    /// lost or lapsed — cuts the drains short.
    fn renewed_while_stopping(
        &mut self,
        reply: &Renewal,
        sent_at: Instant,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        let released_at = self.stamp(now);
        let lapsed = !self.own.lease_runs(now);
        let mut actions = Vec::new();
        if reply.renewed.is_none() || !self.same_timeline(reply) {
            actions = self.cut_drains(ReleaseReason::Evicted);
        } else if lapsed {
            actions = self.cut_drains(ReleaseReason::LeaseExpired);
        }
        if reply.renewed == Some(true) {
            self.renewals += 1;
            self.last_renewed = Some(now);
            self.failing_since = None;
            out.renewal = Some(true);
            self.own.renewed(sent_at, now);
        }
        self.push(&mut out, actions, released_at, now);
        out.wake_fence = true;
        out
    }
}
