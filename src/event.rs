//! Ownership events, delivered on `crossbeam-channel` receivers from
//! [`RingNode::subscribe`](crate::RingNode::subscribe).

use std::time::Instant;

/// Why partitions stopped being active on this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReleaseReason {
    /// A newer view of the ring gives them to another member (a join, or a
    /// change of arcs). Released *before* this member acknowledges the view,
    /// so the new owner cannot start before this event.
    Handoff,
    /// The local lease ran out without a successful renewal (database down,
    /// network stalled, process paused): the member fenced itself before its
    /// lease could end in the database.
    LeaseExpired,
    /// The database no longer holds this member's lease (it was removed as
    /// expired, or its renewal was refused); the member rejoins.
    Evicted,
    /// `stop()` (or drop) of this member.
    Stopping,
}

/// Something that happened to this member's ownership.
///
/// Events go out in the order of the state changes they describe, each
/// stamped with the instant the change took effect (`at`): for `Released`
/// with [`ReleaseReason::LeaseExpired`] that is the local deadline itself,
/// the moment [`owns`](crate::RingNode::owns) stopped answering `true` (and
/// so it is for any release made after that deadline had passed).
/// [`monotonic_ns`](crate::monotonic_ns) turns `at` into `CLOCK_MONOTONIC`
/// nanoseconds, comparable across processes on one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// These partitions are active on this member from `at` on. `token` is
    /// the fencing token: strictly greater than the token of any previous
    /// owner of these partitions. Pass it with writes so that a store can
    /// refuse writes from an older owner.
    Acquired {
        /// The partitions, ascending.
        partitions: Vec<u32>,
        /// Fencing token (an epoch of the ring).
        token: u64,
        /// Epoch of the view in which they were activated.
        epoch: u64,
        /// When they became active.
        at: Instant,
    },
    /// These partitions are no longer active on this member from `at` on.
    Released {
        /// The partitions, ascending.
        partitions: Vec<u32>,
        /// Why.
        reason: ReleaseReason,
        /// Epoch of this member's view at the time.
        epoch: u64,
        /// When they stopped being active.
        at: Instant,
    },
    /// This member adopted a new view of the ring.
    ViewChanged {
        /// The view's epoch.
        epoch: u64,
        /// Members in the view.
        members: usize,
        /// When it was adopted.
        at: Instant,
    },
    /// This member joined (or, after an eviction, rejoined) the ring.
    Joined {
        /// The epoch of its join.
        epoch: u64,
        /// Its vnode positions.
        positions: Vec<u32>,
        /// When the join committed.
        at: Instant,
    },
}

impl Event {
    /// The instant the event took effect.
    pub fn at(&self) -> Instant {
        match self {
            Event::Acquired { at, .. }
            | Event::Released { at, .. }
            | Event::ViewChanged { at, .. }
            | Event::Joined { at, .. } => *at,
        }
    }
}
