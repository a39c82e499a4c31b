//! The session core: everything one member *decides*, as a state machine
//! without I/O, in the manner of raft-rs.
//!
//! [`Ownership`] knows which partitions are active and pending. The
//! session around it knows the rest of a member's life in the ring: which
//! membership (generation, incarnation) an answer belongs to, the changes
//! notifications carried and whether they leave a gap, which pending
//! partitions to take and when to try again, which claims it holds but
//! does not use (draining, to be given back), when the next renewal is due,
//! whom to clean up and when, and when released partitions really stopped
//! being reported.
//!
//! It is driven by inputs — a join committed, a notification, a renewal
//! answer, a take's answer, a release confirmed, a drain finished, a
//! change-log read, a cleanup pass, a failure, the clock (`now` is always
//! an argument; the session never reads a clock) — and answers with an
//! [`Output`]: the effects to publish, in order, and whom to wake. Each
//! thread of a member asks it for its next step
//! ([`Session::watcher_next`], [`Session::heartbeat_next`],
//! [`Session::cleanup_next`], [`Session::fence_deadline`]), runs that one
//! statement, and hands the answer back with the [`Ticket`] it was given,
//! so that an answer about an earlier membership is recognised and dropped.
//!
//! The threads of [`RingNode`](crate::RingNode) are thin executors of this
//! type; its tests drive it through the interleavings that chaos runs found
//! (stale answers after a pause, a gap in the deltas, an eviction during a
//! pending handoff, a release after the local deadline, a lost take answer)
//! without a database.
//!
//! One file per part of a member's life: this one holds the state, the
//! join and stopping; `watcher` the notifications and the views adopted;
//! `claims` the takes, releases and reconciliation; `drains` the drain
//! guards; `heartbeat` the renewals, their answers and the timeline check;
//! `cleanup` the removal of expired members.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::event::ReleaseReason;
use crate::placement::fnv1a64;
use crate::protocol::input::{Input, Joined};
use crate::protocol::output::{Effect, HandoffCause, Output};
use crate::protocol::ownership::{Action, Ownership, Status};
use crate::protocol::ticket::Ticket;
use crate::ring::{Change, RingView};

mod claims;
mod cleanup;
mod drains;
mod heartbeat;
mod watcher;

/// Most notified changes kept while they cannot be applied yet: a member
/// further behind reads the change log.
const MAX_DELTAS: usize = 4096;
/// The watcher's wait with nothing to do: notifications wake it anyway, so
/// this only bounds how late it sees a heartbeat's hint of a missed
/// notification. Long, so that an idle member costs next to no CPU.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// The watcher's wait while the member rejoins: its first take follows the
/// join's commit by at most this.
pub const JOINING_TICK: Duration = Duration::from_millis(5);
/// From this many changes in a row on, a member builds the view they lead
/// to once instead of applying them one by one.
const BATCH_CHANGES: usize = 8;
/// How long a thread with nothing planned sleeps before looking again.
const NOTHING_PLANNED: Duration = Duration::from_secs(3600);
/// Retry delay of a failed cleanup pass.
const CLEANUP_RETRY: Duration = Duration::from_millis(200);

/// Turns "in `ms` milliseconds of the database's clock", read at `read_at`,
/// into a local instant.
pub fn local_instant(read_at: Instant, ms: f64) -> Instant {
    if ms > 0.0 && ms.is_finite() {
        read_at + Duration::from_secs_f64(ms / 1000.0)
    } else {
        read_at
    }
}

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
    /// With `Some(d)`, the claims of partitions handed off (or stopped) are
    /// kept until the user's work on them has stopped, at most `d`.
    pub drain_timeout: Option<Duration>,
    /// Whether notifications arrive (LISTEN): without them, waiting takers
    /// poll more often.
    pub notifications: bool,
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
            drain_timeout: cfg.drain_timeout,
            notifications: cfg.pooling.notifications(),
        }
    }

    /// Delay before retrying a failed renewal or rejoin.
    fn retry(&self) -> Duration {
        (self.heartbeat_interval / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// A claim this member holds but does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Its partition was released locally; the user's work may still run
    /// (the drain with this id).
    Draining(u64),
    /// To be given back.
    Release,
    /// The release is on its way.
    Releasing,
}

/// One member's session. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    own: Ownership,
    /// Bumped at every (re)join; answers tagged with an older one are stale.
    generation: u64,
    /// The member row's incarnation (0 before the first join).
    incarnation: i64,
    /// The newest epoch heard of (notification, renewal, cleanup); 0 once
    /// the view has caught up with it.
    hint: u64,
    /// Changes carried by notifications, by epoch, not yet applied.
    deltas: BTreeMap<u64, Change>,
    /// Whether the watcher has read the ring since its connection was made
    /// (notifications may have been missed before its LISTEN).
    synced: bool,
    /// Since when the watcher's statements (or its connection) fail, and
    /// the last error: cleared by its next step that succeeds.
    watcher_failing: Option<(Instant, String)>,
    /// The database moved to a new timeline and what this member relies on
    /// survived: its view is read again whole and adopted whatever its
    /// epoch (epochs of two timelines are not comparable).
    resync: bool,
    /// A join just committed and nothing was taken yet.
    fresh_join: bool,
    /// Claims held but not used, by `(partition, token)`. A take's answer
    /// naming one of them is late and never used.
    held: BTreeMap<(u32, u64), Held>,
    /// Drains in progress: their claims and deadline.
    drains: BTreeMap<u64, (Vec<(u32, u64)>, Instant)>,
    next_drain: u64,
    /// The partitions of the take in flight, if any.
    taking: Option<Vec<u32>>,
    /// Members removed by the changes adopted while the take was in
    /// flight (`None`: a whole ring was read, which does not say): a holder
    /// its answer names may be gone already, its removal heard before the
    /// answer came.
    removed_while_taking: Option<std::collections::BTreeSet<String>>,
    /// Pending partitions whose claim another member holds, and who (empty
    /// when the take skipped a claim locked by a transaction in flight).
    waiting_for: BTreeMap<u32, String>,
    /// Waiting partitions to take again at once: a release named them, or
    /// their holder was removed.
    recheck: std::collections::BTreeSet<u32>,
    /// Takes that left partitions waiting, in a row (the retry backoff).
    take_polls: u32,
    /// When to take the waiting partitions again anyway (the backoff of the
    /// safety net for a lost notification); releases and removals recheck
    /// the partitions they concern at once.
    take_after: Option<Instant>,
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
    /// What made them pending (set with `pending_since`).
    pending_cause: HandoffCause,
    /// The cause of the view being adopted (see [`Session::note_pending`]).
    adopting_cause: HandoffCause,
    /// The lease ends of other members as the renewals and cleanups
    /// reported them: a member removed at or after its lease end crashed,
    /// one removed before it left. Bounded by the ring's membership.
    expiries: BTreeMap<String, Instant>,
    /// Members this member's own cleanup removed, until their removal is
    /// adopted.
    crashed: std::collections::BTreeSet<String>,
    /// The newest ring epoch heard of (renewals, notifications, catch-ups).
    ring_epoch: u64,
    /// The last successful renewal's answer.
    last_renewed: Option<Instant>,
    /// Since when renewals have been failing (none since the last success).
    failing_since: Option<Instant>,
    /// The last renewal was refused by the lag bound.
    refused: bool,
    renewals: u64,
    renewal_failures: u64,
    /// The database timeline this membership last saw (renewals; a take's
    /// while none is known yet). See "Timelines" in [`Session::renewed`].
    timeline: Option<u64>,
    /// Fenced by a timeline change: the member's row on the new timeline
    /// is a stale one, to be deleted before the rejoin.
    stale_row: bool,
}

impl Session {
    /// A member that has not joined yet.
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        let own = Ownership::new(&cfg.node_id, cfg.ring_size, cfg.lease_ttl, cfg.margin);
        let cleanup_fallback = Duration::from_millis(50 + fnv1a64(&[cfg.node_id.as_bytes()]) % 50);
        Session {
            own,
            generation: 1,
            incarnation: 0,
            hint: 0,
            deltas: BTreeMap::new(),
            synced: false,
            watcher_failing: None,
            resync: false,
            fresh_join: false,
            held: BTreeMap::new(),
            drains: BTreeMap::new(),
            next_drain: 1,
            taking: None,
            removed_while_taking: Some(Default::default()),
            waiting_for: BTreeMap::new(),
            recheck: Default::default(),
            take_polls: 0,
            take_after: None,
            next_renewal: now + cfg.heartbeat_interval,
            cleanup: None,
            cleanup_running: None,
            cleanup_fallback,
            pending_since: None,
            pending_cause: HandoffCause::Join,
            adopting_cause: HandoffCause::Join,
            expiries: BTreeMap::new(),
            crashed: Default::default(),
            ring_epoch: 0,
            last_renewed: None,
            failing_since: None,
            refused: false,
            renewals: 0,
            renewal_failures: 0,
            timeline: None,
            stale_row: false,
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

    /// The newest ring epoch heard of (at least the view's).
    pub fn ring_epoch(&self) -> u64 {
        self.ring_epoch.max(self.own.view_epoch())
    }

    /// When the last renewal succeeded (its answer arrived).
    pub fn last_renewed(&self) -> Option<Instant> {
        self.last_renewed
    }

    /// Since when renewals have been failing or refused, if the last one
    /// did not succeed.
    pub fn failing_since(&self) -> Option<Instant> {
        self.failing_since
    }

    /// Whether the last renewal was refused by the lag bound.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Since when the watcher fails (it cannot take, give back or follow
    /// the view), with its last error; `None` while it works.
    pub fn watcher_failing(&self) -> Option<(Instant, &str)> {
        self.watcher_failing.as_ref().map(|(t, e)| (*t, e.as_str()))
    }

    /// The database timeline this membership last saw, if any.
    pub fn timeline(&self) -> Option<u64> {
        self.timeline
    }

    /// Whether the rejoin must first delete this member's own row: a
    /// timeline change fenced it, and the row the new primary has is a
    /// stale one (it would refuse the join as "node id in use" until it
    /// expired). Cleared by the next join.
    pub fn stale_row(&self) -> bool {
        self.stale_row
    }

    /// Notes a renewal that did not succeed at `now`.
    fn renewal_not_made(&mut self, now: Instant) {
        self.renewal_failures += 1;
        self.failing_since.get_or_insert(now);
    }

    /// The current membership's ticket.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.generation,
            incarnation: self.incarnation,
        }
    }

    /// Pending partitions whose claim another member holds, grouped by that
    /// member (ascending by node id, partitions ascending).
    pub fn waiting_for(&self) -> Vec<(String, Vec<u32>)> {
        let mut by: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (p, who) in &self.waiting_for {
            by.entry(who.as_str()).or_default().push(*p);
        }
        by.into_iter().map(|(w, ps)| (w.to_string(), ps)).collect()
    }

    /// How many pending partitions wait for a claim another member holds.
    pub fn waiting_count(&self) -> usize {
        self.waiting_for.len()
    }

    /// Claims held but not in use (draining or being given back).
    pub fn unused_claims(&self) -> usize {
        self.held.len()
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

    /// Turns the state machine's actions into effects — releases stamped
    /// `released_at`, acquisitions `now` — and decides what becomes of the
    /// released claims: drained (handoff or stop, with a drain timeout),
    /// given back (handoff without a drain, a lapsed lease), or forgotten
    /// (eviction: the row and its claims are gone; a stop without a drain:
    /// the leave frees them).
    fn push(&mut self, out: &mut Output, actions: Vec<Action>, released_at: Instant, now: Instant) {
        self.push_released(out, actions, released_at, now, true);
    }

    /// [`Session::push`]; without `may_drain` nothing drains (a crash).
    fn push_released(
        &mut self,
        out: &mut Output,
        actions: Vec<Action>,
        released_at: Instant,
        now: Instant,
        may_drain: bool,
    ) {
        let epoch = self.own.view_epoch();
        for a in actions {
            match a {
                Action::Release {
                    partitions,
                    tokens,
                    reason,
                } => {
                    let claims: Vec<(u32, u64)> = partitions.iter().copied().zip(tokens).collect();
                    let drain = self.after_release(claims, reason, now, may_drain);
                    out.effects.push(Effect::Released {
                        partitions,
                        reason,
                        epoch,
                        at: released_at,
                        drain,
                    });
                }
                Action::Acquire { partitions, token } => {
                    out.wake_fence = true;
                    for p in &partitions {
                        self.waiting_for.remove(p);
                    }
                    out.effects.push(Effect::Acquired {
                        partitions,
                        token,
                        epoch,
                        at: now,
                        waited: self.pending_since.map(|t| now.saturating_duration_since(t)),
                        cause: self.pending_cause,
                    });
                }
            }
        }
        if !self.own.has_pending() {
            self.pending_since = None;
            self.waiting_for.clear();
        }
    }

    /// Partitions pending since `at` (if not pending already) because of
    /// the change being adopted (`adopting_cause`).
    fn note_pending(&mut self, at: Instant) {
        if self.own.has_pending() && self.pending_since.is_none() {
            self.pending_since = Some(at);
            self.pending_cause = self.adopting_cause;
        }
    }

    /// What the step from `old` to `new` was: a removal at or after the
    /// removed member's lease end (as reported, within a third of a TTL)
    /// or by this member's own cleanup is a crash, another removal a leave,
    /// anything else a join.
    fn cause_of(&mut self, old: &RingView, new: &RingView, now: Instant) -> HandoffCause {
        let soon = now + self.cfg.lease_ttl / 3;
        let mut cause = HandoffCause::Join;
        // Both lists ascend by node id: one merge walk, not a search per
        // member (every member does this at every change).
        let after = new.members();
        let mut j = 0;
        for m in old.members() {
            let id = m.node_id();
            while after.get(j).is_some_and(|n| n.node_id() < id) {
                j += 1;
            }
            if let Some(now_there) = after.get(j).filter(|n| n.node_id() == id) {
                // A member made ineligible (unready, cordoned) gives its
                // partitions up gracefully, as a leaver does.
                if m.is_eligible() && !now_there.is_eligible() && cause == HandoffCause::Join {
                    cause = HandoffCause::Leave;
                }
                continue;
            }
            let expired =
                self.crashed.remove(id) || self.expiries.get(id).is_some_and(|t| *t <= soon);
            self.expiries.remove(id);
            if expired {
                cause = HandoffCause::Crash;
            } else if cause == HandoffCause::Join {
                cause = HandoffCause::Leave;
            }
        }
        cause
    }

    fn stale(&self, ticket: Ticket) -> bool {
        ticket.generation != self.generation || self.own.status() != Status::Member
    }

    /// Something happened to the session at `now`: the one entry point for
    /// every answer, notification and event ([`Input`]). What the edge must
    /// make visible, and whom to wake, is the returned [`Output`]. Answers
    /// carry the [`Ticket`] of the step they answer; one about an earlier
    /// membership (before an eviction and rejoin) changes nothing.
    pub fn step(&mut self, input: Input, now: Instant) -> Output {
        match input {
            Input::Joined { joined, sent_at } => self.joined(joined, sent_at, now),
            Input::Renewed {
                ticket,
                reply,
                sent_at,
            } => self.renewed(ticket, reply, sent_at, now),
            Input::RenewalFailed { ticket } => self.renewal_failed(ticket, now),
            Input::RejoinFailed { ticket } => self.rejoin_failed(ticket, now),
            Input::CaughtUp { ticket, read } => self.caught_up(ticket, read, now),
            Input::Took { ticket, took } => self.took(ticket, took, now),
            Input::Released { ticket } => self.released(ticket),
            Input::Cleaned { ticket, cleaned } => self.cleaned(ticket, cleaned, now),
            Input::CleanupFailed { ticket, node } => self.cleanup_failed(ticket, node, now),
            Input::Notified(notice) => self.notified(notice),
            Input::WatcherConnected => self.watcher_connected(),
            Input::WatcherOk => self.watcher_ok(),
            Input::WatcherFailed { error } => self.watcher_failed(now, error),
            Input::Drained { id } => self.drained(id, now),
            Input::Tick => self.tick(now),
            Input::Stop => self.stop(now),
            Input::Crash => self.crash(now),
        }
    }

    /// Whether `ticket` was issued before the latest join: its answer is
    /// about an earlier membership. (Unlike [`stale`](Self::stale), a
    /// stopping member's own answers are not stale.)
    fn earlier_membership(&self, ticket: Ticket) -> bool {
        ticket.generation != self.generation
    }

    // ---- joining -----------------------------------------------------------

    /// The join transaction committed (first join or rejoin); `sent_at` is
    /// when it was sent. Ignored once stopped. The claims of an earlier
    /// incarnation were freed with its row: nothing is inherited.
    pub(super) fn joined(&mut self, joined: Joined, sent_at: Instant, now: Instant) -> Output {
        let mut out = Output::default();
        if self.own.status() == Status::Stopped {
            return out;
        }
        let released_at = self.stamp(now);
        let epoch = joined.view.epoch();
        self.ring_epoch = self.ring_epoch.max(epoch);
        self.adopting_cause = HandoffCause::Join;
        let actions = self.own.joined(joined.view, sent_at);
        self.push(&mut out, actions, released_at, now);
        self.generation += 1;
        self.incarnation = joined.incarnation;
        self.timeline = None;
        self.stale_row = false;
        self.forget_claims();
        self.synced = false;
        self.fresh_join = true;
        self.deltas.retain(|e, _| *e > epoch);
        self.next_renewal = now + self.cfg.heartbeat_interval;
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

    /// The claims of the incarnation that ended are gone with its row.
    fn forget_claims(&mut self) {
        self.held.clear();
        self.drains.clear();
        self.taking = None;
        self.removed_while_taking = Some(Default::default());
        self.waiting_for.clear();
        self.recheck.clear();
        self.take_polls = 0;
        self.take_after = None;
    }

    // ---- self-fencing and stopping -----------------------------------------

    /// When the fence thread must look again: the local deadline while
    /// anything is active or draining, else nothing to guard.
    pub fn fence_deadline(&self) -> Option<Instant> {
        self.own
            .valid_until()
            .filter(|_| self.own.active_count() > 0 || !self.drains.is_empty())
    }

    /// The clock reached `now`: if the local lease has run out, every active
    /// partition is released ([`ReleaseReason::LeaseExpired`](crate::ReleaseReason::LeaseExpired)), stamped with
    /// the moment the hot path stopped reporting them, and every drain is
    /// cut short — a lease that runs out cannot wait for the user's work:
    /// its partitions are released again with `LeaseExpired`, meaning "stop
    /// now".
    pub(super) fn tick(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        self.lapse(now, &mut out);
        out
    }

    /// `stop()`: everything is released ([`ReleaseReason::Stopping`](crate::ReleaseReason::Stopping)) and
    /// nothing becomes active again. With a drain timeout the released
    /// partitions drain (if the local lease still runs: past it nothing
    /// waits): the edge waits for [`Session::draining_count`] to reach zero
    /// (within its bound) before it leaves, and the leave frees every
    /// claim.
    pub(super) fn stop(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        let released_at = self.stamp(now);
        let actions = self.own.stop();
        self.push(&mut out, actions, released_at, now);
        out.wake_fence = true;
        out.wake_watcher = true;
        out.wake_cleanup = true;
        out
    }

    /// A crash (`RingNode::crash`, feature `test-util`): like
    /// [`Session::stop`] everything is released
    /// ([`ReleaseReason::Stopping`](crate::ReleaseReason::Stopping)) and
    /// nothing becomes active again, but a crash cannot drain: no guard is
    /// handed out, the drains in progress end now (their partitions are
    /// released again, without a guard: stop now), and nothing is given
    /// back — the claims free themselves when the lease ends in the
    /// database and the survivors remove the member.
    pub(super) fn crash(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        let released_at = self.stamp(now);
        let mut actions = self.own.stop();
        actions.extend(self.cut_drains(ReleaseReason::Stopping));
        self.push_released(&mut out, actions, released_at, now, false);
        self.forget_claims();
        out.wake_fence = true;
        out.wake_watcher = true;
        out.wake_cleanup = true;
        out
    }
}

#[cfg(test)]
mod tests;
