//! The session's crash cleanup: planning the removal of an expired member
//! for the moment its lease ends (its successor first), and the answers of
//! the cleanup passes.

use std::time::{Duration, Instant};

use super::{local_instant, Session, CLEANUP_RETRY, NOTHING_PLANNED};
use crate::protocol::input::Cleaned;
use crate::protocol::output::{CleanupStep, Effect, Output};
use crate::protocol::Status;
use crate::protocol::Ticket;
use crate::ring::RingView;

impl Session {
    /// Plans the removal of `node` for the moment its lease ends: at once
    /// for its successor on the ring; for anyone else after a fallback of
    /// 50–100 ms times its rank, its place counted from `node` in the
    /// members' id order ([`cleanup_rank`]). The newest plan replaces the
    /// previous one.
    ///
    /// Why ranks and not one fallback for all: at 1,024 members a loaded
    /// database took longer than the fallback to remove a member, so
    /// every member ran the check and tried the ring's lock, again and
    /// again while the lock was busy (29,248 checks at 289 ms each in one
    /// cold start, enough to keep renewals behind and make more members
    /// expire). Ranked, the k-th member in line acts only when the k
    /// before it have not (k consecutive crashes delay a removal by about
    /// k fallbacks), and a removal that is only slow wakes one or two.
    pub(super) fn plan_cleanup(&mut self, node: &str, expires: Instant) {
        let rank = self
            .own
            .view()
            .map_or(0, |v| cleanup_rank(v, node, &self.cfg.node_id));
        let delay = Duration::from_millis(1) + self.cleanup_fallback * rank;
        self.cleanup = Some((node.to_string(), expires + delay));
        if self.expiries.len() < 4096 || self.expiries.contains_key(node) {
            self.expiries.insert(node.to_string(), expires);
        }
    }

    /// The cleanup thread's next step. A member already gone from the view
    /// (its successor removed it, and the notification came first) needs no
    /// pass: that saves every other member its fallback transaction.
    pub fn cleanup_next(&mut self, now: Instant) -> CleanupStep {
        if self.own.status() == Status::Stopped {
            return CleanupStep::Stop;
        }
        let Some((node, at)) = self.cleanup.take() else {
            return CleanupStep::Wait(NOTHING_PLANNED);
        };
        if now < at {
            self.cleanup = Some((node, at));
            return CleanupStep::Wait(at - now);
        }
        let in_view = self.own.view().is_some_and(|v| v.member(&node).is_some());
        if self.own.status() != Status::Member || !in_view {
            return CleanupStep::Wait(NOTHING_PLANNED);
        }
        self.cleanup_running = Some(at);
        CleanupStep::Run {
            node,
            ticket: self.ticket(),
        }
    }

    /// The answer of a [`CleanupStep::Run`].
    pub(in crate::protocol) fn cleaned(
        &mut self,
        ticket: Ticket,
        cleaned: Cleaned,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        let planned = self.cleanup_running.take().unwrap_or(now);
        if self.earlier_membership(ticket) {
            // The rejoin read the ring after this pass: its removals are in
            // the new view, and its next expiry is planned anew.
            return out;
        }
        if !cleaned.removed.is_empty() {
            self.crashed.extend(cleaned.removed.iter().cloned());
            out.effects.push(Effect::MembersRemoved {
                removed: cleaned.removed,
                epoch: cleaned.epoch,
                late_by: now.saturating_duration_since(planned),
            });
            if let Some(e) = cleaned.epoch {
                self.hint = self.hint.max(e);
                out.wake_watcher = true;
            }
        }
        if let Some((node, ms)) = &cleaned.next_expiry {
            self.plan_cleanup(node, local_instant(now, *ms));
            out.wake_cleanup = true;
        }
        out
    }

    /// A cleanup pass for `node` failed: try again shortly, unless a newer
    /// plan is due sooner.
    pub(in crate::protocol) fn cleanup_failed(
        &mut self,
        ticket: Ticket,
        node: String,
        now: Instant,
    ) -> Output {
        self.cleanup_running = None;
        if self.earlier_membership(ticket) {
            return Output::default();
        }
        let retry = now + CLEANUP_RETRY;
        if self.cleanup.as_ref().is_none_or(|(_, at)| *at > retry) {
            self.cleanup = Some((node, retry));
        }
        Output::default()
    }
}

/// `me`'s place in the line of members that remove an expired `node`:
/// 0 for `node`'s successor on the ring (or when either is missing from
/// the view: nobody to defer to), then 1, 2, … for the others in the
/// order of their node ids, counted cyclically from `node`'s. Every
/// member with the same view computes the same line, so each rank is
/// held by exactly one member; views that disagree for a moment give at
/// worst two members one rank.
pub(super) fn cleanup_rank(view: &RingView, node: &str, me: &str) -> u32 {
    let successor = view.successor_of(node);
    if successor.is_none_or(|s| s == me) {
        return 0;
    }
    let members = view.members();
    let at = |id: &str| members.binary_search_by(|m| m.node_id().cmp(id)).ok();
    let n = members.len();
    let Some(n_at) = at(node) else {
        return 0;
    };
    // Not in its own view (not a member yet, or no longer): last in line.
    let Some(me_at) = at(me) else {
        return n as u32;
    };
    let dist = |i: usize| (i + n - n_at) % n;
    let d = dist(me_at);
    // The successor holds rank 0: the members after it in the id order
    // move up by one.
    let skip = successor.and_then(at).is_some_and(|s| dist(s) < d);
    (d - usize::from(skip)) as u32
}
