//! The changes thread (`leasering-changes-*`): the membership transactions
//! a running member makes on its own — rejoins after an eviction, and the
//! removal of crashed members at the moment their lease ends — each on a
//! connection borrowed for it. They take the ring's lock and may wait for
//! it: apart from the takes and the renewals, so that neither waits
//! behind them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{members, sleep, stopping, Shared};
use crate::protocol::input::Input;
use crate::protocol::output::CleanupStep;
use crate::telemetry::DbOp;
use crate::trace::Kind;

/// Longest wait with nothing planned.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub(super) fn run(shared: &Arc<Shared>, shutdown: &Receiver<()>) {
    while !stopping(shutdown) {
        let mut wait = IDLE_TICK;
        for m in members(shared) {
            if let Some(left) = m.frozen() {
                wait = wait.min(left);
                continue;
            }
            if m.take_rejoin_wanted() {
                let ticket = m.session.read().ticket();
                match m.rejoin() {
                    Ok(true) => {
                        *m.last_error.lock() = None;
                        m.telemetry.rejoined();
                        shared.wake_work();
                        shared.wake_conn();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        log::warn!(target: "leasering", ring = m.cfg.ring_id.as_str(),
                            node = m.node_id.as_str(), op = "rejoin", error = e.to_string().as_str();
                            "node {}: rejoin failed: {}", m.node_id, e);
                        m.telemetry.db_error(DbOp::Rejoin, e.kind());
                        *m.last_error.lock() = Some(e.to_string());
                        m.update(|s, now| s.step(Input::RejoinFailed { ticket }, now));
                    }
                }
            }
            let step = m.session.write().cleanup_next(Instant::now());
            match step {
                CleanupStep::Stop => {}
                CleanupStep::Wait(d) => wait = wait.min(d),
                CleanupStep::Run { node, ticket } => {
                    let op = m.op(Kind::Cleanup);
                    let result = shared
                        .pool
                        .get(m.cfg.effective_statement_timeout(), "cleanup")
                        .and_then(|mut conn| m.store.cleanup(&mut conn));
                    match result {
                        Ok(cleaned) => {
                            let removed = cleaned.removed.len();
                            m.update(|s, now| s.step(Input::Cleaned { ticket, cleaned }, now));
                            m.finish_with(op, removed, "cleaned");
                        }
                        Err(e) => {
                            log::warn!(target: "leasering", ring = m.cfg.ring_id.as_str(),
                                node = m.node_id.as_str(), op = "cleanup", error = e.to_string().as_str();
                                "node {}: cleanup of {node:?} failed: {}", m.node_id, e);
                            m.telemetry.db_error(DbOp::Cleanup, e.kind());
                            m.update(|s, now| s.step(Input::CleanupFailed { ticket, node }, now));
                        }
                    }
                    wait = Duration::ZERO;
                }
            }
        }
        if wait.is_zero() {
            continue;
        }
        if !sleep(shutdown, &shared.wake_changes.1, wait) {
            break;
        }
    }
}
