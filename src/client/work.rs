//! The work thread (`leasering-work-*`): every member's takes, releases
//! and catch-ups, and every observer's reads, one step at a time and in
//! turn, on a connection borrowed from the pool while there is work. It is
//! woken by the connection thread (notifications), by members (a view
//! adopted, a drain ended), and by drain guards dropped.
//!
//! The connection is given back to the pool once nothing has run for
//! [`IDLE_RETURN`]: at rest a client holds only its listening connection.
//! While it is kept, its prepared statements are reused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::{members, observers, stopping, Shared};
use crate::error::Result;
use crate::protocol::input::Input;
use crate::store::{hold, HeldConn};

/// A borrowed connection goes back to the pool after this long without
/// work.
const IDLE_RETURN: Duration = Duration::from_millis(250);
/// Longest wait with nothing planned.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Wait before the next step after the connection failed.
const RECONNECT: Duration = Duration::from_millis(100);

pub(super) fn run(shared: &Arc<Shared>, shutdown: &Receiver<()>) {
    let mut conn: Option<HeldConn> = None;
    let mut last_work = Instant::now();
    let mut turn = 0usize;
    while !stopping(shutdown) {
        if let Some(spare) = shared.spare.lock().take() {
            // A first member's join connection: its first take needs no
            // connection opened.
            match conn {
                None => conn = Some(spare),
                Some(_) => spare.unhold(),
            }
        }
        collect_drains(shared);
        let now = Instant::now();
        let mut wait = IDLE_TICK;
        let mut ran = false;
        let mut failed = false;
        let all = members(shared);
        let n = all.len().max(1);
        turn = turn.wrapping_add(1);
        // One step per member per pass, starting with another member each
        // time: a member with much to do does not hold up the others.
        for i in 0..all.len() {
            let m = &all[(turn + i) % n];
            if let Some(left) = m.frozen() {
                wait = wait.min(left);
                continue;
            }
            match m.watch_step(&mut conn, || connect(shared)) {
                Ok(None) => ran = true,
                Ok(Some(d)) => wait = wait.min(d),
                Err(e) => {
                    failed = true;
                    if e.connection_lost() || conn.as_mut().is_some_and(|c| c.client.is_closed()) {
                        conn = None;
                    }
                }
            }
        }
        for o in observers(shared) {
            match o.step(&mut conn, || connect(shared), now) {
                Ok(None) => ran = true,
                Ok(Some(d)) => wait = wait.min(d),
                Err(_) => {
                    failed = true;
                    conn = None;
                }
            }
        }
        if ran {
            last_work = Instant::now();
            continue;
        }
        if failed {
            wait = wait.min(RECONNECT);
        }
        if conn.is_some() {
            let idle = last_work.elapsed();
            if idle >= IDLE_RETURN {
                if let Some(c) = conn.take() {
                    c.unhold();
                }
            } else {
                wait = wait.min(IDLE_RETURN - idle);
            }
        }
        let woke = select! {
            recv(shutdown) -> _ => false,
            recv(shared.wake_work.1) -> _ => true,
            recv(shared.drained.1) -> d => {
                if let Ok((uid, id)) = d {
                    drained(shared, uid, id);
                }
                true
            }
            default(wait) => true,
        };
        if !woke {
            break;
        }
        while shared.wake_work.1.try_recv().is_ok() {}
    }
    if let Some(c) = conn {
        c.unhold();
    }
}

/// Longest wait for a connection from the pool. Short, because this
/// thread also adopts the views that notifications carry, between steps:
/// a member waiting a statement timeout for a connection (10 s, while the
/// server took that long to open one for each of 1,024 clients starting at
/// once) trailed the ring long enough to be evicted by the lag bound. The
/// pool goes on opening the connection meanwhile, and the next borrow
/// finds it.
const BORROW_WAIT: Duration = Duration::from_secs(1);

/// A connection for the work thread, borrowed from the pool.
fn connect(shared: &Shared) -> Result<HeldConn> {
    let timeout = shared.statement_timeout();
    let c = shared.pool.get(
        timeout.min(BORROW_WAIT),
        "borrow a connection for takes and releases",
    )?;
    hold(c, timeout, !shared.mode().transaction_pooling())
}

/// Hands the drains whose guards were dropped to their members.
fn collect_drains(shared: &Shared) {
    let ids: Vec<(u64, u64)> = shared.drained.1.try_iter().collect();
    for (uid, id) in ids {
        drained(shared, uid, id);
    }
}

fn drained(shared: &Shared, uid: u64, id: u64) {
    let member = shared.members.read().iter().find(|m| m.uid == uid).cloned();
    if let Some(m) = member {
        m.update(|s, now| s.step(Input::Drained { id }, now));
    }
}
