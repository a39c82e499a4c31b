//! The member's steps, run by its [`Client`](crate::Client)'s threads:
//! each asks the session core for the next step, runs that one statement,
//! hands the answer back with its ticket, and publishes what came out.
//!
//! * [`Inner::watch_step`] (the work thread): a catch-up, a take or a
//!   release;
//! * [`Inner::rejoin`] (the changes thread): joining again after an
//!   eviction;
//! * renewals are batched across the client's members by its connection
//!   thread, which reports each answer here ([`Inner::renewal_failed`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Inner;
use crate::error::{Error, Result};
use crate::protocol::input::Input;
use crate::protocol::output::WatcherStep;
use crate::protocol::{Status, Ticket};
use crate::store::{HeldConn, JoinAttempt};
use crate::telemetry::DbOp;
use crate::trace::{Kind, Op};

impl Inner {
    /// One step of this member's watcher on the work thread's connection
    /// (`connect` borrows one when there is none): `Ok(None)` when a
    /// statement ran, `Ok(Some(d))` when there is nothing to do for `d`.
    /// A failed step is handed to the session (a take's answer is lost, a
    /// release is sent again) and returned.
    pub(crate) fn watch_step(
        &self,
        conn: &mut Option<HeldConn>,
        connect: impl FnOnce() -> Result<HeldConn>,
    ) -> Result<Option<std::time::Duration>> {
        if self.session.read().status() != Status::Member {
            return Ok(Some(crate::protocol::IDLE_TICK));
        }
        let step = {
            let mut s = self.session.write();
            // Views that notifications carried are adopted here.
            let op = (s.ring_epoch() > s.ownership().view_epoch())
                .then(|| self.op_at(Kind::View, s.ownership().view_epoch()));
            let (step, out) = s.watcher_next(Instant::now());
            self.publish(&s, out);
            if let Some(op) = op {
                op.finish(s.ownership().view_epoch(), assigned(&s), "notified");
            }
            step
        };
        if let WatcherStep::Wait(d) = step {
            return Ok(Some(match self.step_due(Instant::now()) {
                Some(left) => left.min(d),
                None => {
                    // The budget's safety net: its step is due.
                    let c = match conn {
                        Some(c) => c,
                        None => conn.insert(connect()?),
                    };
                    self.budget_step(c, "safety net");
                    d.min(self.step_retry())
                }
            }));
        }
        // A catch-up follows every reconnect: its success alone does not
        // show that the watcher can do its work again.
        let proves = !matches!(step, WatcherStep::CatchUp { .. });
        let result = match conn {
            Some(c) => self.run_step(c, step),
            None => connect().and_then(|c| {
                let c = conn.insert(c);
                self.run_step(c, step)
            }),
        };
        match result {
            Ok(()) => {
                if proves && self.session.read().watcher_failing().is_some() {
                    self.update(|s, now| s.step(Input::WatcherOk, now));
                    self.watcher_warned.store(false, Ordering::Relaxed);
                }
                Ok(None)
            }
            Err(e) => {
                // Once per streak of failures: a watcher without a
                // connection fails again every second. A pool that only
                // has not opened a connection yet (every member of a fleet
                // starting at once) is worth a warning once it lasts a
                // statement timeout.
                let streak = self
                    .session
                    .read()
                    .watcher_failing()
                    .map(|(since, _)| since.elapsed());
                let worth = !e.no_pooled_connection()
                    || streak.is_some_and(|d| d >= self.cfg.effective_statement_timeout());
                if worth && !self.watcher_warned.swap(true, Ordering::Relaxed) {
                    log::warn!(target: "leasering", "node {}: watcher: {}", self.node_id, e);
                } else {
                    log::debug!(target: "leasering", "node {}: watcher, failing: {}", self.node_id, e);
                }
                self.telemetry.db_error(DbOp::Watch, e.kind());
                let error = e.to_string();
                self.update(|s, now| s.step(Input::WatcherFailed { error }, now));
                Err(e)
            }
        }
    }

    /// Runs one watcher step on `c`.
    fn run_step(&self, c: &mut HeldConn, step: WatcherStep) -> Result<()> {
        match step {
            WatcherStep::CatchUp { from, ticket } => {
                let op = self.op_at(Kind::View, from);
                let read = self.store.catch_up(c, from)?;
                self.update(|s, now| s.step(Input::CaughtUp { ticket, read }, now));
                let s = self.session.read();
                op.finish(s.ownership().view_epoch(), assigned(&s), "caught up");
            }
            WatcherStep::Take { partitions, ticket } => {
                let op = self.op(Kind::Take);
                let t = Instant::now();
                let took = self.store.take(c, ticket.incarnation(), &partitions)?;
                let got = took.got.len();
                log::debug!(target: "leasering", "node {}: took {} of {} claims in {:?} ({} held by others)",
                    self.node_id, got, partitions.len(), t.elapsed(), took.held_by.len());
                self.update(|s, now| s.step(Input::Took { ticket, took }, now));
                self.finish_with(op, partitions.len(), format_args!("took {got}"));
                if got > 0 && self.store.max_moving.is_some() && self.moves_pending() {
                    // Moves arrived: the budget may allow the next ones.
                    self.budget_step(c, "take");
                }
            }
            WatcherStep::Release { claims, ticket } => {
                let op = self.op(Kind::Release);
                let t = Instant::now();
                let freed = self
                    .store
                    .release_claims(c, ticket.incarnation(), &claims)?;
                log::debug!(target: "leasering", "node {}: gave back {freed} of {} claims in {:?}",
                    self.node_id, claims.len(), t.elapsed());
                self.update(|s, now| s.step(Input::Released { ticket }, now));
                self.finish_with(op, claims.len(), format_args!("freed {freed}"));
            }
            WatcherStep::Wait(_) => {}
        }
        Ok(())
    }

    /// Whether this member's view has moves its ring's budget held back.
    fn moves_pending(&self) -> bool {
        self.session
            .read()
            .view()
            .is_some_and(|v| v.moves_pending() > 0)
    }

    /// How long between two tries of the budget's step by one member while
    /// its view has moves pending: a third of the lease TTL, at least
    /// 200 ms.
    fn step_retry(&self) -> std::time::Duration {
        (self.cfg.lease_ttl / 3).max(std::time::Duration::from_millis(200))
    }

    /// `None` when the budget's step is due now (the safety net); else how
    /// long until it is (`Duration::MAX`-like when nothing is pending).
    fn step_due(&self, now: Instant) -> Option<std::time::Duration> {
        let idle = crate::protocol::IDLE_TICK;
        if self.store.max_moving.is_none() {
            return Some(idle);
        }
        let mut at = self.step_at.lock();
        if !self.moves_pending() {
            *at = None;
            return Some(idle);
        }
        match *at {
            None => {
                *at = Some(now + self.step_retry());
                Some(self.step_retry())
            }
            Some(t) if t > now => Some(t - now),
            Some(_) => None,
        }
    }

    /// Writes the move budget's next step if the budget allows one
    /// ([`Store::step`](crate::store::Store::step)). Its failure is logged
    /// and left to the next take or the safety net: the member's own work
    /// does not depend on it.
    fn budget_step(&self, c: &mut HeldConn, why: &str) {
        *self.step_at.lock() = Some(Instant::now() + self.step_retry());
        match self.store.step(&mut c.client) {
            Ok(Some(epoch)) => {
                log::debug!(target: "leasering", ring = self.cfg.ring_id.as_str(), node = self.node_id.as_str();
                    "node {}: wrote the move budget's step (after a {why}), epoch {epoch}", self.node_id);
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(), node = self.node_id.as_str(),
                    error = e.to_string().as_str();
                    "node {}: the move budget's step failed (the next take or the safety net tries again): {}",
                    self.node_id, e);
            }
        }
    }

    /// A renewal that could not be made (no connection, a failed
    /// statement): logged, counted, handed to the session.
    pub(crate) fn renewal_failed(&self, ticket: Ticket, e: &Error, op: Op) {
        log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(),
            node = self.node_id.as_str(), op = "renew", error = e.to_string().as_str();
            "node {}: lease renewal failed: {}", self.node_id, e);
        self.telemetry.db_error(DbOp::Renew, e.kind());
        *self.last_error.lock() = Some(e.to_string());
        self.update(|s, now| s.step(Input::RenewalFailed { ticket }, now));
        self.finish(op, "failed");
    }

    /// Joins the ring again after an eviction (from the changes thread).
    /// Serialised against `stop()`. Whether it rejoined.
    pub(crate) fn rejoin(&self) -> Result<bool> {
        let _m = self.membership.lock();
        let stopped = self.stopped.load(std::sync::atomic::Ordering::SeqCst);
        if stopped || self.session.read().status() != Status::Joining {
            return Ok(false);
        }
        let op = self.op(Kind::Join);
        let mut conn = self
            .client
            .pool
            .get(self.cfg.effective_statement_timeout(), "rejoin")?;
        if self.session.read().stale_row() {
            // Fenced by a timeline change: the new primary still has this
            // member's row (reverted, perhaps renewed since); it would
            // refuse the join as "node id in use" until it expired.
            let gone = self.store.leave(&mut conn)?;
            log::info!(target: "leasering", "node {}: deleted its stale row before rejoining (epoch {:?})", self.node_id, gone);
        }
        let mut attempt = self
            .rejoin_attempt
            .lock()
            .take()
            .unwrap_or_else(|| JoinAttempt::new(Instant::now()));
        let joined = match self.store.join_with(&mut conn, &mut attempt, None) {
            Ok(joined) => joined,
            Err(e) => {
                *self.rejoin_attempt.lock() = Some(attempt);
                return Err(e);
            }
        };
        let sent_at = attempt.sent_at();
        let positions = joined.positions.len();
        self.update(|s, now| s.step(Input::Joined { joined, sent_at }, now));
        op.finish(
            self.session.read().ownership().view_epoch(),
            positions,
            "rejoined",
        );
        Ok(true)
    }

    /// [`RingNode::set_ready`](crate::RingNode::set_ready): serialised
    /// against rejoins and `stop()` (so a rejoin files the readiness this
    /// writes, or finds its row written).
    pub(crate) fn set_ready(&self, ready: bool) -> Result<()> {
        let _m = self.membership.lock();
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mut conn = self
            .client
            .pool
            .get(self.cfg.effective_statement_timeout(), "set_ready")?;
        let epoch = self.store.set_ready(&mut conn, ready)?;
        log::info!(target: "leasering", ring = self.cfg.ring_id.as_str(), node = self.node_id.as_str();
            "node {}: set_ready({ready}){}", self.node_id,
            epoch.map_or(String::new(), |e| format!(": eligibility changed (epoch {e})")));
        Ok(())
    }

    /// Asks the changes thread to rejoin this member.
    pub(crate) fn want_rejoin(&self) {
        self.rejoin_wanted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a rejoin was asked for (and clears the ask).
    pub(crate) fn take_rejoin_wanted(&self) -> bool {
        self.rejoin_wanted
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    // ---- spans --------------------------------------------------------------

    /// Starts an operation's span at the view's epoch.
    pub(crate) fn op(&self, kind: Kind) -> Op {
        self.op_at(kind, self.session.read().ownership().view_epoch())
    }

    fn op_at(&self, kind: Kind, epoch: u64) -> Op {
        Op::start(kind, &self.cfg.ring_id, &self.node_id, epoch)
    }

    /// Ends `op` with the view's epoch and active partitions.
    pub(crate) fn finish(&self, op: Op, outcome: &str) {
        let s = self.session.read();
        let own = s.ownership();
        op.finish(own.view_epoch(), own.active_count() as usize, outcome);
    }

    /// Ends `op` with the view's epoch and `partitions`.
    pub(crate) fn finish_with(&self, op: Op, partitions: usize, outcome: impl std::fmt::Display) {
        op.finish(
            self.session.read().ownership().view_epoch(),
            partitions,
            outcome,
        );
    }

    // ---- the test hook --------------------------------------------------------

    /// How much longer this member's threads are frozen (the test hook):
    /// the client's threads skip it meanwhile — no renewal, no take, no
    /// fence; notifications are kept for it, as a socket would.
    #[cfg(feature = "test-util")]
    pub(crate) fn frozen(&self) -> Option<std::time::Duration> {
        let until = (*self.frozen_until.lock())?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Without the `test-util` feature a member is never frozen.
    #[cfg(not(feature = "test-util"))]
    #[inline]
    pub(crate) fn frozen(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Partitions assigned to the member (active or pending).
fn assigned(s: &crate::protocol::Session) -> usize {
    let own = s.ownership();
    own.active_count() as usize + own.pending_count() as usize
}
