//! Share a fixed set of partitions among a fleet of processes, through a
//! consistent-hashing ring whose membership is kept as time-limited leases
//! in PostgreSQL: **at no instant do two members have the same partition
//! active**, and a partition left behind by a join, a leave or a crash is
//! active somewhere again within milliseconds (after a crash, within one
//! lease TTL).
//!
//! No leader, no gossip: the database is the only coordinator. The library
//! is synchronous — a few OS threads per process, your `r2d2` pool, events
//! on `crossbeam-channel`. This page is a tour; how the protocol works and
//! why it is safe is in `docs/protocol.md` in the repository, operations
//! (`ringnode status`, poolers, TLS, failover) in the README.
//!
//! # The model
//!
//! * A **ring** (named by a `ring_id`) has `ring_size` **partitions**
//!   `0..ring_size`: the units your service does work for. Map a key to its
//!   partition with [`partition_for`].
//! * Each **member** (a [`RingNode`]) holds `vnode_count` positions on the
//!   ring, derived from its node id. Every join, leave and removal of a
//!   crashed member bumps the ring's **epoch**.
//! * The **view** ([`RingNode::view`]) says who *should* own a partition:
//!   a member's copy of the ring at some epoch, from which every member
//!   computes the same owners. Views reach members at different moments,
//!   so two may both believe, for a few milliseconds, that `p` is theirs.
//! * The **claim** says who *may use* `p` now: one row per partition in the
//!   database, held by at most one member *incarnation* (one membership of
//!   one process; a restart is a new one and inherits nothing). A member
//!   uses `p` only while it holds `p`'s claim *and* its lease is valid.
//!
//! A partition the view gives to a member is **pending** until the member
//! holds its claim, then **active**. [`RingNode::owns`] and
//! [`RingNode::owned_partitions`] report active partitions only, and check
//! the local lease deadline on every call. Each claim carries a **fencing
//! token**, greater than every token the partition had before. The words
//! in full: `docs/protocol.md`, "Vocabulary"; leases and claims: "The protocol".
//!
//! # Hello, ring
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use leasering::RingNode;
//! use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};
//!
//! let manager = PostgresConnectionManager::new("host=localhost user=postgres".parse()?, NoTls);
//! let pool = r2d2::Pool::builder().max_size(4).min_idle(Some(0)).build(manager)?;
//! let node = RingNode::builder(pool, "orders").lease_ttl(Duration::from_secs(30)).start()?;
//!
//! // On the hot path: lock-free, no I/O.
//! let p = node.partition_for(b"customer-42");
//! if node.owns(p) {
//!     let token = node.owned_partitions().token(p);
//!     // do the work, writing with the token
//! }
//! node.stop()?;
//! # Ok(()) }
//! ```
//!
//! # Events
//!
//! [`RingNode::subscribe`] (or [`NodeBuilder::subscribe`] before start, to
//! miss nothing) gives an unbounded `crossbeam-channel` receiver: a slow
//! consumer never blocks the member. Events leave in the order of the state
//! changes, each stamped with the instant it took effect, and the channel
//! disconnects when the member stops. A `Released` names its
//! [`ReleaseReason`]: a handoff or a stop is orderly; `LeaseExpired` (the
//! member lost contact and fenced itself) and `Evicted` mean "stop now".
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
//! # Fencing writes with the token
//!
//! `owns(p)` is exact at the instant it answers, but between `owns(p)` and
//! a write to another system a process can be paused (GC, swap, `SIGSTOP`)
//! for longer than its lease while `p` moves on. Make such writes
//! conditional on the token ([`Event::Acquired`]'s `token`,
//! [`OwnedPartitions::token`]) and the store refuses the stale one:
//!
//! ```no_run
//! # fn demo(node: &leasering::RingNode, sink: &mut postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let p = node.partition_for(b"customer-42");
//! // `None`: not active here (or the local lease has run out).
//! let Some(token) = node.owned_partitions().token(p) else { return Ok(()) };
//! let written = sink.execute(
//!     "INSERT INTO results AS r (partition, token, value) VALUES ($1, $2, $3)
//!      ON CONFLICT (partition) DO UPDATE SET token = excluded.token, value = excluded.value
//!      WHERE r.token <= excluded.token",
//!     &[&(p as i32), &(token as i64), &"42"],
//! )?;
//! if written == 0 {
//!     // A newer owner of `p` has written: this process lost `p` meanwhile.
//! }
//! # Ok(()) }
//! ```
//!
//! Tokens compare only within one partition. How they are made, also across
//! a database failover: `docs/protocol.md`, "Failover and timelines".
//!
//! # Drained handoffs
//!
//! `Released` means "`owns()` is already false", not "your work has
//! stopped". With [`NodeBuilder::drain_timeout`] set (off by default), the
//! `Released` of a handoff or a stop carries a [`DrainGuard`], cloned into
//! every subscriber's copy; the member keeps the claim, and the next owner
//! waits, until every copy is dropped or the timeout passes. A lease cannot
//! wait: if it runs out first, a second `Released` with
//! [`ReleaseReason::LeaseExpired`] says "stop now" ([`DrainGuard`] has the
//! rules).
//!
//! ```no_run
//! # fn flush(_: &[u32]) {}
//! # fn demo(pool: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<r2d2_postgres::postgres::NoTls>>)
//! #     -> leasering::Result<()> {
//! use std::time::Duration;
//! use leasering::{Event, ReleaseReason, RingNode};
//!
//! let mut builder = RingNode::builder(pool, "orders").drain_timeout(Duration::from_secs(5));
//! let events = builder.subscribe();
//! let node = builder.start()?;
//! for ev in events {
//!     match ev {
//!         // The lease is gone: abandon the work on `partitions` now.
//!         Event::Released { reason: ReleaseReason::LeaseExpired, .. } => {}
//!         // Finish the work in flight, then let the next owner start.
//!         Event::Released { partitions, drain, .. } => {
//!             std::thread::spawn(move || { flush(&partitions); drop(drain) });
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Placement
//!
//! [`Placement::Hashed`] (the default) is consistent hashing: a partition
//! belongs to the member holding the next vnode clockwise, and a member
//! restarted under its node id gets exactly its old partitions back.
//! [`Placement::Balanced`] keeps every member within one partition of its
//! weighted share and moves the minimum on each change; [`Placement`] says
//! when to pick which. Its controls, briefly:
//!
//! * **readiness and cordons**: a member takes partitions only while it is
//!   ready ([`NodeBuilder::start_unready`], [`RingNode::set_ready`]) and
//!   not cordoned by an operator ([`cordon`]) — with either placement;
//! * **capacity** and **zones** ([`NodeBuilder::capacity`],
//!   [`NodeBuilder::zone`]), **pins** ([`pin`], [`unpin`]) and a **move
//!   budget** ([`NodeBuilder::max_moving`]: at most `M` partitions in
//!   motion at once) — balanced placement only.
//!
//! The placement and the budget are stored with the ring; a member
//! configured otherwise is refused ([`ErrorKind::PlacementMismatch`]). Each
//! control's rules and failure modes: `docs/protocol.md`, "Placement and
//! its controls, for operators".
//!
//! # Routing: the observer
//!
//! A member can publish a small string with its row
//! ([`NodeBuilder::metadata`], e.g. `"10.0.0.7:8080"`), shown in every view
//! ([`MemberInfo::metadata`]). A process that is not a member — a gateway,
//! a producer — follows the ring with a [`RingObserver`]: no lease, no
//! claim, one connection.
//!
//! ```no_run
//! # fn demo(pool: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>)
//! #     -> leasering::Result<()> {
//! let router = leasering::RingObserver::builder(pool, "orders").start()?;
//! match router.owner_info_of_key(b"customer-42") {
//!     Some(owner) => { let _address = owner.metadata(); /* forward the request */ }
//!     None => { /* nobody in the ring yet */ }
//! }
//! # Ok(()) }
//! ```
//!
//! Its view is always one the ring had, so during a handoff it names the
//! old owner or the new one. It tells where a key *should* go; the owner's
//! [`RingNode::owns`] says whether it may work on it yet, so a router
//! retries a "not mine yet" reply.
//!
//! # Health
//!
//! [`RingNode::status`] feeds dashboards (epochs, active, pending and
//! draining partitions, whose claims this member waits for, lease time
//! left, renewals), and its [`health`](NodeStatus::health) answers a
//! readiness probe: [`Health::Healthy`], or [`Health::Unhealthy`] with a
//! one-line reason.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use leasering::{Health, RingNode};
//!
//! /// A readiness endpoint's status code and one-line body.
//! fn readyz(node: &RingNode) -> (u16, String) {
//!     match node.status().health {
//!         Health::Healthy => (200, "ready".into()),
//!         Health::Unhealthy(why) => (503, format!("not ready: {why}")),
//!     }
//! }
//!
//! # let db = leasering_testkit::TestPostgres::shared()?;
//! # let pool = db.pool(4)?;
//! let node = RingNode::builder(pool, "health-doc").start()?;
//! assert_eq!(readyz(&node).0, 200);
//! node.stop()?;
//! assert_eq!(readyz(&node), (503, "not ready: stopped".to_string()));
//! # Ok(())
//! # }
//! ```
//!
//! With the `metrics` feature, counters, gauges and histograms go to
//! whatever [`metrics`](https://docs.rs/metrics) recorder the application
//! installs ([`telemetry`] lists every series and what to alert on); with
//! `tracing`, each join, take, release and renewal is a span ([`trace`]).
//! The library serves nothing itself: the README shows the dozen lines that
//! serve `/metrics`, `/healthz` and `/readyz`.
//!
//! # Production
//!
//! **Pool size.** A [`Client`] (share one per process) holds **one**
//! connection at rest whatever its members, runs four threads and sends
//! one renewal per heartbeat for all of them; while partitions move it
//! borrows more, a peak of four. Give a pool at least [`MIN_POOL_SIZE`]
//! plus what the application takes, with `min_idle(Some(0))`, or let
//! [`Client::connect`] build it. Behind PgBouncer in transaction mode, set
//! [`NodeBuilder::pooling`] to [`Pooling::Transaction`]. The costs in full:
//! `docs/protocol.md`, "What the database and a process need".
//!
//! **What the database needs.** PostgreSQL 12 or newer, and a role with
//! `CREATE` on the database to create or migrate the schema (default
//! `leasering`) once — or run [`migrate`] as an administrator and start
//! members with `create_schema(false)`. Then `USAGE` on the schema and
//! `SELECT, INSERT, UPDATE, DELETE` on its tables suffice. TLS is whatever
//! connector the pool was built with.
//!
//! **Guarantees.** No overlap, with each partition's tokens rising from
//! owner to owner; coverage within milliseconds of a join or a leave and
//! within one TTL of a crash; a frozen member delays only the partitions
//! whose claims it holds; nothing leaked; bad input is a typed [`Error`],
//! never a panic. They assume that the clock *rates* (not offsets) of the
//! database and the members differ by less than `margin / ttl` (10 %), a
//! durable database, that a restore which loses commits starts a new
//! timeline (a promotion does, a `pg_dump` does not: the README's
//! "Failover"), and that your work stops at `Released` (tokens guard the
//! rest). In full: `docs/protocol.md`, "Guarantees and their assumptions".
//!
//! **Testing your service.** The workspace's `leasering-testkit` package
//! starts a throwaway PostgreSQL from the machine's server binaries and a
//! TCP proxy that can cut, stall or delay a member's connections; the
//! feature `test-util` adds `RingNode::pause_threads_for` and
//! `RingNode::crash` to freeze or crash a member in a test.

#![deny(missing_docs)]

mod attrs;
/// A function that is public with the `unstable` feature (see
/// `Cargo.toml`: the protocol's internals, for simulation and benches) and
/// crate-private without it, under one name and one body.
macro_rules! unstable_fn {
    ($(#[$attr:meta])* fn $($rest:tt)*) => {
        #[cfg(feature = "unstable")]
        $(#[$attr])*
        pub fn $($rest)*
        #[cfg(not(feature = "unstable"))]
        $(#[$attr])*
        #[allow(dead_code)]
        pub(crate) fn $($rest)*
    };
}

#[allow(dead_code)]
mod balanced;
mod client;
mod clock;
mod config;
mod error;
mod event;
mod node;
mod observer;
mod owned;
mod placement;
mod pool;
#[cfg(feature = "unstable")]
pub mod protocol;
#[cfg(not(feature = "unstable"))]
#[allow(dead_code, unused_imports)]
mod protocol;
mod ring;
mod store;
pub mod telemetry;
pub mod trace;

pub use client::Client;
pub use clock::monotonic_ns;
pub(crate) use config::Config;
pub use config::{
    Pooling, MAX_ID_LEN, MAX_LEASE_TTL, MAX_METADATA_LEN, MAX_RING_SIZE, MIN_LEASE_TTL,
};
pub use error::{Error, ErrorKind, Result};
pub use event::{DrainGuard, Event, ReleaseReason};
pub use node::{Health, NodeBuilder, NodeStatus, RingNode, MIN_POOL_SIZE};
pub use observer::{ObserverBuilder, RingObserver};
pub use owned::OwnedPartitions;
pub use placement::{partition_for, Placement};
#[cfg(feature = "unstable")]
pub use ring::Change;
pub use ring::{MemberInfo, RingArc, RingView};
pub use store::SCHEMA_VERSION;

/// Reads ring `ring_id` of schema `schema` once, as its members see it
/// (placement table, metadata and all), through any client — a
/// transaction included; `None` when there is no such ring. For tools and
/// one-off lookups (`ringnode status` uses it); to follow a ring, use a
/// [`RingObserver`].
pub fn read_ring(
    client: &mut impl postgres::GenericClient,
    schema: &str,
    ring_id: &str,
) -> Result<Option<RingView>> {
    let schema = store::Schema::named(schema)?;
    // The names are checked before any statement.
    schema.ring(ring_id, 0, None)?;
    let Some(size) = schema.ring_size(client, ring_id)? else {
        return Ok(None);
    };
    schema
        .ring(ring_id, size, None)?
        .read_ring_once(client)
        .map(Some)
}

/// Cordons (`cordoned = true`) or uncordons member `node_id` of ring
/// `ring_id` in schema `schema`, for operators (`ringnode cordon` /
/// `uncordon`): a cordoned member stays in the ring as a live member that
/// holds nothing — it gives its partitions up with drain, as on any view
/// change. Stored by node id, so the cordon outlives the member's restarts
/// (it rejoins holding nothing) and may be set while it is absent.
/// Written under the ring's lock as a membership change (the epoch bumps,
/// every member is told) when it changes a present member's eligibility.
/// Returns the epoch of that change, if any. An unknown ring is an
/// [`ErrorKind::InvalidConfig`] error naming it; a schema that is missing
/// or older than this build's an [`ErrorKind::Schema`] one.
///
/// While every member is cordoned or not ready, no partition has an owner
/// (`leasering_partitions_unassigned` shows the ring's size).
pub fn cordon(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
    node_id: &str,
    cordoned: bool,
) -> Result<Option<u64>> {
    let handle = store::Schema::named(schema)?;
    handle.ring(ring_id, 0, Some(node_id))?;
    // A missing schema, or one older than the cordons (version 4), is a
    // typed error saying so, not a database error about a table.
    handle.check(client)?;
    let Some(size) = handle.ring_size(client, ring_id)? else {
        return Err(Error::invalid(
            "ring_id",
            format!("no ring {ring_id:?} in schema {schema}: cannot cordon node {node_id:?}"),
        ));
    };
    handle
        .ring(ring_id, size, Some(node_id))?
        .set_cordon(client, cordoned)
}

/// Pins partition `partition` of ring `ring_id` to node `node_id` (an
/// operator's manual placement; `ringnode pin`). Balanced placement only.
///
/// Stored with the ring (table `pins`) and written under the ring's lock as
/// a membership change, so every member's placement takes it at the same
/// epoch: the partition moves to `node_id` (with the usual handoff: its old
/// owner drains and releases it) and stays there through joins and leaves
/// while `node_id` is an eligible member. While `node_id` is absent,
/// ineligible or full ([`NodeBuilder::capacity`]), the partition follows the
/// placement; it goes back when the node does. The rest of the ring is
/// placed around the pins. Returns the change's epoch, `None` when the pin
/// was there already.
///
/// An unknown ring, a partition outside the ring or a hashed ring is an
/// [`ErrorKind::InvalidConfig`] error naming the value.
///
/// ```no_run
/// # fn main() -> leasering::Result<()> {
/// let mut client = postgres::Client::connect("host=db user=ops", postgres::NoTls).unwrap();
/// leasering::pin(&mut client, "leasering", "orders", 17, "node-3")?;
/// leasering::unpin(&mut client, "leasering", "orders", 17)?;
/// # Ok(())
/// # }
/// ```
pub fn pin(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
    partition: u32,
    node_id: &str,
) -> Result<Option<u64>> {
    pin_store(client, schema, ring_id, Some(node_id))?.set_pin(client, partition, Some(node_id))
}

/// Removes the pin of `partition` ([`pin`]); the placement decides its
/// owner again. Returns the change's epoch, `None` when it was not pinned.
pub fn unpin(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
    partition: u32,
) -> Result<Option<u64>> {
    pin_store(client, schema, ring_id, None)?.set_pin(client, partition, None)
}

/// The pins of ring `ring_id`: `(partition, node id)`, ascending by
/// partition ([`pin`]).
pub fn pins(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
) -> Result<Vec<(u32, String)>> {
    pin_store(client, schema, ring_id, None)?.pins(client)
}

/// A store to write ring `ring_id`'s pins with; checks the names and the
/// schema's version first. (The pin statements read the ring's size
/// themselves, under its lock.)
fn pin_store(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
    node_id: Option<&str>,
) -> Result<store::Store> {
    let handle = store::Schema::named(schema)?;
    let store = handle.ring(ring_id, 0, node_id)?;
    handle.check(client)?;
    Ok(store)
}

/// Creates or migrates the leasering schema `schema` with `client`, for
/// administrators who start nodes with a DML-only role
/// (`NodeBuilder::create_schema(false)`). Idempotent.
pub fn migrate(client: &mut postgres::Client, schema: &str) -> Result<()> {
    store::Schema::named(schema)?.migrate(client)
}
