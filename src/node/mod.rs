//! [`RingNode`], the I/O edge around the pure [`Session`]: a handle users
//! hold, the lock-free hot path they read, and the threads that run the
//! session's steps against the database.
//!
//! * [`builder`] — [`NodeBuilder`] and `start()` (validation, schema, the
//!   bounded join);
//! * [`hot_path`] — the atomic bitset, deadline and snapshot behind
//!   [`RingNode::owns`] and [`RingNode::owned_partitions`];
//! * [`publish`] — making a session output visible: hot path, events,
//!   logs, metrics, wake-ups;
//! * [`steps`] — the member's steps that its [`Client`](crate::Client)'s
//!   threads run: catch-ups, takes and releases, rejoins, renewal
//!   failures;
//! * [`shutdown`] — `stop()`, the leave, leaving the client, and the
//!   non-blocking `Drop`.

mod builder;
mod hot_path;
mod publish;
mod shutdown;
mod steps;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;

pub use self::builder::NodeBuilder;
use self::hot_path::HotPath;
use crate::clock::coarse_resolution_ns;
use crate::config::Config;
use crate::error::Result;
use crate::event::Event;
use crate::owned::OwnedPartitions;
use crate::protocol::{Session, SessionConfig, Status};
use crate::ring::RingView;
use crate::store::Store;

/// Fewest pool connections a member needs: its client keeps one (LISTEN
/// and renewals), and takes, releases, joins and leaves borrow another now
/// and then.
pub const MIN_POOL_SIZE: u32 = 2;

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

/// Dropped with the last clone of a [`RingNode`].
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    /// Stops local ownership at once and leaves the ring on a background
    /// thread: dropping a node never blocks the caller for a database round
    /// trip. `stop()` is the way to wait for the leave and see its error.
    fn drop(&mut self) {
        self.inner.stop_in_background();
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
    /// Pending partitions: assigned, waiting for their claim.
    pub pending: u32,
    /// Pending partitions whose claim another member holds, grouped by that
    /// member's node id: what this member is waiting for (a frozen or
    /// crashed holder delays exactly these, until its lease ends).
    pub waiting_for: Vec<(String, Vec<u32>)>,
    /// Partitions released locally whose drain is still running (their
    /// claims are held until the user's work stops).
    pub draining: u32,
    /// The partitions counted by [`draining`](NodeStatus::draining),
    /// ascending: released locally, their claims held until the user's work
    /// on them stops (every drain guard dropped, the drain timeout, or the
    /// local lease running out).
    pub draining_partitions: Vec<u32>,
    /// Time left on the local lease, if it runs.
    pub lease_left: Option<Duration>,
    /// Whether the member is in the ring (false while rejoining or stopped).
    pub joined: bool,
    /// Whether `stop()` was called.
    pub stopped: bool,
    /// Successful renewals so far.
    pub renewals: u64,
    /// Failed or refused renewals so far.
    pub renewal_failures: u64,
    /// The newest ring epoch this member has heard of (at least
    /// [`epoch`](NodeStatus::epoch)); the difference is its epoch lag.
    pub ring_epoch: u64,
    /// How long ago the last successful renewal was answered (none yet:
    /// `None`).
    pub last_renewal: Option<Duration>,
    /// How long renewals have been failing or refused, if the last one did
    /// not succeed.
    pub renewals_failing_for: Option<Duration>,
    /// The last renewal or rejoin error, while renewals fail.
    pub last_error: Option<String>,
    /// Whether the member can serve — what a readiness probe reports:
    /// healthy when it is in the ring, not stopped, its local lease runs,
    /// its renewals are neither refused (the lag bound) nor failing for so
    /// long that less than half the lease is left, and its watcher (takes,
    /// releases, views) has not been failing for half the TTL. Pending
    /// partitions are normal for a few milliseconds after a change and do
    /// not count against it; one failed renewal does not either.
    ///
    /// ```no_run
    /// # fn probe(node: &leasering::RingNode) -> (u16, String) {
    /// match node.status().health {
    ///     leasering::Health::Healthy => (200, "ready\n".into()),
    ///     leasering::Health::Unhealthy(why) => (503, format!("{why}\n")),
    /// }
    /// # }
    /// ```
    pub health: Health,
    /// Its own readiness ([`NodeBuilder::start_unready`],
    /// [`RingNode::set_ready`]).
    pub ready: bool,
    /// Whether its view makes it eligible for partitions (ready and not
    /// cordoned); false while it is not a member.
    pub eligible: bool,
    /// Whether its view shows it cordoned by an operator
    /// ([`cordon`](crate::cordon)): ready, yet not eligible. (A cordon of a
    /// member that is not ready changes nothing it can see; `ringnode
    /// status` reads the cordons themselves.)
    pub cordoned: bool,
    /// Partitions its view gives to no member: the whole ring while every
    /// member is ineligible (not ready, or cordoned); the shortfall when
    /// the members' [capacities](crate::NodeBuilder::capacity) add up to less
    /// than the ring; else 0. Nobody owns them. Also the gauge
    /// `leasering_partitions_unassigned`.
    pub unassigned: u32,
    /// On a ring with a move budget ([`NodeBuilder::max_moving`]): the moves
    /// its view's placement still holds back for later steps (0 once the
    /// ring is balanced; always 0 without a budget). Also the gauge
    /// `leasering_partitions_moves_pending`.
    pub moves_pending: u32,
}

/// Whether a member can serve: what a readiness probe reports. From
/// [`NodeStatus::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// In the ring, the local lease runs, renewals are answered.
    Healthy,
    /// Not ready, with a one-line reason such as `stopped`, `fenced: local
    /// lease expired; renewals failing for 3.2 s (last error: …)` (or `;
    /// last renewal 2.1 s ago` while a renewal hangs on a stalled link), or
    /// `renewals refused: view epoch lag 3 (view 12, ring 15)`, or
    /// `watcher failing for 2.0 s (last error: …); 12 partitions pending`
    /// (it can neither take nor give back).
    Unhealthy(String),
}

impl Health {
    /// Whether this is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Why the member is not healthy, one line; `None` when it is.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Healthy => None,
            Health::Unhealthy(why) => Some(why),
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Unhealthy(why) => f.write_str(why),
        }
    }
}

impl RingNode {
    /// A builder for a member of ring `ring_id` using `pool`.
    pub fn builder<T>(
        pool: Pool<PostgresConnectionManager<T>>,
        ring_id: impl Into<String>,
    ) -> NodeBuilder
    where
        T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        NodeBuilder::from_pool(Arc::new(pool), ring_id.into())
    }

    fn from_inner(inner: Arc<Inner>) -> RingNode {
        RingNode {
            handle: Arc::new(Handle {
                inner: inner.clone(),
            }),
            inner,
        }
    }

    /// A receiver of this member's [`Event`]s from now on. Each call makes a
    /// new, unbounded receiver: a slow subscriber never blocks the member.
    /// The channel disconnects when the member stops.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = unbounded();
        if !self.inner.stopped.load(Ordering::SeqCst) {
            self.inner.subscribers.lock().push(tx);
        }
        rx
    }

    /// Whether partition `p` is active on this member now. Lock-free: one
    /// atomic bit and a coarse-clock check of the local lease deadline, so a
    /// member that wakes from a pause answers `false` before any of its
    /// threads has run.
    #[inline]
    pub fn owns(&self, p: u32) -> bool {
        self.inner.hot.owns(p)
    }

    /// A snapshot of the active partitions and their tokens (an `Arc`
    /// clone). It reports nothing once the lease it was taken under runs out.
    ///
    /// Lock-free on the fast path: each thread keeps its own copy of the
    /// current snapshot, so taking one is a version check and a reference
    /// count increment that no other thread contends for.
    #[inline]
    pub fn owned_partitions(&self) -> OwnedPartitions {
        self.inner.hot.owned_partitions()
    }

    /// The partition of `key` in this ring: `leasering::partition_for(key, ring_size)`.
    #[inline]
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        crate::placement::partition_for(key, self.inner.cfg.ring_size)
    }

    /// This member's current view of the ring.
    pub fn view(&self) -> RingView {
        self.inner.view()
    }

    /// This member's node id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The configuration in force (with the node id filled in).
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Where the member stands.
    pub fn status(&self) -> NodeStatus {
        let s = self.inner.session.read();
        let own = s.ownership();
        let lease_left = own
            .valid_until()
            .and_then(|v| v.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero());
        let now = Instant::now();
        // Its own statement: a guard in the struct expression below would
        // live until its end, and `unhealthy_reason` locks it again.
        let last_error = match s.failing_since() {
            Some(_) => self.inner.last_error.lock().clone(),
            None => None,
        };
        let unhealthy_reason = self.inner.unhealthy_reason(&s, now);
        let ready = self.inner.store.is_ready();
        let eligible = own.status() == Status::Member
            && own
                .view()
                .and_then(|v| v.member(&self.inner.node_id))
                .is_some_and(|m| m.is_eligible());
        NodeStatus {
            ready,
            eligible,
            cordoned: own.status() == Status::Member && ready && !eligible,
            unassigned: own.view().map_or(0, |v| v.unassigned()),
            moves_pending: if self.inner.cfg.max_moving.is_some() {
                own.view().map_or(0, |v| v.moves_pending() as u32)
            } else {
                0
            },
            ring_epoch: s.ring_epoch(),
            last_renewal: s.last_renewed().map(|t| now.saturating_duration_since(t)),
            renewals_failing_for: s.failing_since().map(|t| now.saturating_duration_since(t)),
            last_error,
            health: match unhealthy_reason {
                None => Health::Healthy,
                Some(why) => Health::Unhealthy(why),
            },
            epoch: own.view_epoch(),
            active: if lease_left.is_some() {
                own.active_count()
            } else {
                0
            },
            pending: own.pending_count(),
            waiting_for: s.waiting_for(),
            draining: s.draining_count() as u32,
            draining_partitions: s.draining_partitions(),
            lease_left,
            joined: own.status() == Status::Member,
            stopped: own.status() == Status::Stopped,
            renewals: s.renewals(),
            renewal_failures: s.renewal_failures(),
        }
    }

    /// Leaves the ring gracefully: releases everything locally
    /// ([`ReleaseReason::Stopping`](crate::ReleaseReason::Stopping)),
    /// removes this member from the database so that its successors take
    /// over within milliseconds, and joins the background threads. Returns
    /// within `stop_timeout`; on a database error the lease simply expires.
    /// Nothing is owned after it returns, whatever the result. Calling it
    /// again does nothing.
    pub fn stop(&self) -> Result<()> {
        self.inner.shutdown(true)
    }

    /// Makes this member ready (`true`: eligible for partitions, unless an
    /// operator cordoned it) or not (`false`: it gives up its partitions
    /// gracefully, with drain, as on any view change, and stays a live
    /// member holding nothing). Written to the database under the ring's
    /// lock as a membership change (the epoch bumps, every member is told),
    /// on a pool connection from the calling thread; the partitions move
    /// as the members apply it. Remembered: a rejoin after an eviction joins
    /// as ready as this says. A no-op after [`stop`](RingNode::stop). On
    /// an error (database unreachable, lock timeout) the readiness is still
    /// remembered for the next join, but not written: call it again.
    pub fn set_ready(&self, ready: bool) -> Result<()> {
        self.inner.set_ready(ready)
    }

    /// For tests and demos (feature `test-util`): freezes this member's
    /// background threads for `d`, as a GC pause or `SIGSTOP` would (the hot
    /// path keeps answering — and stops reporting partitions when the local
    /// lease runs out).
    #[cfg(feature = "test-util")]
    pub fn pause_threads_for(&self, d: Duration) {
        *self.inner.frozen_until.lock() = Some(Instant::now() + d);
    }

    /// For tests and demos (feature `test-util`): ends this member the way a
    /// crash would — its threads stop, it does not leave, its lease runs out
    /// in the database and the survivors clean it up. Locally nothing is
    /// owned afterwards.
    #[cfg(feature = "test-util")]
    pub fn crash(&self) {
        let _ = self.inner.shutdown(false);
    }
}

impl std::fmt::Debug for RingNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingNode")
            .field("node_id", &self.node_id())
            .field("ring_id", &self.inner.cfg.ring_id)
            .finish()
    }
}

/// The member behind every clone of a [`RingNode`], served by its client's
/// threads.
pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) node_id: String,
    pub(crate) store: Store,
    /// The client whose threads serve this member.
    pub(crate) client: Arc<crate::client::Shared>,
    /// Unique in this process: routes this member's drains.
    pub(crate) uid: u64,
    /// Everything the member decides (see [`Session`]).
    pub(crate) session: RwLock<Session>,
    hot: HotPath,
    subscribers: Mutex<Vec<Sender<Event>>>,
    /// A rejoin whose last try failed, to be resumed by the next (it may
    /// have committed: see [`JoinAttempt`](crate::store::JoinAttempt)).
    rejoin_attempt: Mutex<Option<crate::store::JoinAttempt>>,
    /// The renewal found this member evicted: the changes thread rejoins.
    rejoin_wanted: AtomicBool,
    /// Serialises rejoin against stop, so a stopping member cannot rejoin.
    membership: Mutex<()>,
    stopped: AtomicBool,
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// The last renewal or rejoin error (for the health reason).
    pub(crate) last_error: Mutex<Option<String>>,
    /// On a ring with a move budget: when this member next tries the
    /// budget's step while its view has moves pending (the safety net for
    /// a step lost with the member that was to write it).
    pub(crate) step_at: Mutex<Option<Instant>>,
    /// The watcher's current streak of failures was logged at warn level.
    pub(crate) watcher_warned: AtomicBool,
    /// Test hook: the threads sleep until then.
    #[cfg(feature = "test-util")]
    frozen_until: Mutex<Option<Instant>>,
}

impl Inner {
    fn new(
        cfg: Config,
        node_id: String,
        store: Store,
        client: Arc<crate::client::Shared>,
        subscribers: Vec<Sender<Event>>,
    ) -> Inner {
        let lead = Duration::from_nanos(coarse_resolution_ns());
        let session = Session::new(SessionConfig::new(&cfg, &node_id, lead), Instant::now());
        Inner {
            telemetry: crate::telemetry::Telemetry::new(&cfg.ring_id, &node_id),
            hot: HotPath::new(cfg.ring_size),
            session: RwLock::new(session),
            subscribers: Mutex::new(subscribers),
            rejoin_attempt: Mutex::new(None),
            rejoin_wanted: AtomicBool::new(false),
            watcher_warned: AtomicBool::new(false),
            step_at: Mutex::new(None),
            membership: Mutex::new(()),
            stopped: AtomicBool::new(false),
            last_error: Mutex::new(None),
            #[cfg(feature = "test-util")]
            frozen_until: Mutex::new(None),
            uid: crate::client::next_uid(),
            node_id,
            store,
            client,
            cfg,
        }
    }

    /// Why the member is not healthy at `now`, or `None`. See
    /// [`NodeStatus::health`].
    pub(crate) fn unhealthy_reason(&self, s: &Session, now: Instant) -> Option<String> {
        let own = s.ownership();
        // Failing renewals and their last error; else (a renewal still on
        // its way through a stalled link, say) the last success's age.
        let failing = || match (s.failing_since(), s.last_renewed()) {
            (Some(t), _) => {
                let err = self.last_error.lock().clone();
                format!(
                    "renewals failing for {:.1} s{}",
                    now.saturating_duration_since(t).as_secs_f64(),
                    err.map(|e| format!(" (last error: {})", one_line(&e)))
                        .unwrap_or_default()
                )
            }
            (None, Some(t)) => format!(
                "last renewal {:.1} s ago",
                now.saturating_duration_since(t).as_secs_f64()
            ),
            (None, None) => String::new(),
        };
        let lease_left = own
            .valid_until()
            .and_then(|v| v.checked_duration_since(now))
            .filter(|d| !d.is_zero());
        match own.status() {
            Status::Stopped => return Some("stopped".into()),
            Status::Joining => {
                let f = failing();
                return Some(if s.renewals() == 0 && s.renewal_failures() == 0 {
                    "not in the ring: joining".into()
                } else if f.is_empty() {
                    "not in the ring: rejoining".into()
                } else {
                    format!("not in the ring: rejoining; {f}")
                });
            }
            Status::Member => {}
        }
        let Some(left) = lease_left else {
            let f = failing();
            return Some(if f.is_empty() {
                "fenced: local lease expired".into()
            } else {
                format!("fenced: local lease expired; {f}")
            });
        };
        if s.refused() {
            let ring = s.ring_epoch();
            let view = own.view_epoch();
            return Some(format!(
                "renewals refused: view epoch lag {} (view {view}, ring {ring})",
                ring.saturating_sub(view)
            ));
        }
        if s.failing_since().is_some() && left < self.cfg.lease_ttl / 2 {
            return Some(format!(
                "{}, lease left {:.1} s",
                failing(),
                left.as_secs_f64()
            ));
        }
        // A watcher that fails takes nothing, gives nothing back and does
        // not follow the view, while the lease may run on: after half a
        // TTL (one failure is a reconnect) it is not ready.
        if let Some((since, err)) = s.watcher_failing() {
            let d = now.saturating_duration_since(since);
            if d >= self.cfg.lease_ttl / 2 {
                return Some(format!(
                    "watcher failing for {:.1} s (last error: {}); {} partitions pending",
                    d.as_secs_f64(),
                    one_line(err),
                    own.pending_count()
                ));
            }
        }
        None
    }

    fn view(&self) -> RingView {
        self.session
            .read()
            .view()
            .cloned()
            .unwrap_or_else(|| RingView::empty(0, self.cfg.ring_size))
    }
}

/// The first line of `s`, at most 200 characters.
fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    line.chars().take(200).collect()
}

/// A short form of a node id for thread names (Linux keeps 15 bytes).
pub(crate) fn short_id(node_id: &str) -> String {
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
