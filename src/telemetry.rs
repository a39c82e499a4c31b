//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, behind
//! the `metrics` feature: install any recorder (Prometheus exporter, StatsD,
//! ...) and these appear, labelled with `ring` and `node`. Without the
//! feature every call here compiles to nothing.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `leasering_renewals_total` | counter | successful lease renewals |
//! | `leasering_renewal_failures_total` | counter | renewals that failed (database unreachable, refused) |
//! | `leasering_self_fences_total` | counter | times the local lease ran out and the member released everything |
//! | `leasering_evictions_total` | counter | times the database no longer held the member's lease (it rejoined) |
//! | `leasering_acquired_partitions_total` | counter | partitions activated |
//! | `leasering_released_partitions_total` | counter | partitions released, label `reason` |
//! | `leasering_members_removed_total` | counter | crashed members this member cleaned up |
//! | `leasering_active_partitions` | gauge | partitions active now |
//! | `leasering_pending_partitions` | gauge | partitions waiting for the handoff barrier |
//! | `leasering_epoch` | gauge | epoch of the member's view |
//! | `leasering_handoff_seconds` | histogram | from a partition becoming pending to its activation |

#[cfg(feature = "metrics")]
use crate::event::ReleaseReason;
use std::time::Duration;

/// The labels of one member.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    #[cfg(feature = "metrics")]
    labels: [(&'static str, String); 2],
}

#[cfg(feature = "metrics")]
impl Telemetry {
    pub(crate) fn new(ring: &str, node: &str) -> Telemetry {
        Telemetry {
            labels: [("ring", ring.to_string()), ("node", node.to_string())],
        }
    }
    pub(crate) fn renewal(&self, ok: bool) {
        let name = if ok {
            "leasering_renewals_total"
        } else {
            "leasering_renewal_failures_total"
        };
        metrics::counter!(name, &self.labels).increment(1);
    }
    pub(crate) fn released(&self, n: usize, reason: ReleaseReason) {
        let reason = match reason {
            ReleaseReason::Handoff => "handoff",
            ReleaseReason::LeaseExpired => "lease_expired",
            ReleaseReason::Evicted => "evicted",
            ReleaseReason::Stopping => "stopping",
        };
        let [ring, node] = &self.labels;
        metrics::counter!("leasering_released_partitions_total",
            "ring" => ring.1.clone(), "node" => node.1.clone(), "reason" => reason)
        .increment(n as u64);
        match reason {
            "lease_expired" => {
                metrics::counter!("leasering_self_fences_total", &self.labels).increment(1)
            }
            "evicted" => metrics::counter!("leasering_evictions_total", &self.labels).increment(1),
            _ => {}
        }
    }
    pub(crate) fn acquired(&self, n: usize, waited: Option<Duration>) {
        metrics::counter!("leasering_acquired_partitions_total", &self.labels).increment(n as u64);
        if let Some(w) = waited {
            metrics::histogram!("leasering_handoff_seconds", &self.labels).record(w.as_secs_f64());
        }
    }
    pub(crate) fn removed_members(&self, n: usize) {
        metrics::counter!("leasering_members_removed_total", &self.labels).increment(n as u64);
    }
    pub(crate) fn state(&self, active: u32, pending: u32, epoch: u64) {
        metrics::gauge!("leasering_active_partitions", &self.labels).set(active as f64);
        metrics::gauge!("leasering_pending_partitions", &self.labels).set(pending as f64);
        metrics::gauge!("leasering_epoch", &self.labels).set(epoch as f64);
    }
}

#[cfg(not(feature = "metrics"))]
impl Telemetry {
    pub(crate) fn new(_ring: &str, _node: &str) -> Telemetry {
        Telemetry {}
    }
    pub(crate) fn renewal(&self, _ok: bool) {}
    pub(crate) fn released(&self, _n: usize, _reason: crate::event::ReleaseReason) {}
    pub(crate) fn acquired(&self, _n: usize, _waited: Option<Duration>) {}
    pub(crate) fn removed_members(&self, _n: usize) {}
    pub(crate) fn state(&self, _active: u32, _pending: u32, _epoch: u64) {}
}
