//! The client's held connection (`leasering-conn-*`): the one connection a
//! client keeps at rest. It LISTENs on the channel of every ring that has
//! a member or an observer here (and on the client's own, for releases),
//! hands each notification to the members and observers it concerns, and
//! renews every membership's lease in one statement per heartbeat.
//!
//! Renewals never wait behind a take: takes, releases and catch-ups run on
//! the work thread's connection, membership changes on borrowed ones. This
//! thread runs nothing else than the renewal and the LISTEN bookkeeping,
//! and waits for notifications in between.
//!
//! **One statement per heartbeat.** The statement renews every membership
//! due now and every one due within half of its heartbeat interval: after
//! one cycle, members with the same lease TTL renew together. Members with
//! different TTLs share it too: each is renewed at its own interval at the
//! latest, and at most half an interval early when a shorter one is due.
//! One membership's renewal may be refused (the lag bound) or find its row
//! gone while the others go through: each row of the answer is one
//! membership's, applied to its own session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{members, observers, sleep, stopping, Shared};
use crate::error::{Error, Result};
use crate::node::Inner;
use crate::protocol::input::{Input, Renewal};
use crate::protocol::output::HeartbeatStep;
use crate::protocol::Ticket;
use crate::store::payload::parse_payloads;
use crate::store::{hold, HeldConn, RenewItem, Store};
use crate::telemetry::DbOp;
use crate::trace::Kind;

/// Longest wait on the socket: registrations and rejoins change what is
/// due, and a thread blocked on its socket hears of them only this late.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(1);
/// Wait before trying again after the connection failed.
const RECONNECT: Duration = Duration::from_millis(100);
/// A member asking to rejoin is looked at again this soon.
const REJOIN_LOOK: Duration = Duration::from_millis(20);

pub(super) fn run(shared: &Arc<Shared>, shutdown: &Receiver<()>) {
    let mut conn: Option<HeldConn> = None;
    while !stopping(shutdown) {
        let mode = shared.mode();
        if conn.is_none() {
            match connect(shared) {
                Ok(c) => {
                    conn = Some(c);
                    // Notifications may have been missed before this
                    // LISTEN: every member reads what changed.
                    for m in members(shared) {
                        m.update(|s, now| s.step(Input::WatcherConnected, now));
                    }
                    for o in observers(shared) {
                        o.reconnected();
                    }
                    shared.wake_work();
                }
                Err(e) => {
                    log::warn!(target: "leasering", "client {}: no connection for renewals and notifications: {e}", shared.name);
                    // Renewals due meanwhile fail (the members' health
                    // says why); the lease runs out if this goes on.
                    fail_due(shared, &e, Instant::now());
                    if !sleep(shutdown, &shared.wake_conn.1, RECONNECT) {
                        break;
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if let Err(e) = prepare(shared, c) {
            log::warn!(target: "leasering", "client {}: the held connection failed: {e}", shared.name);
            conn = None;
            continue;
        }
        let now = Instant::now();
        let (batch, wait) = due(shared, now);
        if !batch.is_empty() {
            if let Err(e) = renew(shared, c, &batch) {
                if e.connection_lost() {
                    conn = None;
                }
                continue;
            }
        }
        let wait = wait.min(MAX_WAIT);
        if !batch.is_empty() {
            // Look again at once: the renewal may have asked for a rejoin
            // or changed what is due.
            continue;
        }
        // Nothing listened to (the last member left, or is leaving: its
        // `stop()` retired it, and `prepare` above unlistened): nothing can
        // arrive on the socket, and a wait there would hold up the
        // shutdown for `MAX_WAIT` (one `stop()` in 40 took a second).
        if mode.notifications() && !shared.listens_to_nothing() {
            match c.notifications(wait) {
                Ok(notes) => dispatch(shared, notes),
                Err(e) => {
                    log::warn!(target: "leasering", "client {}: lost the listening connection: {e}", shared.name);
                    for m in members(shared) {
                        m.telemetry.db_error(DbOp::Watch, e.kind());
                    }
                    conn = None;
                }
            }
        } else if !sleep(shutdown, &shared.wake_conn.1, wait) {
            break;
        }
    }
    if let Some(c) = conn {
        c.unhold();
    }
}

/// A held connection from the pool, set up for the client's statements.
fn connect(shared: &Shared) -> Result<HeldConn> {
    let t = Instant::now();
    let timeout = shared.statement_timeout();
    let c = shared
        .pool
        .get(timeout, "hold a connection for renewals and notifications")?;
    let mut held = hold(c, timeout, !shared.mode().transaction_pooling())?;
    shared
        .listen_changed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    prepare(shared, &mut held)?;
    log::debug!(target: "leasering", "client {}: connection held after {:?}", shared.name, t.elapsed());
    Ok(held)
}

/// Brings the held connection's LISTENs and timeout up to date.
fn prepare(shared: &Shared, c: &mut HeldConn) -> Result<()> {
    if shared.mode().notifications()
        && shared
            .listen_changed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        let channels = shared.channels();
        let added = match c.listen(&channels) {
            Ok(added) => {
                shared.set_listened(channels);
                added
            }
            Err(e) => {
                shared
                    .listen_changed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
        };
        // A member or observer registered while this thread waited (up to
        // MAX_WAIT) heard nothing on its new channels until now: it reads
        // what it missed, as after a new connection.
        if !added.is_empty() {
            for m in members(shared) {
                if added.contains(&m.store.channel) || added.contains(&m.store.own_channel) {
                    m.update(|s, now| s.step(Input::WatcherConnected, now));
                }
            }
            for o in observers(shared) {
                if o.channel().is_some_and(|ch| added.contains(&ch)) {
                    o.reconnected();
                }
            }
            shared.wake_work();
        }
    }
    c.set_timeout(shared.statement_timeout())
}

/// One membership in this heartbeat's renewal.
pub(super) struct Due {
    member: Arc<Inner>,
    ticket: Ticket,
    ack: u64,
}

/// The memberships to renew now — if any is due, every one due within
/// half its interval — and how long until the next one is due.
fn due(shared: &Shared, now: Instant) -> (Vec<Due>, Duration) {
    let all = members(shared);
    let mut wait = MAX_WAIT;
    let mut any_due = false;
    for m in &all {
        if let Some(left) = m.frozen() {
            wait = wait.min(left);
            continue;
        }
        match m.session.write().heartbeat_next(now) {
            HeartbeatStep::Renew { .. } => any_due = true,
            HeartbeatStep::Wait(d) => wait = wait.min(d),
            HeartbeatStep::Rejoin => {
                m.want_rejoin();
                shared.wake_changes();
                wait = wait.min(REJOIN_LOOK);
            }
            HeartbeatStep::Stop => {}
        }
    }
    if !any_due {
        return (Vec::new(), wait);
    }
    let mut batch = Vec::new();
    for m in all {
        if m.frozen().is_some() {
            continue;
        }
        let ahead = now + m.cfg.effective_heartbeat_interval() / 2;
        let step = m.session.write().heartbeat_next(ahead);
        if let HeartbeatStep::Renew { ack, ticket } = step {
            batch.push(Due {
                member: m,
                ticket,
                ack,
            });
        }
    }
    (batch, Duration::ZERO)
}

/// Renews `batch` (one statement per schema) and hands each membership its
/// answer, or the error to all of them.
fn renew(shared: &Shared, c: &mut HeldConn, batch: &[Due]) -> Result<()> {
    let mut schemas: Vec<&str> = batch.iter().map(|d| d.member.store.schema()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    for schema in schemas {
        let part: Vec<&Due> = batch
            .iter()
            .filter(|d| d.member.store.schema() == schema)
            .collect();
        let ops: Vec<_> = part.iter().map(|d| d.member.op(Kind::Renew)).collect();
        let items: Vec<RenewItem<'_>> = part
            .iter()
            .map(|d| RenewItem {
                store: &d.member.store,
                incarnation: d.ticket.incarnation(),
                ack: d.ack,
            })
            .collect();
        let sent_at = Instant::now();
        let answered = Store::renew_batch(c, &items);
        let took = sent_at.elapsed();
        match answered {
            Ok(replies) => {
                log::debug!(target: "leasering", "client {}: renewed {} memberships in {took:?}", shared.name, part.len());
                for ((d, reply), op) in part.iter().zip(replies).zip(ops) {
                    d.member.telemetry.renewal_took(took);
                    renewed(&d.member, d.ticket, reply, sent_at, op);
                }
            }
            Err(e) => {
                log::warn!(target: "leasering", "client {}: lease renewal of {} memberships failed: {e}", shared.name, part.len());
                for (d, op) in part.iter().zip(ops) {
                    d.member.renewal_failed(d.ticket, &e, op);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// One membership's renewal answer.
fn renewed(m: &Inner, ticket: Ticket, reply: Renewal, sent_at: Instant, op: crate::trace::Op) {
    *m.last_error.lock() = None;
    let out = m.update(|s, now| {
        let renewed = Input::Renewed {
            ticket,
            reply,
            sent_at,
        };
        s.step(renewed, now)
    });
    if let Some((seen, now_on)) = out.timeline_fence {
        log::warn!(target: "leasering", ring = m.cfg.ring_id.as_str(),
            node = m.node_id.as_str(), op = "renew";
            "node {}: the database moved from timeline {} to {} and lost claims or changes this member relied on: fenced (every partition released), rejoining",
            m.node_id, seen, now_on);
    }
    let outcome = match (out.rejoin, out.renewal) {
        (true, _) => "evicted",
        (_, Some(false)) => "refused",
        _ => "ok",
    };
    m.finish(op, outcome);
}

/// Without a connection: the renewals due now fail.
fn fail_due(shared: &Shared, e: &Error, now: Instant) {
    for m in members(shared) {
        if m.frozen().is_some() {
            continue;
        }
        let step = m.session.write().heartbeat_next(now);
        if let HeartbeatStep::Renew { ticket, .. } = step {
            let op = m.op(Kind::Renew);
            m.renewal_failed(ticket, e, op);
        }
    }
}

/// Hands notifications to the members and observers of their channels.
fn dispatch(shared: &Shared, notes: Vec<(String, String)>) {
    if notes.is_empty() {
        return;
    }
    let mut any = false;
    for m in members(shared) {
        let store = &m.store;
        let mine: Vec<_> = notes
            .iter()
            .filter(|(ch, _)| *ch == store.channel || *ch == store.own_channel)
            .flat_map(|(_, p)| parse_payloads(&store.ring_id, p))
            .collect();
        if !mine.is_empty() {
            // A notice only notes what to read or take next (the watcher
            // does it, woken below): nothing to make visible.
            let mut s = m.session.write();
            let now = Instant::now();
            for n in mine {
                let out = s.step(Input::Notified(n), now);
                debug_assert!(out.is_empty(), "a notice changed nothing visible");
            }
            any = true;
        }
    }
    for o in observers(shared) {
        if let Some(ch) = o.channel() {
            for (c, p) in &notes {
                if *c == ch {
                    o.notified(p);
                    any = true;
                }
            }
        }
    }
    if any {
        shared.wake_work();
    }
}
