//! The session's crash cleanup: planning the removal of an expired member
//! for the moment its lease ends (its successor first), and the answers of
//! the cleanup passes.

use std::time::{Duration, Instant};

use super::{local_instant, Session, CLEANUP_RETRY, NOTHING_PLANNED};
use crate::protocol::input::Cleaned;
use crate::protocol::output::{CleanupStep, Effect, Output};
use crate::protocol::Status;
use crate::protocol::Ticket;

impl Session {
    /// Plans the removal of `node` for the moment its lease ends: at once
    /// for its successor on the ring, after a short fallback for anyone
    /// else. The newest plan replaces the previous one.
    pub(super) fn plan_cleanup(&mut self, node: &str, expires: Instant) {
        let first = self
            .own
            .view()
            .and_then(|v| v.successor_of(node))
            .is_none_or(|s| s == self.cfg.node_id);
        let delay = Duration::from_millis(1)
            + if first {
                Duration::ZERO
            } else {
                self.cleanup_fallback
            };
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
