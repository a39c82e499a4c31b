//! The main log lines carry structured key-values (the `log` crate's `kv`):
//! a logger of the test's own collects them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use leasering_testkit::fixtures::*;
use log::kv::{Key, Value, VisitSource};

/// (message, key-values) of every `leasering` record.
static LINES: Mutex<Vec<(String, BTreeMap<String, String>)>> = Mutex::new(Vec::new());

struct Collect;

struct Kvs<'a>(&'a mut BTreeMap<String, String>);

impl<'kvs> VisitSource<'kvs> for Kvs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

impl log::Log for Collect {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target() == "leasering"
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let mut kvs = BTreeMap::new();
            let _ = r.key_values().visit(&mut Kvs(&mut kvs));
            LINES.lock().unwrap().push((r.args().to_string(), kvs));
        }
    }
    fn flush(&self) {}
}

#[test]
fn joins_acquisitions_releases_and_leaves_carry_key_values() {
    log::set_logger(&Collect).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let ring = ring_name("kv");
    let start = |node: &str| builder(pool(4), &ring, node).ring_size(16).start().unwrap();
    let a = start("kva");
    let b = start("kvb");
    // Until kvb has taken its share: right after kvb joins, kva still owns
    // all 16 and kvb none, so the sum alone says nothing.
    wait_until(Duration::from_secs(30), "the two to share the ring", || {
        !a.owned_partitions().is_empty()
            && !b.owned_partitions().is_empty()
            && a.owned_partitions().len() + b.owned_partitions().len() == 16
    });
    // The event's log line is written as the event is published, which may
    // be a moment after the hot-path state changed.
    wait_until(Duration::from_secs(30), "kvb's \"acquired\" line", || {
        LINES.lock().unwrap().iter().any(|(m, kv)| {
            m.contains("acquired") && kv.get("node").map(String::as_str) == Some("kvb")
        })
    });
    b.stop().unwrap();
    a.stop().unwrap();
    let lines = LINES.lock().unwrap();
    let find = |what: &str, node: &str| {
        lines
            .iter()
            .find(|(m, kv)| m.contains(what) && kv.get("node").map(String::as_str) == Some(node))
            .unwrap_or_else(|| panic!("no {what:?} line of {node} with key-values: {lines:#?}"))
            .1
            .clone()
    };
    for (what, node, keys) in [
        ("joined ring", "kvb", &["ring", "epoch", "vnodes"][..]),
        (
            "acquired",
            "kvb",
            &[
                "ring",
                "epoch",
                "token",
                "partitions",
                "cause",
                "handoff_ms",
            ][..],
        ),
        (
            "released",
            "kva",
            &["ring", "epoch", "partitions", "reason"][..],
        ),
        ("left ring", "kvb", &["ring", "epoch", "leave_ms"][..]),
    ] {
        let kv = find(what, node);
        for k in keys {
            assert!(kv.contains_key(*k), "{what} of {node} without {k}: {kv:?}");
        }
        assert_eq!(kv["ring"], ring);
    }
    assert_eq!(find("acquired", "kvb")["cause"], "join");
}
