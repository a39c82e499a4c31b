//! Members' events on one clock, for the integration tests: every event of
//! every member started through a [`Recorder`], and the [`oracle`]'s
//! judgement of them.
//!
//! Receivers are drained synchronously whenever events are read: an
//! asynchronous collector could lag behind one member while another's later
//! event is already in, and make a handoff look like an overlap.
//!
//! [`oracle`]: crate::oracle

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::Receiver;
use leasering::{Event, NodeBuilder, RingNode};

use crate::oracle::{self, History, Interval, Verdict};

#[derive(Default)]
struct State {
    /// Per subscription: the member's node id and its receiver.
    subs: Vec<(String, Receiver<Event>)>,
    /// Everything drained so far: (subscription, event), each
    /// subscription's events in the order the member emitted them.
    events: Vec<(usize, Event)>,
}

/// Records every member's events. Cloning shares the record.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the record from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a member with a subscription registered before its start, so
    /// that every event it ever emits is recorded. A test helper: panics if
    /// the member does not start.
    pub fn start(&self, mut b: NodeBuilder) -> RingNode {
        let rx = b.subscribe();
        let node = b.start().unwrap_or_else(|e| panic!("start failed: {e}"));
        self.watch(node.node_id(), rx);
        node
    }

    /// Records `rx`, a receiver of member `node_id` that has seen every one
    /// of its events (from [`NodeBuilder::subscribe`]).
    pub fn watch(&self, node_id: &str, rx: Receiver<Event>) {
        self.lock().subs.push((node_id.to_string(), rx));
    }

    fn drained(&self) -> MutexGuard<'_, State> {
        let mut s = self.lock();
        let State { subs, events } = &mut *s;
        for (i, (_, rx)) in subs.iter().enumerate() {
            events.extend(rx.try_iter().map(|e| (i, e)));
        }
        s
    }

    /// Every event so far, of every member, with its node id.
    pub fn events(&self) -> Vec<(String, Event)> {
        let s = self.drained();
        s.events
            .iter()
            .map(|(i, e)| (s.subs[*i].0.clone(), e.clone()))
            .collect()
    }

    /// The oracle's history of every event so far. Each subscription is a
    /// run of its own, named by its node id (`id#2`, `id#3`, ... for a node
    /// id started again).
    pub fn history(&self) -> History {
        let s = self.drained();
        let mut h = History::new();
        let mut seen: Vec<&str> = Vec::new();
        let runs: Vec<_> = s
            .subs
            .iter()
            .map(|(id, _)| {
                let n = seen.iter().filter(|x| **x == id.as_str()).count();
                seen.push(id);
                if n == 0 {
                    h.add_run(id)
                } else {
                    h.add_run(&format!("{id}#{}", n + 1))
                }
            })
            .collect();
        for (i, e) in &s.events {
            h.event(runs[*i], e);
        }
        h
    }

    /// Every interval so far; those still open end now.
    pub fn intervals(&self) -> Vec<Interval> {
        self.history().intervals(oracle::now())
    }

    /// The oracle's judgement of every event so far (open intervals end
    /// now), with the history it judged.
    pub fn verdict(&self) -> (History, Verdict) {
        let h = self.history();
        let v = h.judge(oracle::now());
        (h, v)
    }

    /// Panics on any overlap of two members' activity on one partition, a
    /// token that does not rise from owner to owner, or events that do not
    /// pair up (a release of a partition not held, say).
    pub fn assert_no_overlap_and_tokens_increase(&self) {
        let (h, v) = self.verdict();
        let zero = h
            .intervals(0)
            .iter()
            .map(|i| i.from)
            .min()
            .unwrap_or_default();
        assert!(
            v.overlaps.is_empty(),
            "{} overlaps (times from the first acquisition), first: {}",
            v.overlaps.len(),
            h.describe_overlap(&v.overlaps[0], zero)
        );
        assert!(
            v.regressions.is_empty(),
            "{} token regressions, first: {}",
            v.regressions.len(),
            h.describe_regression(&v.regressions[0], zero)
        );
        assert!(
            h.anomalies().is_empty(),
            "{} events that do not pair up, first: {}",
            h.anomalies().len(),
            h.anomalies()[0]
        );
    }
}
