//! The protocol core, without I/O: what a member decides, given what it
//! read. Public so that it can be simulated, model-checked and benchmarked
//! outside the crate; [`RingNode`](crate::RingNode) is the I/O edge around
//! it.
//!
//! * [`Ownership`] — the partition state machine of one member: active,
//!   pending (assigned, waiting for its claim), the local lease (docs/protocol.md §4).
//! * [`Session`] — everything else a member decides: which answers are
//!   stale, how notified changes are applied, which claims to take, when
//!   to release (after a drain), reconcile, poll, renew, rejoin and clean
//!   up, and when released partitions really stopped being reported. Inputs are in [`input`], outputs in
//!   [`output`].
//!
//! Neither reads a clock (`now` is an argument) nor touches a connection,
//! so every interleaving can be driven from a test.
//!
//! These types follow the protocol, not semver: they may change in any
//! release as the protocol does.

pub mod input;
pub mod output;
mod ownership;
mod session;

pub use crate::placement::choose_positions;
pub use ownership::{Action, Ownership, Status};
pub use session::{local_instant, Session, SessionConfig, Ticket, IDLE_TICK};
