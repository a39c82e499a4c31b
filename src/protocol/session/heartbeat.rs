//! The session's heartbeat: when the next renewal (or rejoin) is due, and
//! what its answers do.

use std::time::Instant;

use super::Session;
use crate::protocol::input::Renewal;
use crate::protocol::output::{HeartbeatStep, Output};
use crate::protocol::{Status, Ticket};

impl Session {
    /// The heartbeat's next step.
    pub fn heartbeat_next(&mut self, now: Instant) -> HeartbeatStep {
        // A stopping member keeps its lease while its partitions drain.
        match self.own.status() {
            Status::Stopped if self.drains.is_empty() => HeartbeatStep::Stop,
            _ if self.next_renewal > now => HeartbeatStep::Wait(self.next_renewal - now),
            Status::Joining => HeartbeatStep::Rejoin,
            Status::Member | Status::Stopped => HeartbeatStep::Renew {
                ack: self.own.view_epoch(),
                ticket: self.ticket(),
            },
        }
    }

    /// The answer of a [`HeartbeatStep::Renew`] sent at `sent_at`.
    pub fn renewed(
        &mut self,
        ticket: Ticket,
        reply: Renewal,
        sent_at: Instant,
        now: Instant,
    ) -> Output {
        let out = self.on_renewal(ticket, &reply, sent_at, now);
        self.next_renewal = if out.rejoin {
            now
        } else {
            now + self.cfg.heartbeat_interval
        };
        out
    }

    /// A renewal could not be made (no connection, a failed statement).
    pub fn renewal_failed(&mut self, now: Instant) -> Output {
        self.renewal_not_made(now);
        self.refused = false;
        self.next_renewal = now + self.cfg.retry();
        Output {
            renewal: Some(false),
            ..Output::default()
        }
    }

    /// A rejoin failed; the heartbeat tries again a little later.
    pub fn rejoin_failed(&mut self, now: Instant) {
        self.next_renewal = now + self.cfg.retry();
    }
}
