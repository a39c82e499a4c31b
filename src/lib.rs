//! # leasering
//!
//! Share a fixed set of partitions among a fleet of processes, through a
//! consistent-hashing ring whose membership is kept as time-limited leases
//! in PostgreSQL — with the guarantee that **at no instant do two members
//! have the same partition active**, and that a partition left behind by a
//! join, a leave or a crash is active somewhere again within milliseconds
//! (or, after a crash, within one lease TTL).
//!
//! No leader, no gossip: the database is the only coordinator. The library
//! is synchronous: it runs a few named OS threads per member and talks to
//! PostgreSQL through your `r2d2` pool; there is no async runtime in its
//! API.
//!
//! ## The model
//!
//! * A **ring** (named by a `ring_id`) has `ring_size` **partitions**
//!   `0..ring_size` — the units your service does work for. Map a key to
//!   its partition with [`partition_for`].
//! * Each **member** (a [`RingNode`]) holds `vnode_count` **positions** on
//!   the ring. A vnode at position `p` covers the **arc** `(pred(p), p]`.
//!   Positions are derived from the node id (DESIGN §2), so a restarted
//!   member with the same id gets them back.
//! * Every membership change (join, leave, removal of a crashed member)
//!   bumps the ring's **epoch** in the same transaction.
//! * A member's **view** is its copy of the ring at some epoch
//!   ([`RingNode::ring`]). The view says which partitions a member *should*
//!   own. Whether it may work on them *now* is a second question: only
//!   **active** partitions are reported by [`RingNode::owns`] and
//!   [`RingNode::owned_partitions`]. Newly assigned partitions are
//!   **pending** until the handoff barrier lets them go active.
//!
//! ## The protocol in four paragraphs
//!
//! **Adopting a view.** When a member learns of a newer epoch (a `NOTIFY`
//! carrying it, or a renewal that returns it), it reads the change, then,
//! in this order: (1) stops using every partition the new view gives to
//! somebody else ([`Event::Released`] with [`ReleaseReason::Handoff`]),
//! (2) acknowledges the epoch in its lease row, (3) marks newly assigned
//! partitions pending, remembering `since`: the first epoch of its unbroken
//! run of views that give it the partition.
//!
//! **The barrier.** A pending partition becomes active when one consistent
//! snapshot of the database shows the ring at this member's view's epoch
//! and every *other live* member's acknowledged epoch `>= since`. Every
//! former owner has then released it. Its fencing token is `since`, which
//! is strictly greater than any previous owner's token.
//!
//! **Leases.** Every `lease_ttl / 3` a member renews its own row (never
//! anyone else's), and only while the database still considers it live —
//! an expired lease is never resurrected; the member rejoins instead. Its
//! local deadline is `sent + ttl − margin`, on the monotonic clock, taken
//! *before* the renewal is sent: it always ends before the database's. When
//! it passes without a renewal, the member **fences itself** (a thread that
//! does no I/O releases everything with [`ReleaseReason::LeaseExpired`]),
//! and [`RingNode::owns`] checks the deadline on every call, so even a
//! process waking from a long pause never reports a stale partition.
//!
//! **Crashes and leaves.** A member whose lease expired in the database is
//! removed by its successor at the moment of expiry (others follow after a
//! short fallback), bumping the epoch; expired members do not count in the
//! barrier. [`RingNode::stop`] releases everything locally first, then
//! deletes the member in one transaction, so successors take over within
//! milliseconds.
//!
//! ## Guarantees and their assumptions
//!
//! * **No overlap**, as long as the clock *rates* of the database host and
//!   the members differ by less than `margin / ttl` (10 % by default) —
//!   absolute clock offsets do not matter, only the database's clock
//!   decides expiry.
//! * **Tokens** strictly increase from owner to owner of a partition. A
//!   process can still be paused between `owns(p)` and its write to some
//!   other system; pass the token ([`OwnedPartitions::token`]) with such
//!   writes and let the store refuse tokens lower than the highest it has
//!   seen (`INSERT … ON CONFLICT … WHERE stored.token <= excluded.token`).
//! * **Coverage**: on a stable ring every partition is active somewhere —
//!   within milliseconds of a join or graceful leave, within `ttl` plus
//!   milliseconds of a crash.
//! * **Bad input** gets an [`Error`] with an [`ErrorKind`] and a message
//!   naming the value, never a panic.
//!
//! ## Differences from DESIGN.md, and why
//!
//! * A renewal only extends a lease that is still live in the database
//!   (`expires_at > now()`), and a renewal answered after the local deadline
//!   fences before it extends. Either closes an interleaving that DESIGN's
//!   model leaves to its fencing tick: a renewal delayed in the network past
//!   the lease's end, applied after a joiner's barrier had (rightly) ignored
//!   the expired member, would otherwise make its stale partitions valid
//!   again.
//! * Each membership change is both in the `NOTIFY` payload (epoch, ring
//!   id, removed and added members; the epoch alone if it would not fit)
//!   and in the change log (`changes` table): members apply the notified
//!   delta without reading anything, and read the log only to fill a gap
//!   (or the whole ring when the log no longer reaches back).
//! * A member acknowledges an epoch with a statement that touches its own
//!   row only, unless it has partitions waiting at the barrier (then the
//!   acknowledgement also reads the barrier snapshot). With `n` members an
//!   epoch therefore costs the database O(`n`), not O(`n`²).
//! * `ring_size` is capped at [`MAX_RING_SIZE`] (2^20): every member keeps
//!   O(`ring_size`) state for its lock-free hot path.
//!
//! ## Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use leasering::{Event, RingNode};
//! use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};
//!
//! let manager = PostgresConnectionManager::new(
//!     "host=localhost user=postgres".parse()?, NoTls);
//! let pool = r2d2::Pool::builder().max_size(4).build(manager)?;
//!
//! let node = RingNode::builder(pool, "orders")
//!     .vnode_count(8)
//!     .lease_ttl(Duration::from_secs(30))
//!     .start()?;
//!
//! // React to ownership changes...
//! let events = node.subscribe();
//! std::thread::spawn(move || {
//!     for ev in events {
//!         match ev {
//!             Event::Acquired { partitions, token, .. } => { /* start work */ }
//!             Event::Released { partitions, reason, .. } => { /* stop work */ }
//!             _ => {}
//!         }
//!     }
//! });
//!
//! // ...and ask on the hot path.
//! let p = node.partition_for(b"customer-42");
//! if node.owns(p) {
//!     let token = node.owned_partitions().token(p);
//!     // write with the token
//! }
//! node.stop()?;
//! # Ok(()) }
//! ```
//!
//! ## Events
//!
//! [`RingNode::subscribe`] (or [`Builder::subscribe`], before start, to miss
//! nothing) gives an unbounded `crossbeam-channel` receiver: a slow consumer
//! never blocks the member. Events leave in the order of the state changes,
//! each stamped with the instant it took effect. The channel disconnects
//! when the member stops — the usual crossbeam shutdown signal.
//!
//! ```no_run
//! # fn demo(node: leasering::RingNode) {
//! use leasering::{Event, ReleaseReason};
//! for ev in node.subscribe() {
//!     match ev {
//!         Event::Acquired { partitions, token, .. } => println!("start {partitions:?} with token {token}"),
//!         Event::Released { partitions, reason: ReleaseReason::LeaseExpired, .. } => {
//!             println!("lost contact: stop {partitions:?} at once")
//!         }
//!         Event::Released { partitions, .. } => println!("hand over {partitions:?}"),
//!         _ => {}
//!     }
//! }
//! // the loop ends when the node stops
//! # }
//! ```
//!
//! ## Fencing writes with the token
//!
//! Between `owns(p)` and a write to some other system a process can be
//! paused (GC, swap, `SIGSTOP`) for longer than its lease. Make such writes
//! conditional on the token, and the store refuses the stale one:
//!
//! ```sql
//! INSERT INTO results AS r (partition, token, value) VALUES ($1, $2, $3)
//! ON CONFLICT (partition) DO UPDATE SET token = excluded.token, value = excluded.value
//! WHERE r.token <= excluded.token;   -- 0 rows: a newer owner has written
//! ```
//!
//! ## How the crate is built
//!
//! In the manner of raft-rs, the protocol is a pure core driven by inputs,
//! and I/O lives at the edge:
//!
//! * [`protocol`] — the core, without I/O and without clock reads:
//!   [`protocol::Ownership`] (the partition state machine) and
//!   [`protocol::Session`] (everything else a member decides: stale
//!   answers, deltas and catch-up, acknowledgements, barrier polls,
//!   renewals, rejoins, cleanup, release timestamps). Inputs in
//!   [`protocol::input`], effects and next steps in [`protocol::output`].
//!   Public, so that it can be simulated and benchmarked; it follows the
//!   protocol, not semver.
//! * [`RingView`] and [`partition_for`] — the ring and the placement, pure.
//! * the store (private) — each protocol step as one statement or one short
//!   transaction against PostgreSQL, returning the core's input types.
//! * [`RingNode`] — the edge: the lock-free hot path, the event fan-out, and
//!   four threads that each loop "ask the session for the next step, run
//!   that statement, hand the answer back".
//!
//! ## Threads
//!
//! Each member runs four named threads: `leasering-heartbeat-*` (renewal),
//! `leasering-watcher-*` (LISTEN, adopting views, the barrier),
//! `leasering-cleanup-*` (removing crashed members at the moment their lease
//! ends) and `leasering-fence-*` (self-fencing; it does no I/O).
//! [`RingNode::stop`] joins them; a thread stuck in a stalled socket is left
//! to finish on its own, and `stop()` still returns within `stop_timeout`.
//!
//! Dropping the last clone of a [`RingNode`] without `stop()` never blocks
//! the caller: local ownership ends at once (nothing is reported after the
//! drop, subscribers get `Released { Stopping }`), and the leave runs on a
//! background thread (`leasering-leave-*`); the event channels disconnect
//! when it is done. Call `stop()` to wait for the leave and see its error.
//!
//! ## Health and metrics
//!
//! [`RingNode::status`] answers a readiness probe
//! ([`NodeStatus::is_healthy`]) and feeds dashboards (epoch, active and
//! pending partitions, lease time left, renewals). With the `metrics`
//! feature, counters, gauges and a handoff-latency histogram go to whatever
//! [`metrics`](https://docs.rs/metrics) recorder the application installs;
//! the names are listed in [`telemetry`].
//!
//! ## Testing your service
//!
//! The workspace's `leasering-testkit` package starts a throwaway
//! PostgreSQL from the machine's server binaries (as root it runs the server
//! as the `postgres` user) and a TCP proxy that can cut, stall or delay a
//! member's connections — the same tools this crate's own fault tests use.
//! The feature `test-util` adds `RingNode::pause_threads_for` and
//! `RingNode::crash` to freeze or crash a member in a test.
//!
//! ## What the database needs
//!
//! PostgreSQL 12 or newer. The role needs `CREATE` on the database (for the
//! schema, once — or run [`migrate`] as an administrator and start nodes with
//! `create_schema(false)`), and `SELECT, INSERT, UPDATE, DELETE` on the
//! schema's tables. Each member keeps two pool connections (one listening)
//! and borrows a third now and then: size the pool for at least
//! [`MIN_POOL_SIZE`].

#![deny(missing_docs)]

mod clock;
mod config;
mod error;
mod event;
mod node;
mod owned;
mod placement;
mod pool;
pub mod protocol;
mod ring;
mod store;
pub mod telemetry;

pub use clock::monotonic_ns;
pub use config::{Config, MAX_ID_LEN, MAX_LEASE_TTL, MAX_RING_SIZE, MIN_LEASE_TTL};
pub use error::{Error, ErrorKind, Result};
pub use event::{DrainGuard, Event, ReleaseReason};
pub use node::{Builder, NodeStatus, RingNode, MIN_POOL_SIZE};
pub use owned::OwnedPartitions;
pub use placement::partition_for;
pub use ring::{Change, MemberInfo, RingArc, RingView};
pub use store::SCHEMA_VERSION;

/// Creates or migrates the leasering schema `schema` with `client`, for
/// administrators who start nodes with a DML-only role
/// (`Builder::create_schema(false)`). Idempotent.
pub fn migrate(client: &mut postgres::Client, schema: &str) -> Result<()> {
    let mut cfg = Config::new("migrate");
    cfg.schema = schema.to_string();
    store::Store::new(&cfg, "migrate")?.migrate(client)
}
