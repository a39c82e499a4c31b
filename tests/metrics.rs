//! The optional `metrics` feature: every metric of the table in
//! `leasering::telemetry` reaches the recorder the application installs,
//! labelled with ring and node, and moves when what it counts happens.
//! A gauge's highest value is kept too, so that a state that lasts a few
//! milliseconds (pending partitions, an epoch lag) is seen.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use leasering::telemetry::METRIC_NAMES;
use leasering::RingNode;
use leasering_testkit::fixtures::*;
use leasering_testkit::{ProxyMode, TcpProxy};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

const SETTLE: Duration = Duration::from_secs(30);

/// A counter's total, a gauge's last and highest value (f64 bits), or a
/// histogram's sample count.
#[derive(Default)]
struct Cell {
    count: AtomicU64,
    last: AtomicU64,
    max: AtomicU64,
}

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.count.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.count.store(v, Ordering::Relaxed);
    }
}
impl GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, v: f64) {
        self.last.store(v.to_bits(), Ordering::Relaxed);
        let _ = self
            .max
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (v > f64::from_bits(m)).then_some(v.to_bits())
            });
    }
}
impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps every metric by "name{labels}", and the names described.
#[derive(Default, Clone)]
struct Store {
    cells: Arc<Mutex<HashMap<String, Arc<Cell>>>>,
    described: Arc<Mutex<BTreeSet<String>>>,
}

impl Store {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.cells.lock().unwrap().entry(name).or_default().clone()
    }
    /// The cells of `name` for `node` whose labels include every `extra`.
    fn matching(&self, name: &str, node: &str, extra: &[&str]) -> Vec<Arc<Cell>> {
        let node = format!("node={node}");
        self.cells
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{name}{{"))
                    && k.split([',', '{', '}']).any(|l| l == node)
                    && extra
                        .iter()
                        .all(|x| k.split([',', '{', '}']).any(|l| l == *x))
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// A counter's total (or a histogram's count) over the matching series.
    fn count(&self, name: &str, node: &str, extra: &[&str]) -> u64 {
        self.matching(name, node, extra)
            .iter()
            .map(|c| c.count.load(Ordering::Relaxed))
            .sum()
    }
    fn gauge(&self, name: &str, node: &str) -> f64 {
        self.matching(name, node, &[])
            .first()
            .map(|c| f64::from_bits(c.last.load(Ordering::Relaxed)))
            .unwrap_or(f64::NAN)
    }
    fn gauge_max(&self, name: &str, node: &str) -> f64 {
        self.matching(name, node, &[])
            .first()
            .map(|c| f64::from_bits(c.max.load(Ordering::Relaxed)))
            .unwrap_or(f64::NAN)
    }
    /// Every metric name registered with a `node` label, and only those.
    fn names(&self) -> BTreeSet<String> {
        self.cells
            .lock()
            .unwrap()
            .keys()
            .map(|k| k.split('{').next().unwrap().to_string())
            .collect()
    }
}

impl Recorder for Store {
    fn describe_counter(&self, n: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().insert(n.as_str().into());
    }
    fn describe_gauge(&self, n: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().insert(n.as_str().into());
    }
    fn describe_histogram(&self, n: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().insert(n.as_str().into());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

/// The test binary's one recorder.
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let s = Store::default();
        metrics::set_global_recorder(s.clone()).expect("the only recorder of this test binary");
        s
    })
}

/// The incarnation of `node`'s member row.
fn incarnation(ring: &str, node: &str) -> i64 {
    let mut c = db().client().unwrap();
    c.query_one(
        "SELECT incarnation FROM leasering.members WHERE ring_id = $1 AND node_id = $2",
        &[&ring, &node],
    )
    .unwrap()
    .get(0)
}

/// Joins, a graceful leave, a crash, a frozen holder, an epoch heard of
/// before it is adopted, and a claim the database gives a member that does
/// not use it: the partition gauges, the handoff histogram by cause, the
/// renewal series, the epoch gauges, cleanup and reconciliation.
#[test]
fn membership_changes_move_the_partition_handoff_epoch_and_claim_metrics() {
    init_logs();
    let m = store();
    let ring = ring_name("metrics");
    let ttl = Duration::from_secs(2);
    // Leases long enough for the windows of the steps below: a join while
    // `ma` is frozen (within what is left of `ma`'s local lease), a
    // reconciliation by `ma`'s next renewal (every third of its TTL) before
    // `mc`'s lease ends, and a leave that `ma`, hearing of it only through
    // a renewal, adopts long before `mb`'s last reported lease end (a
    // removal adopted within a third of a TTL of it counts as a crash).
    let held = ttl * 4;
    let member = |node: &str, notifications: bool, ttl: Duration| {
        builder(pool(4), &ring, node)
            .ring_size(64)
            .lease_ttl(ttl)
            .pooling(if notifications {
                leasering::Pooling::Session
            } else {
                leasering::Pooling::SessionPolling
            })
    };
    let start = |node: &str, notifications: bool, ttl: Duration| -> RingNode {
        member(node, notifications, ttl).start().unwrap()
    };
    // `ma` hears of changes only through its renewals' answers: each one
    // shows as an epoch lag until its watcher catches up.
    let a = start("ma", false, held);
    wait_until(SETTLE, "ma to own the ring and renew twice", || {
        a.owned_partitions().len() == 64
            && m.count("leasering_renewals_total", "ma", &["result=ok"]) >= 2
    });
    assert_eq!(m.gauge("leasering_partitions_active", "ma"), 64.0);
    assert!(m.count("leasering_renewal_duration_seconds", "ma", &[]) >= 2);
    assert!(m.gauge("leasering_last_renewal_timestamp_seconds", "ma") > 1.6e9);
    assert!(m.gauge("leasering_lease_remaining_seconds", "ma") > 0.0);
    assert!(m.gauge("leasering_epoch", "ma") >= 1.0);
    assert_eq!(m.gauge("leasering_healthy", "ma"), 1.0);
    assert!(a.status().health.is_healthy());

    // A join while `ma` is frozen: `mb` waits for claims `ma` holds. The
    // pause (`mb` made ready beforehand) is far longer than the join and
    // its first take need, and well within what is left of `ma`'s local
    // lease (more than half its TTL).
    let b = member("mb", true, held * 2);
    a.pause_threads_for(ttl);
    let b = b.start().unwrap();
    wait_until(
        SETTLE,
        "mb's share to arrive through a join handoff",
        || {
            m.count("leasering_handoff_seconds", "mb", &["cause=join"]) > 0
                && m.count(
                    "leasering_partitions_released_total",
                    "ma",
                    &["reason=handoff"],
                ) > 0
                && m.gauge("leasering_partitions_active", "mb")
                    == b.view().partitions_of("mb").len() as f64
        },
    );
    assert!(m.gauge_max("leasering_partitions_pending", "mb") > 0.0);
    assert!(m.gauge_max("leasering_partitions_waiting_for_claim", "mb") > 0.0);
    assert_eq!(
        m.count("leasering_partitions_acquired_total", "mb", &[]),
        b.view().partitions_of("mb").len() as u64
    );
    wait_until(SETTLE, "ma's epoch lag to show and end", || {
        m.gauge_max("leasering_epoch_lag", "ma") >= 1.0
            && m.gauge("leasering_epoch_lag", "ma") == 0.0
    });

    // A graceful leave: `ma` takes `mb`'s share over, cause `leave`.
    b.stop().unwrap();
    assert!(!b.status().health.is_healthy());
    assert_eq!(m.gauge("leasering_healthy", "mb"), 0.0);
    wait_until(SETTLE, "a leave handoff on ma", || {
        m.count("leasering_handoff_seconds", "ma", &["cause=leave"]) > 0
            && a.owned_partitions().len() == 64
    });

    // A crash; before its lease ends, one of its claims is given to `ma`
    // in the database (as a take whose answer was lost would leave it):
    // `ma`'s next renewal reads it and gives it back. (`mc`'s lease runs
    // at least two thirds of its TTL after the crash: more than a TTL of
    // slack after `ma`'s next renewal, a third of its own.)
    let c = start("mc", true, held);
    wait_until(SETTLE, "mc to own its share", || {
        !c.owned_partitions().is_empty()
            && a.owned_partitions().len() + c.owned_partitions().len() == 64
    });
    c.crash();
    let moved = db()
        .client()
        .unwrap()
        .execute(
            "UPDATE leasering.claims SET holder = $1 WHERE ring_id = $2 AND partition = \
             (SELECT min(partition) FROM leasering.claims WHERE ring_id = $2 AND holder = $3)",
            &[&incarnation(&ring, "ma"), &ring, &incarnation(&ring, "mc")],
        )
        .unwrap();
    assert_eq!(moved, 1);
    wait_until(SETTLE, "ma to give back the claim it does not use", || {
        m.count("leasering_claims_reconciled_total", "ma", &[]) > 0
    });
    wait_until(
        SETTLE,
        "ma to clean mc up and take its share, cause crash",
        || {
            m.count("leasering_members_removed_total", "ma", &[]) > 0
                && m.count("leasering_handoff_seconds", "ma", &["cause=crash"]) > 0
                && a.owned_partitions().len() == 64
        },
    );
    a.stop().unwrap();
}

/// A member whose database link stalls for longer than its lease: failed
/// renewals and database errors, then it fences itself (unhealthy, no
/// lease left); its peer cleans it up; when the link comes back its lease
/// is gone: an eviction and a rejoin.
#[test]
fn a_stalled_link_moves_the_failure_fence_eviction_and_rejoin_metrics() {
    init_logs();
    let m = store();
    let db = db();
    let ring = ring_name("metrics-stall");
    let ttl = Duration::from_secs(1);
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    let p = builder(db.pool_via(proxy.port(), 4).unwrap(), &ring, "sp")
        .ring_size(64)
        .lease_ttl(ttl)
        .stop_timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    let q = builder(pool(4), &ring, "sq")
        .ring_size(64)
        .lease_ttl(ttl)
        .start()
        .unwrap();
    wait_until(SETTLE, "sp and sq to share the ring", || {
        p.owned_partitions().len() + q.owned_partitions().len() == 64
            && !p.owned_partitions().is_empty()
            && m.gauge("leasering_healthy", "sp") == 1.0
    });
    proxy.set_mode(ProxyMode::Stall);
    wait_until(SETTLE, "sp to fence itself", || {
        m.count("leasering_self_fences_total", "sp", &[]) > 0
            && m.gauge("leasering_healthy", "sp") == 0.0
            && m.gauge("leasering_partitions_active", "sp") == 0.0
    });
    let reason = p
        .status()
        .health
        .reason()
        .map(str::to_string)
        .expect("a fenced member is unhealthy");
    assert!(reason.starts_with("fenced"), "{reason}");
    // A stalled link hangs the renewal on the connection the heartbeat
    // keeps (it takes it at start) until TCP notices; the proxy's cut is
    // that moment (keepalives, in production). New connections then stall
    // in the pool: failed renewals.
    proxy.cut();
    wait_until(SETTLE, "sp's renewals to fail with database errors", || {
        m.count("leasering_renewals_total", "sp", &["result=failed"]) > 0
            && m.count("leasering_database_errors_total", "sp", &["op=renew"]) > 0
    });
    // The reason names the failures and their last error (and `status()`
    // returns: it once deadlocked here, on the error's lock taken twice).
    wait_until(SETTLE, "sp's reason to name its failing renewals", || {
        let (tx, rx) = std::sync::mpsc::channel();
        let node = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(node.status());
        });
        let st = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("status() of a member whose renewals fail did not return");
        st.last_error.is_some()
            && st
                .health
                .reason()
                .is_some_and(|r| r.contains("renewals failing for") && r.contains("last error: "))
    });
    wait_until(SETTLE, "sq to clean sp up and cover the ring", || {
        m.count("leasering_members_removed_total", "sq", &[]) > 0
            && q.owned_partitions().len() == 64
    });
    proxy.set_mode(ProxyMode::Pass);
    wait_until(SETTLE, "sp to learn of its eviction and rejoin", || {
        m.count("leasering_evictions_total", "sp", &[]) > 0
            && m.count("leasering_rejoins_total", "sp", &[]) > 0
            && m.gauge("leasering_healthy", "sp") == 1.0
    });
    assert!(p.status().health.is_healthy());
    p.stop().unwrap();
    q.stop().unwrap();
}

/// Every name of the table is described (a `# HELP` line) and, once both
/// tests above have run, registered; nothing else is.
#[test]
fn the_table_names_every_metric() {
    let m = store();
    let node = builder(pool(4), &ring_name("metrics-names"), "names")
        .ring_size(8)
        .start()
        .unwrap();
    let described = m.described.lock().unwrap().clone();
    let table: BTreeSet<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(described, table, "described names and the table differ");
    node.stop().unwrap();
    let unknown: Vec<String> = m.names().difference(&table).cloned().collect();
    assert!(
        unknown.is_empty(),
        "metrics missing from the table: {unknown:?}"
    );
}
