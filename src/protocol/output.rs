//! What the session core asks of the edge: the effects to make visible, in
//! order, the statement each thread should run next, and whom to wake.

use std::time::Duration;

use crate::event::ReleaseReason;
use crate::protocol::ticket::Ticket;

/// One change the edge must make visible, in the order given: the hot path
/// first (a released partition stops answering before anyone hears of it),
/// then subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// These partitions stop being active; `at` is when they stopped being
    /// reported (the lease deadline, if that passed first).
    Released {
        /// The partitions, ascending.
        partitions: Vec<u32>,
        /// Why.
        reason: ReleaseReason,
        /// The member's view epoch at the time.
        epoch: u64,
        /// When they stopped being active.
        at: std::time::Instant,
        /// With a drain timeout: the drain that holds their claims until
        /// the user's work has stopped (the edge hands out its guard).
        drain: Option<Drain>,
    },
    /// These partitions become active with this fencing token.
    Acquired {
        /// The partitions, ascending.
        partitions: Vec<u32>,
        /// Their fencing token.
        token: u64,
        /// The member's view epoch.
        epoch: u64,
        /// When they became active.
        at: std::time::Instant,
        /// How long partitions had been waiting (pending) when these went
        /// active: the handoff time, for logs and metrics.
        waited: Option<Duration>,
        /// What made them pending: the membership change behind the
        /// handoff (for the handoff histogram's `cause` label).
        cause: HandoffCause,
    },
    /// The member adopted a newer view.
    ViewChanged {
        /// Its epoch.
        epoch: u64,
        /// Members in it.
        members: usize,
        /// When.
        at: std::time::Instant,
    },
    /// The member joined (or rejoined) the ring.
    Joined {
        /// The join's epoch.
        epoch: u64,
        /// The positions it took.
        positions: Vec<u32>,
        /// Expired members the join removed.
        removed: Vec<String>,
        /// When the join committed.
        at: std::time::Instant,
    },
    /// The lag bound refused a renewal: this member's acknowledged epoch
    /// has trailed the ring's, without advancing, for too long.
    RenewalRefused {
        /// The ring's epoch at the refusal.
        ring_epoch: u64,
    },
    /// This member's cleanup removed members whose lease had expired.
    MembersRemoved {
        /// Who.
        removed: Vec<String>,
        /// The epoch of the removal.
        epoch: Option<u64>,
        /// How long after the planned moment the removal committed.
        late_by: Duration,
    },
}

/// The membership change that made partitions pending, as far as the
/// member can tell: the label of the handoff-latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandoffCause {
    /// A member joined (this one, or a rejoin after an eviction), or was
    /// made eligible; or a change the member could not attribute.
    Join,
    /// A member left gracefully (removed while its lease still ran), or was
    /// made ineligible (unready, cordoned).
    Leave,
    /// A member crashed: removed once its lease had ended.
    Crash,
}

impl HandoffCause {
    /// The label value: `join`, `leave` or `crash`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffCause::Join => "join",
            HandoffCause::Leave => "leave",
            HandoffCause::Crash => "crash",
        }
    }
}

/// A drain in progress: the claims of released partitions are given back
/// only when every copy of its guard is dropped, or at `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Which drain ([`Input::Drained`](crate::protocol::input::Input::Drained)
    /// hands it back).
    pub id: u64,
    /// When the drain ends at the latest.
    pub deadline: std::time::Instant,
}

/// Everything one input produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Effects, in order.
    pub effects: Vec<Effect>,
    /// The fence thread must look at the (new) lease deadline.
    pub wake_fence: bool,
    /// The watcher has something to do (a newer epoch was heard of).
    pub wake_watcher: bool,
    /// The cleanup thread has a new expiry to plan for.
    pub wake_cleanup: bool,
    /// The member is out of the ring: rejoin now.
    pub rejoin: bool,
    /// A renewal's outcome, for counters: `Some(true)` renewed,
    /// `Some(false)` failed or refused.
    pub renewal: Option<bool>,
    /// Claims the database said this member holds but it does not use,
    /// now marked to be given back (reconciliation after a lost answer).
    pub reconciled: u32,
    /// `Some((seen, now))`: a renewal came from another database timeline
    /// than the last one seen, and something this member relied on was
    /// lost with the old one: it fenced (every partition released at once,
    /// `Evicted`) and rejoins, deleting its own stale row first.
    pub timeline_fence: Option<(u64, u64)>,
}

impl Output {
    /// Whether the output asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Output::default()
    }

    /// Appends `other`, keeping the order of effects.
    pub fn merge(&mut self, other: Output) {
        self.effects.extend(other.effects);
        self.wake_fence |= other.wake_fence;
        self.wake_watcher |= other.wake_watcher;
        self.wake_cleanup |= other.wake_cleanup;
        self.rejoin |= other.rejoin;
        self.renewal = other.renewal.or(self.renewal);
        self.reconciled += other.reconciled;
        self.timeline_fence = other.timeline_fence.or(self.timeline_fence);
    }
}

/// The watcher's next step: one statement on its (listening) connection,
/// or a wait. Takes and releases go over this one connection, one after
/// the other, so their answers arrive in the order they were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatcherStep {
    /// Read the change log after epoch `from` (or the whole ring).
    CatchUp {
        /// The epoch of the view to catch up from.
        from: u64,
        /// Hand back with the answer.
        ticket: Ticket,
    },
    /// Take the claims of these pending partitions (ascending), in one
    /// statement.
    Take {
        /// The partitions.
        partitions: Vec<u32>,
        /// Hand back with the answer.
        ticket: Ticket,
    },
    /// Give these claims back (`(partition, token)`, ascending), naming the
    /// token each frees; the members waiting for them (marked by their
    /// takes) are told on their own channels.
    Release {
        /// The claims.
        claims: Vec<(u32, u64)>,
        /// Hand back with the answer.
        ticket: Ticket,
    },
    /// Wait for a notification at most this long.
    Wait(Duration),
}

/// The heartbeat's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatStep {
    /// Renew the lease, acknowledging epoch `ack` (the lag bound), and read
    /// the claims held (reconciliation).
    Renew {
        /// The view's epoch.
        ack: u64,
        /// Hand back with the answer.
        ticket: Ticket,
    },
    /// The member is out of the ring: join again.
    Rejoin,
    /// Nothing to do for this long.
    Wait(Duration),
    /// The member stopped: the thread ends.
    Stop,
}

/// The cleanup thread's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupStep {
    /// Remove expired members now (`node` is the one whose expiry was
    /// planned for).
    Run {
        /// The member whose lease end this pass is for.
        node: String,
        /// Hand back with the answer.
        ticket: Ticket,
    },
    /// Nothing to do for this long (or until woken).
    Wait(Duration),
    /// The member stopped: the thread ends.
    Stop,
}
