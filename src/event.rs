//! Ownership events, delivered on `crossbeam-channel` receivers from
//! [`RingNode::subscribe`](crate::RingNode::subscribe).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

/// Why partitions stopped being active on this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReleaseReason {
    /// A newer view of the ring gives them to another member (a join, or a
    /// change of arcs). Emitted when the partitions stop being active here,
    /// *before* their claims are given back (after the drain, with
    /// [`drain_timeout`](crate::NodeBuilder::drain_timeout)), so the new owner
    /// cannot start before this event.
    Handoff,
    /// The local lease ran out without a successful renewal (database down,
    /// network stalled, process paused): the member fenced itself before its
    /// lease could end in the database.
    LeaseExpired,
    /// The database no longer holds this member's lease (it was removed as
    /// expired, or its renewal was refused), or a failover to another
    /// database timeline lost claims or changes this member relied on (it
    /// fences: see "Failover and timelines" in `docs/protocol.md`); the member
    /// rejoins.
    Evicted,
    /// `stop()` (or drop) of this member.
    Stopping,
}

/// Something that happened to this member's ownership.
///
/// Events go out in the order of the state changes they describe, each
/// stamped with the instant the change took effect (`at`): for `Released`
/// with [`ReleaseReason::LeaseExpired`] that is the local deadline itself,
/// the moment [`owns`](crate::RingNode::owns) stopped answering `true`. The
/// same holds for any `Released` that comes after the local lease had
/// already run out (a member waking from a pause to a newer view, an
/// eviction, a `stop()` or crash while paused): its `at` is that deadline,
/// not the later moment the event was emitted, so intervals built from
/// `Acquired.at`/`Released.at` are the intervals of real activity.
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
        /// Fencing token, kept by each partition's claim: above every earlier
        /// token of those partitions, at least the ring's epoch when taken,
        /// and above every token of an earlier database timeline
        /// (`GREATEST(token + 1, epoch, (timeline - 1) << 32)`: see the
        /// `docs/protocol.md`, "Failover and timelines").
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
        /// With [`NodeBuilder::drain_timeout`](crate::NodeBuilder::drain_timeout)
        /// set, on a handoff or a stop: the next owner starts only when
        /// every copy of this guard (one per subscriber) is dropped, or at
        /// its [`deadline`](DrainGuard::deadline). Keep it while finishing
        /// the work in progress on these partitions, then drop it.
        drain: Option<DrainGuard>,
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

/// Holds back the handoff of released partitions while the user's work on
/// them finishes (docs/protocol.md §4). Every subscriber's copy of a
/// [`Event::Released`] carries a clone; when the last clone is dropped the
/// member gives the partitions' claims back and their next owner starts.
///
/// The contract:
///
/// * `owns(p)` is already `false` when the event arrives: start no new
///   work on these partitions; finish (or abandon) what runs, then drop the
///   guard.
/// * The drain ends at [`deadline`](DrainGuard::deadline) (the drain
///   timeout) even if a copy is still held.
/// * A lease that runs out cannot wait: if the member's local lease ends
///   during the drain, a second `Released` with
///   [`ReleaseReason::LeaseExpired`] names the partitions — stop at once;
///   from then on fencing tokens protect what follows.
/// * A subscriber that does not keep its copy lets go at once; with no
///   subscriber at all, nothing waits. Releases for
///   [`ReleaseReason::LeaseExpired`] and [`ReleaseReason::Evicted`] never
///   carry a guard.
/// * A graceful [`stop`](crate::RingNode::stop) waits for the drains of its
///   [`ReleaseReason::Stopping`] release within `stop_timeout`, then leaves
///   (the leave frees every claim).
///
/// ```no_run
/// # fn demo(node: leasering::RingNode) {
/// use leasering::{Event, ReleaseReason};
/// for ev in node.subscribe() {
///     if let Event::Released { partitions, reason, drain, .. } = ev {
///         // hand `drain` to the workers of `partitions`; each drops its
///         // clone when its unit of work is done
///         drop(drain);
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct DrainGuard(Arc<DrainInner>);

struct DrainInner {
    /// The member (its uid) and the drain.
    member: u64,
    id: u64,
    deadline: Instant,
    done: Sender<(u64, u64)>,
}

impl Drop for DrainInner {
    fn drop(&mut self) {
        let _ = self.done.send((self.member, self.id));
    }
}

impl DrainGuard {
    pub(crate) fn new(
        member: u64,
        id: u64,
        deadline: Instant,
        done: Sender<(u64, u64)>,
    ) -> DrainGuard {
        DrainGuard(Arc::new(DrainInner {
            member,
            id,
            deadline,
            done,
        }))
    }

    /// When the drain ends at the latest, guard or not: the drain timeout
    /// from the release.
    pub fn deadline(&self) -> Instant {
        self.0.deadline
    }
}

impl PartialEq for DrainGuard {
    /// Two guards are equal if they hold back the same drain.
    fn eq(&self, other: &DrainGuard) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DrainGuard {}

impl fmt::Debug for DrainGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainGuard")
            .field("id", &self.0.id)
            .field("deadline", &self.0.deadline)
            .finish()
    }
}
