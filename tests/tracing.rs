//! The optional `tracing` feature: each distributed operation of a member
//! is a span with the fields ring, node, epoch, partitions, outcome and
//! duration_ms (collected here by a small subscriber of the test's own).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasering_testkit::fixtures::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct Collect {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (String, Fields)>>,
    closed: Mutex<Vec<(String, Fields)>>,
}

struct Into<'a>(&'a mut Fields);

impl Visit for Into<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Subscriber for Collect {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::new();
        attrs.record(&mut Into(&mut fields));
        self.open
            .lock()
            .unwrap()
            .insert(id, (attrs.metadata().name().to_string(), fields));
        Id::from_u64(id)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        if let Some((_, f)) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Into(f));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
    fn try_close(&self, id: Id) -> bool {
        if let Some(span) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(span);
        }
        true
    }
}

#[derive(Clone)]
struct Shared(Arc<Collect>);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        self.0.new_span(a)
    }
    fn record(&self, id: &Id, v: &Record<'_>) {
        self.0.record(id, v)
    }
    fn record_follows_from(&self, a: &Id, b: &Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, id: &Id) {
        self.0.enter(id)
    }
    fn exit(&self, id: &Id) {
        self.0.exit(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.0.try_close(id)
    }
}

#[test]
fn members_trace_their_operations_as_spans() {
    init_logs();
    let collect = Arc::new(Collect::default());
    tracing::subscriber::set_global_default(Shared(collect.clone()))
        .expect("the only subscriber of this test binary");
    let ring = ring_name("tracing");
    let start = |node: &str| {
        builder(pool(4), &ring, node)
            .ring_size(32)
            .lease_ttl(Duration::from_secs(1))
            .start()
            .unwrap()
    };
    let a = start("ta");
    let b = start("tb");
    let c = start("tc");
    wait_until(
        Duration::from_secs(30),
        "the three to share the ring",
        || {
            a.owned_partitions().len() + b.owned_partitions().len() + c.owned_partitions().len()
                == 32
        },
    );
    c.crash();
    b.stop().unwrap();
    let names = || -> BTreeSet<String> {
        collect
            .closed
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    };
    let want: BTreeSet<String> = [
        "leasering.join",
        "leasering.view",
        "leasering.take",
        "leasering.release",
        "leasering.renew",
        "leasering.cleanup",
        "leasering.leave",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    wait_until(Duration::from_secs(30), "a span of every operation", || {
        want.is_subset(&names())
    });
    a.stop().unwrap();
    for (name, fields) in collect.closed.lock().unwrap().iter() {
        if !name.starts_with("leasering.") {
            continue;
        }
        assert_eq!(fields.get("ring"), Some(&ring), "{name}: {fields:?}");
        for key in ["node", "epoch", "partitions", "outcome", "duration_ms"] {
            assert!(fields.contains_key(key), "{name} without {key}: {fields:?}");
        }
    }
    let closed = collect.closed.lock().unwrap();
    let leave = closed
        .iter()
        .find(|(n, f)| n == "leasering.leave" && f["node"] == "tb")
        .expect("tb's leave");
    assert_eq!(leave.1["outcome"], "left");
    assert!(closed
        .iter()
        .any(|(n, f)| n == "leasering.renew" && f["outcome"] == "ok"));
    assert!(closed
        .iter()
        .any(|(n, f)| n == "leasering.cleanup" && f["partitions"] == "1"));
}
