//! The session's claims (docs/protocol.md §4): which pending partitions to take and
//! when to try again, what a take's answer activates, which claims it holds
//! without using them — draining until the user's work has stopped (see
//! [`drains`](super::drains)), or to be given back by token — and the
//! reconciliation of what the database says it holds.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use super::{Held, Session, IDLE_TICK};
use crate::protocol::input::Took;
use crate::protocol::output::Output;
use crate::protocol::ownership::Taken;
use crate::protocol::Ticket;

/// The first wait before taking the waiting partitions again anyway, and
/// the longest, with notifications: a release tells the partitions' new
/// owner, and a removal every member, so this only covers a lost
/// notification.
const FIRST_TAKE_RETRY: Duration = Duration::from_millis(100);
const MAX_TAKE_BACKOFF: Duration = Duration::from_secs(2);
/// The wait before taking again partitions whose claim was locked by a
/// transaction in flight (a release, or another member's take): neither
/// taken nor marked as waited for, no notification will come for them.
const LOCKED_RETRY: Duration = Duration::from_millis(2);
/// The longest without notifications: polling is all there is.
const MAX_TAKE_BACKOFF_POLLING: Duration = Duration::from_millis(100);

impl Session {
    /// The wait before retry number `polls` (1-based) of the waiting
    /// partitions: doubling from 100 ms, capped.
    fn take_backoff(&self) -> Duration {
        let cap = if self.cfg.notifications {
            MAX_TAKE_BACKOFF
        } else {
            MAX_TAKE_BACKOFF_POLLING
        };
        let k = self.take_polls.saturating_sub(1).min(16);
        (FIRST_TAKE_RETRY * 2u32.pow(k)).min(cap)
    }

    /// Whether a claim of `p` is held without being used (draining, or on
    /// its way back): `p` is not taken again until it is given back.
    fn blocked(&self, p: u32) -> bool {
        self.held.range((p, 0)..=(p, u64::MAX)).next().is_some()
    }

    /// Pending partitions that may be taken now (not blocked by a claim
    /// being drained or given back); with `all`, also those known to be
    /// held elsewhere, else only those a release or removal concerns.
    fn takeable(&self, all: bool) -> Vec<u32> {
        self.own
            .pending()
            .filter(|p| !self.blocked(*p))
            .filter(|p| all || !self.waiting_for.contains_key(p) || self.recheck.contains(p))
            .collect()
    }

    /// The partitions to take now, if any: pending, not blocked, the local
    /// lease running (a take's answer is usable only within it). A take
    /// asks for what is new or rechecked, and at the backoff's deadline for
    /// every waiting partition too: at a cold start, retaking everything on
    /// every notification made takes of thousands of partitions, thousands
    /// of times.
    pub(super) fn partitions_to_take(&mut self, now: Instant) -> Option<Vec<u32>> {
        if self.taking.is_some() || !self.own.lease_runs(now) {
            return None;
        }
        let all = self.take_after.is_some_and(|t| t <= now);
        let partitions = self.takeable(all);
        if partitions.is_empty() {
            return None;
        }
        self.recheck.clear();
        if all {
            self.take_after = None;
        }
        self.taking = Some(partitions.clone());
        self.removed_while_taking = Some(Default::default());
        Some(partitions)
    }

    /// The claims to give back now, if any (marked as on their way).
    pub(super) fn claims_to_release(&mut self) -> Option<Vec<(u32, u64)>> {
        let mut claims = Vec::new();
        for (c, h) in self.held.iter_mut() {
            if *h == Held::Release {
                *h = Held::Releasing;
                claims.push(*c);
            }
        }
        (!claims.is_empty()).then_some(claims)
    }

    /// How long the watcher may wait for a notification.
    pub(super) fn watcher_wait(&self, now: Instant) -> Duration {
        let mut wait = IDLE_TICK;
        if self.own.lease_runs(now) && !self.takeable(true).is_empty() {
            if let Some(t) = self.take_after {
                wait = wait.min(t.saturating_duration_since(now));
            }
        }
        for (_, deadline) in self.drains.values() {
            wait = wait.min(deadline.saturating_duration_since(now));
        }
        wait
    }

    /// The answer of a [`WatcherStep::Take`](crate::protocol::output::WatcherStep::Take).
    /// Claims it names that are being given back are late answers and are
    /// never used; claims that cannot be used (the partition has moved on,
    /// the local lease has run out) are given back.
    pub(in crate::protocol) fn took(&mut self, ticket: Ticket, took: Took, now: Instant) -> Output {
        let mut out = Output::default();
        let asked = self.taking.take().unwrap_or_default();
        if self.stale(ticket) {
            return out;
        }
        if self.timeline.is_none() {
            // Before any renewal of this membership: no partition is in
            // use yet, so the first timeline seen may come from a take.
            self.timeline = took.timeline;
        }
        let got: Vec<(u32, u64)> = took
            .got
            .into_iter()
            .filter(|c| !self.held.contains_key(c))
            .collect();
        let (actions, fate) = self.own.claimed(&got, now);
        for (claim, fate) in got.iter().zip(fate) {
            if fate == Taken::Stray {
                self.held.insert(*claim, Held::Release);
            }
        }
        self.push(&mut out, actions, now, now);
        // What was asked and not got waits: for the member holding it, or
        // (skipped: locked by a transaction in flight) for nobody known.
        let held_by: BTreeMap<u32, String> = took.held_by.into_iter().collect();
        let removed = self.removed_while_taking.replace(Default::default());
        for p in asked {
            if self.own.is_assigned(p) && self.own.token(p).is_none() {
                let who = held_by.get(&p).cloned().unwrap_or_default();
                // Its holder was removed while the take was on its way
                // (the removal freed the claim, and was heard before
                // this answer): take it again at once.
                if held_by.contains_key(&p) && removed.as_ref().is_none_or(|r| r.contains(&who)) {
                    self.recheck.insert(p);
                }
                self.waiting_for.insert(p, who);
            }
        }
        let waiting = self
            .own
            .pending()
            .any(|p| self.waiting_for.contains_key(&p));
        if took.live && !waiting {
            self.take_polls = 0;
            self.take_after = None;
        } else {
            let next = if let Some(d) = took.grace.filter(|_| took.live) {
                // A new timeline's grace period: nothing is taken before
                // it ends (the leases of the old timeline end first).
                now + d
            } else if took.retry && took.live {
                // A claim was locked by a release or take in flight, so
                // nobody will tell us about it: look again in a moment.
                now + LOCKED_RETRY
            } else {
                self.take_polls += 1;
                now + self.take_backoff()
            };
            // The earlier deadline stands: the answer to a take of only the
            // rechecked partitions says nothing of the locked ones an
            // earlier answer left waiting for the short retry (replacing
            // it pushed them back to the safety net, 100 ms and more).
            self.take_after = Some(self.take_after.map_or(next, |t| t.min(next)));
        }
        out
    }

    /// The answer of a [`WatcherStep::Release`](crate::protocol::output::WatcherStep::Release):
    /// those claims are free (or were not this member's any more). Waiting
    /// partitions they blocked may be taken at once.
    pub(in crate::protocol) fn released(&mut self, ticket: Ticket) -> Output {
        if self.earlier_membership(ticket) {
            // The claims of that membership were forgotten at the rejoin
            // (freed with its row); none of today's are in flight.
            return Output::default();
        }
        let mut freed = Vec::new();
        self.held.retain(|(p, _), h| {
            let done = *h == Held::Releasing;
            if done {
                freed.push(*p);
            }
            !done
        });
        // Partitions blocked behind these claims (the view gave them back)
        // may be taken at once.
        for p in freed {
            if self.own.is_assigned(p) && !self.blocked(p) {
                self.waiting_for.remove(&p);
            }
        }
        Output::default()
    }

    /// Reconciliation (docs/protocol.md §4): answers get lost (a connection
    /// dies mid-statement), so the renewal reads the claims the database
    /// says this incarnation holds; any it neither uses nor already drains
    /// or gives back — and no take's answer is on its way for — is given
    /// back by token. Returns whether there is something to give back.
    pub(super) fn reconcile(&mut self, held_in_db: &[(u32, u64)]) -> u32 {
        let mut any = 0;
        for &(p, token) in held_in_db {
            let in_flight = self
                .taking
                .as_ref()
                .is_some_and(|t| t.binary_search(&p).is_ok());
            if self.own.token(p).is_some() || self.held.contains_key(&(p, token)) || in_flight {
                continue;
            }
            self.held.insert((p, token), Held::Release);
            any += 1;
        }
        any
    }
}
