//! The session's drains (docs/protocol.md §4): with a drain timeout, the
//! claims of partitions handed off (or stopped) are held until every copy
//! of the user's guard is dropped, or until the timeout — and never past
//! the local lease. A lease that runs out cannot wait for a drain: its
//! partitions are released again with `LeaseExpired` ("stop now"),
//! stamped at the deadline, whichever input notices the lapse first (the
//! fence's tick, a guard dropped late, the watcher, a view); a guard
//! dropped after that changes nothing.

use std::time::Instant;

use super::{Held, Session};
use crate::event::ReleaseReason;
use crate::protocol::output::{Drain, Output};
use crate::protocol::ownership::Action;

impl Session {
    /// Partitions released locally whose drain is still running.
    pub fn draining_count(&self) -> usize {
        self.drains.values().map(|(c, _)| c.len()).sum()
    }

    /// The partitions released locally whose drain is still running,
    /// ascending.
    pub fn draining_partitions(&self) -> Vec<u32> {
        let mut ps: Vec<u32> = self
            .drains
            .values()
            .flat_map(|(c, _)| c.iter().map(|(p, _)| *p))
            .collect();
        ps.sort_unstable();
        ps.dedup();
        ps
    }

    /// Decides what becomes of the claims of partitions released at `now`:
    /// drained (a handoff or a stop, with a drain timeout, `may_drain`, and
    /// the local lease running — past it nothing may wait), given back (a
    /// handoff without a drain, a lapsed lease), or forgotten (an eviction:
    /// the row and its claims are gone; a stop without a drain: the leave
    /// frees them).
    pub(super) fn after_release(
        &mut self,
        claims: Vec<(u32, u64)>,
        reason: ReleaseReason,
        now: Instant,
        may_drain: bool,
    ) -> Option<Drain> {
        let drains = may_drain
            && matches!(reason, ReleaseReason::Handoff | ReleaseReason::Stopping)
            && self.own.lease_runs(now);
        match (reason, self.cfg.drain_timeout) {
            (_, Some(timeout)) if drains => {
                let id = self.next_drain;
                self.next_drain += 1;
                let deadline = now + timeout;
                for c in &claims {
                    self.held.insert(*c, Held::Draining(id));
                }
                self.drains.insert(id, (claims, deadline));
                Some(Drain { id, deadline })
            }
            (ReleaseReason::Handoff | ReleaseReason::LeaseExpired, _) => {
                for c in claims {
                    self.held.insert(c, Held::Release);
                }
                None
            }
            _ => None,
        }
    }

    /// Every copy of drain `id`'s guard was dropped: the user's work on its
    /// partitions has stopped, their claims may be given back. If the local
    /// lease ran out first, the drain was (or is now) cut short — released
    /// again as `LeaseExpired`, stamped at the deadline — and the drop
    /// changes nothing more.
    pub(in crate::protocol) fn drained(&mut self, id: u64, now: Instant) -> Output {
        let mut out = Output::default();
        self.lapse(now, &mut out);
        if let Some((claims, _)) = self.drains.remove(&id) {
            for c in claims {
                if let Some(h) = self.held.get_mut(&c) {
                    if *h == Held::Draining(id) {
                        *h = Held::Release;
                        out.wake_watcher = true;
                    }
                }
            }
        }
        out
    }

    /// Ends the drains whose deadline has passed and returns how many
    /// partitions still drain: what `stop()` waits for before it leaves.
    /// Past the local lease it ends nothing: the drains are cut by
    /// an [`Input::Tick`](crate::protocol::input::Input::Tick), whose releases must be published.
    pub fn still_draining(&mut self, now: Instant) -> usize {
        if self.own.lease_runs(now) {
            self.end_overdue_drains(now, &mut Output::default());
        }
        self.draining_count()
    }

    /// Drains whose deadline has passed end as if their guards were
    /// dropped: the timeout bounds how long a handoff waits for the user.
    /// A lapsed lease cuts them first (see [`Session::drained`]).
    pub(super) fn end_overdue_drains(&mut self, now: Instant, out: &mut Output) {
        self.lapse(now, out);
        let overdue: Vec<u64> = self
            .drains
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            out.merge(self.drained(id, now));
        }
    }

    /// Ends every drain at once (the lease ran out, or is gone): their
    /// partitions are released again with `reason`, so that the user stops
    /// now; their claims are given back like any other.
    pub(super) fn cut_drains(&mut self, reason: ReleaseReason) -> Vec<Action> {
        let mut claims: Vec<(u32, u64)> = std::mem::take(&mut self.drains)
            .into_values()
            .flat_map(|(c, _)| c)
            .collect();
        if claims.is_empty() {
            return Vec::new();
        }
        claims.sort_unstable();
        let (partitions, tokens) = claims.into_iter().unzip();
        vec![Action::Release {
            partitions,
            tokens,
            reason,
        }]
    }

    /// If the local lease has run out at `now`: every active partition is
    /// released ([`ReleaseReason::LeaseExpired`]), stamped with the moment
    /// the hot path stopped reporting them, and every drain is cut short —
    /// its partitions are released again with `LeaseExpired`, meaning "stop
    /// now". Their claims are given back (by token) like any other.
    pub(super) fn lapse(&mut self, now: Instant, out: &mut Output) {
        if self.own.lease_runs(now) {
            return;
        }
        let released_at = self.stamp(now);
        let mut actions = self.own.fence(now);
        actions.extend(self.cut_drains(ReleaseReason::LeaseExpired));
        let fenced = !actions.is_empty();
        self.push(out, actions, released_at, now);
        // Their claims are to be given back.
        out.wake_watcher |= fenced && !self.held.is_empty();
    }
}
