//! The session's watcher: notifications, the views it adopts (change-log
//! deltas or a full read), and when the watcher's connection comes and
//! goes. Takes and releases are in `claims`.

use std::time::Instant;

use super::{Held, Session, BATCH_CHANGES, IDLE_TICK, JOINING_TICK, MAX_DELTAS};
use crate::protocol::input::{CatchUp, Notice};
use crate::protocol::output::{Effect, HandoffCause, Output, WatcherStep};
use crate::protocol::{Status, Ticket};
use crate::ring::{Change, RingView};

impl Session {
    /// A notification arrived. A change may have freed claims (a member
    /// removed) and a release names the partitions it freed: either way a
    /// waiting take is retried at once. A release may also concern a take
    /// still on its way (its answer, on another connection or later on
    /// this one, says the claim is held): those partitions are retried as
    /// soon as that answer is in, not at the safety net's deadline.
    pub(in crate::protocol) fn notified(&mut self, notice: Notice) -> Output {
        match notice {
            Notice::Change { epoch, change } => {
                self.hint = self.hint.max(epoch);
                self.ring_epoch = self.ring_epoch.max(epoch);
                if let Some(change) = change {
                    if self.deltas.len() < MAX_DELTAS && epoch > self.own.view_epoch() {
                        self.deltas.insert(epoch, change);
                    }
                }
            }
            Notice::Released { partitions } => {
                let taking = |p: &u32| {
                    self.taking
                        .as_ref()
                        .is_some_and(|t| t.binary_search(p).is_ok())
                };
                let concerned: Vec<u32> = match partitions {
                    Some(ps) => ps
                        .into_iter()
                        .filter(|p| self.waiting_for.contains_key(p) || taking(p))
                        .collect(),
                    None => self
                        .waiting_for
                        .keys()
                        .copied()
                        .chain(self.taking.iter().flatten().copied())
                        .collect(),
                };
                self.recheck.extend(concerned);
            }
        }
        Output::default()
    }

    /// The watcher has a new connection: notifications may have been missed
    /// before its LISTEN, so it reads the ring's changes first.
    pub(in crate::protocol) fn watcher_connected(&mut self) -> Output {
        self.synced = false;
        // Releases told while it was away are lost too: take everything
        // waiting again.
        self.recheck.extend(self.waiting_for.keys().copied());
        Output::default()
    }

    /// The watcher's step failed at `now` with `error` (its connection
    /// died, a statement failed, the pool had no connection to lend): a
    /// take's answer is lost, a release is sent again.
    ///
    /// The view stays in sync: notifications arrive on the client's held
    /// connection, not on the one that failed (that one's loss is
    /// [`Session::watcher_connected`]). So the changes notified meanwhile
    /// are still applied without a read. Marking the view out of sync here
    /// made a member that could not borrow a connection stop adopting
    /// views until it could read: at 1,024 members starting at once, when
    /// opening connections took the server longer than a borrow's wait,
    /// members trailed the ring for more than `ttl / 2`, had their
    /// renewals refused by the lag bound, rejoined, and made more changes
    /// for everyone (2,048 refusals in a minute; issue 18).
    pub(in crate::protocol) fn watcher_failed(&mut self, now: Instant, error: String) -> Output {
        match &mut self.watcher_failing {
            Some((_, last)) => *last = error,
            None => self.watcher_failing = Some((now, error)),
        }
        // A take that failed got nothing and was told nothing: what it
        // asked for is asked for again at the next step. (If the safety
        // net's deadline started it, that deadline is gone: without this
        // its waiting partitions were never taken again.)
        if let Some(asked) = self.taking.take() {
            self.recheck.extend(asked);
        }
        for h in self.held.values_mut() {
            if *h == Held::Releasing {
                *h = Held::Release;
            }
        }
        Output::default()
    }

    /// A watcher step succeeded: it works again.
    pub(in crate::protocol) fn watcher_ok(&mut self) -> Output {
        self.watcher_failing = None;
        Output::default()
    }

    /// The watcher's next step. Changes that notifications carried are
    /// applied here, in order, without a statement; what they do not cover
    /// is read from the change log. Then claims to give back, then the
    /// claims of pending partitions to take.
    pub fn watcher_next(&mut self, now: Instant) -> (WatcherStep, Output) {
        let mut out = Output::default();
        match self.own.status() {
            Status::Member => {}
            // Rejoining: the heartbeat's join may commit any moment, and
            // its own notification can reach the watcher before the join's
            // answer reaches the session (the watcher then heard a change
            // while not in the ring, and waited a whole idle tick on its
            // socket, which no other thread can interrupt: a rejoined
            // member took its first claims a second late). Look again soon.
            Status::Joining => return (WatcherStep::Wait(JOINING_TICK), out),
            Status::Stopped => return (WatcherStep::Wait(IDLE_TICK), out),
        }
        let ticket = self.ticket();
        if self.resync && self.own.status() == Status::Member {
            return (WatcherStep::CatchUp { from: 0, ticket }, out);
        }
        if !self.synced && self.hint > self.own.view_epoch() {
            // Notified changes that follow the view without a gap are the
            // ring's own: applied even before the read that makes sure
            // none was missed. Otherwise a member that cannot read yet (a
            // fresh join, or a new held connection, while the pool has no
            // connection to lend) trails the ring until it can, and the
            // lag bound evicts it (issue 18: 620 refusals in a 1,024-member
            // cold start).
            self.apply_deltas(now, &mut out);
        }
        let from = self.own.view_epoch();
        if !self.synced {
            // Right after a join the view is the join's own, read under the
            // ring lock: take first (the partitions the old owners released
            // on seeing the join are free by now), read what changed since
            // the join next.
            if self.fresh_join {
                self.fresh_join = false;
                if let Some(partitions) = self.partitions_to_take(now) {
                    return (WatcherStep::Take { partitions, ticket }, out);
                }
            }
            return (WatcherStep::CatchUp { from, ticket }, out);
        }
        if self.hint > from {
            self.apply_deltas(now, &mut out);
            if self.own.view_epoch() < self.hint {
                let from = self.own.view_epoch();
                return (WatcherStep::CatchUp { from, ticket }, out);
            }
            self.hint = 0;
        }
        self.end_overdue_drains(now, &mut out);
        if let Some(claims) = self.claims_to_release() {
            return (WatcherStep::Release { claims, ticket }, out);
        }
        if let Some(partitions) = self.partitions_to_take(now) {
            return (WatcherStep::Take { partitions, ticket }, out);
        }
        (WatcherStep::Wait(self.watcher_wait(now)), out)
    }

    /// Applies the notified changes that follow the view without a gap.
    fn apply_deltas(&mut self, now: Instant, out: &mut Output) {
        let mut run = Vec::new();
        while let Some(change) = self
            .deltas
            .remove(&(self.own.view_epoch() + 1 + run.len() as u64))
        {
            run.push(change);
        }
        self.apply_changes(run, now, out);
        let at = self.own.view_epoch();
        self.deltas.retain(|e, _| *e > at);
    }

    /// Adopts the views that consecutive `changes` (following the view's
    /// epoch) lead to: one by one, or — many of them, after falling behind
    /// — the last one, built once (the partitions only care about where the
    /// ring ends up; without `since` to keep, skipping views is safe).
    fn apply_changes(&mut self, changes: Vec<Change>, now: Instant, out: &mut Output) {
        let Some(view) = self.own.view().cloned() else {
            return;
        };
        // A holder removed (and perhaps back under the same node id, a new
        // incarnation) freed its claims.
        for change in &changes {
            for (p, who) in &self.waiting_for {
                if change.removed.contains(who) {
                    self.recheck.insert(*p);
                }
            }
            if let Some(r) = &mut self.removed_while_taking {
                r.extend(change.removed.iter().cloned());
            }
        }
        if changes.len() >= BATCH_CHANGES {
            let next = view.apply_all(&changes);
            self.adopt(next, now, out);
            return;
        }
        for change in changes {
            let Some(next) = self.own.view().map(|v| v.apply(&change)) else {
                break;
            };
            self.adopt(next, now, out);
        }
    }

    /// Adopts a newer view: a lapsed lease fences first and cuts the drains
    /// (those partitions stopped being reported at its deadline), then the
    /// view's releases.
    fn adopt(&mut self, view: RingView, now: Instant, out: &mut Output) {
        self.adopt_forced(view, now, out, false);
    }

    /// [`Session::adopt`]; with `force` whatever the view's epoch (a
    /// re-read after a timeline change).
    fn adopt_forced(&mut self, view: RingView, now: Instant, out: &mut Output, force: bool) {
        let members = view.members().len();
        self.ring_epoch = self.ring_epoch.max(view.epoch());
        self.adopting_cause = match self.own.view().cloned() {
            Some(old) => self.cause_of(&old, &view, now),
            None => HandoffCause::Join,
        };
        let released_at = self.stamp(now);
        self.lapse(now, out);
        let actions = if force {
            self.own.resync(view)
        } else {
            self.own.adopt(view)
        };
        self.push(out, actions, released_at, now);
        self.note_pending(now);
        self.waiting_for.retain(|p, _| self.own.is_assigned(*p));
        self.recheck.retain(|p| self.own.is_assigned(*p));
        // A holder gone from the view was removed, its claims with it.
        if let Some(v) = self.own.view() {
            for (p, who) in &self.waiting_for {
                if v.member(who).is_none() {
                    self.recheck.insert(*p);
                }
            }
        }
        out.effects.push(Effect::ViewChanged {
            epoch: self.own.view_epoch(),
            members,
            at: now,
        });
    }

    /// The answer of a [`WatcherStep::CatchUp`].
    pub(in crate::protocol) fn caught_up(
        &mut self,
        ticket: Ticket,
        read: CatchUp,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        if !self.stale(ticket) {
            match read {
                CatchUp::Changes(changes) => {
                    let first = self.own.view_epoch() + 1;
                    let mut run: Vec<Change> = Vec::new();
                    for c in changes.into_iter().filter(|c| c.epoch >= first) {
                        if c.epoch != first + run.len() as u64 {
                            break;
                        }
                        run.push(c);
                    }
                    self.apply_changes(run, now, &mut out);
                }
                CatchUp::Full(view) => {
                    // A holder removed and back under its node id (a new
                    // incarnation) does not show in a whole ring: take
                    // everything waiting again.
                    self.recheck.extend(self.waiting_for.keys().copied());
                    self.removed_while_taking = None;
                    if std::mem::take(&mut self.resync) {
                        self.adopt_forced(view, now, &mut out, true);
                    } else if view.epoch() > self.own.view_epoch() {
                        self.adopt(view, now, &mut out);
                    }
                }
            }
            let at = self.own.view_epoch();
            self.deltas.retain(|e, _| *e > at);
            self.synced = true;
        }
        // What is still missing shows in the next renewal's answer; changes
        // notified meanwhile are applied next.
        let at = self.own.view_epoch();
        self.hint = self
            .deltas
            .keys()
            .next_back()
            .copied()
            .filter(|e| *e > at)
            .unwrap_or(0);
        out
    }
}
