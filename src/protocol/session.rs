//! The session core: everything one member *decides*, as a state machine
//! without I/O, in the manner of raft-rs.
//!
//! [`Ownership`] knows which partitions are active and pending. The
//! session around it knows the rest of a member's life in the ring: which
//! membership (generation) a reply belongs to, the changes notifications
//! carried and whether they leave a gap, whether the adopted view has been
//! acknowledged, when to poll the barrier again, when the next renewal is
//! due, whom to clean up and when, and when released partitions really
//! stopped being reported.
//!
//! It is driven by inputs — a join committed, a notification, a renewal or
//! acknowledgement answer, a barrier snapshot, a change-log read, a cleanup
//! pass, a failure, the clock (`now` is always an argument; the session
//! never reads a clock) — and answers with an [`Output`]: the effects to
//! publish, in order, and whom to wake. Each thread of a member asks it for
//! its next step ([`Session::watcher_next`], [`Session::heartbeat_next`],
//! [`Session::cleanup_next`], [`Session::fence_deadline`]), runs that one
//! statement, and hands the answer back with the [`Ticket`] it was given,
//! so that an answer about an earlier membership is recognised and dropped.
//!
//! The threads of [`RingNode`](crate::RingNode) are thin executors of this
//! type; its tests drive it through the interleavings that chaos runs found
//! (stale replies after a pause, a gap in the deltas, an eviction during a
//! pending handoff, a release after the local deadline) without a database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::placement::fnv1a64;
use crate::protocol::input::{CatchUp, Joined, Notice, Renewal};
use crate::protocol::output::{Effect, Output, WatcherStep};
use crate::protocol::ownership::{Action, Ownership, Status};
use crate::ring::{Change, RingView};

/// Most notified changes kept while they cannot be applied yet: a member
/// further behind reads the change log.
const MAX_DELTAS: usize = 4096;
/// Longest pause between two barrier reads while partitions are pending.
const MAX_BARRIER_BACKOFF: Duration = Duration::from_millis(32);
/// Barrier reads at 1 ms before the backoff starts doubling: the other
/// members' acknowledgements of an epoch arrive within a few milliseconds,
/// and doubling from the first read made the waiting member notice them up
/// to twice as late as they happened.
const FAST_BARRIER_POLLS: u32 = 5;
/// The watcher's wait with nothing pending: notifications wake it anyway,
/// so this only bounds how late it sees a heartbeat's hint of a missed
/// notification. Long, so that an idle member costs next to no CPU.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// How long a thread with nothing planned sleeps before looking again.
const NOTHING_PLANNED: Duration = Duration::from_secs(3600);
/// Retry delay of a failed cleanup pass.
const CLEANUP_RETRY: Duration = Duration::from_millis(200);

/// The wait before barrier read number `polls` (0-based) of an epoch.
fn barrier_backoff(polls: u32) -> Duration {
    match polls.checked_sub(FAST_BARRIER_POLLS) {
        None => Duration::from_millis(1),
        Some(k) => {
            (Duration::from_millis(2) * 2u32.saturating_pow(k.min(16))).min(MAX_BARRIER_BACKOFF)
        }
    }
}

/// Turns "in `ms` milliseconds of the database's clock", read at `read_at`,
/// into a local instant.
pub fn local_instant(read_at: Instant, ms: f64) -> Instant {
    if ms > 0.0 && ms.is_finite() {
        read_at + Duration::from_secs_f64(ms / 1000.0)
    } else {
        read_at
    }
}

/// Which membership a step was issued for. Hand it back with the answer:
/// an answer about an earlier membership (before an eviction and rejoin) is
/// ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The settings the session core needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This member's node id.
    pub node_id: String,
    /// Partitions in the ring.
    pub ring_size: u32,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// How much earlier the local lease ends than the database's.
    pub margin: Duration,
    /// Renewal interval.
    pub heartbeat_interval: Duration,
    /// How much earlier the hot path stops than the precise local deadline
    /// (the coarse clock's resolution): releases after a lapsed lease are
    /// stamped with that instant.
    pub hot_path_lead: Duration,
}

impl SessionConfig {
    /// The session settings of a validated configuration.
    pub fn new(cfg: &Config, node_id: &str, hot_path_lead: Duration) -> SessionConfig {
        SessionConfig {
            node_id: node_id.to_string(),
            ring_size: cfg.ring_size,
            lease_ttl: cfg.lease_ttl,
            margin: cfg.effective_margin(),
            heartbeat_interval: cfg.effective_heartbeat_interval(),
            hot_path_lead,
        }
    }

    /// Delay before retrying a failed renewal or rejoin.
    fn retry(&self) -> Duration {
        (self.heartbeat_interval / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// One member's session. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    own: Ownership,
    /// Bumped at every (re)join; answers tagged with an older one are stale.
    generation: u64,
    /// The newest epoch heard of (notification, renewal, cleanup); 0 once
    /// the view has caught up with it.
    hint: u64,
    /// Changes carried by notifications, by epoch, not yet applied.
    deltas: BTreeMap<u64, Change>,
    /// (generation, epoch) the watcher last acknowledged.
    acked: Option<(u64, u64)>,
    /// Barrier reads so far at an epoch: the backoff restarts per epoch.
    polls: (u64, u32),
    /// No barrier read before this instant (backoff); a notification
    /// clears it.
    poll_after: Option<Instant>,
    /// When the next renewal (or rejoin attempt) is due.
    next_renewal: Instant,
    /// The planned cleanup: whose lease end, and when to act.
    cleanup: Option<(String, Instant)>,
    /// When the running cleanup pass was planned for.
    cleanup_running: Option<Instant>,
    /// Extra delay before a member that is not the expired one's successor
    /// cleans it up (the successor goes first).
    cleanup_fallback: Duration,
    /// Since when partitions have been pending (handoff time).
    pending_since: Option<Instant>,
    renewals: u64,
    renewal_failures: u64,
}

impl Session {
    /// A member that has not joined yet.
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        let own = Ownership::new(&cfg.node_id, cfg.ring_size, cfg.lease_ttl, cfg.margin);
        let cleanup_fallback = Duration::from_millis(50 + fnv1a64(&[cfg.node_id.as_bytes()]) % 50);
        Session {
            own,
            generation: 1,
            hint: 0,
            deltas: BTreeMap::new(),
            acked: None,
            polls: (0, 0),
            poll_after: None,
            next_renewal: now + cfg.heartbeat_interval,
            cleanup: None,
            cleanup_running: None,
            cleanup_fallback,
            pending_since: None,
            renewals: 0,
            renewal_failures: 0,
            cfg,
        }
    }

    // ---- reading -----------------------------------------------------------

    /// The partition state machine.
    pub fn ownership(&self) -> &Ownership {
        &self.own
    }

    /// Where the member is in its life.
    pub fn status(&self) -> Status {
        self.own.status()
    }

    /// The adopted view, if the member is in the ring.
    pub fn view(&self) -> Option<&RingView> {
        self.own.view()
    }

    /// The local lease deadline, if a lease runs.
    pub fn valid_until(&self) -> Option<Instant> {
        self.own.valid_until()
    }

    /// Successful renewals so far.
    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    /// Failed or refused renewals so far.
    pub fn renewal_failures(&self) -> u64 {
        self.renewal_failures
    }

    /// The current membership's ticket.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation)
    }

    /// When partitions released at `now` stopped being reported: the hot
    /// path's deadline if that has passed by `now`, else `now`. Taken
    /// *before* an input changes the lease.
    fn stamp(&self, now: Instant) -> Instant {
        match self.own.valid_until() {
            Some(v) => match v.checked_sub(self.cfg.hot_path_lead) {
                Some(hot) if hot < now => hot,
                _ => now,
            },
            None => now,
        }
    }

    /// Turns the state machine's actions into effects: releases stamped
    /// `released_at`, acquisitions `now`.
    fn push(&mut self, out: &mut Output, actions: Vec<Action>, released_at: Instant, now: Instant) {
        let epoch = self.own.view_epoch();
        for a in actions {
            match a {
                Action::Release { partitions, reason } => out.effects.push(Effect::Released {
                    partitions,
                    reason,
                    epoch,
                    at: released_at,
                }),
                Action::Acquire { partitions, token } => {
                    out.wake_fence = true;
                    out.effects.push(Effect::Acquired {
                        partitions,
                        token,
                        epoch,
                        at: now,
                        waited: self.pending_since.map(|t| now.saturating_duration_since(t)),
                    });
                }
            }
        }
        if !self.own.has_pending() {
            self.pending_since = None;
        }
    }

    fn note_pending(&mut self, at: Instant) {
        if self.own.has_pending() {
            self.pending_since.get_or_insert(at);
        }
    }

    fn stale(&self, ticket: Ticket) -> bool {
        ticket.0 != self.generation || self.own.status() != Status::Member
    }

    // ---- joining -----------------------------------------------------------

    /// The join transaction committed (first join or rejoin); `sent_at` is
    /// when it was sent. Ignored once stopped.
    pub fn joined(&mut self, joined: Joined, sent_at: Instant, now: Instant) -> Output {
        let mut out = Output::default();
        if self.own.status() == Status::Stopped {
            return out;
        }
        let released_at = self.stamp(now);
        let epoch = joined.view.epoch();
        let actions = self.own.joined(joined.view, sent_at);
        self.generation += 1;
        self.acked = None;
        self.deltas.retain(|e, _| *e > epoch);
        self.next_renewal = now + self.cfg.heartbeat_interval;
        self.push(&mut out, actions, released_at, now);
        self.note_pending(now);
        out.effects.push(Effect::Joined {
            epoch,
            positions: joined.positions,
            removed: joined.removed,
            at: now,
        });
        out.wake_watcher = true;
        out.wake_fence = true;
        out
    }

    // ---- the watcher: views, acknowledgements, the barrier -----------------

    /// A notification arrived. A notification also cuts a barrier backoff
    /// short: the next barrier read happens at once.
    pub fn notified(&mut self, notice: Notice) {
        self.hint = self.hint.max(notice.epoch);
        if let Some(change) = notice.change {
            if self.deltas.len() < MAX_DELTAS && notice.epoch > self.own.view_epoch() {
                self.deltas.insert(notice.epoch, change);
            }
        }
        self.poll_after = None;
    }

    /// The watcher has a new connection: notifications may have been missed
    /// before its LISTEN, so the view is acknowledged again at once — the
    /// answer (read after the LISTEN) carries the ring's epoch and reveals
    /// any missed change.
    pub fn watcher_connected(&mut self) {
        self.acked = None;
    }

    /// The watcher's next step. Changes that notifications carried are
    /// applied here, in order, without a statement; what they do not cover
    /// is read from the change log.
    pub fn watcher_next(&mut self, now: Instant) -> (WatcherStep, Output) {
        let mut out = Output::default();
        if self.own.status() != Status::Member {
            return (WatcherStep::Wait(IDLE_TICK), out);
        }
        let ticket = self.ticket();
        if self.hint > self.own.view_epoch() {
            self.apply_deltas(now, &mut out);
            if self.own.view_epoch() < self.hint {
                let from = self.own.view_epoch();
                return (WatcherStep::CatchUp { from, ticket }, out);
            }
            self.hint = 0;
        }
        let epoch = self.own.view_epoch();
        if self.acked != Some((self.generation, epoch)) {
            let barrier = self.own.has_pending();
            return (
                WatcherStep::Ack {
                    epoch,
                    barrier,
                    ticket,
                },
                out,
            );
        }
        if !self.own.has_pending() {
            self.polls = (0, 0);
            self.poll_after = None;
            return (WatcherStep::Wait(IDLE_TICK), out);
        }
        if let Some(at) = self.poll_after.filter(|at| *at > now) {
            return (WatcherStep::Wait(at - now), out);
        }
        (WatcherStep::Barrier { ticket }, out)
    }

    /// Applies the notified changes that follow the view without a gap.
    fn apply_deltas(&mut self, now: Instant, out: &mut Output) {
        while let Some(change) = self.deltas.remove(&(self.own.view_epoch() + 1)) {
            let Some(next) = self.own.view().map(|v| v.apply(&change)) else {
                break;
            };
            self.adopt(next, now, out);
        }
        let at = self.own.view_epoch();
        self.deltas.retain(|e, _| *e > at);
    }

    /// Adopts a newer view: a lapsed lease fences first (those partitions
    /// stopped being reported at its deadline, and go back through the
    /// barrier), then the view's releases.
    fn adopt(&mut self, view: RingView, now: Instant, out: &mut Output) {
        let members = view.members().len();
        let released_at = self.stamp(now);
        let mut actions = self.own.fence(now);
        actions.extend(self.own.adopt(view));
        self.push(out, actions, released_at, now);
        self.note_pending(now);
        out.effects.push(Effect::ViewChanged {
            epoch: self.own.view_epoch(),
            members,
            at: now,
        });
    }

    /// The answer of a [`WatcherStep::CatchUp`].
    pub fn caught_up(&mut self, ticket: Ticket, read: CatchUp, now: Instant) -> Output {
        let mut out = Output::default();
        if !self.stale(ticket) {
            match read {
                CatchUp::Changes(changes) => {
                    for change in changes {
                        let at = self.own.view_epoch();
                        if change.epoch <= at {
                            continue;
                        }
                        if change.epoch != at + 1 {
                            break;
                        }
                        let Some(next) = self.own.view().map(|v| v.apply(&change)) else {
                            break;
                        };
                        self.adopt(next, now, &mut out);
                    }
                }
                CatchUp::Full(view) => {
                    if view.epoch() > self.own.view_epoch() {
                        self.adopt(view, now, &mut out);
                    }
                }
            }
            let at = self.own.view_epoch();
            self.deltas.retain(|e, _| *e > at);
        }
        // What is still missing shows in the next acknowledgement's answer.
        self.hint = 0;
        out
    }

    /// The answer of a [`WatcherStep::Ack`] for `epoch`, sent at `sent_at`.
    pub fn acked(
        &mut self,
        ticket: Ticket,
        epoch: u64,
        reply: Renewal,
        sent_at: Instant,
        now: Instant,
    ) -> Output {
        self.acked = Some((ticket.0, epoch));
        let view_epoch = self.own.view_epoch();
        let out = self.on_renewal(ticket, &reply, sent_at, now);
        if !out.rejoin && reply.epoch <= view_epoch {
            self.schedule_poll(now);
        }
        out
    }

    /// The answer of a [`WatcherStep::Barrier`]: the ring's epoch and the
    /// smallest acknowledged epoch of the other live members.
    pub fn barrier_read(
        &mut self,
        ticket: Ticket,
        snapshot_epoch: u64,
        others_min_ack: Option<u64>,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        if snapshot_epoch > self.own.view_epoch() {
            self.hint = self.hint.max(snapshot_epoch);
            return out;
        }
        if !self.stale(ticket) {
            let actions = self.own.barrier(snapshot_epoch, others_min_ack, now);
            self.push(&mut out, actions, now, now);
        }
        self.schedule_poll(now);
        out
    }

    fn schedule_poll(&mut self, now: Instant) {
        if !self.own.has_pending() {
            self.polls = (0, 0);
            self.poll_after = None;
            return;
        }
        let epoch = self.own.view_epoch();
        if self.polls.0 != epoch {
            self.polls = (epoch, 0);
        }
        self.polls.1 += 1;
        self.poll_after = Some(now + barrier_backoff(self.polls.1 - 1));
    }

    /// A renewal or acknowledgement answer, from either thread.
    fn on_renewal(
        &mut self,
        ticket: Ticket,
        reply: &Renewal,
        sent_at: Instant,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        if self.stale(ticket) {
            return out;
        }
        // If the local lease ran out before this answer (a pause, a slow
        // answer), what is released below stopped being reported at its
        // deadline.
        let released_at = self.stamp(now);
        match reply.renewed {
            None => {
                let mut actions = self.own.fence(now);
                actions.extend(self.own.evicted());
                self.push(&mut out, actions, released_at, now);
                out.wake_fence = true;
                out.rejoin = true;
                return out;
            }
            Some(false) => {
                self.renewal_failures += 1;
                out.renewal = Some(false);
                out.effects.push(Effect::RenewalRefused {
                    ring_epoch: reply.epoch,
                });
            }
            Some(true) => {
                self.renewals += 1;
                out.renewal = Some(true);
                let actions = self.own.renewed(sent_at, now);
                self.push(&mut out, actions, released_at, now);
                out.wake_fence = true;
            }
        }
        if reply.epoch > self.own.view_epoch() {
            self.hint = self.hint.max(reply.epoch);
            out.wake_watcher = true;
        } else if let Some(others_min_ack) = reply.barrier {
            if reply.epoch == self.own.view_epoch() && self.own.has_pending() {
                let actions = self.own.barrier(reply.epoch, others_min_ack, now);
                self.push(&mut out, actions, now, now);
            }
        }
        if let Some((node, ms)) = &reply.next_expiry {
            self.plan_cleanup(node, local_instant(now, *ms));
            out.wake_cleanup = true;
        }
        out
    }

    // ---- self-fencing and stopping -----------------------------------------

    /// When the fence thread must look again: the local deadline while
    /// anything is active, else nothing to guard.
    pub fn fence_deadline(&self) -> Option<Instant> {
        self.own
            .valid_until()
            .filter(|_| self.own.active_count() > 0)
    }

    /// The clock reached `now`: if the local lease has run out, every active
    /// partition is released ([`ReleaseReason::LeaseExpired`](crate::ReleaseReason::LeaseExpired)), stamped with
    /// the moment the hot path stopped reporting them.
    pub fn tick(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        let released_at = self.stamp(now);
        let actions = self.own.fence(now);
        self.push(&mut out, actions, released_at, now);
        out
    }

    /// `stop()`: everything is released ([`ReleaseReason::Stopping`](crate::ReleaseReason::Stopping)) and
    /// nothing becomes active again.
    pub fn stop(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        let released_at = self.stamp(now);
        let actions = self.own.stop();
        self.push(&mut out, actions, released_at, now);
        out.wake_fence = true;
        out.wake_watcher = true;
        out.wake_cleanup = true;
        out
    }
}

mod cleanup;
mod heartbeat;
#[cfg(test)]
mod tests;
