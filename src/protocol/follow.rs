//! The follow rules of an observer ([`RingObserver`](crate::RingObserver)):
//! how a view of the ring that owns nothing is kept up to date from
//! notifications, the change log and a poll, without I/O. The observer's
//! edge asks [`Follow::next`] what to read, reads it, and hands the answer
//! to [`Follow::step`] (the simulation does the same against its
//! simulated database).
//!
//! The rules, the same as a member's watcher follows for its view:
//!
//! * a notified change with the next epoch is applied as it comes, without
//!   a statement;
//! * a notice of a later epoch whose change did not fit in the payload, a
//!   new listening connection (notifications may have been missed), or the
//!   poll's deadline make it read the change log from its epoch on (the
//!   whole ring if the log no longer reaches back);
//! * a ring not created yet is read whole (its size comes with it) at the
//!   next notice or poll;
//! * a read from another database timeline than the last one (a promoted
//!   standby, a point-in-time recovery) is thrown away and the whole ring
//!   read again: epochs of two timelines are not comparable;
//! * a failed read is tried again after a backoff (50 ms, doubling to 2 s),
//!   as if notifications had been missed meanwhile.

use std::time::{Duration, Instant};

use crate::protocol::input::{CatchUp, Notice};
use crate::ring::RingView;

/// The first wait after a failed read.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait after failed reads.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the observer's edge must read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowStep {
    /// The ring does not exist yet as far as it knows: read its size and
    /// the whole ring; answer [`FollowInput::Read`] with
    /// [`CatchUp::Full`], or [`FollowInput::NoRing`].
    ReadRing,
    /// Read the database's timeline and the change log after epoch `from`
    /// (0: the whole ring); answer [`FollowInput::Read`].
    CatchUp {
        /// The epoch of the view to catch up from.
        from: u64,
    },
    /// Nothing to read for this long (or until a notice comes).
    Wait(Duration),
}

/// What happens to a follower.
// A notice is moved once, from the parser to the rules (as the session's
// inputs are): boxing it would add an allocation to every one of them.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FollowInput {
    /// A notification on the ring's channel.
    Notified(Notice),
    /// The listening connection is new: notifications may have been missed.
    Reconnected,
    /// The answer of a [`FollowStep::ReadRing`] or [`FollowStep::CatchUp`].
    Read {
        /// The database's timeline at the read.
        timeline: u64,
        /// What was read.
        read: CatchUp,
    },
    /// The answer of a [`FollowStep::ReadRing`]: the ring does not exist.
    NoRing,
    /// A read failed.
    ReadFailed,
}

/// An observer's view of the ring and what it still has to read. See the
/// module docs.
#[derive(Debug, Clone)]
pub struct Follow {
    view: RingView,
    /// Whether the ring exists (its size is known).
    known: bool,
    /// The database's timeline at the last read.
    timeline: Option<u64>,
    /// Something the view misses must be read.
    read: bool,
    /// The view must be read whole (a timeline changed).
    resync: bool,
    poll: Duration,
    next_poll: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Follow {
    /// A follower that knows nothing yet (its first step reads the ring)
    /// and reads the change log at least every `poll`.
    pub fn new(poll: Duration, now: Instant) -> Follow {
        Follow {
            view: RingView::empty(0, 0),
            known: false,
            timeline: None,
            read: true,
            resync: false,
            poll,
            next_poll: now + poll,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The view (empty, of ring size 0, while the ring does not exist).
    pub fn view(&self) -> &RingView {
        &self.view
    }

    /// What to read next at `now`.
    pub fn next(&mut self, now: Instant) -> FollowStep {
        if let Some(t) = self.retry_at {
            if now < t {
                return FollowStep::Wait(t - now);
            }
            self.retry_at = None;
        }
        if now >= self.next_poll {
            self.next_poll = now + self.poll;
            self.read = true;
        }
        if !self.read {
            return FollowStep::Wait(self.next_poll - now);
        }
        if !self.known {
            FollowStep::ReadRing
        } else if self.resync {
            FollowStep::CatchUp { from: 0 }
        } else {
            FollowStep::CatchUp {
                from: self.view.epoch(),
            }
        }
    }

    /// Takes in what happened at `now`. Whether the view changed (to be
    /// published).
    pub fn step(&mut self, input: FollowInput, now: Instant) -> bool {
        match input {
            FollowInput::Notified(Notice::Change { epoch, change }) => {
                if !self.known {
                    // The ring exists now: read it whole (its size too).
                    self.read = true;
                    return false;
                }
                match change {
                    Some(c) if epoch == self.view.epoch() + 1 => {
                        self.view = self.view.apply(&c);
                        true
                    }
                    _ => {
                        self.read |= epoch > self.view.epoch();
                        false
                    }
                }
            }
            // Claims are not an observer's business.
            FollowInput::Notified(Notice::Released { .. }) => false,
            FollowInput::Reconnected => {
                self.read = true;
                false
            }
            FollowInput::Read { timeline, read } => {
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                let moved = self.timeline.is_some_and(|t| t != timeline);
                self.timeline = Some(timeline);
                if moved && matches!(read, CatchUp::Changes(_)) {
                    // Changes of another timeline than the view's: read
                    // the whole ring again.
                    self.resync = true;
                    self.read = true;
                    return false;
                }
                let before = (self.view.epoch(), self.view.ring_size());
                match read {
                    CatchUp::Changes(changes) => self.view = self.view.apply_all(&changes),
                    CatchUp::Full(view) => self.view = view,
                }
                self.known = true;
                self.read = false;
                let resynced = std::mem::take(&mut self.resync) || moved;
                resynced || before != (self.view.epoch(), self.view.ring_size())
            }
            FollowInput::NoRing => {
                self.read = false;
                false
            }
            FollowInput::ReadFailed => {
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                // What was notified meanwhile may be lost with the read.
                self.read = true;
                false
            }
        }
    }

    /// The database's timeline at the last read.
    pub fn timeline(&self) -> Option<u64> {
        self.timeline
    }

    /// The wait after the latest failed read (for logs).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

#[cfg(test)]
mod tests;
