//! The member's four named threads, each a thin executor of the session
//! core: ask it for the next step, run that one statement (or wait), hand
//! the answer back with its ticket, publish what came out.
//!
//! * `leasering-heartbeat-*` renews the lease on a connection it keeps and
//!   rejoins after an eviction;
//! * `leasering-watcher-*` LISTENs, applies views, takes the claims of
//!   pending partitions and gives back those it does not use, on its own
//!   connection (so takes and releases are answered in order);
//! * `leasering-cleanup-*` removes crashed members at the moment their
//!   lease ends;
//! * `leasering-fence-*` releases everything when the local lease runs out
//!   — it does no I/O, so a call stuck in a dead socket cannot delay it.
//!
//! Shutdown is the disconnection of one channel; every wait selects on it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, RecvTimeoutError, Sender};

use super::{short_id, Inner};
use crate::error::{Error, Result};
use crate::protocol::output::{CleanupStep, HeartbeatStep, WatcherStep};
use crate::protocol::Status;
use crate::store::{HeldConn, JoinAttempt};
use crate::telemetry::DbOp;
use crate::trace::{Kind, Op};

/// Longest a thread waits on a failed connection before trying again.
const RECONNECT_TICK: Duration = Duration::from_millis(100);

/// How often a watcher waiting for the pool looks for a connection a
/// (re)join left it.
const JOIN_CONN_LOOK: Duration = Duration::from_millis(50);
/// While drains run, the watcher looks this often for guards dropped (its
/// wait on the LISTEN socket cannot be interrupted by another thread).
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// The threads of a running member and the channel that stops them.
pub(crate) struct Control {
    /// Dropped to stop every thread.
    pub(crate) shutdown: Sender<()>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    /// Each thread sends its name here when it ends.
    pub(crate) done: Receiver<&'static str>,
}

type Body = fn(&Arc<Inner>, &Receiver<()>);

impl Inner {
    pub(crate) fn spawn_threads(self: &Arc<Self>) -> Result<()> {
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = unbounded::<&'static str>();
        let mut threads = Vec::new();
        let short = short_id(&self.node_id);
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
                .map_err(|e| Error::spawn(name, e))?;
            threads.push(handle);
        }
        *self.control.lock() = Some(Control {
            shutdown: shutdown_tx,
            threads,
            done: done_rx,
        });
        Ok(())
    }

    // ---- heartbeat ----------------------------------------------------------

    fn heartbeat_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        let mut conn: Option<HeldConn> = None;
        // The renewal's connection is taken at once, not at the first
        // renewal: in a pool shared with the application, a service busy
        // from its start took every free connection in between, and the
        // member fenced itself for want of one (tests/deploy.rs). Failing
        // here is fine: the renewal asks again.
        if let Err(e) = self.held(&mut conn, false) {
            log::debug!(target: "leasering", "node {}: no connection for the heartbeat yet: {e}", self.node_id);
        }
        loop {
            let step = self.session.write().heartbeat_next(Instant::now());
            match step {
                HeartbeatStep::Stop => break,
                HeartbeatStep::Wait(d) => {
                    if !matches!(shutdown.recv_timeout(d), Err(RecvTimeoutError::Timeout))
                        || !self.honor_freeze(shutdown)
                    {
                        break;
                    }
                    // The lease time left keeps moving between changes.
                    self.set_gauges(&self.session.read());
                }
                HeartbeatStep::Rejoin => match self.rejoin() {
                    Ok(true) => {
                        *self.last_error.lock() = None;
                        self.telemetry.rejoined();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                            node = self.node_id.as_str(), op = "rejoin", error = e.to_string().as_str();
                            "node {}: rejoin failed: {}", self.node_id, e);
                        self.telemetry.db_error(DbOp::Rejoin, e.kind());
                        *self.last_error.lock() = Some(e.to_string());
                        self.session.write().rejoin_failed(Instant::now());
                    }
                },
                HeartbeatStep::Renew { ack, ticket } => {
                    let op = self.op(Kind::Renew);
                    let renewed = self.held(&mut conn, false).and_then(|c| {
                        let sent_at = Instant::now();
                        let reply = self.store.renew(c, ticket.incarnation(), ack)?;
                        let took = sent_at.elapsed();
                        log::debug!(target: "leasering", "node {}: renewal took {:?}", self.node_id, took);
                        self.telemetry.renewal_took(took);
                        Ok((reply, sent_at))
                    });
                    match renewed {
                        Ok((reply, sent_at)) => {
                            *self.last_error.lock() = None;
                            let out = self.update(|s, now| s.renewed(ticket, reply, sent_at, now));
                            if let Some((seen, now_on)) = out.timeline_fence {
                                log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                                    node = self.node_id.as_str(), op = "renew";
                                    "node {}: the database moved from timeline {} to {} and lost claims or changes this member relied on: fenced (every partition released), rejoining",
                                    self.node_id, seen, now_on);
                            }
                            let outcome = match (out.rejoin, out.renewal) {
                                (true, _) => "evicted",
                                (_, Some(false)) => "refused",
                                _ => "ok",
                            };
                            self.finish(op, outcome);
                        }
                        Err(e) => {
                            log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                                node = self.node_id.as_str(), op = "renew", error = e.to_string().as_str();
                                "node {}: lease renewal failed: {}", self.node_id, e);
                            self.telemetry.db_error(DbOp::Renew, e.kind());
                            *self.last_error.lock() = Some(e.to_string());
                            conn = None;
                            self.update(|s, now| s.renewal_failed(now));
                            self.finish(op, "failed");
                        }
                    }
                }
            }
        }
        if let Some(c) = conn {
            self.store.unhold(c);
        }
    }

    /// Joins the ring again after an eviction (from either thread; the
    /// second finds nothing to do). Serialised against `stop()`. Whether it
    /// rejoined.
    fn rejoin(&self) -> Result<bool> {
        let _m = self.membership.lock();
        let stopped = self.stopped.load(std::sync::atomic::Ordering::SeqCst);
        if stopped || self.session.read().status() != Status::Joining {
            return Ok(false);
        }
        let op = self.op(Kind::Join);
        let mut conn = self
            .pool
            .get(self.cfg.effective_statement_timeout())
            .map_err(|e| Error::pool("rejoin", e))?;
        if self.session.read().stale_row() {
            // Fenced by a timeline change: the new primary still has this
            // member's row (reverted, perhaps renewed since); it would
            // refuse the join as "node id in use" until it expired.
            let gone = self.store.leave(&mut conn)?;
            log::info!(target: "leasering", "node {}: deleted its stale row before rejoining (epoch {:?})", self.node_id, gone);
        }
        let mut attempt = self
            .rejoin_attempt
            .lock()
            .take()
            .unwrap_or_else(|| JoinAttempt::new(Instant::now()));
        // As at start: with notifications the connection stays listening
        // and goes to the watcher, which may be waiting for the pool
        // meanwhile.
        let joined = match self
            .store
            .join_with(&mut conn, &mut attempt, self.cfg.notifications)
        {
            Ok(joined) => joined,
            Err(e) => {
                *self.rejoin_attempt.lock() = Some(attempt);
                return Err(e);
            }
        };
        if self.cfg.notifications {
            *self.join_conn.lock() = Some(conn);
        }
        let sent_at = attempt.sent_at();
        let positions = joined.positions.len();
        self.update(|s, now| s.joined(joined, sent_at, now));
        op.finish(
            self.session.read().ownership().view_epoch(),
            positions,
            "rejoined",
        );
        Ok(true)
    }

    /// A connection for a thread to keep. The watcher (`listen`) takes the
    /// connection a join left listening, if there is one, and otherwise
    /// asks the pool in short slices, looking for such a connection between
    /// them: after an outage the pool's own reconnection backs off, and a
    /// watcher blocked in it for a whole statement timeout left a member
    /// that had just rejoined on a connection of its own without its first
    /// take for a second (chaos, a rejoin after a refused link).
    fn connection_for(&self, listen: bool, t: Instant) -> Result<crate::pool::Conn> {
        let timeout = self.cfg.effective_statement_timeout();
        loop {
            if listen {
                if let Some(c) = self.join_conn.lock().take() {
                    return Ok(c);
                }
            }
            let slice = if listen {
                timeout.saturating_sub(t.elapsed()).min(JOIN_CONN_LOOK)
            } else {
                timeout
            };
            match self.pool.get(slice.max(Duration::from_millis(1))) {
                Ok(c) => return Ok(c),
                Err(_) if listen && t.elapsed() < timeout => continue,
                Err(e) => {
                    let (all, idle) = self.pool.state();
                    return Err(Error::pool(
                        format!(
                            "hold a connection (pool: {all} connections, {idle} idle, after {:?})",
                            t.elapsed()
                        ),
                        e,
                    ));
                }
            }
        }
    }

    /// The connection this thread keeps, connecting it first if needed.
    fn held<'c>(&self, conn: &'c mut Option<HeldConn>, listen: bool) -> Result<&'c mut HeldConn> {
        if conn.is_none() {
            let t = Instant::now();
            let c = self.connection_for(listen, t)?;
            let held = self.store.hold(c, listen)?;
            log::debug!(target: "leasering", "node {}: connection ready in {:?} (listen: {listen})",
                self.node_id, t.elapsed());
            *conn = Some(held);
        }
        Ok(conn.as_mut().expect("connected above"))
    }

    // ---- watcher --------------------------------------------------------------

    fn watcher_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        let mut conn: Option<HeldConn> = None;
        loop {
            if matches!(
                shutdown.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            ) || !self.honor_freeze(shutdown)
                || self.session.read().status() == Status::Stopped
            {
                break;
            }
            if conn.is_some() || !self.cfg.notifications {
                // A (re)join's connection this watcher does not need: back
                // to the pool, or it would hold one of the pool's slots.
                if let Some(mut spare) = self.join_conn.lock().take() {
                    let _ = spare.batch_execute("UNLISTEN *");
                }
            }
            let fresh = conn.is_none();
            let result = self.held(&mut conn, self.cfg.notifications).and_then(|c| {
                if fresh {
                    self.session.write().watcher_connected();
                }
                self.collect_drains();
                let step = {
                    let mut s = self.session.write();
                    // Views that notifications carried are adopted here.
                    let op = (s.ring_epoch() > s.ownership().view_epoch())
                        .then(|| self.op_at(Kind::View, s.ownership().view_epoch()));
                    let (step, out) = s.watcher_next(Instant::now());
                    self.publish(&s, out);
                    if let Some(op) = op {
                        op.finish(s.ownership().view_epoch(), assigned(&s), "notified");
                    }
                    step
                };
                // A catch-up follows every reconnect: its success alone
                // does not show that the watcher can do its work again.
                let proves = !matches!(step, WatcherStep::CatchUp { .. });
                self.watch(c, step, shutdown).map(|alive| (alive, proves))
            });
            match result {
                Ok((true, proves)) => {
                    if proves && self.session.read().watcher_failing().is_some() {
                        self.session.write().watcher_ok();
                    }
                }
                // The connection died while waiting: a new one at once.
                Ok((false, _)) => conn = None,
                Err(e) => {
                    log::warn!(target: "leasering", "node {}: watcher: {}", self.node_id, e);
                    self.telemetry.db_error(DbOp::Watch, e.kind());
                    self.session
                        .write()
                        .watcher_failed(Instant::now(), e.to_string());
                    conn = None;
                    if let Err(RecvTimeoutError::Disconnected) =
                        shutdown.recv_timeout(RECONNECT_TICK)
                    {
                        break;
                    }
                }
            }
        }
        if let Some(c) = conn {
            self.store.unhold(c);
        }
    }

    /// Runs one watcher step on its connection. `Ok(false)`: the connection
    /// was lost while waiting for notifications.
    fn watch(&self, c: &mut HeldConn, step: WatcherStep, shutdown: &Receiver<()>) -> Result<bool> {
        match step {
            WatcherStep::CatchUp { from, ticket } => {
                let op = self.op_at(Kind::View, from);
                let read = self.store.catch_up(c, from)?;
                self.update(|s, now| s.caught_up(ticket, read, now));
                let s = self.session.read();
                op.finish(s.ownership().view_epoch(), assigned(&s), "caught up");
            }
            WatcherStep::Take { partitions, ticket } => {
                let op = self.op(Kind::Take);
                let t = Instant::now();
                let took = self.store.take(c, ticket.incarnation(), &partitions)?;
                let got = took.got.len();
                log::debug!(target: "leasering", "node {}: took {} of {} claims in {:?} ({} held by others)",
                    self.node_id, got, partitions.len(), t.elapsed(), took.held_by.len());
                self.update(|s, now| s.took(ticket, took, now));
                self.finish_with(op, partitions.len(), format_args!("took {got}"));
            }
            WatcherStep::Release { claims, ticket } => {
                let op = self.op(Kind::Release);
                let t = Instant::now();
                let freed = self
                    .store
                    .release_claims(c, ticket.incarnation(), &claims)?;
                log::debug!(target: "leasering", "node {}: gave back {freed} of {} claims in {:?}",
                    self.node_id, claims.len(), t.elapsed());
                self.update(|s, now| s.released(ticket, now));
                self.finish_with(op, claims.len(), format_args!("freed {freed}"));
            }
            WatcherStep::Wait(timeout) => {
                let timeout = if self.session.read().draining_count() > 0 {
                    timeout.min(DRAIN_POLL)
                } else {
                    timeout
                };
                if let Err(e) = self.wait_for_change(c, timeout, shutdown) {
                    log::warn!(target: "leasering", "node {}: watcher lost its connection: {e}", self.node_id);
                    self.telemetry.db_error(DbOp::Watch, e.kind());
                    self.session
                        .write()
                        .watcher_failed(Instant::now(), e.to_string());
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Hands the drains whose guards were dropped to the session.
    pub(crate) fn collect_drains(&self) {
        let ids: Vec<u64> = self.drained.1.try_iter().collect();
        if !ids.is_empty() {
            self.update(|s, now| {
                let mut out = crate::protocol::output::Output::default();
                for id in ids {
                    out.merge(s.drained(id, now));
                }
                out
            });
        }
    }

    /// Waits up to `timeout` for a notification (or, without notifications,
    /// for a wake-up from another thread) and hands what arrived to the
    /// session.
    fn wait_for_change(
        &self,
        c: &mut HeldConn,
        timeout: Duration,
        shutdown: &Receiver<()>,
    ) -> Result<()> {
        if self.cfg.notifications {
            let notices = self.store.notices(c, timeout)?;
            if !notices.is_empty() {
                let mut s = self.session.write();
                for n in notices {
                    s.notified(n);
                }
            }
        } else {
            select! {
                recv(self.wake_watcher.1) -> _ => {},
                recv(shutdown) -> _ => {},
                default(timeout) => {},
            }
        }
        while self.wake_watcher.1.try_recv().is_ok() {}
        Ok(())
    }

    // ---- cleanup --------------------------------------------------------------

    fn cleanup_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        loop {
            let step = self.session.write().cleanup_next(Instant::now());
            match step {
                CleanupStep::Stop => break,
                CleanupStep::Wait(d) => {
                    select! {
                        recv(shutdown) -> _ => break,
                        recv(self.wake_cleanup.1) -> _ => {},
                        default(d) => {},
                    }
                    if !self.honor_freeze(shutdown) {
                        break;
                    }
                }
                CleanupStep::Run { node } => {
                    let op = self.op(Kind::Cleanup);
                    let result = self
                        .pool
                        .get(self.cfg.effective_statement_timeout())
                        .map_err(|e| Error::pool("cleanup", e))
                        .and_then(|mut conn| self.store.cleanup(&mut conn));
                    match result {
                        Ok(cleaned) => {
                            let removed = cleaned.removed.len();
                            self.update(|s, now| s.cleaned(cleaned, now));
                            self.finish_with(op, removed, "cleaned");
                        }
                        Err(e) => {
                            log::warn!(target: "leasering", ring = self.cfg.ring_id.as_str(),
                                node = self.node_id.as_str(), op = "cleanup", error = e.to_string().as_str();
                                "node {}: cleanup of {node:?} failed: {}", self.node_id, e);
                            self.telemetry.db_error(DbOp::Cleanup, e.kind());
                            self.session.write().cleanup_failed(node, Instant::now());
                        }
                    }
                }
            }
        }
    }

    // ---- fence ----------------------------------------------------------------

    fn fence_loop(self: &Arc<Self>, shutdown: &Receiver<()>) {
        loop {
            let deadline = {
                let s = self.session.read();
                if s.status() == Status::Stopped && s.draining_count() == 0 {
                    break;
                }
                s.fence_deadline()
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
            self.update(|s, now| s.tick(now));
        }
    }

    // ---- spans --------------------------------------------------------------

    /// Starts an operation's span at the view's epoch.
    pub(crate) fn op(&self, kind: Kind) -> Op {
        self.op_at(kind, self.session.read().ownership().view_epoch())
    }

    fn op_at(&self, kind: Kind, epoch: u64) -> Op {
        Op::start(kind, &self.cfg.ring_id, &self.node_id, epoch)
    }

    /// Ends `op` with the view's epoch and active partitions.
    fn finish(&self, op: Op, outcome: &str) {
        let s = self.session.read();
        let own = s.ownership();
        op.finish(own.view_epoch(), own.active_count() as usize, outcome);
    }

    /// Ends `op` with the view's epoch and `partitions`.
    pub(crate) fn finish_with(&self, op: Op, partitions: usize, outcome: impl std::fmt::Display) {
        op.finish(
            self.session.read().ownership().view_epoch(),
            partitions,
            outcome,
        );
    }

    // ---- the test hook --------------------------------------------------------

    /// Sleeps while the test hook says this member is paused; false if the
    /// member is shutting down meanwhile.
    #[cfg(feature = "test-util")]
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

    /// Without the `test-util` feature a member is never frozen.
    #[cfg(not(feature = "test-util"))]
    #[inline]
    fn honor_freeze(&self, _shutdown: &Receiver<()>) -> bool {
        true
    }
}

/// Partitions assigned to the member (active or pending).
fn assigned(s: &crate::protocol::Session) -> usize {
    let own = s.ownership();
    own.active_count() as usize + own.pending_count() as usize
}
