//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, behind
//! the `metrics` feature: install any recorder (the Prometheus exporter,
//! StatsD, ...) and these appear. Without the feature every call here
//! compiles to nothing. The library only emits; serving them is the
//! application's (the README shows the dozen lines with
//! `metrics-exporter-prometheus` and `tiny_http`; `ringnode --http` does
//! it).
//!
//! Every series carries the labels `ring` (the ring id) and `node` (the
//! member's node id); a few add one label from a small fixed set, named in
//! the table. No label ever holds a partition number or another unbounded
//! value. Gauges are set whenever the member's state changes and at every
//! heartbeat (a third of the lease TTL by default); a timestamp gauge lets
//! an alert see a member whose threads stopped (`time() - …`).
//!
//! Alert rules for these metrics ship beside them, ready to install:
//! `deploy/prometheus/leasering-alerts.yml` (one group, `leasering`), with
//! `promtool test rules` unit tests in `leasering-alerts.test.yml` next to
//! it. Their thresholds assume the default lease TTL; the file's comments
//! say which to change for another.
//!
//! | name | type | extra labels | meaning | alert on |
//! |---|---|---|---|---|
//! | `leasering_partitions_active` | gauge | | partitions this member owns now (0 once its lease ran out locally) | `sum by (ring)` below `max by (ring) (leasering_ring_partitions)` for minutes: partitions nobody owns |
//! | `leasering_partitions_pending` | gauge | | partitions assigned to this member, not active yet (waiting for their claim) | above 0 for longer than a lease TTL |
//! | `leasering_partitions_waiting_for_claim` | gauge | | pending partitions whose claim another member still holds (a frozen or crashed holder delays exactly these until its lease ends) | above 0 for longer than a lease TTL plus the drain timeout |
//! | `leasering_partitions_draining` | gauge | | partitions released locally whose claims are held until the user's work on them stops | above 0 for longer than the drain timeout |
//! | `leasering_ring_partitions` | gauge | | the ring's size (its number of partitions), to compare `sum by (ring) (leasering_partitions_active)` with | |
//! | `leasering_partitions_unassigned` | gauge | | partitions of the ring the placement gives to no member: all of them while every member is ineligible (not ready, or cordoned; see `RingNode::set_ready`, `leasering::cordon`); and the shortfall when the members' capacities add up to less than the ring (`NodeBuilder::capacity`) | above 0 |
//! | `leasering_partitions_moves_pending` | gauge | | on a ring with a move budget (`NodeBuilder::max_moving`), the moves its view's placement still holds back for later steps; 0 without a budget | not falling for several lease TTLs |
//! | `leasering_partitions_acquired_total` | counter | | partitions activated | |
//! | `leasering_partitions_released_total` | counter | `reason`: `handoff`, `lease_expired`, `evicted`, `stopping` | partitions released | rate of `lease_expired`/`evicted` above 0 |
//! | `leasering_handoff_seconds` | histogram | `cause`: `join`, `leave`, `crash` | from partitions becoming pending to their activation, by the membership change behind it (a removal at or after the removed member's lease end counts as a crash; a member made ineligible — unready or cordoned — as a leave, made eligible as a join) | p99 of `join`/`leave` above a second; `crash` is about one lease TTL by design |
//! | `leasering_renewals_total` | counter | `result`: `ok`, `failed` (no answer, an error), `refused` (the lag bound) | lease renewals | rate of `failed` + `refused` above 0 for a minute |
//! | `leasering_renewal_duration_seconds` | histogram | | round trip of a renewal that was answered | p99 above a tenth of the lease TTL |
//! | `leasering_last_renewal_timestamp_seconds` | gauge | | Unix time of the last successful renewal | `time() - …` above half the lease TTL: renewals late; the shipped rule takes `timestamp(…) - …` above twice the default TTL: threads stopped |
//! | `leasering_lease_remaining_seconds` | gauge | | time left on the local lease (0 when none runs) | below a third of the lease TTL |
//! | `leasering_self_fences_total` | counter | | times the local lease ran out without a renewal and the member released everything | any increase |
//! | `leasering_evictions_total` | counter | | times the database no longer held the member's lease (it released everything and rejoins) | any increase |
//! | `leasering_rejoins_total` | counter | | rejoins after an eviction that committed | any increase |
//! | `leasering_epoch` | gauge | | epoch of the member's view of the ring | members of one ring apart for long |
//! | `leasering_epoch_lag` | gauge | | newest ring epoch heard of minus the view's epoch | above 0 for longer than a few seconds |
//! | `leasering_claims_reconciled_total` | counter | | claims the database said this member held but it did not use, given back (a take or release answer lost with its connection) | a steady rate |
//! | `leasering_members_removed_total` | counter | | crashed members this member's cleanup removed | |
//! | `leasering_database_errors_total` | counter | `op`: `renew`, `rejoin`, `watch`, `cleanup`, `leave`; `kind`: `database`, `timeout`, `privileges`, `schema`, `other` | failed database operations | rate above 0 for a minute |
//! | `leasering_healthy` | gauge | | 1 while [`NodeStatus::health`](crate::NodeStatus::health) is healthy, else 0 | 0 |

#[cfg(feature = "metrics")]
use crate::error::ErrorKind;
#[cfg(feature = "metrics")]
use crate::event::ReleaseReason;
use crate::protocol::output::HandoffCause;
use std::time::Duration;

/// How many `NOTIFY`s this process's members have sent so far (membership
/// changes, and releases of claims someone waited for): at most one per
/// transaction. Every `NOTIFY` wakes every listening backend of the
/// database, so this is what the library costs the database's other
/// listeners. Process-wide; without the `metrics` feature too.
pub fn notifications_sent() -> u64 {
    crate::store::NOTIFIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Every metric name of the table, for tests and dashboards.
pub const METRIC_NAMES: &[&str] = &[
    "leasering_partitions_active",
    "leasering_partitions_pending",
    "leasering_partitions_waiting_for_claim",
    "leasering_partitions_draining",
    "leasering_ring_partitions",
    "leasering_partitions_unassigned",
    "leasering_partitions_moves_pending",
    "leasering_partitions_acquired_total",
    "leasering_partitions_released_total",
    "leasering_handoff_seconds",
    "leasering_renewals_total",
    "leasering_renewal_duration_seconds",
    "leasering_last_renewal_timestamp_seconds",
    "leasering_lease_remaining_seconds",
    "leasering_self_fences_total",
    "leasering_evictions_total",
    "leasering_rejoins_total",
    "leasering_epoch",
    "leasering_epoch_lag",
    "leasering_claims_reconciled_total",
    "leasering_members_removed_total",
    "leasering_database_errors_total",
    "leasering_healthy",
];

/// `# HELP` texts (type, name, help), described to the recorder when a
/// member starts.
#[cfg(feature = "metrics")]
const HELP: &[(char, &str, &str)] = &[
    (
        'g',
        "leasering_partitions_active",
        "Partitions this member owns now.",
    ),
    (
        'g',
        "leasering_partitions_pending",
        "Partitions assigned to this member, waiting for their claim.",
    ),
    (
        'g',
        "leasering_partitions_waiting_for_claim",
        "Pending partitions whose claim another member still holds.",
    ),
    (
        'g',
        "leasering_partitions_draining",
        "Partitions released locally whose claims wait for the user's work to stop.",
    ),
    (
        'g',
        "leasering_ring_partitions",
        "The ring's size: its number of partitions.",
    ),
    (
        'g',
        "leasering_partitions_unassigned",
        "Partitions the placement gives to no member (declared capacity below the ring size).",
    ),
    (
        'g',
        "leasering_partitions_moves_pending",
        "Moves the ring's move budget still holds back for later steps.",
    ),
    (
        'c',
        "leasering_partitions_acquired_total",
        "Partitions activated.",
    ),
    (
        'c',
        "leasering_partitions_released_total",
        "Partitions released, by reason.",
    ),
    (
        'h',
        "leasering_handoff_seconds",
        "From partitions becoming pending to their activation, by cause (join, leave, crash).",
    ),
    (
        'c',
        "leasering_renewals_total",
        "Lease renewals, by result (ok, failed, refused).",
    ),
    (
        'h',
        "leasering_renewal_duration_seconds",
        "Round trip of answered lease renewals.",
    ),
    (
        'g',
        "leasering_last_renewal_timestamp_seconds",
        "Unix time of the last successful lease renewal.",
    ),
    (
        'g',
        "leasering_lease_remaining_seconds",
        "Time left on the local lease (0 when none runs).",
    ),
    (
        'c',
        "leasering_self_fences_total",
        "Times the local lease ran out and the member released everything.",
    ),
    (
        'c',
        "leasering_evictions_total",
        "Times the database no longer held this member's lease.",
    ),
    ('c', "leasering_rejoins_total", "Rejoins after an eviction."),
    (
        'g',
        "leasering_epoch",
        "Epoch of this member's view of the ring.",
    ),
    (
        'g',
        "leasering_epoch_lag",
        "Newest ring epoch heard of minus the view's epoch.",
    ),
    (
        'c',
        "leasering_claims_reconciled_total",
        "Claims held in the database but unused, given back by reconciliation.",
    ),
    (
        'c',
        "leasering_members_removed_total",
        "Crashed members this member's cleanup removed.",
    ),
    (
        'c',
        "leasering_database_errors_total",
        "Failed database operations, by operation and kind.",
    ),
    (
        'g',
        "leasering_healthy",
        "1 while the member is healthy (in the ring, lease valid, renewals answered), else 0.",
    ),
];

/// The database operations named by `leasering_database_errors_total`.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum DbOp {
    Renew,
    Rejoin,
    Watch,
    Cleanup,
    Leave,
}

#[cfg(feature = "metrics")]
impl DbOp {
    fn as_str(self) -> &'static str {
        match self {
            DbOp::Renew => "renew",
            DbOp::Rejoin => "rejoin",
            DbOp::Watch => "watch",
            DbOp::Cleanup => "cleanup",
            DbOp::Leave => "leave",
        }
    }
}

/// A renewal's outcome, for `leasering_renewals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Renewed {
    Ok,
    Failed,
    Refused,
}

/// The gauges of one member, set together.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Gauges {
    pub active: u32,
    pub pending: u32,
    pub waiting: u32,
    pub draining: u32,
    /// The ring's size.
    pub ring_partitions: u32,
    /// Partitions of the ring the placement gives to no member.
    pub unassigned: u32,
    /// Moves the ring's budget holds back.
    pub moves_pending: u32,
    pub epoch: u64,
    pub ring_epoch: u64,
    pub lease_left: Duration,
    pub healthy: bool,
}

/// The labels of one member.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    #[cfg(feature = "metrics")]
    labels: [(&'static str, String); 2],
}

#[cfg(feature = "metrics")]
impl Telemetry {
    pub(crate) fn new(ring: &str, node: &str) -> Telemetry {
        // Cheap and idempotent: the recorder may have been installed after
        // an earlier member started.
        for &(kind, name, help) in HELP {
            match kind {
                'c' => metrics::describe_counter!(name, help),
                'g' => metrics::describe_gauge!(name, help),
                _ => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
            }
        }
        let labels = [("ring", ring.to_string()), ("node", node.to_string())];
        // The counters the shipped alerts watch with `increase()`/`rate()`
        // start at 0: a series that first appears at 1 shows no increase,
        // so a member's first self-fence or eviction would go unseen.
        for name in ["leasering_self_fences_total", "leasering_evictions_total"] {
            metrics::counter!(name, &labels).increment(0);
        }
        let telemetry = Telemetry { labels };
        for r in ["ok", "failed", "refused"] {
            metrics::counter!("leasering_renewals_total", &telemetry.with("result", r))
                .increment(0);
        }
        telemetry
    }

    /// The member's labels plus one more.
    fn with(&self, key: &'static str, value: &'static str) -> [(&'static str, String); 3] {
        let [ring, node] = self.labels.clone();
        [ring, node, (key, value.to_string())]
    }

    pub(crate) fn renewal(&self, result: Renewed) {
        let r = match result {
            Renewed::Ok => "ok",
            Renewed::Failed => "failed",
            Renewed::Refused => "refused",
        };
        metrics::counter!("leasering_renewals_total", &self.with("result", r)).increment(1);
        if result == Renewed::Ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!("leasering_last_renewal_timestamp_seconds", &self.labels)
                .set(now.as_secs_f64());
        }
    }

    /// The round trip of an answered renewal.
    pub(crate) fn renewal_took(&self, took: Duration) {
        metrics::histogram!("leasering_renewal_duration_seconds", &self.labels)
            .record(took.as_secs_f64());
    }

    pub(crate) fn released(&self, n: usize, reason: ReleaseReason) {
        let reason = match reason {
            ReleaseReason::Handoff => "handoff",
            ReleaseReason::LeaseExpired => "lease_expired",
            ReleaseReason::Evicted => "evicted",
            ReleaseReason::Stopping => "stopping",
        };
        metrics::counter!(
            "leasering_partitions_released_total",
            &self.with("reason", reason)
        )
        .increment(n as u64);
    }

    /// The local lease ran out without a renewal (once per fencing, however
    /// many releases it makes).
    pub(crate) fn self_fenced(&self) {
        metrics::counter!("leasering_self_fences_total", &self.labels).increment(1);
    }

    pub(crate) fn evicted(&self) {
        metrics::counter!("leasering_evictions_total", &self.labels).increment(1);
    }

    pub(crate) fn rejoined(&self) {
        metrics::counter!("leasering_rejoins_total", &self.labels).increment(1);
    }

    pub(crate) fn acquired(&self, n: usize, waited: Option<Duration>, cause: HandoffCause) {
        metrics::counter!("leasering_partitions_acquired_total", &self.labels).increment(n as u64);
        if let Some(w) = waited {
            metrics::histogram!(
                "leasering_handoff_seconds",
                &self.with("cause", cause.as_str())
            )
            .record(w.as_secs_f64());
        }
    }

    pub(crate) fn removed_members(&self, n: usize) {
        metrics::counter!("leasering_members_removed_total", &self.labels).increment(n as u64);
    }

    pub(crate) fn reconciled(&self, n: u32) {
        metrics::counter!("leasering_claims_reconciled_total", &self.labels).increment(n as u64);
    }

    pub(crate) fn db_error(&self, op: DbOp, kind: ErrorKind) {
        let kind = match kind {
            ErrorKind::Database => "database",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Privileges => "privileges",
            ErrorKind::Schema => "schema",
            _ => "other",
        };
        let [ring, node] = &self.labels;
        metrics::counter!("leasering_database_errors_total",
            "ring" => ring.1.clone(), "node" => node.1.clone(),
            "op" => op.as_str(), "kind" => kind)
        .increment(1);
    }

    pub(crate) fn state(&self, g: Gauges) {
        let l = &self.labels;
        metrics::gauge!("leasering_partitions_active", l).set(g.active as f64);
        metrics::gauge!("leasering_partitions_pending", l).set(g.pending as f64);
        metrics::gauge!("leasering_partitions_waiting_for_claim", l).set(g.waiting as f64);
        metrics::gauge!("leasering_partitions_draining", l).set(g.draining as f64);
        metrics::gauge!("leasering_ring_partitions", l).set(g.ring_partitions as f64);
        metrics::gauge!("leasering_partitions_unassigned", l).set(g.unassigned as f64);
        metrics::gauge!("leasering_partitions_moves_pending", l).set(g.moves_pending as f64);
        metrics::gauge!("leasering_epoch", l).set(g.epoch as f64);
        metrics::gauge!("leasering_epoch_lag", l).set(g.ring_epoch.saturating_sub(g.epoch) as f64);
        metrics::gauge!("leasering_lease_remaining_seconds", l).set(g.lease_left.as_secs_f64());
        metrics::gauge!("leasering_healthy", l).set(if g.healthy { 1.0 } else { 0.0 });
    }
}

#[cfg(not(feature = "metrics"))]
impl Telemetry {
    pub(crate) fn new(_ring: &str, _node: &str) -> Telemetry {
        Telemetry {}
    }
    pub(crate) fn renewal(&self, _result: Renewed) {}
    pub(crate) fn renewal_took(&self, _took: Duration) {}
    pub(crate) fn released(&self, _n: usize, _reason: crate::event::ReleaseReason) {}
    pub(crate) fn self_fenced(&self) {}
    pub(crate) fn evicted(&self) {}
    pub(crate) fn rejoined(&self) {}
    pub(crate) fn acquired(&self, _n: usize, _waited: Option<Duration>, _cause: HandoffCause) {}
    pub(crate) fn removed_members(&self, _n: usize) {}
    pub(crate) fn reconciled(&self, _n: u32) {}
    pub(crate) fn db_error(&self, _op: DbOp, _kind: crate::error::ErrorKind) {}
    pub(crate) fn state(&self, _g: Gauges) {}
}
