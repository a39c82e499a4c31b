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
//! This page is a user's tour; the protocol itself (version 2:
//! per-partition **claims**), its races and its history are in
//! `docs/protocol.md` in the repository.
//!
//! ## The model
//!
//! * A **ring** (named by a `ring_id`) has `ring_size` **partitions**
//!   `0..ring_size`: the units your service does work for. Map a key to
//!   its partition with [`partition_for`].
//! * Each **member** (a [`RingNode`]) holds `vnode_count` **positions** on
//!   the ring. A vnode at position `p` covers the **arc** `(pred(p), p]`.
//!   Positions are derived from the node id, so a restarted member with the
//!   same id gets them back (when they are free).
//! * Every membership change (join, leave, removal of a crashed member)
//!   bumps the ring's **epoch** in the same transaction.
//!
//! Two questions are kept apart:
//!
//! * **Who *should* own `p`** — the **view**, a member's copy of the ring
//!   at some epoch ([`RingNode::view`]). It is pure placement: every member
//!   that has seen the same epoch computes the same owners. Views move
//!   from member to member at different moments, so two members may both
//!   believe, for a few milliseconds, that `p` is theirs.
//! * **Who *may use* `p` now** — the **claim**, one row per partition in
//!   the database, held by at most one member *incarnation* at a time. A
//!   member uses `p` only while it holds `p`'s claim *and* its own lease is
//!   valid.
//!
//! A partition the view gives to this member is **pending** until the
//! member holds its claim, then **active**. Only active partitions are
//! reported by [`RingNode::owns`] and [`RingNode::owned_partitions`]; both
//! check the local lease deadline on every call.
//!
//! Each claim carries a **fencing token**. Whenever a free claim is taken,
//! the taker's token is `GREATEST(token + 1, epoch)` (`epoch`: the ring's,
//! as the take reads it): strictly greater than every token the partition
//! had before, whoever held it. A member that asks again for a claim it
//! already holds gets the same token back. The token
//! of a partition is in [`Event::Acquired`]'s `token` and in
//! [`OwnedPartitions::token`]; pass it with writes to other systems (see
//! [Fencing writes with the token](#fencing-writes-with-the-token)).
//!
//! An *incarnation* is one membership of one process: a random 64-bit id
//! drawn at each join. A member restarted under the same node id is a new
//! incarnation and never inherits its predecessor's claims.
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
//! [`RingNode::subscribe`] (or [`NodeBuilder::subscribe`], before start, to miss
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
//! `owns(p)` is exact at the instant it answers, but between `owns(p)` and
//! a write to some other system a process can be paused (GC, swap,
//! `SIGSTOP`) for longer than its lease, and meanwhile `p` may have moved
//! on. Make such writes conditional on the token, and the store refuses
//! the stale one:
//!
//! ```sql
//! INSERT INTO results AS r (partition, token, value) VALUES ($1, $2, $3)
//! ON CONFLICT (partition) DO UPDATE SET token = excluded.token, value = excluded.value
//! WHERE r.token <= excluded.token;   -- 0 rows: a newer owner has written
//! ```
//!
//! From Rust, with the token of the snapshot that said `p` is ours:
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
//! Tokens compare only within one partition: partitions taken together
//! usually share a token, but nothing orders the tokens of two partitions.
//!
//! ## How it works
//!
//! The database's clock alone decides leases; a member's local lease always
//! ends first, and it fences itself when that passes. The view says who
//! *should* own a partition; a claim row per partition says who *may* use
//! it: a member takes only free claims, starts only when its take's answer
//! comes back within its local lease, and gives a claim back — naming its
//! token — only after it stopped using the partition. Races are settled by
//! row locks and deleted rows, never by comparing clocks; a promoted standby
//! on a new timeline hands nothing on until every lease of the old one has
//! ended. The whole protocol, its races and their reasoning are in
//! `docs/protocol.md` in the repository, and each rule in
//! `tests/model/claim_model.py`, with the mutations its checks catch.
//!
//! ## Drained handoffs
//!
//! `Released` means "`owns()` is already false", not "your work has
//! stopped": a request started just before the handoff may still be
//! running when the next owner starts. With [`NodeBuilder::drain_timeout`] set
//! (off by default), the `Released` of a handoff or a stop carries a
//! [`DrainGuard`], cloned into every subscriber's copy of the event. The
//! member holds on to the partition's claim — so the next owner cannot
//! start — until one of:
//!
//! * every copy of the guard is dropped (a subscriber that does not keep
//!   its copy lets go at once; with no subscriber at all, nothing waits);
//! * the drain timeout ([`DrainGuard::deadline`]) passes;
//! * the local lease runs out: a lease cannot wait for anyone. A second
//!   `Released` with [`ReleaseReason::LeaseExpired`] then names the
//!   partitions, meaning "stop now", and its `drain` is `None` — the lease,
//!   not the user, decides from here, and tokens protect what follows.
//!
//! Graceful [`RingNode::stop`] waits for the drains of its `Stopping`
//! release within `stop_timeout` before it leaves (the leave frees every
//! claim). `LeaseExpired` and `Evicted` releases never carry a guard.
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
//!
//! std::thread::spawn(move || {
//!     for ev in events {
//!         match ev {
//!             Event::Released { reason: ReleaseReason::LeaseExpired, partitions, .. } => {
//!                 // The lease is gone: abandon the work on `partitions` now.
//!             }
//!             Event::Released { partitions, drain, .. } => {
//!                 // Finish the work in flight, then let the next owner start.
//!                 std::thread::spawn(move || {
//!                     flush(&partitions);
//!                     drop(drain);
//!                 });
//!             }
//!             _ => {}
//!         }
//!     }
//! });
//! # Ok(()) }
//! ```
//!
//! ## Placement and its controls
//!
//! [`Placement::Hashed`] (the default) is consistent hashing: a partition
//! belongs to the member holding the next vnode clockwise, a pure function
//! of the vnodes (a member restarted under its node id gets exactly its old
//! partitions back), balanced within about 1.6× the mean with 8 vnodes.
//! [`Placement::Balanced`] keeps every member within one partition of its
//! weighted share and moves the minimum on each change: a table carried
//! from epoch to epoch, which every member computes alike. Balanced
//! placement takes the controls operators ask for:
//!
//! * **readiness and cordons** — a member takes partitions only while it
//!   is *eligible*: ready ([`NodeBuilder::start_unready`],
//!   [`RingNode::set_ready`]) and not cordoned by an operator ([`cordon`],
//!   `ringnode cordon`; stored, it outlives restarts). Also with hashed
//!   placement. An ineligible member stays a live member holding nothing;
//!   while *every* member is, no partition has an owner
//!   ([`NodeStatus::unassigned`]).
//! * **capacity** ([`NodeBuilder::capacity`]) and **zones**
//!   ([`NodeBuilder::zone`]) — at most `c` partitions for a member; each
//!   zone within one partition of its share, a lost zone's partitions
//!   spread over the others by weight. Capacities below the ring leave the
//!   rest unowned, and say so.
//! * **pins** ([`pin`], [`unpin`], `ringnode pin`) — a partition stays on
//!   a node while it is an eligible member with room.
//! * **a move budget** ([`NodeBuilder::max_moving`]) — at most `M`
//!   partitions in motion between live members at once: a join takes its
//!   share in steps while the old owners keep serving the rest.
//!
//! The placement and the budget are stored with the ring; a member
//! configured otherwise is refused with [`ErrorKind::PlacementMismatch`]
//! naming both values. How each rule works, its failure modes and its
//! costs: `docs/protocol.md` in the repository, §2 and §7.
//!
//! ## Routing: member metadata and the observer
//!
//! A member can publish a small string with its row
//! ([`NodeBuilder::metadata`], e.g. `"10.0.0.7:8080"`): every view shows it in
//! [`MemberInfo::metadata`]. A process that is not a member — a gateway, a
//! producer — follows the ring with a [`RingObserver`]: no lease, no claim,
//! one connection; it reads the ring, applies the changes the members'
//! notifications carry, and polls the change log in case one was lost.
//!
//! ```no_run
//! # fn demo(pool: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>)
//! #     -> leasering::Result<()> {
//! let router = leasering::RingObserver::builder(pool, "orders").start()?;
//! match router.owner_of_key(b"customer-42") {
//!     Some(owner) => { let _address = owner.metadata(); /* forward the request */ }
//!     None => { /* nobody in the ring yet */ }
//! }
//! # Ok(()) }
//! ```
//!
//! Its view is always one the ring had, so during a handoff it names the
//! old owner or the new one. It tells where a key *should* go; the owner's
//! [`RingNode::owns`] says whether it may work on it yet (the new owner may
//! still be taking the claim), so a router retries a "not mine yet" reply.
//!
//! ## Guarantees and their assumptions
//!
//! 1. **No overlap**: at no instant do two members have a partition active,
//!    as long as the clock *rates* of the database host and the members
//!    differ by less than `margin / ttl` (10 % by default). Absolute clock
//!    offsets do not matter: only the database's clock decides expiry.
//!    **Tokens** of a partition strictly increase from owner to owner.
//! 2. **Coverage**: on a stable ring every partition is active somewhere —
//!    within milliseconds of a join or a graceful leave, within `ttl` plus
//!    milliseconds of a crash.
//! 3. **No lost or leaked state**: after every member stops, none of their
//!    member or vnode rows remains and no claim names them (the claim rows
//!    themselves stay, free, one per partition, keeping their tokens); a
//!    removed member never writes its row back.
//! 4. **Bad input** gets an [`Error`] with an [`ErrorKind`] and a message
//!    naming the value, never a panic.
//! 5. **Isolation of a frozen member**: a member that is paused, crashed or
//!    cut off delays only the partitions whose claims it holds, until its
//!    lease ends in the database and a survivor removes it (about one TTL
//!    after its last renewal). Every other join, leave and handoff goes on
//!    in milliseconds meanwhile: nobody waits for its acknowledgement, and
//!    a take skips claim rows that another transaction has locked instead
//!    of waiting for them. [`NodeStatus::waiting_for`] shows who is waiting
//!    for whom.
//! 6. **Drained handoff** (opt-in): with a drain timeout, the next owner of
//!    `p` starts only after every copy of the old owner's drain guard for
//!    `p` is dropped, or the drain timeout passes — as long as the old
//!    owner's lease holds (see above).
//!
//! What these rest on: the clock-rate bound above; the database's own
//! durability (the claims *are* the permission); and, across a failover
//! that **loses commits** (an asynchronous standby promoted behind the old
//! primary, a point-in-time recovery), one assumption: **a restore that
//! loses commits starts a new timeline** — promotions and point-in-time
//! recoveries do; a `pg_dump` restored into a fresh cluster, or a logical
//! replica switched over, does *not*, and needs the manual recovery in the
//! README. With it, guarantees 1 and 3 hold through such a failover with
//! the members running (see "Failover and timelines" in `docs/protocol.md`), at the cost
//! of one TTL without takes on the new timeline; without it, the lost
//! tokens, claims and epochs are handed out again (a fenced store accepts
//! repeated tokens, two members can use one partition for up to one TTL).
//! A lossless failover (synchronous replication) is an outage like any
//! other. And, for the user's work
//! rather than `owns()`, that the work stops at `Released` (or at the drop
//! of the guard) — tokens are what protects writes from a process that did
//! not. A member frozen *inside* one of the short membership transactions
//! holds the ring's advisory lock until it wakes or the database ends its
//! session (`idle_in_transaction_session_timeout`, four statement
//! timeouts); joins, leaves and removals queue behind it meanwhile, though
//! handoffs between the members already in the ring do not.
//!
//! ## Health, metrics and spans
//!
//! [`RingNode::status`] answers a readiness probe and feeds dashboards:
//! epoch and the newest ring epoch heard of, active and pending
//! partitions, the claims this member is waiting for and whose
//! ([`NodeStatus::waiting_for`]), partitions still draining, lease time
//! left, renewals and how long they have been failing.
//! [`NodeStatus::health`] is [`Health::Healthy`] or
//! [`Health::Unhealthy`] with a one-line reason (`stopped`, `fenced: local
//! lease expired; renewals failing for 3.2 s (last error: …)`, `renewals
//! refused: view epoch lag 3 (view 12, ring 15)`, …) — what a `/readyz`
//! endpoint answers:
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
//! installs; [`telemetry`] has the table of every series, its labels, its
//! meaning and what to alert on. With the `tracing` feature, each join,
//! view adoption, claim take and release, renewal, cleanup and leave is a
//! span ([`trace`]). The library serves nothing itself: the README shows
//! the dozen lines that serve `/metrics`, `/healthz` and `/readyz` with
//! `metrics-exporter-prometheus` and `tiny_http`.
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
//! PostgreSQL 12 or newer. The schema (default `leasering`) holds the
//! tables `schema_version`, `rings`, `members`, `vnodes`, `changes`,
//! `claims`, `join_requests` and `timelines`. The role needs `CREATE` on the database
//! to create or migrate the schema, once — or run [`migrate`] as an
//! administrator and start nodes with `create_schema(false)`. Then it needs
//! `USAGE` on the schema and `SELECT, INSERT, UPDATE, DELETE` on its
//! tables; no sequences, and nothing for `LISTEN`/`NOTIFY`, advisory
//! locks or the timeline (`pg_current_wal_lsn`, `pg_walfile_name`: any
//! role).
//!
//! **What a process costs.** A [`Client`] holds **one** connection at rest,
//! whatever its rings and members (it listens and renews them all), runs
//! **four threads**, and sends **one renewal statement per heartbeat**
//! (`lease_ttl / 3`) for all of its memberships. While partitions move it
//! borrows a second connection (takes, releases, catch-ups; given back a
//! quarter second after the last), and now and then a third (rejoins,
//! crash cleanups) and the caller's (`start()`'s join, `stop()`'s leave):
//! a peak of four, typically two. Size a pool for at least
//! [`MIN_POOL_SIZE`] (two) plus what the application takes from it, and
//! build it with `min_idle(Some(0))` (r2d2 otherwise keeps `max_size`
//! connections open) — or let [`Client::connect`] build it. Each
//! membership change sends one `NOTIFY` per transaction (a group commit
//! of many joins: one), each release that someone waits for one; every
//! `NOTIFY` wakes every listening backend of the database. A database
//! that runs out of connections answers `sorry, too many clients
//! already`: the error says so (for pools [`Client::connect`] builds).
//!
//! Behind a pooler in *transaction* mode (PgBouncer `pool_mode =
//! transaction`) set [`NodeBuilder::pooling`] to
//! [`Pooling::Transaction`]: nothing then outlives a transaction on a server
//! connection (no named prepared statements, no session settings, no
//! `LISTEN`), and handoffs wait for the renewals instead. Session mode needs
//! nothing. TLS is whatever connector the pool was built with.

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
    let mut cfg = Config::new(ring_id);
    cfg.schema = schema.to_string();
    cfg.validate()?;
    let Some(size) = store::stored_ring_size(client, schema, ring_id)? else {
        return Ok(None);
    };
    cfg.ring_size = size;
    store::Store::new(&cfg, "reader")?
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
    let mut cfg = Config::new(ring_id);
    cfg.schema = schema.to_string();
    cfg.node_id = Some(node_id.to_string());
    cfg.validate()?;
    // A missing schema, or one older than the cordons (version 4), is a
    // typed error saying so, not a database error about a table.
    store::Store::new(&cfg, node_id)?.check_schema(client)?;
    let Some(size) = store::stored_ring_size(client, schema, ring_id)? else {
        return Err(Error::invalid(
            "ring_id",
            format!("no ring {ring_id:?} in schema {schema}: cannot cordon node {node_id:?}"),
        ));
    };
    cfg.ring_size = size;
    store::Store::new(&cfg, node_id)?.set_cordon(client, cordoned)
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
    let store = pin_store(schema, ring_id, Some(node_id))?;
    store.check_schema(client)?;
    store.set_pin(client, partition, Some(node_id))
}

/// Removes the pin of `partition` ([`pin`]); the placement decides its
/// owner again. Returns the change's epoch, `None` when it was not pinned.
pub fn unpin(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
    partition: u32,
) -> Result<Option<u64>> {
    let store = pin_store(schema, ring_id, None)?;
    store.check_schema(client)?;
    store.set_pin(client, partition, None)
}

/// The pins of ring `ring_id`: `(partition, node id)`, ascending by
/// partition ([`pin`]).
pub fn pins(
    client: &mut postgres::Client,
    schema: &str,
    ring_id: &str,
) -> Result<Vec<(u32, String)>> {
    let store = pin_store(schema, ring_id, None)?;
    store.check_schema(client)?;
    store.pins(client)
}

/// A store to write ring `ring_id`'s pins with; checks the names and the
/// schema's version first.
fn pin_store(schema: &str, ring_id: &str, node_id: Option<&str>) -> Result<store::Store> {
    let mut cfg = Config::new(ring_id);
    cfg.schema = schema.to_string();
    cfg.node_id = node_id.map(str::to_string);
    cfg.validate()?;
    store::Store::new(&cfg, node_id.unwrap_or("operator"))
}

/// Creates or migrates the leasering schema `schema` with `client`, for
/// administrators who start nodes with a DML-only role
/// (`NodeBuilder::create_schema(false)`). Idempotent.
pub fn migrate(client: &mut postgres::Client, schema: &str) -> Result<()> {
    let mut cfg = Config::new("migrate");
    cfg.schema = schema.to_string();
    store::Store::new(&cfg, "migrate")?.migrate(client)
}
