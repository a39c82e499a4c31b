//! What the edge feeds the session core: the answers of the database and
//! the notifications it delivered, already decoded. The store
//! (the crate's private store) produces these; the core never sees a
//! connection.

use crate::ring::{Change, RingView};

/// What a join transaction committed.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The ring with this member in it, at the join's epoch.
    pub view: RingView,
    /// The positions the member took.
    pub positions: Vec<u32>,
    /// Expired members the join removed on its way.
    pub removed: Vec<String>,
}

/// The answer to a renewal or an acknowledgement of an epoch.
///
/// Every field comes from one statement, hence from one snapshot: the
/// barrier figure, when present, is consistent with `epoch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewal {
    /// The ring's epoch.
    pub epoch: u64,
    /// `None`: this member has no live lease row (removed, or expired in the
    /// database) — it must rejoin. `Some(false)`: the row is there but the
    /// lag bound refused the renewal. `Some(true)`: renewed.
    pub renewed: Option<bool>,
    /// The barrier snapshot, when the statement read one: the smallest
    /// acknowledged epoch among the *other live* members (`Some(None)`:
    /// there are none). `None`: no snapshot was read (a one-row
    /// acknowledgement) and the answer must not be used for the barrier.
    pub barrier: Option<Option<u64>>,
    /// The other member whose lease ends first, and in how many
    /// milliseconds of the database's clock (negative: already expired).
    pub next_expiry: Option<(String, f64)>,
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

/// A notification of a membership change: its epoch and, when the payload
/// carried it, the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The epoch the change produced.
    pub epoch: u64,
    /// The change, if the payload had room for it.
    pub change: Option<Change>,
}
