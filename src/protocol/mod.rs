//! The protocol core, without I/O: what a member decides, given what it
//! read. Public so that it can be simulated, model-checked and benchmarked
//! outside the crate; [`RingNode`](crate::RingNode) is the I/O edge around
//! it.
//!
//! * [`Ownership`] — the partition state machine of one member: active,
//!   pending (assigned, waiting for its claim), the local lease (docs/protocol.md §4).
//! * [`Follow`](follow::Follow) — the follow rules of an observer
//!   ([`RingObserver`](crate::RingObserver)): a view kept up to date from
//!   notifications, the change log and a poll.
//! * [`Session`] — everything else a member decides: which answers are
//!   stale, how notified changes are applied, which claims to take, when
//!   to release (after a drain), reconcile, poll, renew, rejoin and clean
//!   up, and when released partitions really stopped being reported.
//!
//! The session has one entry point for what happens to it, as raft-rs's
//! `step`: [`Session::step`] takes an [`Input`](input::Input) (an answer
//! of the database with the [`Ticket`] of the step it answers, a
//! notification, a drain's end, a tick, a stop) and `now`, and returns an
//! [`Output`](output::Output): effects to make visible, threads to wake. Each
//! thread of the edge asks what to do next (`heartbeat_next`,
//! `watcher_next`, `cleanup_next`: raft-rs's `ready`), does it, and steps
//! the answer in. Modules depend one way: `ticket` ← `input`, `output` ←
//! `ownership` ← `session`.
//!
//! Neither reads a clock (`now` is an argument) nor touches a connection,
//! so every interleaving can be driven from a test.
//!
//! These types follow the protocol, not semver: they may change in any
//! release as the protocol does.

pub mod follow;
pub mod input;
pub mod output;
mod ownership;
mod session;
mod ticket;

pub use crate::placement::choose_positions;
pub use ownership::{Action, Ownership, Status};
pub use session::{local_instant, Session, SessionConfig, IDLE_TICK};
pub use ticket::Ticket;
