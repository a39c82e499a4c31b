//! What the edge feeds the session core: the answers of the database and
//! the notifications it delivered, already decoded. The store
//! (the crate's private store) produces these; the core never sees a
//! connection.

use std::time::Instant;

use crate::protocol::ticket::Ticket;
use crate::ring::{Change, RingView};

/// Everything that happens to a [`Session`](crate::protocol::Session),
/// handed to [`Session::step`](crate::protocol::Session::step) with `now`.
/// Answers to a step carry the [`Ticket`] the step was issued with.
#[derive(Debug, Clone)]
pub enum Input {
    /// A join (first or rejoin) committed; it was sent at `sent_at`. It
    /// starts a membership, so it has no ticket: it makes the new one.
    Joined {
        /// What it committed.
        joined: Joined,
        /// When it was sent.
        sent_at: Instant,
    },
    /// The answer of a [`HeartbeatStep::Renew`](crate::protocol::output::HeartbeatStep::Renew)
    /// sent at `sent_at`.
    Renewed {
        /// The step's ticket.
        ticket: Ticket,
        /// The answer.
        reply: Renewal,
        /// When it was sent.
        sent_at: Instant,
    },
    /// A renewal could not be made (no connection, a failed statement).
    RenewalFailed {
        /// The step's ticket.
        ticket: Ticket,
    },
    /// A rejoin failed; the heartbeat tries again a little later.
    RejoinFailed {
        /// The session's ticket when the rejoin was tried.
        ticket: Ticket,
    },
    /// The answer of a [`WatcherStep::CatchUp`](crate::protocol::output::WatcherStep::CatchUp).
    CaughtUp {
        /// The step's ticket.
        ticket: Ticket,
        /// What was read.
        read: CatchUp,
    },
    /// The answer of a [`WatcherStep::Take`](crate::protocol::output::WatcherStep::Take).
    Took {
        /// The step's ticket.
        ticket: Ticket,
        /// What the take got.
        took: Took,
    },
    /// The answer of a [`WatcherStep::Release`](crate::protocol::output::WatcherStep::Release):
    /// those claims are free.
    Released {
        /// The step's ticket.
        ticket: Ticket,
    },
    /// The answer of a [`CleanupStep::Run`](crate::protocol::output::CleanupStep::Run).
    Cleaned {
        /// The step's ticket.
        ticket: Ticket,
        /// What the pass removed.
        cleaned: Cleaned,
    },
    /// A cleanup pass for `node` failed: it is tried again shortly.
    CleanupFailed {
        /// The step's ticket.
        ticket: Ticket,
        /// The member the pass was for.
        node: String,
    },
    /// A notification on the ring's channel (or the member's own).
    Notified(Notice),
    /// The watcher has a new connection: notifications may have been
    /// missed before its LISTEN.
    WatcherConnected,
    /// A watcher step succeeded.
    WatcherOk,
    /// A watcher step failed (its connection died, a statement failed): a
    /// take's answer is lost, a release is sent again.
    WatcherFailed {
        /// What failed, for health.
        error: String,
    },
    /// Every guard of drain `id` was dropped.
    Drained {
        /// The drain ([`Drain::id`](crate::protocol::output::Drain::id)).
        id: u64,
    },
    /// Time passed: the local lease, drains and polls are looked at.
    Tick,
    /// The member stops: everything is released, drains go on.
    Stop,
    /// A crash (`RingNode::crash`, feature `test-util`): everything is
    /// released, nothing drains, nothing is given back.
    Crash,
}

/// What a join transaction committed.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The ring with this member in it, at the join's epoch.
    pub view: RingView,
    /// The positions the member took.
    pub positions: Vec<u32>,
    /// Expired members the join removed on its way.
    pub removed: Vec<String>,
    /// The member row's incarnation: claims name it, so that a restarted
    /// member with the same node id never inherits its predecessor's.
    pub incarnation: i64,
}

/// The answer to a renewal (which also acknowledges the member's view).
///
/// Every field comes from one statement, hence from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewal {
    /// The ring's epoch.
    pub epoch: u64,
    /// `None`: this member has no live lease row (removed, or expired in the
    /// database) — it must rejoin. `Some(false)`: the row is there but the
    /// lag bound refused the renewal. `Some(true)`: renewed.
    pub renewed: Option<bool>,
    /// The other member whose lease ends first, and in how many
    /// milliseconds of the database's clock (negative: already expired).
    pub next_expiry: Option<(String, f64)>,
    /// The claims the database says this member's incarnation holds
    /// (`(partition, token)`, ascending), for reconciliation: any it does
    /// not use is given back (docs/protocol.md §4).
    pub held: Vec<(u32, u64)>,
    /// The database server's timeline (`None`: not read). It goes up at
    /// every promotion of a standby and every point-in-time recovery: a
    /// renewal from another timeline than the last one seen makes the
    /// member check that nothing it relies on was lost (see
    /// [`Session`](crate::protocol::Session), "Timelines").
    pub timeline: Option<u64>,
}

/// The answer to a take of claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Took {
    /// The claims this member's incarnation holds among those asked for —
    /// taken now, or already its own — with their tokens, ascending.
    pub got: Vec<(u32, u64)>,
    /// Partitions asked for whose claim another member holds, and who; the
    /// take marked this member as waiting for each, so the holder's release
    /// tells it.
    pub held_by: Vec<(u32, String)>,
    /// Whether some partitions asked for were neither taken nor marked: a
    /// transaction in flight had their claim locked.
    pub retry: bool,
    /// Whether the member's lease was live in the database: a take by a
    /// member whose lease is not live takes nothing.
    pub live: bool,
    /// The database server's timeline, if the lease was live.
    pub timeline: Option<u64>,
    /// `Some(d)`: the database is on a timeline it has served takes on for
    /// less than its grace period (a lease TTL and the margin), so nothing
    /// was taken; try again in `d`.
    pub grace: Option<std::time::Duration>,
}

/// A read of the change log from some epoch on.
#[derive(Debug, Clone)]
pub enum CatchUp {
    /// The changes after the epoch asked for, in order.
    Changes(Vec<Change>),
    /// The log no longer reaches back: the whole ring at its epoch.
    Full(RingView),
}

/// The answer of a cleanup pass (removal of members whose lease expired in
/// the database).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cleaned {
    /// Members removed.
    pub removed: Vec<String>,
    /// The epoch the removal produced, if it removed anyone.
    pub epoch: Option<u64>,
    /// The other member whose lease ends first now, and in how many
    /// milliseconds of the database's clock.
    pub next_expiry: Option<(String, f64)>,
}

/// A notification on the ring's channel.
// A change is most notices' payload and is moved once, from the parser to
// the session: boxing it would add an allocation to every one of them.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A membership change: its epoch and, when the payload had room for
    /// it, the change itself.
    Change {
        /// The epoch the change produced.
        epoch: u64,
        /// The change, if the payload carried it.
        change: Option<Change>,
    },
    /// A member released claims: waiting takers may retry at once.
    Released {
        /// The partitions, if the payload had room for them.
        partitions: Option<Vec<u32>>,
    },
}
