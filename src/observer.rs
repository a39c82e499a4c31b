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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use postgres::error::SqlState;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::types::Type;
use postgres::Socket;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;

use crate::error::{Error, ErrorKind, Result};
use crate::placement::partition_for;
use crate::pool::ConnSource;
use crate::protocol::input::{CatchUp, Notice};
use crate::ring::{MemberInfo, RingView};
use crate::store::{HeldConn, Store};
use crate::Config;

/// Builds a [`RingObserver`]; from [`RingObserver::builder`].
pub struct ObserverBuilder {
    pool: Arc<dyn ConnSource>,
    ring_id: String,
    schema: String,
    notifications: bool,
    transaction_pooling: bool,
    poll_interval: Duration,
    start_timeout: Duration,
    statement_timeout: Duration,
}

impl ObserverBuilder {
    /// Schema of the ring's tables. Default `leasering`.
    pub fn schema(mut self, schema: impl Into<String>) -> ObserverBuilder {
        self.schema = schema.into();
        self
    }
    /// Follow the members' notifications (`LISTEN`). Default `true`; off
    /// behind a pooler in transaction mode, when the view follows by
    /// polling alone.
    pub fn notifications(mut self, yes: bool) -> ObserverBuilder {
        self.notifications = yes;
        self
    }
    /// Behind a pooler in transaction mode (like
    /// [`Builder::transaction_pooling`](crate::Builder::transaction_pooling)):
    /// no session state on the kept connection, each read a transaction of
    /// its own. Needs `notifications(false)`. Default `false`.
    pub fn transaction_pooling(mut self, yes: bool) -> ObserverBuilder {
        self.transaction_pooling = yes;
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
    /// starts the thread that follows it, `leasering-observer`.
    ///
    /// Fails with a typed error for a bad ring id or schema name
    /// ([`ErrorKind::InvalidConfig`]), an unreachable database within the
    /// start timeout ([`ErrorKind::Database`]), or a schema of another
    /// version ([`ErrorKind::Schema`]).
    pub fn start(self) -> Result<RingObserver> {
        let mut cfg = Config::new(self.ring_id.clone());
        cfg.schema = self.schema.clone();
        cfg.notifications = self.notifications;
        cfg.transaction_pooling = self.transaction_pooling;
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
        let mut follower = Follower {
            pool: self.pool,
            cfg,
            notifications: self.notifications,
            statement_timeout: self.statement_timeout,
            store: None,
            conn: None,
            timeline: None,
            resynced: false,
        };
        let deadline = Instant::now() + self.start_timeout;
        let first = loop {
            match follower.read_full() {
                Ok(v) => break v,
                Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::Database => {
                    log::debug!(target: "leasering", "observer of {:?}: first read failed, retrying: {e}",
                        follower.cfg.ring_id);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        let shared = Arc::new(Shared {
            view: RwLock::new(first),
            subscribers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let poll = self.poll_interval;
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("leasering-observer".into())
            .spawn(move || follower.run(&s, poll))
            .map_err(|e| Error::spawn("observer", e))?;
        *shared.thread.lock() = Some(handle);
        Ok(RingObserver { shared })
    }
}

struct Shared {
    view: RwLock<RingView>,
    subscribers: Mutex<Vec<Sender<RingView>>>,
    stopping: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Follows a ring's view without joining it: who owns partition `p`, who
/// owns key `k` and how to reach it (the owner's
/// [`metadata`](MemberInfo::metadata)), and a channel of view changes.
///
/// Cheap to clone (an `Arc`); the following thread stops when the last
/// clone is dropped or [`stop`](RingObserver::stop) is called.
///
/// ```no_run
/// # fn main() -> leasering::Result<()> {
/// # let pool: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>> = unimplemented!();
/// use leasering::RingObserver;
///
/// let router = RingObserver::builder(pool, "orders").start()?;
/// if let Some(owner) = router.owner_of_key(b"customer-42") {
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
    shared: Arc<Shared>,
}

impl RingObserver {
    /// A builder for an observer of ring `ring_id`, reading through `pool`
    /// (one connection, kept).
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
        ObserverBuilder {
            pool: Arc::new(pool),
            ring_id: ring_id.into(),
            schema: "leasering".into(),
            notifications: true,
            transaction_pooling: false,
            poll_interval: Duration::from_secs(1),
            start_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(5),
        }
    }

    /// The view followed now (cheap: an `Arc` clone).
    pub fn view(&self) -> RingView {
        self.shared.view.read().clone()
    }

    /// The member the current view places partition `p` on, with its
    /// metadata; `None` on an empty ring or for `p >= ring_size`.
    pub fn owner_of(&self, p: u32) -> Option<MemberInfo> {
        self.shared.view.read().owner_info(p).cloned()
    }

    /// The member the current view places `key` on:
    /// [`owner_of`](RingObserver::owner_of) of
    /// [`partition_for`](crate::partition_for)`(key, ring_size)`.
    pub fn owner_of_key(&self, key: &[u8]) -> Option<MemberInfo> {
        let view = self.shared.view.read();
        view.owner_info(partition_for(key, view.ring_size()))
            .cloned()
    }

    /// A receiver of every view the observer adopts from now on (each
    /// call makes a new, unbounded one). Disconnects when the observer
    /// stops.
    pub fn subscribe(&self) -> Receiver<RingView> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// Stops following (idempotent) and waits for the thread. The view
    /// stays readable, frozen.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(h) = self.shared.thread.lock().take() {
            let _ = h.join();
        }
        self.shared.subscribers.lock().clear();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for RingObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingObserver")
            .field("view", &*self.shared.view.read())
            .finish()
    }
}

/// The following thread's state: the store (once the ring's size is
/// known) and the connection it keeps.
struct Follower {
    pool: Arc<dyn ConnSource>,
    cfg: Config,
    notifications: bool,
    statement_timeout: Duration,
    store: Option<Store>,
    conn: Option<HeldConn>,
    /// The database's timeline at the last read. Epochs of two timelines
    /// are not comparable (a promoted standby may have lost the last
    /// changes and made others under the same epochs), so a change of
    /// timeline means reading the whole ring again.
    timeline: Option<u64>,
    /// The last view was such a re-read: publish it even if its epoch is
    /// the one already shown.
    resynced: bool,
}

/// Longest wait on the connection between two looks at the stop flag.
const STOP_LOOK: Duration = Duration::from_millis(100);

impl Follower {
    fn run(mut self, shared: &Arc<Shared>, poll: Duration) {
        let ring = self.cfg.ring_id.clone();
        let mut next_poll = Instant::now() + poll;
        let mut backoff = Duration::from_millis(50);
        // Stops when asked, or when every RingObserver is gone (then the
        // only Arc left is this thread's).
        while !shared.stopping.load(Ordering::Acquire) && Arc::strong_count(shared) > 1 {
            let current = shared.view.read().clone();
            let due = Instant::now() >= next_poll;
            if due {
                next_poll = Instant::now() + poll;
            }
            match self.step(&current, due, next_poll) {
                Ok(Some(next)) => {
                    backoff = Duration::from_millis(50);
                    let resynced = std::mem::take(&mut self.resynced);
                    if resynced
                        || next.epoch() != current.epoch()
                        || next.ring_size() != current.ring_size()
                    {
                        log::debug!(target: "leasering", "observer of {ring:?}: epoch {} -> {}",
                            current.epoch(), next.epoch());
                        *shared.view.write() = next.clone();
                        shared
                            .subscribers
                            .lock()
                            .retain(|tx| tx.send(next.clone()).is_ok());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!(target: "leasering", "observer of {ring:?}: {e}; retrying in {backoff:?}");
                    if let (Some(store), Some(c)) = (&self.store, self.conn.take()) {
                        store.unhold(c);
                    }
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !shared.stopping.load(Ordering::Acquire) {
                        std::thread::sleep(STOP_LOOK.min(backoff));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    // Read again as soon as it works.
                    next_poll = Instant::now();
                }
            }
        }
        if let (Some(store), Some(c)) = (&self.store, self.conn.take()) {
            store.unhold(c);
        }
    }

    /// With a poll `due`, a read of the change log (of the whole ring,
    /// while it did not exist); else one wait for notifications (until
    /// `next_poll`, at most [`STOP_LOOK`]) and the view they lead to.
    /// `None`: nothing to adopt.
    fn step(
        &mut self,
        current: &RingView,
        due: bool,
        next_poll: Instant,
    ) -> Result<Option<RingView>> {
        if self.store.is_none() {
            // The ring did not exist at the last look.
            if due {
                return self.read_full().map(Some);
            }
            std::thread::sleep(STOP_LOOK.min(next_poll.saturating_duration_since(Instant::now())));
            return Ok(None);
        }
        let wait = if due {
            Duration::ZERO
        } else {
            next_poll
                .saturating_duration_since(Instant::now())
                .min(STOP_LOOK)
        };
        let notices = if self.notifications {
            let store = self.store.clone().expect("checked above");
            let conn = self.held()?;
            store.notices(conn, wait)?
        } else {
            std::thread::sleep(wait);
            Vec::new()
        };
        let mut view = current.clone();
        let mut gap = due;
        for n in notices {
            if let Notice::Change { epoch, change } = n {
                match change {
                    Some(c) if epoch == view.epoch() + 1 => view = view.apply(&c),
                    _ if epoch > view.epoch() => gap = true,
                    _ => {}
                }
            }
        }
        if gap {
            let store = self.store.clone().expect("checked above");
            let timeline = store.timeline(self.held()?)?;
            let changed = self.timeline.is_some_and(|t| t != timeline);
            if changed {
                log::info!(target: "leasering", ring = self.cfg.ring_id.as_str();
                    "observer of {:?}: the database moved to timeline {timeline} (a promotion or a recovery): reading the whole ring again",
                    self.cfg.ring_id);
                self.resynced = true;
            }
            self.timeline = Some(timeline);
            // From 0: the whole ring.
            let from = if changed { 0 } else { view.epoch() };
            view = match store.catch_up(self.held()?, from)? {
                CatchUp::Changes(cs) => view.apply_all(&cs),
                CatchUp::Full(v) => v,
            };
        }
        Ok(Some(view))
    }

    /// The connection kept, connected (and listening) first if needed.
    fn held(&mut self) -> Result<&mut HeldConn> {
        if self.conn.is_none() {
            let store = self.store.as_ref().expect("a store before a connection");
            let c = self
                .pool
                .get(self.statement_timeout)
                .map_err(|e| Error::pool("observe the ring", e))?;
            self.conn = Some(store.hold(c, self.notifications)?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The whole ring: its size and placement first (the store needs the
    /// size), then its view. An empty view (ring size 0) while the ring
    /// does not exist.
    fn read_full(&mut self) -> Result<RingView> {
        if self.store.is_none() {
            let mut c = self
                .pool
                .get(self.statement_timeout)
                .map_err(|e| Error::pool("observe the ring", e))?;
            let schema = &self.cfg.schema;
            let rows = match c.query_typed(
                &format!("SELECT ring_size FROM \"{schema}\".rings WHERE ring_id = $1"),
                &[(&self.cfg.ring_id, Type::TEXT)],
            ) {
                Ok(rows) => rows,
                // No schema yet: no ring yet either.
                Err(e)
                    if matches!(
                        e.code(),
                        Some(&SqlState::UNDEFINED_TABLE | &SqlState::INVALID_SCHEMA_NAME)
                    ) =>
                {
                    Vec::new()
                }
                Err(e) => return Err(Error::db(format!("read ring {:?}", self.cfg.ring_id), e)),
            };
            let Some(size) = rows.first().map(|r| r.get::<_, i32>(0) as u32) else {
                return Ok(RingView::empty(0, 0));
            };
            let mut cfg = self.cfg.clone();
            cfg.ring_size = size;
            cfg.vnode_count = 1;
            cfg.statement_timeout = Some(self.statement_timeout);
            self.store = Some(Store::new(&cfg, "observer")?);
        }
        let store = self.store.clone().expect("set above");
        self.timeline = Some(store.timeline(self.held()?)?);
        store.read_ring(self.held()?)
    }
}
