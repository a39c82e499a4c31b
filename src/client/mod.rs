//! [`Client`]: one process's connection to the rings — every member and
//! every observer made from it share one database connection at rest and
//! a fixed set of threads, whatever the number of rings.
//!
//! * [`conn`] — the held connection: LISTEN on every ring's channel (and
//!   the client's own, for releases), one batched renewal per heartbeat for
//!   every membership, notifications handed to the members and observers;
//! * [`work`] — takes, releases and catch-ups of every member, and the
//!   observers' reads, on a connection borrowed from the pool while there
//!   is work (given back once idle);
//! * [`changes`] — rejoins and crash cleanups (transactions under a ring's
//!   lock), each on a connection borrowed for it;
//! * [`fence`] — no I/O: self-fencing at each member's local deadline, and
//!   the end of drains.
//!
//! The threads run while the client has members or observers, and stop
//! (giving the held connection back) when the last one goes.

mod changes;
mod conn;
mod fence;
mod work;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;

use crate::error::{Error, Result};
use crate::node::Inner;
use crate::observer::Follower;
use crate::placement::{fmix64, fnv1a64};
use crate::pool::ConnSource;

/// A process's handle to its rings: build it once from a pool and make
/// every member ([`Client::member`]) and observer ([`Client::observer`]) of
/// this process from it.
///
/// Cheap to clone (an `Arc`). At rest a client holds **one** connection of
/// its pool, which listens for all of its members and observers and renews
/// all of their leases in one statement per heartbeat; takes, releases and
/// membership changes borrow a connection now and then. It runs four
/// threads (`leasering-conn-*`, `-work-*`, `-changes-*`, `-fence-*`) while
/// it has members or observers, whatever their number.
///
/// [`RingNode::builder`](crate::RingNode::builder) and
/// [`RingObserver::builder`](crate::RingObserver::builder) make a client of
/// their own: the one-line way for a process with one member. Share one
/// client when a process runs several members or observers (one per
/// tenant, per job type, a router beside a worker): each costs a
/// connection and four threads otherwise.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};
///
/// let manager = PostgresConnectionManager::new("host=localhost user=postgres".parse()?, NoTls);
/// // One held connection, plus a few borrowed now and then: keep none idle
/// // that the library does not use.
/// let pool = r2d2::Pool::builder().max_size(4).min_idle(Some(0)).build(manager)?;
/// let client = leasering::Client::new(pool);
/// let orders = client.member("orders").start()?;
/// let invoices = client.member("invoices").start()?;
/// let router = client.observer("orders").start()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &format_args!("{:016x}", self.shared.id))
            .field("members", &self.shared.members.read().len())
            .field("observers", &self.shared.observers.read().len())
            .finish()
    }
}

impl Client {
    /// A client over `pool`. Nothing connects until its first member or
    /// observer starts.
    pub fn new<T>(pool: Pool<PostgresConnectionManager<T>>) -> Client
    where
        T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Client::with_source(Arc::new(pool), None)
    }

    /// A client with a pool of its own over `config`: at most `max_size`
    /// connections (at least [`MIN_POOL_SIZE`](crate::MIN_POOL_SIZE)),
    /// none kept idle that the library does not use (`min_idle` 0), and —
    /// unlike a pool built by hand, whose r2d2 keeps only "db error" — the
    /// server's own reason when it refuses a connection (`sorry, too many
    /// clients already`) in the errors. Nothing connects until the first
    /// member or observer starts.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config: postgres::Config = "host=localhost user=postgres".parse()?;
    /// let client = leasering::Client::connect(config, postgres::NoTls, 4)?;
    /// let node = client.member("orders").start()?;
    /// # Ok(()) }
    /// ```
    pub fn connect<T>(config: postgres::Config, tls: T, max_size: u32) -> Result<Client>
    where
        T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        if max_size < crate::MIN_POOL_SIZE {
            return Err(Error::invalid(
                "pool",
                format!(
                    "pool max_size {max_size} is too small: a client needs at least {} connections",
                    crate::MIN_POOL_SIZE
                ),
            ));
        }
        let last = crate::pool::LastRefusal::default();
        let pool = Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .error_handler(Box::new(last.clone()))
            .build_unchecked(PostgresConnectionManager::new(config, tls));
        Ok(Client::with_source(
            Arc::new(crate::pool::OwnPool { pool, last }),
            None,
        ))
    }

    pub(crate) fn with_source(pool: Arc<dyn ConnSource>, name: Option<String>) -> Client {
        let id = crate::config::random_u64();
        let name = name.unwrap_or_else(|| format!("{:08x}", id as u32));
        Client {
            shared: Arc::new(Shared {
                id,
                name,
                pool,
                members: RwLock::new(Vec::new()),
                observers: RwLock::new(Vec::new()),
                wake_work: unbounded(),
                wake_changes: unbounded(),
                wake_fence: unbounded(),
                wake_conn: unbounded(),
                listened: Mutex::new(BTreeSet::new()),
                drained: unbounded(),
                listen_changed: AtomicBool::new(true),
                lifecycle: Mutex::new(None),
                mode: Mutex::new(None),
                spare: Mutex::new(None),
            }),
        }
    }

    /// A builder for a member of ring `ring_id` served by this client.
    pub fn member(&self, ring_id: impl Into<String>) -> crate::NodeBuilder {
        crate::NodeBuilder::new(self.clone(), ring_id.into())
    }

    /// A builder for an observer of ring `ring_id` served by this client.
    pub fn observer(&self, ring_id: impl Into<String>) -> crate::ObserverBuilder {
        crate::ObserverBuilder::new(self.clone(), ring_id.into())
    }

    /// How many members and observers this client serves now.
    pub fn registrations(&self) -> usize {
        self.shared.members.read().len() + self.shared.observers.read().len()
    }
}

/// How a client talks to the database; fixed by its first registration
/// (members and observers of one client share its connection).
pub(crate) type Mode = crate::Pooling;

/// The channel of dropped drain guards: `(member uid, drain id)`.
pub(crate) type Drained = (Sender<(u64, u64)>, Receiver<(u64, u64)>);

/// What a client's threads share.
pub(crate) struct Shared {
    pub(crate) id: u64,
    /// For thread names.
    name: String,
    pub(crate) pool: Arc<dyn ConnSource>,
    pub(crate) members: RwLock<Vec<Arc<Inner>>>,
    pub(crate) observers: RwLock<Vec<Arc<Follower>>>,
    wake_work: (Sender<()>, Receiver<()>),
    wake_changes: (Sender<()>, Receiver<()>),
    wake_fence: (Sender<()>, Receiver<()>),
    /// Only heard while the connection thread does not wait on its socket
    /// (notifications off); with notifications it looks again within
    /// [`conn::MAX_WAIT`].
    wake_conn: (Sender<()>, Receiver<()>),
    /// `(member uid, drain id)` of every drain guard dropped.
    pub(crate) drained: Drained,
    /// The set of channels to LISTEN on may have changed.
    listen_changed: AtomicBool,
    /// The channels the held connection LISTENs on (as of its last
    /// update).
    listened: Mutex<BTreeSet<String>>,
    /// The running threads, if any; also serialises registration.
    lifecycle: Mutex<Option<Threads>>,
    mode: Mutex<Option<Mode>>,
    /// A connection set up for the work thread by a first member's
    /// `start()` (it joined on it): taken instead of a borrowed one.
    spare: Mutex<Option<crate::store::HeldConn>>,
}

/// The threads of a client and the channel that stops them.
struct Threads {
    /// Dropped to stop every thread.
    shutdown: Sender<()>,
    handles: Vec<JoinHandle<()>>,
    /// Each thread sends its name here when it ends.
    done: Receiver<&'static str>,
}

/// A client's threads told to stop, not yet waited for.
pub(crate) struct Retiring {
    handles: Vec<std::thread::JoinHandle<()>>,
    done: Receiver<&'static str>,
}

impl Retiring {
    /// Waits for the threads until `deadline`; returns the names of those
    /// that did not finish by then (stuck in a database call: they end
    /// when it returns).
    pub(crate) fn join(self, deadline: Instant) -> Vec<String> {
        let Retiring { handles, done } = self;
        let mut finished: Vec<&'static str> = Vec::new();
        while finished.len() < handles.len() {
            match done.recv_deadline(deadline.max(Instant::now() + Duration::from_millis(1))) {
                Ok(name) => finished.push(name),
                Err(_) => break,
            }
        }
        let mut stuck = Vec::new();
        for h in handles {
            let name = h.thread().name().unwrap_or("?").to_string();
            if finished
                .iter()
                .any(|f| name.starts_with(&format!("leasering-{f}-")))
            {
                let _ = h.join();
            } else {
                stuck.push(name);
            }
        }
        stuck
    }
}

/// Source of member uids (for routing drains).
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A fresh member uid.
pub(crate) fn next_uid() -> u64 {
    NEXT_UID.fetch_add(1, Ordering::Relaxed)
}

type Body = fn(&Arc<Shared>, &Receiver<()>);

impl Shared {
    /// The channel on which releases of claims that this client's members
    /// of schema `schema` wait for are told: one per client and schema, so
    /// that one LISTEN serves every member.
    pub(crate) fn channel(&self, schema: &str) -> String {
        let h = fmix64(fnv1a64(&[schema.as_bytes(), &[0], &self.id.to_le_bytes()]));
        format!("leasering_c{h:016x}")
    }

    /// Checks (or fixes, for the first registration) the client's mode.
    pub(crate) fn check_mode(&self, m: Mode) -> Result<()> {
        let mut mode = self.mode.lock();
        match *mode {
            None => {
                *mode = Some(m);
                Ok(())
            }
            Some(have) if have == m => Ok(()),
            Some(have) => Err(Error::invalid(
                "pooling",
                format!(
                    "this client runs with pooling {have}; a member or observer asking for \
                     pooling {m} needs a client of its own"
                ),
            )),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode.lock().unwrap_or_default()
    }

    /// Adds a member (started, joined) and makes sure the threads run.
    pub(crate) fn register_member(self: &Arc<Self>, inner: Arc<Inner>) -> Result<()> {
        let mut lc = self.lifecycle.lock();
        self.members.write().push(inner);
        self.listen_changed.store(true, Ordering::SeqCst);
        self.ensure_threads(&mut lc)?;
        self.wake_all();
        Ok(())
    }

    /// Adds an observer and makes sure the threads run.
    pub(crate) fn register_observer(self: &Arc<Self>, f: Arc<Follower>) -> Result<()> {
        let mut lc = self.lifecycle.lock();
        self.observers.write().push(f);
        self.listen_changed.store(true, Ordering::SeqCst);
        self.ensure_threads(&mut lc)?;
        self.wake_all();
        Ok(())
    }

    /// Removes member `uid`; when nothing is left, stops the threads and
    /// waits for them until `deadline`. Returns the names of threads that
    /// did not finish by then (stuck in a database call: they end when it
    /// returns).
    pub(crate) fn deregister_member(&self, uid: u64, deadline: Instant) -> Vec<String> {
        self.retire_member(uid)
            .map_or_else(Vec::new, |r| r.join(deadline))
    }

    /// Removes member `uid`; when nothing is left, tells the threads to
    /// stop and returns them, to be waited for with [`Retiring::join`].
    /// `stop()` calls this before its leave: the connection thread may be
    /// waiting for notifications on its socket, where nothing else can
    /// wake it, and the leave's own `NOTIFY` (on the ring's channel, which
    /// it listens on) does — so `stop()` does not wait out that wait.
    pub(crate) fn retire_member(&self, uid: u64) -> Option<Retiring> {
        let mut lc = self.lifecycle.lock();
        self.members.write().retain(|m| m.uid != uid);
        self.listen_changed.store(true, Ordering::SeqCst);
        self.retire_if_idle(&mut lc)
    }

    /// Removes an observer; like [`Shared::deregister_member`].
    pub(crate) fn deregister_observer(&self, f: &Arc<Follower>, deadline: Instant) -> Vec<String> {
        let mut lc = self.lifecycle.lock();
        self.observers.write().retain(|o| !Arc::ptr_eq(o, f));
        self.listen_changed.store(true, Ordering::SeqCst);
        self.stop_if_idle(&mut lc, deadline)
    }

    fn stop_if_idle(&self, lc: &mut Option<Threads>, deadline: Instant) -> Vec<String> {
        self.retire_if_idle(lc)
            .map_or_else(Vec::new, |r| r.join(deadline))
    }

    /// With no member or observer left: tells the threads to stop (their
    /// shutdown channel disconnects) and hands them over to be waited for.
    fn retire_if_idle(&self, lc: &mut Option<Threads>) -> Option<Retiring> {
        if !self.members.read().is_empty() || !self.observers.read().is_empty() {
            self.wake_all();
            return None;
        }
        let Threads {
            shutdown,
            handles,
            done,
        } = lc.take()?;
        drop(shutdown);
        Some(Retiring { handles, done })
    }

    fn ensure_threads(self: &Arc<Self>, lc: &mut Option<Threads>) -> Result<()> {
        if lc.is_some() {
            return Ok(());
        }
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = unbounded::<&'static str>();
        let mut handles = Vec::new();
        let bodies: [(&'static str, Body); 4] = [
            ("conn", conn::run),
            ("work", work::run),
            ("changes", changes::run),
            ("fence", fence::run),
        ];
        for (name, body) in bodies {
            let shared = Arc::clone(self);
            let rx = shutdown_rx.clone();
            let done = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("leasering-{name}-{}", self.name))
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| body(&shared, &rx));
                    if std::panic::catch_unwind(run).is_err() {
                        // A bug, not an input: the leases run out and the
                        // hot paths stop reporting on their own.
                        log::error!(target: "leasering",
                            "client {}: the {name} thread panicked; its members will fence themselves", shared.name);
                    }
                    let _ = done.send(name);
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    drop(shutdown_tx);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(Error::spawn(name, e));
                }
            }
        }
        *lc = Some(Threads {
            shutdown: shutdown_tx,
            handles,
            done: done_rx,
        });
        Ok(())
    }

    /// Offers the work thread a connection (a first member's join
    /// connection): used if it has none, else given back.
    pub(crate) fn offer_work(&self, c: crate::store::HeldConn) {
        if let Some(old) = self.spare.lock().replace(c) {
            old.unhold();
        }
    }

    pub(crate) fn wake_work(&self) {
        let _ = self.wake_work.0.send(());
    }

    pub(crate) fn wake_changes(&self) {
        let _ = self.wake_changes.0.send(());
    }

    pub(crate) fn wake_fence(&self) {
        let _ = self.wake_fence.0.send(());
    }

    pub(crate) fn wake_conn(&self) {
        let _ = self.wake_conn.0.send(());
    }

    fn wake_all(&self) {
        self.wake_work();
        self.wake_changes();
        self.wake_fence();
        self.wake_conn();
    }

    /// The channels the held connection listens on: the client's own (for
    /// releases) per schema, and every ring's that has a member or an
    /// observer here.
    /// Whether the connection thread, waiting for notifications, must be
    /// woken to LISTEN on `channel` (threads running, notifications on,
    /// not listened on yet).
    pub(crate) fn wants_wake_for(&self, channel: &str) -> bool {
        self.lifecycle.lock().is_some()
            && self.mode().notifications()
            && !self.listened.lock().contains(channel)
    }

    /// Whether the held connection LISTENs on no channel (as of its last
    /// update).
    pub(crate) fn listens_to_nothing(&self) -> bool {
        self.listened.lock().is_empty()
    }

    /// Records what the held connection LISTENs on now.
    pub(crate) fn set_listened(&self, channels: BTreeSet<String>) {
        *self.listened.lock() = channels;
    }

    pub(crate) fn channels(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for m in self.members.read().iter() {
            out.insert(m.store.channel.clone());
            out.insert(m.store.own_channel.clone());
        }
        for o in self.observers.read().iter() {
            if let Some(c) = o.channel() {
                out.insert(c);
            }
        }
        out
    }

    /// The statement timeout of the client's connections: the shortest of
    /// its members' (a renewal must fail before any lease it extends runs
    /// out), 5 s without members.
    fn statement_timeout(&self) -> Duration {
        self.members
            .read()
            .iter()
            .map(|m| m.cfg.effective_statement_timeout())
            .min()
            .unwrap_or(Duration::from_secs(5))
    }
}

/// A snapshot of the members (so that no lock is held across I/O).
fn members(shared: &Shared) -> Vec<Arc<Inner>> {
    shared.members.read().clone()
}

/// A snapshot of the observers.
fn observers(shared: &Shared) -> Vec<Arc<Follower>> {
    shared.observers.read().clone()
}

/// Waits on `wake` (and the shutdown channel) for at most `d`; false once
/// the client is shutting down.
fn sleep(shutdown: &Receiver<()>, wake: &Receiver<()>, d: Duration) -> bool {
    crossbeam_channel::select! {
        recv(shutdown) -> _ => return false,
        recv(wake) -> _ => {},
        default(d) => {},
    }
    while wake.try_recv().is_ok() {}
    !matches!(
        shutdown.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Whether the client is shutting down.
fn stopping(shutdown: &Receiver<()>) -> bool {
    matches!(
        shutdown.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}
