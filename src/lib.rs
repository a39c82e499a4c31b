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
//! This page describes version 2 of the protocol (per-partition
//! **claims**). Version 1 activated a partition only once *every* live
//! member had acknowledged the ring's epoch, so one frozen member stalled
//! every handoff in the ring; see [Upgrading from version
//! 1](#upgrading-from-version-1).
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
//! ## The protocol
//!
//! **Leases.** A member's lease is its row in `members`; its expiry is
//! always computed by the database (`now() + ttl`), and only the
//! database's clock decides it. Every `heartbeat_interval` (by default
//! `lease_ttl / 3`) the member renews its own row (never anyone else's), and only while the database still
//! considers it live: an expired lease is never resurrected, the member
//! rejoins instead. Its *local* lease is `sent_at + ttl − margin`, on the
//! monotonic clock, `sent_at` taken *before* the renewal is sent, so it
//! always ends before the database's. When it passes without a renewal, the
//! member **fences itself**: a thread that does no I/O releases everything
//! with [`ReleaseReason::LeaseExpired`], and the hot path checks the
//! deadline itself, so even a process waking from a long pause never
//! reports a stale partition.
//!
//! **Join.** A joiner files a request row and tries the ring's advisory
//! lock without waiting. Whoever gets the lock *absorbs every pending
//! request* in one transaction (group commit): it removes expired members
//! (freeing their claims), places each requester, inserts them all with
//! their vnodes, records one change — one epoch — per member, and notifies
//! the ring. A joiner that did not get the lock waits for that notification
//! and looks up what became of its request: absorbed (it has a view),
//! refused (a typed error: [`ErrorKind::NodeIdInUse`],
//! [`ErrorKind::RingSizeMismatch`], [`ErrorKind::RingFull`],
//! [`ErrorKind::ProtocolMismatch`]), or still pending (it tries the lock
//! again). Hundreds of members starting at once thus cost a few dozen
//! commits instead of one each.
//!
//! **Take.** Everything the new view assigns to a member is pending. It
//! takes the claims of its pending partitions in *one statement*: it
//! locks the free ones (`FOR UPDATE SKIP LOCKED`, in partition order) and
//! makes them its own, with a new token, provided its own lease is live in
//! the database; claims it already holds come back with their token; and a
//! claim another member holds gets this member as its **waiter**, so that
//! its release will tell it — and, once a second member waits for the same
//! claim (views disagree for a moment during concurrent joins and leaves),
//! every member. The members that lose a partition in the new view are
//! releasing it meanwhile (below); whatever the take did not get, it asks
//! for again when told of a release or of the holder's removal.
//!
//! **Activate.** A partition becomes active when the take's answer arrives
//! *while the local lease still runs*. The database lease then has not
//! ended, so the member's row — and with it its claims — cannot have been
//! removed: nobody else can hold the claim. An answer that arrives after
//! the local deadline is never used; its claims are given back.
//!
//! **Release.** A member that adopts a view which no longer gives it `p`
//! first stops using `p` locally (`owns(p)` is false from then on, and
//! [`Event::Released`] with [`ReleaseReason::Handoff`] goes out), then —
//! after the drain, if one is configured — writes the release **naming the
//! token** it frees. A stale or repeated release can never free a newer
//! claim; releases are retried until confirmed, and the member does not
//! take `p` again while its own release is unconfirmed. A release sends
//! one notification, and only if somebody waits: on the waiter's own
//! channel when the freed claims name one waiter, on the ring's channel
//! (every member hears it) when they name two or more. So every waiter is
//! told, at the cost of one `NOTIFY` per release that anyone waits for.
//!
//! **Reconcile.** Answers get lost: a connection can die after the take
//! committed but before its answer arrived. Every renewal therefore also
//! returns the claims the database says this incarnation holds; any that
//! the member neither uses nor is draining or giving back (and that no take
//! in flight asked for) is released by token. No partition stays blocked
//! behind a live member that forgot it holds the claim.
//!
//! **Crashes and leaves.** A member whose lease expired in the database is
//! removed by its successor on the ring at the moment of expiry (any other
//! member follows after a fallback of 50–100 ms; the removal is
//! idempotent), scheduled from the `expires_at` that renewals read. The
//! transaction that deletes the member's row also frees its claims and
//! notifies the ring, and members waiting for those claims take them at
//! once. [`RingNode::stop`] releases everything locally first (waiting for
//! drains, if configured), then deletes the member — freeing its claims —
//! in one transaction, so successors take over within milliseconds.
//!
//! **Notifications.** A [`Client`]'s one held connection listens on the
//! channel of every ring it has a member or an observer of (membership
//! changes, for everyone; the payload carries the changes of the
//! transaction, so members apply them without reading anything; one
//! `NOTIFY` per transaction) and on the client's own (releases of the
//! claims its members wait for; the payload names the partitions when
//! they fit). A lost notification is covered by a backing-off retake of
//! everything still waiting and by the epoch that every renewal returns.
//! With [`Pooling::SessionPolling`] or [`Pooling::Transaction`] the ring still works, by polling,
//! only slower.
//!
//! **What a handoff waits for.** Between live members that are not frozen,
//! with notifications on, a handoff waits for no timer. It waits for: the
//! old owner adopting the view that moves the partition (the change's
//! notification), the old owner's work on it (the drain, if configured),
//! the old owner's release (one statement), that release's notification to
//! the new owner (or the notification of the old owner's removal, for a
//! leave), and the new owner's take (one statement) — whatever the order in
//! which views, releases and takes meet, and however many members wait for
//! one claim. The one exception is a claim row locked by a transaction in
//! flight (a release or another take): the take skips it rather than wait
//! for the lock, and looks again 2 ms later. The backoff (100 ms, doubling
//! to 2 s) only covers a notification lost with a connection; a crashed or
//! frozen holder is waited for until its lease ends (see the guarantees),
//! and a new timeline's takes until its grace period ends.
//!
//! ## How races are serialised
//!
//! `now()` in PostgreSQL is the *transaction's* start time. Two
//! transactions that each compare `now()` with `expires_at` prove nothing
//! about the order in which they commit, so no decision here rests on such
//! a comparison. Every race is settled by a row lock, or by a row that is
//! gone:
//!
//! * **Take against take.** A take locks each free claim it takes
//!   (`FOR UPDATE`), which re-reads the row's newest version: of two takes
//!   of one partition, only one finds it free. Rows another transaction
//!   has locked are skipped (`SKIP LOCKED`), and the skipper looks again
//!   2 ms later.
//! * **Take against the taker's removal.** The take key-share locks the
//!   taker's own member row before it touches a claim; deleting that row
//!   (cleanup after expiry, leave) needs a stronger lock on it, and the
//!   deleting transaction frees the deleted incarnation's claims in a
//!   *later* statement, whose snapshot includes every take that committed
//!   while the deletion waited. Either the take committed first (its claims
//!   are freed with the member), or it finds the row gone and takes
//!   nothing. A claim never names a deleted member.
//! * **Take against release.** A take marks itself as a held claim's waiter
//!   under that row's lock; the release locks the row and reads the waiter
//!   from its newest version. Either the mark came first (the release
//!   notifies the taker), or the release did (the take finds the claim
//!   free, or — freed after the take's snapshot — neither takes nor marks
//!   it and looks again in 2 ms).
//! * **Renewal against cleanup.** The renewal updates the member's row only
//!   while it is live, under the row's lock; the cleanup's delete waits for
//!   that lock and re-checks the newest version. Either the cleanup deleted
//!   the row first (the renewal finds nothing: the member was evicted), or
//!   it finds the lease extended.
//! * **Membership changes** (join absorption, leave, cleanup) are
//!   serialised by a transaction-scoped advisory lock of the ring (a joiner
//!   tries it without waiting; leaves and cleanups queue on it), then lock
//!   the ring's row.
//!
//! **Lock order is partition order everywhere.** Takes, releases and the
//! freeing of a removed member's claims all lock claim rows in ascending
//! partition order (member rows before claim rows), so they cannot deadlock
//! with each other.
//!
//! **Locked rows are found again by key, not by `ctid`.** A statement over
//! a list of partitions first locks the rows it will write (a probe of the
//! primary key per element of the sorted list, which also fixes the lock
//! order), then updates them. A row that another transaction
//! updated after this statement's snapshot — a take marking its waiter,
//! say — is locked in its *newest* version, whose `ctid` the snapshot
//! cannot see; an update by `ctid` silently skipped such rows (a release
//! freed 61 of 143 claims, and the rest waited for the holder's next
//! renewal). An update by key finds the version its snapshot sees and
//! follows the update chain to the one it locked.
//!
//! ## Failover and timelines
//!
//! A standby promoted behind the old primary has lost the last commits:
//! claims taken, tokens issued, members joined or left, epochs. Three rules
//! (checked first in the randomised claim model, `tests/model/claim_model.py`,
//! with lossy and lossless promotions and a mutation for each rule, and by
//! `tests/deploy.rs`) keep guarantees 1 and 3 through it, with nobody
//! stopping the members:
//!
//! * **Tokens above every earlier timeline's.** PostgreSQL moves to a new
//!   *timeline* at every promotion and point-in-time recovery. The take
//!   reads the server's current one from the name of the WAL file being
//!   written (`pg_walfile_name(pg_current_wal_lsn())`, which any role may
//!   call; `pg_control_checkpoint()` would show the old timeline until the
//!   first checkpoint after the promotion) and gives a new holder the token
//!   `GREATEST(token + 1, epoch, (timeline - 1) << 32)`. So a fenced store
//!   that saw the lost tokens accepts the new ones, assuming **fewer than
//!   2³² tokens (and epochs) per partition per timeline**.
//! * **A grace period on a new timeline.** The take records in a table
//!   (`timelines`) the instant the database first served a take on its
//!   current timeline, and takes nothing — not even a claim the database
//!   says is already the taker's — until one lease TTL and the margin
//!   after it (the margin covers the two primaries' clocks differing). By
//!   then every lease granted on the old timeline has ended, or its holder
//!   has renewed on the new timeline and been checked (next rule). The TTL
//!   is the *taker's*: members of one ring with different TTLs are covered
//!   only if none has a longer one than the members that take after a
//!   failover (give a ring's members one TTL). A take refused this way
//!   says how long is left, and the member takes again then. The period is
//!   [`NodeBuilder::failover_grace`]: a deployment that only ever promotes a
//!   synchronous standby may set it to zero, so that handoffs right after a
//!   failover do not wait (nothing acknowledged is lost, so no lease of the
//!   old timeline is unknown to the new one). The timeline the schema is
//!   created on is recorded with it as needing no grace (a cold start waits
//!   for nothing); a take that finds no row for its timeline starts the
//!   grace. (A first version let a take that found the table *empty* skip
//!   the grace, taking it for a fresh database; the model found that a
//!   standby promoted before that first take's row reached it then handed
//!   out claims still in use.)
//! * **Members check what they rely on when the timeline changes.** The
//!   renewal (and, before the first renewal of a membership, the take)
//!   returns the timeline; the member remembers it. A renewal from another
//!   timeline is checked against what the member relies on: the ring's
//!   epoch is not behind its view's, and every claim it uses (active or
//!   draining) is still its own under the same token. If so (nothing it
//!   relied on was lost: a synchronous standby, a replay that had caught
//!   up) it adopts the new timeline and carries on. If not it **fences**:
//!   every partition is released at once ([`ReleaseReason::Evicted`] — the
//!   member leaves the ring as far as it is concerned; drains are cut
//!   short), it deletes its own stale row on the new primary (which would
//!   refuse its join as "node id in use" until it expired) and rejoins.
//!   The check runs only on a change of timeline: on one timeline a
//!   renewal's answer may be older than a take's answer that arrived after
//!   it was sent, and a check there would fence healthy members.
//!
//! A member whose join was lost is simply evicted (the renewal finds no
//! row) and rejoins. Members that left or crashed on the old timeline but
//! are still in the new primary's rows expire and are cleaned up as after
//! any crash. After a lossy failover the ring covers every partition again
//! about one TTL (the grace period) after the new primary answers. After a
//! lossless one nobody fences, and only handoffs inside the grace period
//! wait for its end.
//!
//! Epochs of two timelines are not comparable: the new primary may have
//! lost the last changes and made others under the same epochs. So a
//! member whose check passes reads the whole ring again and adopts it
//! whatever its epoch, and a [`RingObserver`] re-reads the whole ring when
//! the timeline changes, instead of applying the new timeline's deltas to
//! a view of the lost one.
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
//! ## Placement: hashed or balanced
//!
//! [`Placement::Hashed`] (the default) is DESIGN §2's consistent hashing:
//! a partition belongs to the member holding the next vnode clockwise. It
//! is a pure function of the vnodes, so any program can compute it, and a
//! member restarted under its node id gets exactly its old partitions back.
//! Its weakness is balance: with 8 vnodes, the largest of 16 members holds
//! 1.6× the mean (2.8× in the worst of many random rings).
//!
//! [`Placement::Balanced`] keeps every member strictly within one
//! partition of its weighted fair share (`ring_size · w / W`, the weight
//! being its `vnode_count`), and a join moves partitions only to the
//! joiner, a leave only away from the leaver: the minimum that must move.
//! No pure function of the member set can do both — capping rendezvous
//! hashing at each member's quota balances as well, but each join cascades
//! through the caps and moves 1.3× the minimum at 16 members and 4.5× at
//! 256 — so the balanced placement is a **table carried from epoch to
//! epoch**: every change applies one deterministic rule (integer
//! arithmetic, ties broken by a hash of the node id) to the previous table.
//! The transaction that records a change writes the new table with the
//! ring (`rings.placement_table`, a few bytes per partition); members apply
//! the change themselves, getting the same table bit for bit, and read the
//! stored one only on a gap. Safety does not depend on it: claims, not the
//! view, decide who may use a partition, so a table that two members
//! computed differently could cost time, never an overlap.
//!
//! The placement is stored with the ring when it is created; a member
//! configured otherwise is refused with [`ErrorKind::PlacementMismatch`]
//! ([`Error::placements`] names both). The benchmark `benches/ring.rs`
//! measures both placements.
//!
//! ## Eligibility: readiness and cordons
//!
//! A member takes partitions only while it is *eligible*: ready and not
//! cordoned. Both are sources of one mechanism (issue 19):
//!
//! * **Readiness** is the member's own. [`NodeBuilder::start_unready`] joins
//!   holding nothing (the ring stays covered by the others) until
//!   [`RingNode::set_ready(true)`](RingNode::set_ready), e.g. once caches
//!   are warm; `set_ready(false)` takes it away again. A rejoin after an
//!   eviction joins as ready as the member then is.
//! * **A cordon** is an operator's, by node id ([`cordon`], `ringnode
//!   cordon` / `uncordon`): stored in the database, so it outlives the
//!   member's restarts and may be set while the member is absent.
//!
//! An eligibility change is a membership change: the transaction that
//! writes it, under the ring's lock, bumps the epoch, records a change
//! (the members made eligible and ineligible) and notifies the ring, as
//! joins and leaves do. The placement considers eligible members only —
//! hashed skips ineligible members' vnodes, balanced treats becoming
//! ineligible as a table leave and becoming eligible as a join — so the
//! member that loses its partitions releases them as on any view change,
//! with its drain ([`NodeBuilder::drain_timeout`]), and stays a live member
//! that renews, holding nothing. Every view lists it
//! ([`MemberInfo::is_eligible`] says it owns nothing);
//! [`NodeStatus`] has `ready`, `eligible` and `cordoned`.
//!
//! **Failure mode:** while *every* member is ineligible, no partition has an
//! owner. [`NodeStatus::unassigned`] and the gauge
//! `leasering_partitions_unassigned` then show the ring's size, and
//! `ringnode status` says so.
//!
//! ## Capacity and zones
//!
//! With [`Placement::Balanced`], a member can declare two attributes,
//! stored with its row from its join on:
//!
//! * **Capacity** ([`NodeBuilder::capacity`]): it holds at most that many
//!   partitions; what does not fit goes to the other members by weight.
//! * **Zone** ([`NodeBuilder::zone`]): a failure domain (an availability zone,
//!   a rack). Each zone holds within one partition of its share by weight
//!   (the sum of its members' weights, capped by their capacities); within
//!   a zone, each member holds within one partition of its part of the
//!   zone's count, so within two of its share of the ring. When a zone is
//!   lost, its partitions spread over the other zones by weight. Members
//!   without a zone count as one zone of their own.
//!
//! [`MemberInfo::capacity`] and [`MemberInfo::zone`] show them, and
//! `ringnode status` lists them. Hashed placement cannot honour either (it
//! is a function of the positions alone): [`NodeBuilder::start`] refuses them
//! there with an [`ErrorKind::InvalidConfig`] error naming the value.
//!
//! **Failure mode:** when the members' capacities add up to less than the
//! ring, the rest of the partitions have no owner and their work waits.
//! [`NodeStatus::unassigned`], the gauge `leasering_partitions_unassigned`
//! (and the shipped alert `LeaseringPartitionsUnassigned`) and `ringnode
//! status` show how many; starting a member, or raising a capacity (a
//! restart with the new value), places them.
//!
//! ## Pins
//!
//! An operator can pin a partition to a node id ([`pin`], [`unpin`],
//! `ringnode pin`): with balanced placement, the partition moves there with
//! the usual drained handoff and stays through joins and leaves while that
//! node is an eligible member with room ([`NodeBuilder::capacity`]). While the
//! node is away, unready or cordoned, the partition is placed as any other,
//! and it goes back when the node does. The other partitions are placed
//! around the pins. A pin is stored with the ring and written as a
//! membership change, so every member applies it at the same epoch.
//!
//! While a ring has a member with a capacity or a zone, or a pin, balanced placement
//! uses a target-count rule (each member's count is computed first, then
//! the fewest partitions move to reach it); a ring without them keeps the
//! rule described under [`Placement::Balanced`], change for change. Every
//! member of the ring must run a build that knows the attributes and pins
//! (schema version 5; an older build cannot start on that schema, but one
//! already running during an upgrade can): an older member ignores them and
//! would compute another placement — claims keep that safe, but partitions
//! would wait. Set capacities, zones and pins once the upgrade is done.
//!
//! ## Move budget
//!
//! By default a change moves everything it moves at once: four members
//! joining a ring of four hand over half the ring together, and each of
//! those partitions is idle for its drain and handoff. A ring with a
//! **move budget** ([`NodeBuilder::max_moving`], balanced placement, stored with
//! the ring) keeps at most `M` partitions *in motion* between live members
//! at once — a partition is in motion while the placement gives it to a
//! member that does not hold its claim yet:
//!
//! * Each membership change is written under the ring's lock with what the
//!   budget leaves it: `M` less what is in motion then (read from the
//!   claims in the same transaction). The placement's target-count rule
//!   moves at most that many partitions between members that stay, from
//!   the members most above their target to those most below it. The
//!   allowance is part of the change, so every member computes the same
//!   table.
//! * Partitions whose owner left, crashed, or became ineligible are placed
//!   at once (nobody serves them); they count against the budget until
//!   taken.
//! * What the budget held back moves in **steps**: a change with nothing
//!   in it but its allowance. The member that takes moved partitions writes
//!   the next step right after its take, so a join proceeds as fast as the
//!   handoffs complete, `M` at a time; each member also tries one every
//!   third of a lease TTL while its view has moves pending, in case the one
//!   that should have written it is gone.
//!
//! The old owners keep serving what has not moved yet, so at most `M`
//! partitions are ever idle for a handoff (the integration test joins four
//! members to four with a budget of 4 and 300 ms drains: at most 4
//! partitions uncovered at any moment, against 32 without it). The price is
//! time: `moved ÷ M` rounds of handoffs instead of one.
//! [`NodeStatus::moves_pending`], the gauge
//! `leasering_partitions_moves_pending` and `ringnode status` show what is
//! held back. Hashed placement is a function of the positions alone and
//! cannot hold moves back: `max_moving` with it is a typed
//! [`InvalidConfig`](ErrorKind::InvalidConfig) error.
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
//! the members running (see "Failover and timelines" below), at the cost
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
//! ## Upgrading from version 1
//!
//! The schema migrates in place ([`SCHEMA_VERSION`] 2; run [`migrate`] or
//! let the first member with `create_schema(true)` do it): it adds the
//! `claims` table (one free row per partition for every existing ring,
//! token 0), the `join_requests` table, the `claims.waiter` column, and
//! `members.incarnation` and `members.protocol` (rows already there are
//! marked as protocol 1).
//!
//! **Members of the two versions cannot share a ring**, and the library
//! refuses rather than risk an overlap:
//!
//! * a version-2 member joining a ring that still has live version-1
//!   members fails with [`ErrorKind::ProtocolMismatch`], naming them;
//! * a version-1 member started against a migrated schema fails with
//!   [`ErrorKind::Schema`] (the schema is newer than it understands), and
//!   a version-1 member that was already running can no longer rejoin
//!   after an eviction (its insert lacks the incarnation).
//!
//! So an upgrade from version 1 is a **stop-the-ring upgrade**, not a
//! rolling one: stop every version-1 member of the ring (or let their
//! leases end), then start the version-2 members. The ring's partitions are
//! owned by nobody in between. Fencing tokens stay monotonic across the
//! upgrade: version 1's tokens were epochs, and a version-2 token is never
//! below the epoch at which it is taken — which is past every epoch
//! version 1 handed out, since the version-2 members' joins bumped it.
//!
//! ## Differences from DESIGN.md, and why
//!
//! * **Joins are group commits** (DESIGN: one transaction per join under
//!   the ring row's lock). Joins serialised one by one made a cold start of
//!   512 members take about 32 s on two cores: each held the lock for
//!   several round trips of a busy database, and each commit woke every
//!   listening backend. Epochs stay one per member, so the change log, the
//!   payloads and the delta application are unchanged.
//! * **Membership changes queue on a transaction-scoped advisory lock** of
//!   the ring before they touch its row: hundreds of members queueing on
//!   the row lock itself kept the database's lock manager busy, since every
//!   commit woke every waiter; an advisory lock is handed to one waiter at
//!   a time.
//! * **Release notifications go to the waiters only** (DESIGN §4.0 rule 4:
//!   every release notifies the ring). A take that finds a claim held marks
//!   itself as its `waiter`; the release notifies that member's own
//!   channel, and nobody when nobody waits. With hundreds of members,
//!   releases that always notified were most of the database's CPU at a
//!   cold start. A claim that a second member marks names the ring's
//!   channel instead, and its release tells every member, in one
//!   notification. (A first version kept one waiter, the latest take to
//!   mark it: a member whose mark a stale view's take overwrote waited for
//!   the safety net, 100 ms to 2 s, during every burst of joins and leaves;
//!   the claim model's `single_waiter` mutation.) Removals of a holder
//!   reach everyone through the ring's channel.
//! * **The take asks only for what may have changed, with a safety net.**
//!   A take asks for the partitions newly pending or named by a release or
//!   a removal; the ones still waiting are asked for again after a backoff
//!   (100 ms, doubling to 2 s; at most 100 ms without notifications) in
//!   case a notification was lost, and after 2 ms when a claim was skipped
//!   as locked (no notification will come for it). Retaking everything on
//!   every notification meant takes of thousands of partitions, thousands
//!   of times, at a cold start. Right after its join a member takes first
//!   and reads what changed since next.
//! * **Claim rows exist from the ring's creation on** (and from the
//!   migration for existing rings), free, with token 0. Inserting them at
//!   the first take made concurrent takes wait on each other's inserts (a
//!   unique-key check waits for the inserting transaction). The take still
//!   inserts a row that is missing, as a fallback.
//! * **Claims are freed explicitly**, in the transaction that deletes the
//!   member, not by a foreign key `ON DELETE SET NULL`: the key's check on
//!   every claim a take writes cost a query per row (a take of 300 claims
//!   took 9 ms), while one key-share lock on the taker's member row
//!   serialises a take against that row's deletion just as well (see
//!   [How races are serialised](#how-races-are-serialised)).
//! * **Updates find locked rows by key, not `ctid`** (same section): the
//!   `ctid` of a row updated after the statement's snapshot is invisible
//!   to it.
//! * **Tokens are `GREATEST(token + 1, epoch)`** (DESIGN: strictly greater
//!   than every earlier token). The `+ 1` gives strictness; the epoch keeps
//!   tokens above those of version 1 (see the upgrade section).
//! * **Incarnations are random 64-bit numbers** with a unique index, not a
//!   sequence, so that a role with DML rights only can join (a sequence
//!   needs its own `USAGE` grant).
//! * A renewal only extends a lease that is still live in the database
//!   (`expires_at > now()`), and a renewal answered after the local deadline
//!   fences before it extends. With claims, safety no longer depends on
//!   this (claims are freed only when a member row is deleted, so renewing
//!   an expired but present row cannot let two members hold one claim); it
//!   stays as defence in depth, and so that an expired lease means the
//!   same thing to every member.
//! * Each membership change is both in the `NOTIFY` payload (epoch, ring
//!   id, removed and added members; the epoch alone if it would not fit)
//!   and in the change log (`changes` table): members apply the notified
//!   delta without reading anything, and read the log only to fill a gap
//!   (or the whole ring when the log no longer reaches back).
//! * A member acknowledges its view's epoch with its renewal, for the lag
//!   bound only (nothing waits for acknowledgements any more): a member
//!   that renews but has not adopted the ring's epoch for `ttl / 2` is not
//!   extended, fences itself and rejoins.
//! * `ring_size` is capped at [`MAX_RING_SIZE`] (2^20): every member keeps
//!   O(`ring_size`) state for its lock-free hot path.
//! * **A second placement** (not in DESIGN): the balanced table above,
//!   stored with the ring; with it, `RingView`'s arcs are runs of
//!   consecutive partitions with one owner, not vnode arcs. Vnodes are
//!   still chosen and stored under it (they carry the weight, and pick the
//!   member that cleans up a crashed one), so a ring still needs room for
//!   every member's `vnode_count` positions.
//!
//! ## How the crate is built
//!
//! In the manner of raft-rs, the protocol is a pure core driven by inputs,
//! and I/O lives at the edge:
//!
//! * `protocol` — the core, without I/O and without clock reads:
//!   `Ownership` (the partition state machine: pending, active, the local
//!   lease) and `Session` (everything else a member decides: stale
//!   answers, deltas and catch-up, which claims to take and when to retry,
//!   which to drain and give back, reconciliation, renewals, rejoins,
//!   cleanup, release timestamps), inputs in `protocol::input`, effects and
//!   next steps in `protocol::output`. Public only with the feature
//!   `unstable`, for simulation and benchmarks: it follows the protocol,
//!   not semver.
//! * [`RingView`] and [`partition_for`] — the ring and the placement, pure.
//! * the store (private) — each protocol step as one statement or one short
//!   transaction against PostgreSQL, returning the core's input types.
//! * [`RingNode`] and [`Client`] — the edge: the member's lock-free hot
//!   path and event fan-out, and the client's four threads, shared by all
//!   of its members, that each loop "ask a session for its next step, run
//!   that statement, hand the answer back".
//!
//! ## Threads
//!
//! A [`Client`] runs four named threads for all of its members and
//! observers, whatever their number: `leasering-conn-*` (the held
//! connection: LISTEN, one batched renewal per heartbeat, reconciliation),
//! `leasering-work-*` (adopting views, taking and releasing claims, drains,
//! observers' reads, on a connection borrowed while there is work),
//! `leasering-changes-*` (rejoins, removing crashed members at the moment
//! their lease ends) and `leasering-fence-*` (self-fencing, cutting drains
//! short when a lease runs out; it does no I/O). They start with its first
//! member or observer and end with its last: [`RingNode::stop`] of a
//! client's last member joins them; a thread stuck in a stalled socket is
//! left to finish on its own, and `stop()` still returns within
//! `stop_timeout`. A renewal never waits behind a take: they run on
//! different threads and connections.
//!
//! Dropping the last clone of a [`RingNode`] without `stop()` never blocks
//! the caller: local ownership ends at once (nothing is reported after the
//! drop, subscribers get `Released { Stopping }`), and the leave runs on a
//! background thread (`leasering-leave-*`); the event channels disconnect
//! when it is done. Call `stop()` to wait for the leave and see its error.
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
pub use config::{
    Config, Pooling, MAX_ID_LEN, MAX_LEASE_TTL, MAX_METADATA_LEN, MAX_RING_SIZE, MIN_LEASE_TTL,
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
    let rows = client
        .query_typed(
            &format!("SELECT ring_size FROM \"{schema}\".rings WHERE ring_id = $1"),
            &[(&ring_id, postgres::types::Type::TEXT)],
        )
        .map_err(|e| Error::db(format!("read ring {ring_id:?}"), e))?;
    let Some(size) = rows.first().map(|r| r.get::<_, i32>(0) as u32) else {
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
    let rows = client
        .query_typed(
            &format!("SELECT ring_size FROM \"{schema}\".rings WHERE ring_id = $1"),
            &[(&ring_id, postgres::types::Type::TEXT)],
        )
        .map_err(|e| Error::db(format!("read ring {ring_id:?}"), e))?;
    let Some(size) = rows.first().map(|r| r.get::<_, i32>(0) as u32) else {
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
