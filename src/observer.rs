//! [`RingObserver`]: a process that is not a member (an API gateway, a
//! producer) following a ring's view to route keys to their owners.
//!
//! It holds no lease and no claim, so it can never be the reason a
//! partition waits. It reads the ring once, then applies the changes the
//! members' notifications carry (re-reading on a gap, and polling the
//! change log every [`poll_interval`](ObserverBuilder::poll_interval) in
//! case a notification was lost or notifications are off). Its view is
//! always one the ring really had: during a handoff its answer for a
//! partition is the old owner or the new one, never a third member.
//!
//! What it answers is *placement* — who should own a partition at the
//! view's epoch — not permission: the new owner of a partition may still be
//! taking its claim, for milliseconds (or waiting for a frozen old owner,
//! up to a TTL). A router that must not send work too early retries on the
//! owner's "not mine yet" answer; the owner's
//! [`owns`](crate::RingNode::owns) is the authority.
//!
//! An observer is served by a [`Client`]: its notifications come through
//! the client's held connection, its reads run on the client's work
//! thread. The view is behind a lock-free pointer: lookups from any number
//! of threads never wait for each other or for an update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::placement::partition_for;
use crate::pool::ConnSource;
use crate::protocol::follow::{Follow, FollowInput, FollowStep};
use crate::protocol::input::{CatchUp, Notice};
use crate::ring::{MemberInfo, RingView};
use crate::store::payload::parse_payloads;
use crate::store::{hold, HeldConn, Schema, Store};
use crate::Config;

/// Where an observer's connection comes from.
enum Source {
    /// A pool: the observer gets a [`Client`] of its own.
    Pool(Arc<dyn ConnSource>),
    /// A client shared with members and other observers.
    Client(Client),
}

/// Builds a [`RingObserver`]; from [`RingObserver::builder`] or
/// [`Client::observer`].
pub struct ObserverBuilder {
    source: Source,
    ring_id: String,
    schema: String,
    pooling: crate::Pooling,
    poll_interval: Duration,
    start_timeout: Duration,
    statement_timeout: Duration,
}

impl ObserverBuilder {
    fn with_source(source: Source, ring_id: String) -> ObserverBuilder {
        ObserverBuilder {
            source,
            ring_id,
            schema: "leasering".into(),
            pooling: crate::Pooling::Session,
            poll_interval: Duration::from_secs(1),
            start_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn new(client: Client, ring_id: String) -> ObserverBuilder {
        ObserverBuilder::with_source(Source::Client(client), ring_id)
    }

    /// Schema of the ring's tables. Default `leasering`.
    pub fn schema(mut self, schema: impl Into<String>) -> ObserverBuilder {
        self.schema = schema.into();
        self
    }
    /// How the pool reaches PostgreSQL, as for a member
    /// ([`NodeBuilder::pooling`](crate::NodeBuilder::pooling)). Default
    /// [`Pooling::Session`](crate::Pooling::Session): the view follows the
    /// members' notifications; otherwise it follows by polling alone
    /// ([`poll_interval`](ObserverBuilder::poll_interval)).
    pub fn pooling(mut self, pooling: crate::Pooling) -> ObserverBuilder {
        self.pooling = pooling;
        self
    }
    /// How often the change log is read even without a notification.
    /// Default 1 s; at least 10 ms.
    pub fn poll_interval(mut self, every: Duration) -> ObserverBuilder {
        self.poll_interval = every;
        self
    }
    /// How long [`start`](ObserverBuilder::start) may take to read the ring
    /// for the first time. Default 10 s.
    pub fn start_timeout(mut self, t: Duration) -> ObserverBuilder {
        self.start_timeout = t;
        self
    }
    /// Server-side bound on each statement. Default 5 s.
    pub fn statement_timeout(mut self, t: Duration) -> ObserverBuilder {
        self.statement_timeout = t;
        self
    }

    /// Reads the ring (an empty view while the ring does not exist yet) and
    /// has its client follow it.
    ///
    /// Fails with a typed error for a bad ring id or schema name
    /// ([`ErrorKind::InvalidConfig`]), an unreachable database within the
    /// start timeout ([`ErrorKind::Database`]), or a schema of another
    /// version ([`ErrorKind::Schema`]).
    pub fn start(self) -> Result<RingObserver> {
        let mut cfg = Config::new(self.ring_id.clone());
        cfg.schema = self.schema.clone();
        cfg.pooling = self.pooling;
        cfg.statement_timeout = Some(self.statement_timeout);
        cfg.validate()?;
        if self.poll_interval < Duration::from_millis(10) {
            return Err(Error::invalid(
                "poll_interval",
                format!(
                    "poll_interval {:?} is too short: it must be at least 10ms",
                    self.poll_interval
                ),
            ));
        }
        let client = match self.source {
            Source::Pool(pool) => Client::with_source(pool, Some("observer".into())),
            Source::Client(c) => c,
        };
        client.shared.check_mode(self.pooling)?;
        let follower = Arc::new(Follower::new(cfg, self.poll_interval)?);
        let pool = client.shared.pool.clone();
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let first = pool
                .get(self.statement_timeout, "observe the ring")
                .and_then(|c| {
                    let mut held = hold(
                        c,
                        self.statement_timeout,
                        !self.pooling.transaction_pooling(),
                    )?;
                    let r = follower.first_read(&mut held);
                    held.unhold();
                    r
                });
            match first {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::Database => {
                    log::debug!(target: "leasering", "observer of {:?}: first read failed, retrying: {e}",
                        follower.cfg.ring_id);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        client.shared.register_observer(follower.clone())?;
        Ok(RingObserver {
            handle: Arc::new(Handle {
                follower,
                client,
                stopped: Mutex::new(false),
            }),
        })
    }
}

/// Follows a ring's view without joining it: who owns partition `p`, who
/// owns key `k` and how to reach it (the owner's
/// [`metadata`](MemberInfo::metadata)), and a channel of view changes.
///
/// Cheap to clone (an `Arc`); it stops following when the last clone is
/// dropped or [`stop`](RingObserver::stop) is called.
///
/// ```no_run
/// # fn main() -> leasering::Result<()> {
/// # let pool: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>> = unimplemented!();
/// use leasering::RingObserver;
///
/// let router = RingObserver::builder(pool, "orders").start()?;
/// if let Some(owner) = router.owner_info_of_key(b"customer-42") {
///     // e.g. forward the request to the address the member published
///     println!("{} at {:?}", owner.node_id(), owner.metadata());
/// }
/// for view in router.subscribe().iter().take(1) {
///     println!("epoch {}: {} members", view.epoch(), view.members().len());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RingObserver {
    handle: Arc<Handle>,
}

/// Dropped with the last clone of a [`RingObserver`].
struct Handle {
    follower: Arc<Follower>,
    client: Client,
    stopped: Mutex<bool>,
}

impl Handle {
    /// Leaves the client (idempotent); with `wait`, waits for its threads
    /// if they stop with this observer.
    /// Stops following; returns the names of the client's threads that
    /// did not end within `wait` (when this was its last registration).
    fn stop(&self, wait: Duration) -> Vec<String> {
        let mut stopped = self.stopped.lock();
        if std::mem::replace(&mut *stopped, true) {
            return Vec::new();
        }
        let left = self
            .client
            .shared
            .deregister_observer(&self.follower, Instant::now() + wait);
        self.follower.subscribers.lock().clear();
        left
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Never blocks: threads that stop with it end on their own.
        let _ = self.stop(Duration::ZERO);
    }
}

impl RingObserver {
    /// A builder for an observer of ring `ring_id` using `pool` (through a
    /// [`Client`] of its own: one connection, kept).
    pub fn builder<T>(
        pool: Pool<PostgresConnectionManager<T>>,
        ring_id: impl Into<String>,
    ) -> ObserverBuilder
    where
        T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        ObserverBuilder::with_source(Source::Pool(Arc::new(pool)), ring_id.into())
    }

    /// The view followed now (cheap: an `Arc` clone).
    pub fn view(&self) -> RingView {
        RingView::clone(&self.handle.follower.view.load())
    }

    /// The member the current view places partition `p` on, with its
    /// metadata (an owned [`MemberInfo`], cheap to clone); `None` on an
    /// empty ring or for `p >= ring_size`. The same question as
    /// [`RingView::owner_info`], which borrows from a view (and
    /// [`RingView::owner_of`] answers the node id alone). Lock-free, and
    /// contention-free across threads: see
    /// [`owner_info_of_key`](RingObserver::owner_info_of_key).
    pub fn owner_info(&self, p: u32) -> Option<MemberInfo> {
        self.handle.follower.lookup(|_| p)
    }

    /// The member the current view places `key` on:
    /// [`owner_info`](RingObserver::owner_info) of
    /// [`partition_for`](crate::partition_for)`(key, ring_size)`.
    ///
    /// For a router's hot path: lock-free, and the threads that call it do
    /// not contend — each keeps its own copy of the current view's members
    /// (taken once per view), so the reference counts it touches are its
    /// own: a version check, a table lookup and one uncontended reference
    /// count increment.
    pub fn owner_info_of_key(&self, key: &[u8]) -> Option<MemberInfo> {
        self.handle.follower.lookup(|size| partition_for(key, size))
    }

    /// A receiver of every view the observer adopts from now on (each
    /// call makes a new, unbounded one). Disconnects when the observer
    /// stops.
    pub fn subscribe(&self) -> Receiver<RingView> {
        let (tx, rx) = crossbeam_channel::unbounded();
        if !*self.handle.stopped.lock() {
            self.handle.follower.subscribers.lock().push(tx);
        }
        rx
    }

    /// Stops following (idempotent); when it was its client's last member
    /// or observer, waits up to 5 s for the client's threads. The view
    /// stays readable, frozen. Like [`RingNode::stop`](crate::RingNode::stop),
    /// an [`ErrorKind::Timeout`] error when they did not end in time (a
    /// statement stalled on a dead link; they end on their own, and the
    /// observer is stopped either way); dropping the last handle stops it
    /// too, without waiting.
    pub fn stop(&self) -> Result<()> {
        let left = self.handle.stop(Duration::from_secs(5));
        if left.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the observer of ring {:?} stopped, but its client's threads {left:?} did not end within 5 s",
                self.handle.follower.cfg.ring_id
            ),
        ))
    }
}

impl std::fmt::Debug for RingObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingObserver")
            .field("view", &**self.handle.follower.view.load())
            .finish()
    }
}

thread_local! {
    /// Per thread, per observer (by uid): the view version cached, the
    /// view, and this thread's own copies of its members.
    static OWNER_CACHE: std::cell::RefCell<Vec<CachedView>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A thread's copy of one observer's view.
struct CachedView {
    uid: u64,
    version: u64,
    view: RingView,
    /// The view's members, with reference counts of this thread's own.
    members: Vec<MemberInfo>,
}

/// How many observers a thread keeps its own copies of.
const OWNER_CACHE_SIZE: usize = 8;

/// Source of [`Follower::uid`].
static NEXT_OBSERVER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An observer as its client's threads see it: the view it publishes, the
/// notices the connection thread hands it, and the reads the work thread
/// makes for it.
pub(crate) struct Follower {
    /// Unique in this process (keys the per-thread caches).
    uid: u64,
    /// Bumped after every new view is stored.
    version: std::sync::atomic::AtomicU64,
    cfg: Config,
    /// The schema-level handle: the ring's size, then its store.
    schema: Schema,
    /// The ring's channel (known without the ring: schema and ring id).
    channel: String,
    view: ArcSwap<RingView>,
    subscribers: Mutex<Vec<Sender<RingView>>>,
    /// Notices not applied yet (the connection thread's side).
    pending: Mutex<Pending>,
    /// The work thread's side.
    state: Mutex<State>,
}

#[derive(Default)]
struct Pending {
    notices: Vec<Notice>,
    /// Notifications may have been lost (a reconnect): read the log.
    gap: bool,
}

struct State {
    /// The follow rules (protocol core): the view and what to read next.
    follow: Follow,
    /// The ring's store, once its size is known.
    store: Option<Store>,
}

impl Follower {
    fn new(cfg: Config, poll: Duration) -> Result<Follower> {
        let schema = Schema::new(&cfg.schema, cfg.effective_statement_timeout(), cfg.pooling)?;
        let channel = Store::ring_channel(&cfg.schema, &cfg.ring_id);
        Ok(Follower {
            uid: NEXT_OBSERVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            version: std::sync::atomic::AtomicU64::new(1),
            cfg,
            schema,
            channel,
            view: ArcSwap::from_pointee(RingView::empty(0, 0)),
            subscribers: Mutex::new(Vec::new()),
            pending: Mutex::new(Pending::default()),
            state: Mutex::new(State {
                follow: Follow::new(poll, Instant::now()),
                store: None,
            }),
        })
    }

    /// Stores a new view (and makes the threads' caches take it).
    fn publish(&self, view: RingView) {
        self.view.store(Arc::new(view));
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The member of the current view that partition
    /// `partition(ring_size)` belongs to, cloned from this thread's own
    /// copy.
    #[inline]
    fn lookup(&self, partition: impl Fn(u32) -> u32) -> Option<MemberInfo> {
        let version = self.version.load(std::sync::atomic::Ordering::Acquire);
        let from_cache = OWNER_CACHE.try_with(|cache| {
            let mut cache = cache.borrow_mut();
            let i = match cache.iter().position(|e| e.uid == self.uid) {
                Some(i) => i,
                None => {
                    if cache.len() >= OWNER_CACHE_SIZE {
                        cache.remove(0);
                    }
                    cache.push(CachedView {
                        uid: self.uid,
                        version: 0,
                        view: RingView::empty(0, 0),
                        members: Vec::new(),
                    });
                    cache.len() - 1
                }
            };
            let entry = &mut cache[i];
            if entry.version != version {
                let view = RingView::clone(&self.view.load());
                entry.members = view.members().iter().map(MemberInfo::unshared).collect();
                entry.view = view;
                entry.version = version;
            }
            let idx = entry.view.owner_index(partition(entry.view.ring_size()))?;
            entry.members.get(idx).cloned()
        });
        match from_cache {
            Ok(found) => found,
            // A thread being torn down: the shared view.
            Err(_) => {
                let view = self.view.load();
                view.owner_info(partition(view.ring_size())).cloned()
            }
        }
    }

    /// The channel the client's connection listens on for this observer.
    pub(crate) fn channel(&self) -> Option<String> {
        self.cfg
            .pooling
            .notifications()
            .then(|| self.channel.clone())
    }

    /// A notification on the ring's channel (from the connection thread).
    pub(crate) fn notified(&self, payload: &str) {
        let notices = parse_payloads(&self.cfg.ring_id, payload);
        if !notices.is_empty() {
            self.pending.lock().notices.extend(notices);
        }
    }

    /// The client's listening connection is new: notifications may have
    /// been missed.
    pub(crate) fn reconnected(&self) {
        self.pending.lock().gap = true;
    }

    /// The read of [`ObserverBuilder::start`]: the whole ring (or nothing,
    /// if it does not exist yet), published.
    fn first_read(&self, c: &mut HeldConn) -> Result<()> {
        let mut st = self.state.lock();
        self.read(&mut st, c, FollowStep::ReadRing, Instant::now())?;
        self.publish(st.follow.view().clone());
        Ok(())
    }

    /// One step on the work thread: what was notified goes to the follow
    /// rules ([`Follow`]), then the read they ask for runs. `Ok(None)`: a
    /// read ran; `Ok(Some(d))`: nothing to do for `d`.
    pub(crate) fn step(
        &self,
        conn: &mut Option<HeldConn>,
        connect: impl FnOnce() -> Result<HeldConn>,
        now: Instant,
    ) -> Result<Option<Duration>> {
        let mut st = self.state.lock();
        let before = (st.follow.view().epoch(), st.follow.view().ring_size());
        let (notices, gap) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.notices), std::mem::take(&mut p.gap))
        };
        let mut changed = false;
        for n in notices {
            changed |= st.follow.step(FollowInput::Notified(n), now);
        }
        if gap {
            st.follow.step(FollowInput::Reconnected, now);
        }
        let result = match st.follow.next(now) {
            FollowStep::Wait(d) => Ok(Some(d)),
            step => {
                let read = match conn {
                    Some(c) => self.read(&mut st, c, step, now),
                    None => connect().and_then(|c| {
                        let c = conn.insert(c);
                        self.read(&mut st, c, step, now)
                    }),
                };
                match read {
                    Ok(c) => {
                        changed |= c;
                        Ok(None)
                    }
                    Err(e) => {
                        st.follow.step(FollowInput::ReadFailed, now);
                        log::warn!(target: "leasering", "observer of {:?}: {e}; retrying in {:?}",
                            self.cfg.ring_id, st.follow.backoff());
                        Err(e)
                    }
                }
            }
        };
        if changed {
            let view = st.follow.view().clone();
            log::debug!(target: "leasering", "observer of {:?}: epoch {} -> {}",
                self.cfg.ring_id, before.0, view.epoch());
            self.publish(view.clone());
            self.subscribers
                .lock()
                .retain(|tx| tx.send(view.clone()).is_ok());
        }
        result
    }

    /// Runs a read the follow rules asked for and hands them the answer.
    /// Whether the view changed.
    fn read(
        &self,
        st: &mut State,
        c: &mut HeldConn,
        step: FollowStep,
        now: Instant,
    ) -> Result<bool> {
        let input = match step {
            FollowStep::Wait(_) => return Ok(false),
            FollowStep::ReadRing => {
                if st.store.is_none() {
                    // No schema yet: no ring yet either.
                    let Some(size) = self.schema.ring_size(&mut *c.client, &self.cfg.ring_id)?
                    else {
                        return Ok(st.follow.step(FollowInput::NoRing, now));
                    };
                    st.store = Some(
                        self.schema
                            .ring(&self.cfg.ring_id, size, Some("observer"))?,
                    );
                }
                let store = st.store.as_ref().expect("set above");
                FollowInput::Read {
                    timeline: store.timeline(c)?,
                    read: CatchUp::Full(store.read_ring(c)?),
                }
            }
            FollowStep::CatchUp { from } => {
                let Some(store) = st.store.as_ref() else {
                    return Ok(st.follow.step(FollowInput::Reconnected, now));
                };
                FollowInput::Read {
                    timeline: store.timeline(c)?,
                    read: store.catch_up(c, from)?,
                }
            }
        };
        if let FollowInput::Read { timeline, .. } = &input {
            if st.follow.timeline().is_some_and(|t| t != *timeline) {
                log::info!(target: "leasering", ring = self.cfg.ring_id.as_str();
                    "observer of {:?}: the database moved to timeline {timeline} (a promotion or a recovery): reading the whole ring again",
                    self.cfg.ring_id);
            }
        }
        Ok(st.follow.step(input, now))
    }
}
