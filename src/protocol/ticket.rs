//! The ticket a step is issued with and its answer handed back with: its
//! own module, so that the inputs, the outputs and the session each depend
//! on it and not on one another.

/// Which membership a step was issued for. Hand it back with the answer
/// (every [`Input`](crate::protocol::input::Input) that answers a step
/// carries one): an answer about an earlier membership (before an eviction
/// and rejoin) is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Counts the session's joins: a rejoin makes every earlier ticket stale.
    pub(super) generation: u64,
    /// The member row's incarnation (the statements name it).
    pub(super) incarnation: i64,
}

impl Ticket {
    /// The member row's incarnation the step is for: the statements name it.
    pub fn incarnation(&self) -> i64 {
        self.incarnation
    }
}
