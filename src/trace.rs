//! Spans through the [`tracing`](https://docs.rs/tracing) crate, behind the
//! `tracing` feature: one span per distributed operation a member runs —
//!
//! | span | around | `partitions` |
//! |---|---|---|
//! | `leasering.join` | a join or rejoin transaction | positions taken |
//! | `leasering.view` | reading the ring's changes (catch-up) and adopting the views they lead to | partitions assigned after |
//! | `leasering.take` | a take of claims | partitions asked for (`outcome`: how many were taken) |
//! | `leasering.release` | giving claims back | claims given back |
//! | `leasering.renew` | a lease renewal | partitions active after (`outcome`: `ok`, `failed`, `refused`, `evicted`) |
//! | `leasering.cleanup` | removing crashed members | members removed |
//! | `leasering.leave` | the leave transaction of `stop()` | partitions active before |
//!
//! Spans are at level `debug` (a renewal runs every third of the lease
//! TTL). Each has the fields `ring`, `node`, `epoch` (the member's view
//! epoch when the operation ended), `partitions`, `outcome` (`error` when
//! it failed) and `duration_ms`, and ends with a `debug` event carrying
//! the same fields. tracing's `log` feature is on: without a tracing
//! subscriber, the spans and events reach `log` users (target
//! `leasering`). Without the feature every call here compiles to nothing.

#[cfg(feature = "tracing")]
use std::time::Instant;

/// An operation in progress; its span ends when it is finished or dropped.
pub(crate) struct Op {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "tracing")]
    name: &'static str,
    #[cfg(feature = "tracing")]
    start: Instant,
    #[cfg(feature = "tracing")]
    done: bool,
}

/// Starts the span `name` (one of the table's, without the prefix's dot:
/// written in full, e.g. `"leasering.take"`).
#[cfg(feature = "tracing")]
macro_rules! op_span {
    ($name:literal, $ring:expr, $node:expr, $epoch:expr) => {
        tracing::debug_span!(
            target: "leasering",
            $name,
            ring = $ring,
            node = $node,
            epoch = $epoch,
            partitions = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty
        )
    };
}

/// The kinds of operation (the span names of the table).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Join,
    View,
    Take,
    Release,
    Renew,
    Cleanup,
    Leave,
}

impl Op {
    /// Starts an operation of member `node` of ring `ring`, whose view is
    /// at `epoch`.
    #[cfg(feature = "tracing")]
    pub(crate) fn start(kind: Kind, ring: &str, node: &str, epoch: u64) -> Op {
        let (name, span) = match kind {
            Kind::Join => (
                "leasering.join",
                op_span!("leasering.join", ring, node, epoch),
            ),
            Kind::View => (
                "leasering.view",
                op_span!("leasering.view", ring, node, epoch),
            ),
            Kind::Take => (
                "leasering.take",
                op_span!("leasering.take", ring, node, epoch),
            ),
            Kind::Release => (
                "leasering.release",
                op_span!("leasering.release", ring, node, epoch),
            ),
            Kind::Renew => (
                "leasering.renew",
                op_span!("leasering.renew", ring, node, epoch),
            ),
            Kind::Cleanup => (
                "leasering.cleanup",
                op_span!("leasering.cleanup", ring, node, epoch),
            ),
            Kind::Leave => (
                "leasering.leave",
                op_span!("leasering.leave", ring, node, epoch),
            ),
        };
        Op {
            span,
            name,
            start: Instant::now(),
            done: false,
        }
    }

    /// Without the `tracing` feature: nothing.
    #[cfg(not(feature = "tracing"))]
    #[inline]
    pub(crate) fn start(_kind: Kind, _ring: &str, _node: &str, _epoch: u64) -> Op {
        Op {}
    }

    /// Ends the operation: records the epoch it ended at, the partitions
    /// it concerned and its outcome, and the duration.
    #[cfg(feature = "tracing")]
    pub(crate) fn finish(mut self, epoch: u64, partitions: usize, outcome: impl std::fmt::Display) {
        self.done = true;
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let span = &self.span;
        // Each record is a log line of its own where only `log` listens:
        // there the closing event below carries the fields.
        if tracing::dispatcher::has_been_set() {
            span.record("epoch", epoch);
            span.record("partitions", partitions as u64);
            span.record("outcome", tracing::field::display(&outcome));
            span.record("duration_ms", ms);
        }
        span.in_scope(|| {
            tracing::debug!(target: "leasering", epoch, partitions, outcome = %outcome, duration_ms = ms,
                "{} {outcome} in {ms:.2} ms", self.name);
        });
    }

    /// Without the `tracing` feature: nothing.
    #[cfg(not(feature = "tracing"))]
    #[inline]
    pub(crate) fn finish(self, _epoch: u64, _partitions: usize, _outcome: impl std::fmt::Display) {}
}

#[cfg(feature = "tracing")]
impl Drop for Op {
    /// An operation dropped unfinished (an error returned early) still
    /// ends with its duration.
    fn drop(&mut self) {
        if !self.done && tracing::dispatcher::has_been_set() {
            let ms = self.start.elapsed().as_secs_f64() * 1000.0;
            self.span.record("outcome", "error");
            self.span.record("duration_ms", ms);
        }
    }
}
