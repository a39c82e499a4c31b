//! The optional `metrics` feature: counters and gauges reach whatever
//! recorder the application installs, labelled with ring and node.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}
impl GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, v: f64) {
        self.0.store(v as u64, Ordering::Relaxed);
    }
}
impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps every metric by "name{labels}".
#[derive(Default, Clone)]
struct Store(Arc<Mutex<HashMap<String, Arc<Cell>>>>);

impl Store {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }
    fn get(&self, prefix: &str, node: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.contains(&format!("node={node}")))
            .map(|(_, v)| v.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl Recorder for Store {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
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

#[test]
fn members_report_renewals_partitions_and_handoffs() {
    init_logs();
    let store = Store::default();
    metrics::set_global_recorder(store.clone()).expect("the only recorder of this test binary");
    let ring = ring_name("metrics");
    let a = builder(pool(4), &ring, "ma")
        .ring_size(64)
        .lease_ttl(Duration::from_secs(1))
        .start()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "ma to own the ring and renew",
        || a.owned_partitions().len() == 64 && store.get("leasering_renewals_total", "ma") >= 2,
    );
    assert_eq!(store.get("leasering_active_partitions", "ma"), 64);
    assert!(a.status().is_healthy());
    let b = builder(pool(4), &ring, "mb")
        .ring_size(64)
        .lease_ttl(Duration::from_secs(1))
        .start()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "a handoff to show in the metrics",
        || {
            store.get("leasering_released_partitions_total", "ma") > 0
                && store.get("leasering_handoff_seconds", "mb") > 0
        },
    );
    let mb_active = b.ring().partitions_of("mb").len() as u64;
    wait_until(
        Duration::from_secs(30),
        "mb's gauge to show its share",
        || store.get("leasering_active_partitions", "mb") == mb_active,
    );
    assert_eq!(
        store.get("leasering_acquired_partitions_total", "mb"),
        mb_active
    );
    b.stop().unwrap();
    assert!(!b.status().is_healthy());
    a.stop().unwrap();
}
