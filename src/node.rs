//! [`RingNode`] and its [`Builder`]: the I/O edge around the pure core. It
//! owns the threads (heartbeat, watcher, cleanup, fence), feeds the
//! [`Ownership`] state machine with what they read, and publishes its
//! actions — to the lock-free hot path first, then to subscribers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};
use postgres::fallible_iterator::FallibleIterator;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;

use crate::clock::{coarse_now_ns, coarse_resolution_ns, hot_deadline_ns, monotonic_ns};
use crate::config::{random_node_id, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, ReleaseReason};
use crate::owned::{OwnedInner, OwnedPartitions};
use crate::ownership::{Action, Ownership, Status};
use crate::placement::{fnv1a64, partition_for};
use crate::pool::ConnSource;
use crate::ring::{Change, RingView};
use crate::store::{local_instant, parse_payload, Catchup, HeldConn, Store, SyncReply};

/// Changes carried by notifications, by epoch, not yet applied.
type Deltas = std::collections::BTreeMap<u64, Change>;
/// Most deltas kept: a member further behind reads the change log.
const MAX_DELTAS: usize = 4096;

thread_local! {
    /// This thread's copy of the last snapshot it handed out:
    /// (member uid, snapshot version, snapshot).
    static SNAPSHOT_CACHE: std::cell::RefCell<(u64, u64, Option<Arc<OwnedInner>>)> =
        const { std::cell::RefCell::new((0, 0, None)) };
}

/// Source of [`Inner::uid`].
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// Fewest pool connections a node needs: the watcher keeps one (LISTEN),
/// the heartbeat keeps one, cleanup and stop borrow one now and then.
pub const MIN_POOL_SIZE: u32 = 3;

/// Longest pause between two barrier reads while partitions are pending.
const MAX_BARRIER_BACKOFF: Duration = Duration::from_millis(32);
/// Barrier reads at 1 ms before the backoff starts doubling: the other
/// members' acknowledgements of an epoch arrive within a few milliseconds,
/// and doubling from the first read made the waiting member notice them up
/// to twice as late as they happened.
const FAST_BARRIER_POLLS: u32 = 5;

/// The wait before barrier read number `polls` (0-based) of an epoch.
fn barrier_backoff(polls: u32) -> Duration {
    match polls.checked_sub(FAST_BARRIER_POLLS) {
        None => Duration::from_millis(1),
        Some(k) => {
            (Duration::from_millis(2) * 2u32.saturating_pow(k.min(16))).min(MAX_BARRIER_BACKOFF)
        }
    }
}
/// Longest the watcher waits on its socket before looking at its other
/// inputs (shutdown, heartbeat hints).
const WATCH_TICK: Duration = Duration::from_millis(100);
/// The same with nothing pending: notifications wake the watcher anyway
/// (its own leave's too, at `stop()`), so this only bounds how late it sees
/// a heartbeat's hint of a missed notification, or a `crash()`. Longer than
/// `WATCH_TICK` so that an idle member costs next to no CPU (hundreds of
/// members in one process woke 10 times a second each).
const IDLE_TICK: Duration = Duration::from_secs(1);

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
pub struct Builder {
    pool: Arc<dyn ConnSource>,
    cfg: Config,
    subscribers: Vec<Sender<Event>>,
}

impl Builder {
    /// Vnodes (positions) this member holds: its weight. Default 8.
    pub fn vnode_count(mut self, n: u32) -> Builder {
        self.cfg.vnode_count = n;
        self
    }
    /// Lease time-to-live. Default 30 s, at least 500 ms. A crashed member's
    /// partitions are covered again at most about one TTL after it stopped
    /// renewing.
    pub fn lease_ttl(mut self, ttl: Duration) -> Builder {
        self.cfg.lease_ttl = ttl;
        self
    }
    /// Number of partitions; every member of a ring must agree. Default 1024.
    pub fn ring_size(mut self, n: u32) -> Builder {
        self.cfg.ring_size = n;
        self
    }
    /// This member's id. Default `node_` + 16 random hex digits. A fixed id
    /// gets its old positions back after a restart (when they are free).
    pub fn node_id(mut self, id: impl Into<String>) -> Builder {
        self.cfg.node_id = Some(id.into());
        self
    }
    /// Schema of the tables. Default `leasering`.
    pub fn schema(mut self, schema: impl Into<String>) -> Builder {
        self.cfg.schema = schema.into();
        self
    }
    /// Whether `start()` creates/migrates the schema. Default `true`.
    pub fn create_schema(mut self, yes: bool) -> Builder {
        self.cfg.create_schema = yes;
        self
    }
    /// Use LISTEN/NOTIFY. Default `true`. Without it, handoffs wait for the
    /// next heartbeat (`lease_ttl / 3`).
    pub fn notifications(mut self, yes: bool) -> Builder {
        self.cfg.notifications = yes;
        self
    }
    /// Safety margin between the local and the database lease. Default
    /// `lease_ttl / 10`; must cover clock-rate differences over one TTL.
    pub fn margin(mut self, margin: Duration) -> Builder {
        self.cfg.margin = Some(margin);
        self
    }
    /// Renewal interval. Default `lease_ttl / 3`.
    pub fn heartbeat_interval(mut self, every: Duration) -> Builder {
        self.cfg.heartbeat_interval = Some(every);
        self
    }
    /// Bound on `start()`. Default 10 s.
    pub fn start_timeout(mut self, t: Duration) -> Builder {
        self.cfg.start_timeout = t;
        self
    }
    /// Bound on `stop()`. Default 5 s.
    pub fn stop_timeout(mut self, t: Duration) -> Builder {
        self.cfg.stop_timeout = t;
        self
    }
    /// Server-side bound on each statement. Default `lease_ttl / 3`, clamped
    /// to 1..=10 s.
    pub fn statement_timeout(mut self, t: Duration) -> Builder {
        self.cfg.statement_timeout = Some(t);
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

    /// The configuration so far.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Validates the configuration, creates the schema if needed, joins the
    /// ring and starts the background threads. Returns once joined: the
    /// partitions assigned to this member are then *pending* and become
    /// active (with an [`Event::Acquired`]) as soon as their previous owners
    /// have let go — milliseconds on a healthy ring.
    pub fn start(self) -> Result<RingNode> {
        let Builder {
            pool,
            mut cfg,
            subscribers,
        } = self;
        cfg.validate()?;
        if pool.max_size() < MIN_POOL_SIZE {
            return Err(Error::config(format!(
                "pool max_size {} is too small: a node needs at least {MIN_POOL_SIZE} connections \
                 (watcher, heartbeat, cleanup)",
                pool.max_size()
            )));
        }
        let node_id = cfg.node_id.clone().unwrap_or_else(random_node_id);
        cfg.node_id = Some(node_id.clone());
        let store = Store::new(&cfg, &node_id)?;
        let deadline = Instant::now() + cfg.start_timeout;
        // The connection, migration and join run on a helper thread so that
        // start() keeps its bound even if a pooled connection hangs (a
        // stalled network does not time out on its own). If the caller has
        // given up by the time the join commits, the helper leaves again.
        let abandoned = Arc::new(AtomicBool::new(false));
        let job = {
            let (pool, store, abandoned) = (pool.clone(), store.clone(), abandoned.clone());
            let (create, start_timeout) = (cfg.create_schema, cfg.start_timeout);
            move || -> Result<(crate::store::Joined, Instant)> {
                // A little under the caller's bound, so that a plain
                // connection failure arrives as such rather than as a timeout.
                let remaining = deadline.saturating_duration_since(Instant::now());
                let remaining = remaining - (remaining / 10).min(Duration::from_millis(100));
                let mut conn = pool.get(remaining.max(Duration::from_millis(1))).map_err(|e| {
                    Error::with_source(
                        ErrorKind::Database,
                        format!("could not connect to the database within start_timeout {start_timeout:?}: {e}"),
                        e,
                    )
                })?;
                if create {
                    store.migrate(&mut conn)?;
                } else {
                    store.check_schema(&mut conn)?;
                }
                // Many members starting at once queue on the ring's row
                // lock; a join that timed out there is tried again while
                // start_timeout allows.
                let (sent_at, joined) = loop {
                    let sent_at = Instant::now();
                    match store.join(&mut conn) {
                        Ok(joined) => break (sent_at, joined),
                        Err(e)
                            if e.kind() == ErrorKind::Timeout
                                && Instant::now() + Duration::from_millis(100) < deadline =>
                        {
                            log::debug!(target: "leasering", "join timed out ({e}); trying again");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => return Err(e),
                    }
                };
                if abandoned.load(Ordering::SeqCst) {
                    let _ = store.leave(&mut conn);
                }
                Ok((joined, sent_at))
            }
        };
        let started = bounded("start", deadline, job);
        if started.is_err() {
            abandoned.store(true, Ordering::SeqCst);
        }
        let (joined, sent_at) = started.map_err(|e| {
            if e.kind() == ErrorKind::Timeout && e.message().starts_with("start did not finish") {
                Error::new(
                    ErrorKind::Timeout,
                    format!("start did not finish within start_timeout {:?} (database unreachable or stalled)", cfg.start_timeout),
                )
            } else {
                e
            }
        })?;
        let inner = Arc::new(Inner::new(cfg, node_id, store, pool));
        *inner.subscribers.lock() = subscribers;
        {
            let mut st = inner.state.write();
            let acts = st.joined(joined.view.clone(), sent_at);
            inner.after_join(&mut st, acts, &joined.positions, &joined.removed);
        }
        inner.spawn_threads()?;
        Ok(RingNode {
            inner: inner.clone(),
            handle: Arc::new(Handle { inner }),
        })
    }
}

/// One member of a ring. See the [crate documentation](crate) for the model.
///
/// Cheap to clone (an `Arc`); the member stops when [`stop`](RingNode::stop)
/// is called or the last clone is dropped.
#[derive(Clone)]
pub struct RingNode {
    /// The member, reached in one step by the hot path (`owns`).
    inner: Arc<Inner>,
    /// Shared by the clones: the last one dropped stops the member (held
    /// for its `Drop` only).
    #[allow(dead_code)]
    handle: Arc<Handle>,
}

struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.inner.stopped.load(Ordering::SeqCst) {
            if let Err(e) = self.inner.stop() {
                log::warn!(target: "leasering", "node {}: stop on drop failed: {e}", self.inner.node_id);
            }
        }
    }
}

/// Where a member stands, for dashboards and health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Epoch of this member's view.
    pub epoch: u64,
    /// Active partitions (0 once the lease ran out locally).
    pub active: u32,
    /// Pending partitions: assigned, waiting for the barrier.
    pub pending: u32,
    /// Time left on the local lease, if it runs.
    pub lease_left: Option<Duration>,
    /// Whether the member is in the ring (false while rejoining or stopped).
    pub joined: bool,
    /// Whether `stop()` was called.
    pub stopped: bool,
    /// Successful renewals so far.
    pub renewals: u64,
    /// Failed renewals so far.
    pub renewal_failures: u64,
}

impl NodeStatus {
    /// Healthy: in the ring, not stopped, and the local lease runs — what a
    /// readiness probe should check. (Pending partitions are normal for a
    /// few milliseconds after a change and do not count against it.)
    pub fn is_healthy(&self) -> bool {
        self.joined && !self.stopped && self.lease_left.is_some()
    }
}

impl RingNode {
    /// A builder for a member of ring `ring_id` using `pool`.
    pub fn builder<T>(
        pool: Pool<PostgresConnectionManager<T>>,
        ring_id: impl Into<String>,
    ) -> Builder
    where
        T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Builder {
            pool: Arc::new(pool),
            cfg: Config::new(ring_id),
            subscribers: Vec::new(),
        }
    }

    #[inline]
    fn inner(&self) -> &Inner {
        &self.inner
    }

    /// A receiver of this member's [`Event`]s from now on. Each call makes a
    /// new, unbounded receiver: a slow subscriber never blocks the member.
    /// The channel disconnects when the member stops.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = unbounded();
        if !self.inner().stopped.load(Ordering::SeqCst) {
            self.inner().subscribers.lock().push(tx);
        }
        rx
    }

    /// Whether partition `p` is active on this member now. Lock-free: one
    /// atomic bit and a coarse-clock check of the local lease deadline, so a
    /// member that wakes from a pause answers `false` before any of its
    /// threads has run.
    #[inline]
    pub fn owns(&self, p: u32) -> bool {
        let inner = self.inner();
        match inner.bits.get((p >> 6) as usize) {
            Some(word) => {
                word.load(Ordering::Acquire) & (1u64 << (p & 63)) != 0
                    && coarse_now_ns() < inner.deadline_ns.load(Ordering::Acquire)
            }
            None => false,
        }
    }

    /// A snapshot of the active partitions and their tokens (an `Arc`
    /// clone). It reports nothing once the lease it was taken under runs out.
    ///
    /// Lock-free on the fast path: each thread keeps its own copy of the
    /// current snapshot (tagged with this member and the snapshot's
    /// version), so taking one is a version check and a reference count
    /// increment that no other thread contends for. A changed version (any
    /// acquisition or release) makes the thread fetch the new snapshot.
    #[inline]
    pub fn owned_partitions(&self) -> OwnedPartitions {
        let inner = self.inner();
        let version = inner.snapshot_version.load(Ordering::Acquire);
        let deadline_ns = inner.deadline_ns.load(Ordering::Acquire);
        let snapshot = SNAPSHOT_CACHE
            .try_with(|cache| {
                let mut cache = cache.borrow_mut();
                if let (uid, v, Some(snap)) = &*cache {
                    if *uid == inner.uid && *v == version {
                        return snap.clone();
                    }
                }
                let own = Arc::new(OwnedInner::clone(&inner.snapshot.read()));
                *cache = (inner.uid, version, Some(own.clone()));
                own
            })
            .unwrap_or_else(|_| inner.snapshot.read().clone());
        OwnedPartitions {
            inner: snapshot,
            deadline_ns,
        }
    }

    /// The partition of `key` in this ring: `leasering::partition_for(key, ring_size)`.
    #[inline]
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        partition_for(key, self.inner().cfg.ring_size)
    }

    /// This member's current view of the ring.
    pub fn ring(&self) -> RingView {
        self.inner().view()
    }

    /// This member's node id.
    pub fn node_id(&self) -> &str {
        &self.inner().node_id
    }

    /// The configuration in force (with the node id filled in).
    pub fn config(&self) -> &Config {
        &self.inner().cfg
    }

    /// Where the member stands.
    pub fn status(&self) -> NodeStatus {
        let inner = self.inner();
        let st = inner.state.read();
        let now = Instant::now();
        let lease_left = st
            .valid_until()
            .and_then(|v| v.checked_duration_since(now))
            .filter(|d| !d.is_zero());
        NodeStatus {
            epoch: st.view_epoch(),
            active: if lease_left.is_some() {
                st.active_count()
            } else {
                0
            },
            pending: st.pending_count(),
            lease_left,
            joined: st.status() == Status::Member,
            stopped: st.status() == Status::Stopped,
            renewals: inner.renewals.load(Ordering::Relaxed),
            renewal_failures: inner.renewal_failures.load(Ordering::Relaxed),
        }
    }

    /// Leaves the ring gracefully: releases everything locally
    /// ([`ReleaseReason::Stopping`]), removes this member from the database
    /// so that its successors take over within milliseconds, and joins the
    /// background threads. Returns within `stop_timeout`; on a database
    /// error the lease simply expires. Nothing is owned after it returns,
    /// whatever the result. Calling it again does nothing.
    pub fn stop(&self) -> Result<()> {
        self.inner().stop()
    }

    /// For tests and demos (feature `test-util`): freezes this member's background threads for `d`,
    /// as a GC pause or `SIGSTOP` would (the hot path keeps answering — and
    /// stops reporting partitions when the local lease runs out).
    #[cfg(feature = "test-util")]
    pub fn pause_threads_for(&self, d: Duration) {
        *self.inner().frozen_until.lock() = Some(Instant::now() + d);
    }

    /// For tests and demos (feature `test-util`): ends this member the way a crash would — its
    /// threads stop, it does not leave, its lease runs out in the database
    /// and the survivors clean it up. Locally nothing is owned afterwards.
    #[cfg(feature = "test-util")]
    pub fn crash(&self) {
        let _ = self.inner().shutdown(false);
    }
}

impl std::fmt::Debug for RingNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingNode")
            .field("node_id", &self.node_id())
            .field("ring_id", &self.inner().cfg.ring_id)
            .finish()
    }
}

/// A member's lease end, as learned from the database: (node id, instant).
type Expiry = (String, Instant);

struct Control {
    shutdown: Sender<()>,
    threads: Vec<JoinHandle<()>>,
    done: Receiver<&'static str>,
}

struct Inner {
    cfg: Config,
    node_id: String,
    store: Store,
    pool: Arc<dyn ConnSource>,
    state: RwLock<Ownership>,
    /// Lock-free mirror of the active set for `owns()`.
    bits: Box<[AtomicU64]>,
    /// Hot-path deadline, coarse-clock nanoseconds; 0 = nothing valid.
    deadline_ns: AtomicU64,
    snapshot: RwLock<Arc<OwnedInner>>,
    /// Bumped after every replacement of `snapshot` (for the per-thread
    /// copies of `owned_partitions`).
    snapshot_version: AtomicU64,
    /// Unique per member of this process (never reused, unlike an address).
    uid: u64,
    subscribers: Mutex<Vec<Sender<Event>>>,
    control: Mutex<Option<Control>>,
    wake_watcher: (Sender<u64>, Receiver<u64>),
    wake_fence: (Sender<()>, Receiver<()>),
    /// Expiry hints for the cleanup thread: (node id, when its lease ends).
    cleanup: (Sender<Expiry>, Receiver<Expiry>),
    frozen_until: Mutex<Option<Instant>>,
    /// Serialises rejoin against stop, so a stopping member cannot rejoin.
    membership: Mutex<()>,
    /// Bumped at every (re)join; replies from an older membership are stale.
    generation: AtomicU64,
    stopped: AtomicBool,
    pending_since: Mutex<Option<Instant>>,
    renewals: AtomicU64,
    renewal_failures: AtomicU64,
    telemetry: crate::telemetry::Telemetry,
}

impl Inner {
    fn new(cfg: Config, node_id: String, store: Store, pool: Arc<dyn ConnSource>) -> Inner {
        let words = (cfg.ring_size as usize).div_ceil(64);
        let telemetry = crate::telemetry::Telemetry::new(&cfg.ring_id, &node_id);
        let state = Ownership::new(
            &node_id,
            cfg.ring_size,
            cfg.lease_ttl,
            cfg.effective_margin(),
        );
        Inner {
            node_id,
            store,
            pool,
            state: RwLock::new(state),
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            deadline_ns: AtomicU64::new(0),
            snapshot: RwLock::new(Arc::new(OwnedInner::default())),
            snapshot_version: AtomicU64::new(1),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            subscribers: Mutex::new(Vec::new()),
            control: Mutex::new(None),
            wake_watcher: unbounded(),
            wake_fence: unbounded(),
            cleanup: unbounded(),
            frozen_until: Mutex::new(None),
            membership: Mutex::new(()),
            generation: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
            pending_since: Mutex::new(None),
            renewals: AtomicU64::new(0),
            renewal_failures: AtomicU64::new(0),
            telemetry,
            cfg,
        }
    }

    fn view(&self) -> RingView {
        self.state
            .read()
            .view()
            .cloned()
            .unwrap_or_else(|| RingView::empty(0, self.cfg.ring_size))
    }

    // ---- publishing ------------------------------------------------------

    /// Makes the state machine's actions visible, in order: the hot path
    /// first (a released partition stops answering before anyone hears of
    /// it), then the snapshot, then subscribers. Called with the state
    /// write lock held, so events leave in the order of the changes.
    fn publish(&self, st: &Ownership, actions: Vec<Action>, at: Instant) {
        // Partitions released after the local lease had already run out (a
        // member waking from a pause to a new view, an eviction or a stop)
        // stopped being active at that deadline, not now: stamp them so.
        let released_at = release_instant(at, self.deadline_ns.load(Ordering::Acquire));
        // Releases reach the hot path before a (possibly extended) deadline
        // does, and acquisitions after it: no instant at which a released
        // partition answers `true` under a new deadline.
        for a in &actions {
            if let Action::Release { partitions, .. } = a {
                for p in partitions {
                    self.bits[(*p >> 6) as usize].fetch_and(!(1u64 << (p & 63)), Ordering::AcqRel);
                }
            }
        }
        self.deadline_ns
            .store(hot_deadline_ns(st.valid_until()), Ordering::Release);
        if actions.is_empty() {
            return;
        }
        for a in &actions {
            if let Action::Acquire { partitions, .. } = a {
                for p in partitions {
                    self.bits[(*p >> 6) as usize].fetch_or(1u64 << (p & 63), Ordering::AcqRel);
                }
            }
        }
        let (partitions, tokens): (Vec<u32>, Vec<u64>) = st.active().unzip();
        {
            let mut snapshot = self.snapshot.write();
            *snapshot = Arc::new(OwnedInner {
                epoch: st.view_epoch(),
                partitions,
                tokens,
            });
            // Under the lock: a reader that sees the new version reads the
            // new snapshot.
            self.snapshot_version.fetch_add(1, Ordering::AcqRel);
        }
        let epoch = st.view_epoch();
        let acquired = actions.iter().any(|a| matches!(a, Action::Acquire { .. }));
        for a in actions {
            let ev = match a {
                Action::Release { partitions, reason } => {
                    match reason {
                        ReleaseReason::Handoff => log::info!(target: "leasering",
                            "node {}: released {} partitions to their new owners (epoch {epoch})",
                            self.node_id, partitions.len()),
                        ReleaseReason::LeaseExpired => log::warn!(target: "leasering",
                            "node {}: local lease ran out without a renewal: self-fenced, released {} partitions",
                            self.node_id, partitions.len()),
                        ReleaseReason::Evicted => log::warn!(target: "leasering",
                            "node {}: lease lost in the database: released {} partitions, rejoining",
                            self.node_id, partitions.len()),
                        _ => log::info!(target: "leasering",
                            "node {}: released {} partitions ({reason:?})", self.node_id, partitions.len()),
                    }
                    self.telemetry.released(partitions.len(), reason);
                    Event::Released {
                        partitions,
                        reason,
                        epoch,
                        at: released_at,
                    }
                }
                Action::Acquire { partitions, token } => {
                    let waited = self
                        .pending_since
                        .lock()
                        .map(|t| at.saturating_duration_since(t));
                    log::info!(target: "leasering",
                        "node {}: acquired {} partitions, token {token}, epoch {epoch}, handoff took {:.2} ms",
                        self.node_id, partitions.len(),
                        waited.unwrap_or_default().as_secs_f64() * 1000.0);
                    self.telemetry.acquired(partitions.len(), waited);
                    Event::Acquired {
                        partitions,
                        token,
                        epoch,
                        at,
                    }
                }
            };
            self.emit(ev);
        }
        if !st.has_pending() {
            *self.pending_since.lock() = None;
        }
        self.telemetry
            .state(st.active_count(), st.pending_count(), epoch);
        if acquired {
            // The fence thread sleeps while nothing is active: it must learn
            // of the new deadline to guard, whichever path activated.
            let _ = self.wake_fence.0.send(());
        }
    }

    fn emit(&self, ev: Event) {
        let mut subs = self.subscribers.lock();
        subs.retain(|tx| tx.send(ev.clone()).is_ok());
    }

    fn note_pending(&self, st: &Ownership, at: Instant) {
        if st.has_pending() {
            self.pending_since.lock().get_or_insert(at);
        }
    }

    fn after_join(
        &self,
        st: &mut Ownership,
        acts: Vec<Action>,
        positions: &[u32],
        removed: &[String],
    ) {
        let now = Instant::now();
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.publish(st, acts, now);
        self.note_pending(st, now);
        let epoch = st.view_epoch();
        log::info!(target: "leasering",
            "node {}: joined ring {:?} at epoch {epoch} with positions {positions:?}{}",
            self.node_id, self.cfg.ring_id,
            if removed.is_empty() { String::new() } else { format!(", removing expired members {removed:?}") });
        self.emit(Event::Joined {
            epoch,
            positions: positions.to_vec(),
            at: now,
        });
        let _ = self.wake_watcher.0.send(epoch);
    }

    fn adopt(&self, st: &mut Ownership, view: RingView) {
        let members = view.members().len();
        let now = Instant::now();
        // A lapsed lease fences first (the fence thread may not have run
        // yet, e.g. after a pause): those partitions stopped being reported
        // at its deadline, and they go back through the barrier.
        let released_at = lapsed_at(st, now);
        let mut acts = st.fence(now);
        acts.extend(st.adopt(view));
        self.publish(st, acts, released_at);
        self.note_pending(st, now);
        self.emit(Event::ViewChanged {
            epoch: st.view_epoch(),
            members,
            at: now,
        });
    }

    /// Handles a renewal/ack reply (from either thread). Returns whether the
    /// member was found evicted.
    fn on_sync(&self, reply: &SyncReply, sent_at: Instant, generation: u64) -> bool {
        let now = Instant::now();
        let mut st = self.state.write();
        if generation != self.generation.load(Ordering::SeqCst) || st.status() != Status::Member {
            return false; // an answer about an earlier membership
        }
        // If the local lease ran out before this reply (a pause, a slow
        // reply), the partitions released below stopped being reported at
        // its deadline: stamp the events with it, as the fence thread does.
        let released_at = lapsed_at(&st, now);
        match reply.renewed {
            None => {
                let mut acts = st.fence(now);
                acts.extend(st.evicted());
                self.publish(&st, acts, released_at);
                let _ = self.wake_fence.0.send(());
                return true;
            }
            Some(false) => {
                self.renewal_failures.fetch_add(1, Ordering::Relaxed);
                self.telemetry.renewal(false);
                log::warn!(target: "leasering",
                    "node {}: renewal refused: this member's acknowledged epoch has trailed ring epoch {} for over {:?}",
                    self.node_id, reply.epoch, self.cfg.lag_limit());
            }
            Some(true) => {
                self.renewals.fetch_add(1, Ordering::Relaxed);
                self.telemetry.renewal(true);
                let acts = st.renewed(sent_at, now);
                self.publish(&st, acts, released_at);
                let _ = self.wake_fence.0.send(());
            }
        }
        if reply.epoch > st.view_epoch() {
            let _ = self.wake_watcher.0.send(reply.epoch);
        } else if let Some(others_min_ack) = reply.barrier {
            if reply.epoch == st.view_epoch() && st.has_pending() {
                let acts = st.barrier(reply.epoch, others_min_ack, now);
                self.publish(&st, acts, now);
            }
        }
        if let Some((node, ms)) = &reply.next_expiry {
            let _ = self.cleanup.0.send((node.clone(), local_instant(now, *ms)));
        }
        false
    }

    fn rejoin(&self) -> Result<()> {
        let _m = self.membership.lock();
        if self.stopped.load(Ordering::SeqCst) || self.state.read().status() != Status::Joining {
            return Ok(());
        }
        let mut conn = self
            .pool
            .get(self.cfg.effective_statement_timeout())
            .map_err(|e| Error::pool("rejoin", e))?;
        let sent_at = Instant::now();
        let joined = self.store.join(&mut conn)?;
        let mut st = self.state.write();
        let acts = st.joined(joined.view.clone(), sent_at);
        self.after_join(&mut st, acts, &joined.positions, &joined.removed);
        Ok(())
    }

    fn hold_conn(&self, listen: bool) -> Result<HeldConn> {
        let t = Instant::now();
        let conn = self
            .pool
            .get(self.cfg.effective_statement_timeout())
            .map_err(|e| {
                let (all, idle) = self.pool.state();
                Error::pool(
                    format!(
                        "hold a connection (pool: {all} connections, {idle} idle, after {:?})",
                        t.elapsed()
                    ),
                    e,
                )
            })?;
        let held = self.store.hold(conn, listen);
        log::debug!(target: "leasering", "node {}: connection {} in {:?} (listen: {listen})",
            self.node_id, if held.is_ok() { "ready" } else { "failed" }, t.elapsed());
        held
    }

    /// Sleeps while the test hook says this member is paused.
    fn honor_freeze(&self, shutdown: &Receiver<()>) -> bool {
        loop {
            let until = *self.frozen_until.lock();
            match until {
                Some(t) if Instant::now() < t => {
                    if let Err(RecvTimeoutError::Disconnected) =
                        shutdown.recv_timeout(t.saturating_duration_since(Instant::now()))
                    {
                        return false;
                    }
                }
                _ => return true,
            }
        }
    }

    // ---- threads ---------------------------------------------------------

    fn spawn_threads(self: &Arc<Self>) -> Result<()> {
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = unbounded::<&'static str>();
        let mut threads = Vec::new();
        let short = short_id(&self.node_id);
        type Body = fn(&Arc<Inner>, &Receiver<()>);
        let bodies: [(&'static str, Body); 4] = [
            ("heartbeat", Inner::heartbeat_loop),
            ("watcher", Inner::watcher_loop),
            ("cleanup", Inner::cleanup_loop),
            ("fence", Inner::fence_loop),
        ];
        for (name, body) in bodies {
            let inner = Arc::clone(self);
            let rx = shutdown_rx.clone();
            let done = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("leasering-{name}-{short}"))
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| body(&inner, &rx));
                    if std::panic::catch_unwind(run).is_err() {
                        // A bug, not an input: the lease runs out and the
                        // hot path stops reporting on its own.
                        log::error!(target: "leasering",
                            "node {}: the {name} thread panicked; this member will fence itself", inner.node_id);
                    }
                    let _ = done.send(name);
                })
                .map_err(|e| {
                    Error::with_source(ErrorKind::Database, format!("spawn the {name} thread"), e)
                })?;
            threads.push(handle);
        }
        *self.control.lock() = Some(Control {
            shutdown: shutdown_tx,
            threads,
            done: done_rx,
        });
        Ok(())
    }

    fn heartbeat_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        let interval = self.cfg.effective_heartbeat_interval();
        let retry = (interval / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut conn: Option<HeldConn> = None;
        let mut next = interval;
        while let Err(RecvTimeoutError::Timeout) = shutdown.recv_timeout(next) {
            if !self.honor_freeze(shutdown) {
                break;
            }
            let status = self.state.read().status();
            match status {
                Status::Stopped => break,
                Status::Joining => {
                    next = match self.rejoin() {
                        Ok(()) => interval,
                        Err(e) => {
                            log::warn!(target: "leasering", "node {}: rejoin failed: {e}", self.node_id);
                            retry
                        }
                    };
                    continue;
                }
                Status::Member => {}
            }
            if conn.is_none() {
                match self.hold_conn(false) {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        self.renewal_failures.fetch_add(1, Ordering::Relaxed);
                        self.telemetry.renewal(false);
                        log::warn!(target: "leasering", "node {}: lease renewal failed: {e}", self.node_id);
                        next = retry;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connection held above");
            let (ack, generation) = (
                self.state.read().view_epoch(),
                self.generation.load(Ordering::SeqCst),
            );
            let sent_at = Instant::now();
            let result = self.store.sync(c, ack);
            log::debug!(target: "leasering", "node {}: renewal took {:?}", self.node_id, sent_at.elapsed());
            match result {
                Ok(reply) => {
                    let evicted = self.on_sync(&reply, sent_at, generation);
                    next = if evicted { Duration::ZERO } else { interval };
                }
                Err(e) => {
                    self.renewal_failures.fetch_add(1, Ordering::Relaxed);
                    self.telemetry.renewal(false);
                    log::warn!(target: "leasering", "node {}: lease renewal failed: {e}", self.node_id);
                    conn = None;
                    next = retry;
                }
            }
        }
        if let Some(c) = conn {
            self.store.release(c);
        }
    }

    fn watcher_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        let listen = self.cfg.notifications;
        let mut conn: Option<HeldConn> = None;
        let mut hint: u64 = 0;
        let mut deltas = Deltas::new();
        let mut acked: (u64, u64) = (0, 0); // (generation, epoch) last acknowledged here
                                            // Barrier reads so far at the current view epoch (the schedule
                                            // restarts with every new epoch).
        let mut polls: (u64, u32) = (0, 0);
        loop {
            if matches!(
                shutdown.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            ) {
                break;
            }
            if !self.honor_freeze(shutdown) {
                break;
            }
            if self.state.read().status() == Status::Stopped {
                break;
            }
            if conn.is_none() {
                match self.hold_conn(listen) {
                    Ok(c) => {
                        conn = Some(c);
                        // Notifications may have been missed before this
                        // LISTEN: acknowledge the view again at once; the
                        // reply (read after the LISTEN) carries the ring's
                        // epoch and so reveals any change missed. For a
                        // joiner that acknowledgement is due anyway, so this
                        // costs nothing, where a change-log read did.
                        acked = (0, 0);
                    }
                    Err(e) => {
                        log::warn!(target: "leasering", "node {}: watcher cannot connect: {e}", self.node_id);
                        if let Err(RecvTimeoutError::Disconnected) =
                            shutdown.recv_timeout(WATCH_TICK)
                        {
                            break;
                        }
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connection held above");
            let wait = match self.watch_step(c, &mut hint, &mut deltas, &mut acked) {
                Ok(true) => {
                    let epoch = self.state.read().view_epoch();
                    if polls.0 != epoch {
                        polls = (epoch, 0);
                    }
                    polls.1 += 1;
                    barrier_backoff(polls.1 - 1)
                }
                Ok(false) => {
                    polls = (0, 0);
                    IDLE_TICK
                }
                Err(e) => {
                    log::warn!(target: "leasering", "node {}: watcher: {e}", self.node_id);
                    conn = None;
                    if let Err(RecvTimeoutError::Disconnected) = shutdown.recv_timeout(WATCH_TICK) {
                        break;
                    }
                    continue;
                }
            };
            if let Err(e) = self.wait_for_change(c, wait, &mut hint, &mut deltas, shutdown) {
                log::warn!(target: "leasering", "node {}: watcher lost its connection: {e}", self.node_id);
                conn = None;
            }
        }
        if let Some(c) = conn {
            self.store.release(c);
        }
    }

    /// One round of the watcher: catch up with the ring, acknowledge, run
    /// the barrier. Returns whether partitions are still pending.
    fn watch_step(
        &self,
        c: &mut HeldConn,
        hint: &mut u64,
        deltas: &mut Deltas,
        acked: &mut (u64, u64),
    ) -> Result<bool> {
        for _ in 0..64 {
            let (status, view_epoch, generation) = {
                let st = self.state.read();
                (
                    st.status(),
                    st.view_epoch(),
                    self.generation.load(Ordering::SeqCst),
                )
            };
            if status != Status::Member {
                return Ok(false);
            }
            if *hint > view_epoch {
                // First the changes the notifications carried, in order:
                // usually they are all there is to read.
                {
                    let mut st = self.state.write();
                    if self.generation.load(Ordering::SeqCst) == generation {
                        while let Some(ch) = deltas.remove(&(st.view_epoch() + 1)) {
                            let Some(next) = st.view().map(|v| v.apply(&ch)) else {
                                break;
                            };
                            self.adopt(&mut st, next);
                        }
                    }
                    let now_at = st.view_epoch();
                    deltas.retain(|e, _| *e > now_at);
                    if now_at >= *hint {
                        *hint = 0;
                        continue;
                    }
                }
                // The rest from the change log, from where the deltas left
                // the view (not from where this round started).
                let from = self.state.read().view_epoch();
                match self.store.catch_up(c, from)? {
                    Catchup::Changes(changes) => {
                        let mut st = self.state.write();
                        for ch in changes {
                            if ch.epoch <= st.view_epoch() {
                                continue;
                            }
                            if self.generation.load(Ordering::SeqCst) != generation
                                || ch.epoch != st.view_epoch() + 1
                            {
                                break;
                            }
                            let Some(next) = st.view().map(|v| v.apply(&ch)) else {
                                break;
                            };
                            self.adopt(&mut st, next);
                        }
                    }
                    Catchup::Full(view) => {
                        let mut st = self.state.write();
                        if self.generation.load(Ordering::SeqCst) == generation {
                            self.adopt(&mut st, view);
                        }
                    }
                }
                *hint = 0;
                continue;
            }
            if *acked != (generation, view_epoch) {
                // Acknowledge the adopted view (it released first), renewing
                // the lease. With partitions pending, the full renewal, whose
                // reply is also a barrier snapshot; else the one-row ack.
                let sent_at = Instant::now();
                let reply = if self.state.read().has_pending() {
                    self.store.sync(c, view_epoch)?
                } else {
                    self.store.ack(c, view_epoch)?
                };
                *acked = (generation, view_epoch);
                if self.on_sync(&reply, sent_at, generation) {
                    self.rejoin()?;
                    continue;
                }
                if reply.epoch > view_epoch {
                    *hint = reply.epoch;
                    continue;
                }
                return Ok(self.state.read().has_pending());
            }
            if !self.state.read().has_pending() {
                return Ok(false);
            }
            let (epoch, min_ack) = self.store.barrier(c)?;
            if epoch > view_epoch {
                *hint = epoch;
                continue;
            }
            let mut st = self.state.write();
            if self.generation.load(Ordering::SeqCst) == generation {
                let acts = st.barrier(epoch, min_ack, Instant::now());
                self.publish(&st, acts, Instant::now());
            }
            return Ok(st.has_pending());
        }
        Ok(true)
    }

    /// Waits up to `timeout` for a notification (or a hint from the
    /// heartbeat), raising `hint` to the newest epoch heard of.
    fn wait_for_change(
        &self,
        c: &mut HeldConn,
        timeout: Duration,
        hint: &mut u64,
        deltas: &mut Deltas,
        shutdown: &Receiver<()>,
    ) -> Result<()> {
        if self.cfg.notifications {
            let mut notes = c.client.notifications();
            let ring_id = &self.store.ring_id;
            let mut handle = |n: postgres::Notification| {
                if let Some((e, change)) = parse_payload(ring_id, n.payload()) {
                    *hint = (*hint).max(e);
                    if let Some(ch) = change {
                        if deltas.len() < MAX_DELTAS {
                            deltas.insert(e, ch);
                        }
                    }
                }
            };
            let first = notes
                .timeout_iter(timeout)
                .next()
                .map_err(|e| Error::db("wait for notifications", e))?;
            if let Some(n) = first {
                handle(n);
            }
            let mut it = notes.iter();
            while let Some(n) = it.next().map_err(|e| Error::db("read notifications", e))? {
                handle(n);
            }
        } else {
            select! {
                recv(self.wake_watcher.1) -> e => if let Ok(e) = e { *hint = (*hint).max(e) },
                recv(shutdown) -> _ => {},
                default(timeout) => {},
            }
        }
        while let Ok(e) = self.wake_watcher.1.try_recv() {
            *hint = (*hint).max(e);
        }
        Ok(())
    }

    fn cleanup_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        let fallback = Duration::from_millis(50 + fnv1a64(&[self.node_id.as_bytes()]) % 50);
        let mut target: Option<(String, Instant)> = None;
        loop {
            let wait = target
                .as_ref()
                .map(|(_, at)| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            select! {
                recv(shutdown) -> _ => break,
                recv(self.cleanup.1) -> msg => {
                    let Ok((node, expires)) = msg else { break };
                    let view = self.view();
                    let first = view.successor_of(&node).is_none_or(|s| s == self.node_id);
                    let at = expires + Duration::from_millis(1) + if first { Duration::ZERO } else { fallback };
                    target = Some((node, at));
                    continue;
                }
                default(wait) => {}
            }
            if !self.honor_freeze(shutdown) {
                break;
            }
            let Some((node, at)) = target.take() else {
                continue;
            };
            if Instant::now() < at {
                target = Some((node, at));
                continue;
            }
            {
                let st = self.state.read();
                if st.status() != Status::Member {
                    continue;
                }
                // Already gone from the view (its successor removed it, and
                // the notification of that came first): nothing to do. Saves
                // every other member its fallback transaction per crash.
                if st.view().is_some_and(|v| v.member(&node).is_none()) {
                    continue;
                }
            }
            let result = self
                .pool
                .get(self.cfg.effective_statement_timeout())
                .map_err(|e| Error::pool("cleanup", e))
                .and_then(|mut conn| self.store.cleanup(&mut conn));
            let now = Instant::now();
            match result {
                Ok(cleaned) => {
                    if !cleaned.removed.is_empty() {
                        self.telemetry.removed_members(cleaned.removed.len());
                        log::info!(target: "leasering",
                            "node {}: removed expired members {:?} (lease of {node:?} ended {:.1} ms ago), epoch {:?}",
                            self.node_id, cleaned.removed,
                            now.saturating_duration_since(at).as_secs_f64() * 1000.0, cleaned.epoch);
                        if let Some(e) = cleaned.epoch {
                            let _ = self.wake_watcher.0.send(e);
                        }
                    }
                    if let Some((n, ms)) = cleaned.next_expiry {
                        let _ = self.cleanup.0.send((n, local_instant(now, ms)));
                    }
                }
                Err(e) => {
                    log::warn!(target: "leasering", "node {}: cleanup of {node:?} failed: {e}", self.node_id);
                    target = Some((node, now + Duration::from_millis(200)));
                }
            }
        }
    }

    fn fence_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        loop {
            let deadline = {
                let st = self.state.read();
                if st.status() == Status::Stopped {
                    break;
                }
                st.valid_until().filter(|_| st.active_count() > 0)
            };
            let wait = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            select! {
                recv(shutdown) -> _ => break,
                recv(self.wake_fence.1) -> _ => continue,
                default(wait) => {}
            }
            if !self.honor_freeze(shutdown) {
                break;
            }
            let mut st = self.state.write();
            let now = Instant::now();
            let released_at = lapsed_at(&st, now);
            let acts = st.fence(now);
            if !acts.is_empty() {
                self.publish(&st, acts, released_at);
            }
        }
    }

    // ---- stopping --------------------------------------------------------

    fn stop(&self) -> Result<()> {
        self.shutdown(true)
    }

    /// Stops the member: local release, then (if `leave`) the leave
    /// transaction, then the threads. Bounded by `stop_timeout`.
    fn shutdown(&self, leave: bool) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        let deadline = started + self.cfg.stop_timeout;
        {
            let mut st = self.state.write();
            let acts = st.stop();
            self.publish(&st, acts, Instant::now());
        }
        let mut result: Result<Option<u64>> = Ok(None);
        if leave {
            let _m = self.membership.lock();
            let (pool, store) = (self.pool.clone(), self.store.clone());
            result = bounded("leave", deadline, move || {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let mut conn = pool
                    .get(remaining.max(Duration::from_millis(1)))
                    .map_err(|e| Error::pool("leave", e))?;
                store.leave(&mut conn)
            });
            match &result {
                Ok(epoch) => log::info!(target: "leasering",
                    "node {}: left ring {:?} (epoch {epoch:?}) in {:.2} ms",
                    self.node_id, self.cfg.ring_id, started.elapsed().as_secs_f64() * 1000.0),
                Err(e) => log::warn!(target: "leasering",
                    "node {}: leave failed, the lease will expire instead: {e}", self.node_id),
            }
        } else {
            log::warn!(target: "leasering", "node {}: crashed on purpose (no leave)", self.node_id);
        }
        let control = self.control.lock().take();
        let mut stuck = Vec::new();
        if let Some(Control {
            shutdown,
            threads,
            done,
        }) = control
        {
            drop(shutdown);
            let mut finished: Vec<&'static str> = Vec::new();
            while finished.len() < threads.len() {
                match done.recv_deadline(deadline.max(Instant::now() + Duration::from_millis(1))) {
                    Ok(name) => finished.push(name),
                    Err(_) => break,
                }
            }
            for t in threads {
                let name = t.thread().name().unwrap_or("?").to_string();
                if finished
                    .iter()
                    .any(|f| name.starts_with(&format!("leasering-{f}-")))
                {
                    let _ = t.join();
                } else {
                    stuck.push(name);
                }
            }
        }
        self.subscribers.lock().clear();
        let result = result.map(|_| ());
        if result.is_ok() && !stuck.is_empty() {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "threads {stuck:?} did not finish within stop_timeout {:?} (blocked in a database call); they exit when it returns",
                    self.cfg.stop_timeout
                ),
            ));
        }
        result
    }
}

/// Runs `job` on a helper thread and waits for it until `deadline`: a bound
/// that holds even when the job is stuck in a socket that never times out.
/// A job that misses the deadline finishes (or stays stuck) on its own.
fn bounded<T: Send + 'static>(
    what: &'static str,
    deadline: Instant,
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(format!("leasering-{what}"))
        .spawn(move || {
            let _ = tx.send(job());
        })
        .map_err(|e| {
            Error::with_source(ErrorKind::Database, format!("spawn the {what} thread"), e)
        })?;
    match rx.recv_deadline(deadline) {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("{what} did not finish in time (database unreachable or stalled)"),
        )),
    }
}

/// When a release at `at` took effect, given the hot-path deadline in force
/// until then (`CLOCK_MONOTONIC` nanoseconds, 0 = none): `at`, or the
/// deadline if that passed first — `owns()` stopped answering `true` there.
fn release_instant(at: Instant, deadline_ns: u64) -> Instant {
    let at_ns = monotonic_ns(at);
    if deadline_ns != 0 && deadline_ns < at_ns {
        at.checked_sub(Duration::from_nanos(at_ns - deadline_ns))
            .unwrap_or(at)
    } else {
        at
    }
}

/// When partitions released at `now` stopped being reported: the hot
/// path's deadline if the local lease has run out by `now`, else `now`.
fn lapsed_at(st: &Ownership, now: Instant) -> Instant {
    match st.valid_until() {
        Some(v) if v <= now => v
            .checked_sub(Duration::from_nanos(coarse_resolution_ns()))
            .unwrap_or(v),
        _ => now,
    }
}

fn short_id(node_id: &str) -> String {
    let s: String = node_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if s.len() > 16 {
        s[s.len() - 16..].to_string()
    } else {
        s
    }
}
