//! [`NodeBuilder`]: the settings of a member, and `start()` — validation,
//! the schema, and the join, bounded by `start_timeout` even when the
//! database does not answer at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::shutdown::{bounded, Bounded};
use super::{Inner, RingNode, MIN_POOL_SIZE};
use crate::client::Client;
use crate::config::{random_node_id, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::pool::{Conn, ConnSource};
use crate::protocol::input::{Input, Joined};
use crate::store::{JoinAttempt, Store};

/// Builds and starts a [`RingNode`]. Setters consume and return the
/// builder; each documents its default.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};
///
/// let manager = PostgresConnectionManager::new("host=localhost user=postgres".parse()?, NoTls);
/// let pool = r2d2::Pool::builder().max_size(4).build(manager)?;
/// let node = leasering::RingNode::builder(pool, "orders")
///     .vnode_count(8)
///     .lease_ttl(Duration::from_secs(30))
///     .node_id("worker-7")
///     .start()?;
/// # Ok(()) }
/// ```
pub struct NodeBuilder {
    source: Source,
    cfg: Config,
    subscribers: Vec<Sender<Event>>,
}

/// Where a member's connection comes from.
enum Source {
    /// A pool: the member gets a [`Client`] of its own.
    Pool(Arc<dyn ConnSource>),
    /// A client shared with other members and observers.
    Client(Client),
}

impl NodeBuilder {
    /// Vnodes (positions) this member holds: its weight. Default 8.
    pub fn vnode_count(mut self, n: u32) -> NodeBuilder {
        self.cfg.vnode_count = n;
        self
    }
    /// Lease time-to-live. Default 30 s, at least 500 ms. A crashed member's
    /// partitions are covered again at most about one TTL after it stopped
    /// renewing.
    pub fn lease_ttl(mut self, ttl: Duration) -> NodeBuilder {
        self.cfg.lease_ttl = ttl;
        self
    }
    /// Number of partitions; every member of a ring must agree. Default 1024.
    pub fn ring_size(mut self, n: u32) -> NodeBuilder {
        self.cfg.ring_size = n;
        self
    }
    /// This member's id. Default `node_` + 16 random hex digits. A fixed id
    /// gets its old positions back after a restart (when they are free).
    pub fn node_id(mut self, id: impl Into<String>) -> NodeBuilder {
        self.cfg.node_id = Some(id.into());
        self
    }
    /// How partitions are placed on members; every member of a ring must
    /// agree (the ring stores it when it is created). Default
    /// [`Placement::Hashed`](crate::Placement::Hashed); see
    /// [`Placement`](crate::Placement) for when to pick which.
    pub fn placement(mut self, placement: crate::Placement) -> NodeBuilder {
        self.cfg.placement = placement;
        self
    }
    /// A small string (at most 1024 bytes) stored with this member and
    /// shown to every member and [`RingObserver`](crate::RingObserver) in
    /// [`MemberInfo::metadata`](crate::MemberInfo::metadata) — typically
    /// the address where it serves its partitions. Default none.
    pub fn metadata(mut self, metadata: impl Into<String>) -> NodeBuilder {
        self.cfg.metadata = Some(metadata.into());
        self
    }
    /// At most `c` partitions for this member (at least 1; needs
    /// [`Placement::Balanced`](crate::Placement::Balanced)). Default: no
    /// limit. Balanced placement gives it no more than `c` and spreads what
    /// does not fit over the other members by weight. When the members'
    /// capacities add up to less than the ring, the rest is held by
    /// nobody: [`NodeStatus::unassigned`](crate::NodeStatus::unassigned)
    /// and the gauge `leasering_partitions_unassigned` count it, and the
    /// work of those partitions waits until capacity is added. Stored
    /// with the member: it counts from its join.
    pub fn capacity(mut self, c: u32) -> NodeBuilder {
        self.cfg.capacity = Some(c);
        self
    }
    /// This member's zone: a failure domain such as an availability zone
    /// or a rack (1 to 63 letters, digits, `.`, `_`, `-`, `:`; needs
    /// [`Placement::Balanced`](crate::Placement::Balanced)). Default none
    /// (members without a zone count as one zone of their own). Balanced
    /// placement keeps each zone's partitions within one of its share by
    /// weight; when a zone is lost, its partitions spread over the others
    /// by weight. Shown in [`MemberInfo::zone`](crate::MemberInfo::zone).
    pub fn zone(mut self, zone: impl Into<String>) -> NodeBuilder {
        self.cfg.zone = Some(zone.into());
        self
    }
    /// The ring's move budget: at most `m` partitions in motion between
    /// live members at once (at least 1; needs
    /// [`Placement::Balanced`](crate::Placement::Balanced)). Default: no
    /// budget, a change moves everything it moves at once. With a budget,
    /// a join (or a member made ready, a pin's neighbours) takes its share
    /// in steps: each change moves at most what the budget has left, the
    /// old owners keep serving what has not moved yet, and each member that
    /// takes a moved partition writes the next step. Partitions without an
    /// owner (a member left, crashed or was cordoned) are placed at once
    /// and count against the budget until taken. Stored with the ring like
    /// the placement: every member must say the same, or its `start()`
    /// fails with [`ErrorKind::PlacementMismatch`](crate::ErrorKind)
    /// naming both values. See `docs/protocol.md` §7.
    pub fn max_moving(mut self, m: u32) -> NodeBuilder {
        self.cfg.max_moving = Some(m);
        self
    }
    /// Schema of the tables. Default `leasering`.
    pub fn schema(mut self, schema: impl Into<String>) -> NodeBuilder {
        self.cfg.schema = schema.into();
        self
    }
    /// Whether `start()` creates/migrates the schema. Default `true`.
    pub fn create_schema(mut self, yes: bool) -> NodeBuilder {
        self.cfg.create_schema = yes;
        self
    }
    /// How the pool reaches PostgreSQL. Default [`Pooling::Session`](crate::Pooling::Session)
    /// (direct connections or a pooler in session mode; `LISTEN`/`NOTIFY`
    /// makes handoffs take milliseconds). [`Pooling::Transaction`](crate::Pooling::Transaction) behind a
    /// pooler in transaction mode (PgBouncer `pool_mode = transaction`):
    /// nothing outlives a transaction and changes are found by polling, as
    /// with [`Pooling::SessionPolling`](crate::Pooling::SessionPolling). Members and observers of one
    /// [`Client`](crate::Client) share its mode.
    pub fn pooling(mut self, pooling: crate::Pooling) -> NodeBuilder {
        self.cfg.pooling = pooling;
        self
    }
    /// Safety margin between the local and the database lease. Default
    /// `lease_ttl / 10`; must cover clock-rate differences over one TTL.
    pub fn margin(mut self, margin: Duration) -> NodeBuilder {
        self.cfg.margin = Some(margin);
        self
    }
    /// Renewal interval. Default `lease_ttl / 3`.
    pub fn heartbeat_interval(mut self, every: Duration) -> NodeBuilder {
        self.cfg.heartbeat_interval = Some(every);
        self
    }
    /// Bound on `start()`. Default 10 s.
    pub fn start_timeout(mut self, t: Duration) -> NodeBuilder {
        self.cfg.start_timeout = t;
        self
    }
    /// Bound on `stop()`. Default 5 s.
    pub fn stop_timeout(mut self, t: Duration) -> NodeBuilder {
        self.cfg.stop_timeout = t;
        self
    }
    /// Server-side bound on each statement. Default `lease_ttl / 3`, clamped
    /// to 1..=10 s.
    pub fn statement_timeout(mut self, t: Duration) -> NodeBuilder {
        self.cfg.statement_timeout = Some(t);
        self
    }
    /// Drained handoffs (off by default): with a timeout set, the
    /// [`Event::Released`] of a handoff (and of `stop()`) carries a
    /// [`DrainGuard`](crate::DrainGuard), cloned into every subscriber's
    /// copy; the partitions' claims are given back — and the next owner
    /// starts — only when every copy is dropped, or after `timeout`, or when
    /// the local lease runs out (then a second `Released` with
    /// [`ReleaseReason::LeaseExpired`](crate::ReleaseReason) says "stop
    /// now"). Graceful `stop()` waits for drains within `stop_timeout`.
    pub fn drain_timeout(mut self, timeout: Duration) -> NodeBuilder {
        self.cfg.drain_timeout = Some(timeout);
        self
    }
    /// How long nothing is taken after a promotion (from the first take the
    /// database serves on its new timeline). Default `lease_ttl` plus the
    /// margin: enough for every lease granted on the old primary to end,
    /// so that a failover that **loses commits** (an asynchronous standby
    /// promoted while it lagged, a point-in-time recovery) hands no
    /// partition to two members. The cost: a handoff in that window waits
    /// for its end, even after a failover that lost nothing.
    ///
    /// `Duration::ZERO` is for deployments where **every promotion loses
    /// nothing** — only a synchronous standby is ever promoted (Patroni's
    /// `synchronous_mode_strict`, CloudNativePG with required synchronous
    /// replicas): handoffs right after a failover then take milliseconds.
    /// If such a deployment ever promotes a lagging standby, two members
    /// may use one partition for up to one TTL. Give every member of a
    /// ring the same value. At most ten times `lease_ttl` plus the margin.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn demo(pool: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>)
    /// #     -> Result<(), leasering::Error> {
    /// // Every promotion is of a synchronous standby.
    /// let node = leasering::RingNode::builder(pool, "orders")
    ///     .failover_grace(Duration::ZERO)
    ///     .start()?;
    /// # drop(node);
    /// # Ok(()) }
    /// ```
    pub fn failover_grace(mut self, grace: Duration) -> NodeBuilder {
        self.cfg.failover_grace = Some(grace);
        self
    }
    /// Joins *not ready* (issue 19): a live member that the placement gives
    /// no partitions — the ring stays covered by the others — until
    /// [`RingNode::set_ready(true)`](RingNode::set_ready), e.g. once its
    /// caches are warm. A rejoin after an eviction joins as ready as the
    /// member is then.
    pub fn start_unready(mut self) -> NodeBuilder {
        self.cfg.start_ready = false;
        self
    }
    /// A receiver of the member's events that is registered *before* it
    /// starts, so that it sees everything: [`Event::Joined`] and the first
    /// [`Event::Acquired`] included. Like [`RingNode::subscribe`] otherwise.
    pub fn subscribe(&mut self) -> Receiver<Event> {
        let (tx, rx) = unbounded();
        self.subscribers.push(tx);
        rx
    }

    /// Checks the settings so far without connecting: the typed
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) error `start()`
    /// would fail with for a bad value (a ring id, a node id, a TTL out of
    /// range, a zone with hashed placement, …), naming it. For a program
    /// that wants to refuse bad flags before it does anything else.
    pub fn check(&self) -> Result<()> {
        self.cfg.validate()
    }

    pub(super) fn from_pool(pool: Arc<dyn ConnSource>, ring_id: String) -> NodeBuilder {
        NodeBuilder {
            source: Source::Pool(pool),
            cfg: Config::new(ring_id),
            subscribers: Vec::new(),
        }
    }

    pub(crate) fn new(client: Client, ring_id: String) -> NodeBuilder {
        NodeBuilder {
            source: Source::Client(client),
            cfg: Config::new(ring_id),
            subscribers: Vec::new(),
        }
    }

    /// Validates the configuration, creates the schema if needed, joins the
    /// ring and starts the background threads. Returns once joined: the
    /// partitions assigned to this member are then *pending* and become
    /// active (with an [`Event::Acquired`]) as soon as their previous owners
    /// have let go — milliseconds on a healthy ring.
    pub fn start(self) -> Result<RingNode> {
        let NodeBuilder {
            source,
            mut cfg,
            subscribers,
        } = self;
        cfg.validate()?;
        let node_id = cfg.node_id.clone().unwrap_or_else(random_node_id);
        cfg.node_id = Some(node_id.clone());
        let client = match source {
            Source::Pool(pool) => Client::with_source(pool, Some(super::short_id(&node_id))),
            Source::Client(c) => c,
        };
        let pool = client.shared.pool.clone();
        if pool.max_size() < MIN_POOL_SIZE {
            return Err(Error::invalid(
                "pool",
                format!(
                    "pool max_size {} is too small: a member needs at least {MIN_POOL_SIZE} connections \
                     (its client's, which listens and renews, and one for takes, joins and leaves)",
                    pool.max_size()
                ),
            ));
        }
        client.shared.check_mode(cfg.pooling)?;
        let mut store = Store::new(&cfg, &node_id)?;
        // Releases of the claims it waits for are told on its client's
        // channel, which one LISTEN serves for all of the client's members.
        store.own_channel = client.shared.channel(&cfg.schema);
        let op = crate::trace::Op::start(crate::trace::Kind::Join, &cfg.ring_id, &node_id, 0);
        // A client's first member joins on the connection its client's
        // work thread will use for the first take: set up (session
        // settings) with the join's first statement. Later members join on
        // a borrowed one and give it back.
        let session_state = !cfg.pooling.transaction_pooling();
        let timeout = cfg.effective_statement_timeout();
        let first = client.registrations() == 0;
        let keep = (first && session_state).then(|| crate::store::hold_setup(timeout, &[]));
        let (joined, sent_at, conn) = join_within_start_timeout(&cfg, &store, &pool, keep.clone())?;
        op.finish(joined.view.epoch(), joined.positions.len(), "joined");
        let inner = Arc::new(Inner::new(
            cfg,
            node_id,
            store,
            client.shared.clone(),
            subscribers,
        ));
        inner.update(|s, now| s.step(Input::Joined { joined, sent_at }, now));
        if first {
            // The work thread takes first on it: no connection to open
            // before the first take. (The client's held connection, which
            // listens, is opened meanwhile; releases notified before its
            // LISTEN are found by the catch-up that follows it.)
            client.shared.offer_work(crate::store::HeldConn::adopt(
                conn,
                timeout,
                session_state,
                Default::default(),
            ));
            if let Err(e) = client.shared.register_member(inner.clone()) {
                let _ = inner.shutdown(true);
                return Err(e);
            }
            return Ok(RingNode::from_inner(inner));
        }
        let mut conn = conn;
        if let Err(e) = client.shared.register_member(inner.clone()) {
            // No threads: leave again, so that nobody waits for a member
            // that never runs.
            let _ = inner.shutdown(true);
            return Err(e);
        }
        // A client already running waits for notifications on its socket,
        // up to a second, before it LISTENs on a new ring's channel: wake it
        // (once per ring new to the client; a few bytes to every listener
        // of the database, like any NOTIFY). What it missed meanwhile it
        // reads (see `conn::prepare`).
        let ch = inner.store.channel.clone();
        if client.shared.wants_wake_for(&ch) {
            if let Err(e) = inner.store.wake_listener(&mut conn) {
                log::debug!(target: "leasering", "node {}: could not wake its client's connection: {e}", inner.node_id);
            }
        }
        drop(conn);
        Ok(RingNode::from_inner(inner))
    }
}

/// Connects, creates or checks the schema and joins, on a helper thread, so
/// that `start()` keeps its bound even if a pooled connection hangs (a
/// stalled network does not time out on its own). If the caller has given
/// up by the time the join commits, the helper leaves again. Returns the
/// connection too, listening on the ring's channel, for the watcher.
fn join_within_start_timeout(
    cfg: &Config,
    store: &Store,
    pool: &Arc<dyn ConnSource>,
    keep: Option<String>,
) -> Result<(Joined, Instant, Conn)> {
    let deadline = Instant::now() + cfg.start_timeout;
    let abandoned = Arc::new(AtomicBool::new(false));
    let job = {
        let (pool, store, abandoned) = (pool.clone(), store.clone(), abandoned.clone());
        let (create, start_timeout) = (cfg.create_schema, cfg.start_timeout);
        move || -> Result<(Joined, Instant, Conn)> {
            // A little under the caller's bound, so that a plain connection
            // failure arrives as such rather than as a timeout.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let remaining = remaining - (remaining / 10).min(Duration::from_millis(100));
            let mut conn = pool.get(
                remaining.max(Duration::from_millis(1)),
                &format!("start (start_timeout {start_timeout:?})"),
            )?;
            if create {
                store.schema_handle()?.migrate(&mut conn)?;
            } else {
                store.schema_handle()?.check(&mut conn)?;
            }
            let mut attempt = JoinAttempt::new(Instant::now()).until(deadline);
            let joined = match join_retrying(
                &store,
                &pool,
                &mut conn,
                deadline,
                &mut attempt,
                keep.as_deref(),
            ) {
                Ok(joined) => joined,
                Err(e) => {
                    // A request that committed may be absorbed later, or
                    // have been absorbed with its answer lost: a ghost
                    // member for a TTL. Withdrawn here, best-effort, on a
                    // fresh connection (this one may be what failed).
                    drop(conn);
                    if let Some(incarnation) = attempt.filed() {
                        withdraw(&store, &pool, incarnation, start_timeout);
                    }
                    return Err(e);
                }
            };
            if abandoned.load(Ordering::SeqCst) {
                // The caller has given up: this member never runs.
                let _ = crate::store::unlisten_all(&mut conn);
                withdraw(&store, &pool, joined.incarnation, start_timeout);
            }
            Ok((joined, attempt.sent_at(), conn))
        }
    };
    match bounded("start", deadline, job)? {
        Bounded::Done(result) => result,
        Bounded::TimedOut => {
            abandoned.store(true, Ordering::SeqCst);
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "start did not finish within start_timeout {:?} (database unreachable or stalled)",
                    cfg.start_timeout
                ),
            ))
        }
    }
}

/// Best-effort withdrawal of the join of `incarnation` (its request, or
/// its row) after a `start()` that failed or was given up on, on a
/// connection of its own.
fn withdraw(store: &Store, pool: &Arc<dyn ConnSource>, incarnation: i64, bound: Duration) {
    let node = store.node_id.as_str();
    let result = pool
        .get(bound.min(Duration::from_secs(5)), "withdraw the join")
        .and_then(|mut c| store.withdraw_join(&mut c, incarnation));
    match result {
        Ok(Some(epoch)) => log::info!(target: "leasering", ring = store.ring_id.as_str(), node;
            "node {node}: start failed after its join had committed: removed its row (epoch {epoch})"),
        Ok(None) => {
            log::debug!(target: "leasering", "node {node}: start failed: join request withdrawn")
        }
        Err(e) => {
            log::warn!(target: "leasering", ring = store.ring_id.as_str(), node, error = e.to_string().as_str();
            "node {node}: start failed, and its join could not be withdrawn ({e}): \
             a pending request may still be absorbed (it expires unrenewed within a TTL)")
        }
    }
}

/// Many members starting at once queue on the ring's row lock; a join that
/// timed out there is tried again while the deadline allows. So is one
/// whose connection was lost (on a new connection): the same attempt,
/// which first looks up whether the lost try had committed.
fn join_retrying(
    store: &Store,
    pool: &Arc<dyn ConnSource>,
    conn: &mut Conn,
    deadline: Instant,
    attempt: &mut JoinAttempt,
    keep: Option<&str>,
) -> Result<Joined> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match store.join_with(conn, attempt, keep) {
            Ok(joined) => return Ok(joined),
            Err(e) if e.kind() == ErrorKind::Timeout && left > Duration::from_millis(100) => {
                log::debug!(target: "leasering", "join timed out ({}); trying again", e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.connection_lost() && left > Duration::from_millis(100) => {
                log::warn!(target: "leasering", node = store.node_id.as_str();
                    "node {}: lost the connection while joining ({e}); trying again on another", store.node_id);
                std::thread::sleep(Duration::from_millis(10));
                *conn = pool
                    .get_raw(left - Duration::from_millis(50))
                    .map_err(|_| e)?;
            }
            Err(e) => return Err(e),
        }
    }
}
