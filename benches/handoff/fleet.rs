//! The in-process fleet the join, leave, crash and frozen-member measures
//! share: members of one ring started in this process, each member's events
//! gathered by one hub and replayed on one clock ([`Replay`]), with the
//! waits the measures need — until the replay shows a condition (and at
//! which event it first did), until the ring is settled, or settled but for
//! the claims a frozen member process holds. What each measure does with it
//! is in its own file.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use leasering::{Event, RingNode};

use super::support::*;
use super::RING_SIZE;

pub(crate) struct Fleet {
    pub(crate) ring: String,
    ttl: Duration,
    pub(crate) nodes: Vec<(usize, RingNode)>,
    pub(crate) hub: EventHub,
    pub(crate) replay: Replay,
    next_instance: usize,
}

impl Fleet {
    pub(crate) fn new(ring: &str, ttl: Duration) -> Fleet {
        Fleet {
            ring: ring.to_string(),
            ttl,
            nodes: Vec::new(),
            hub: EventHub::default(),
            replay: Replay::new(RING_SIZE),
            next_instance: 0,
        }
    }

    /// Starts a member; returns its instance index and the moment `start()`
    /// was called.
    pub(crate) fn start(&mut self, pool: Pool, name: &str) -> (usize, Instant, RingNode) {
        let mut b = RingNode::builder(pool, self.ring.clone())
            .node_id(name)
            .ring_size(RING_SIZE)
            .lease_ttl(self.ttl)
            .start_timeout(Duration::from_secs(30));
        let rx = b.subscribe();
        let t0 = Instant::now();
        let node = b.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let i = self.next_instance;
        self.next_instance += 1;
        self.hub.add(i, rx);
        self.nodes.push((i, node.clone()));
        (i, t0, node)
    }

    /// Applies what arrived to the replay.
    pub(crate) fn pump(&mut self, wait: Duration) {
        for (i, e) in self.hub.wait_drain(wait) {
            self.replay.apply(i, &e);
        }
    }

    /// Replays new events until `done(replay)` holds; returns the `at` of
    /// the event that made it hold (or now, if it already held).
    pub(crate) fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Replay) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        if done(&self.replay) {
            self.pump(Duration::ZERO);
            return Some(Instant::now());
        }
        // Events of different members can reach us out of order (each
        // member's channel is drained in turn): the replayed state is the
        // one at the latest event applied so far, hence the running maximum.
        let mut latest: Option<Instant> = None;
        while Instant::now() < deadline {
            let mut found = None;
            for (i, e) in self.hub.wait_drain(Duration::from_millis(20)) {
                self.replay.apply(i, &e);
                let change = matches!(e, Event::Acquired { .. } | Event::Released { .. });
                if change {
                    latest = latest.max(Some(e.at()));
                }
                if found.is_none() && change && done(&self.replay) {
                    found = latest;
                }
            }
            if found.is_some() {
                return found;
            }
        }
        eprintln!("timed out after {timeout:?} waiting for {what}");
        None
    }

    /// Every member's view at one epoch and every member holding exactly
    /// its share: the ring is settled.
    pub(crate) fn settled(&self) -> bool {
        let Some((_, first)) = self.nodes.first() else {
            return true;
        };
        let e = first.view().epoch();
        self.nodes.iter().all(|(_, n)| {
            let v = n.view();
            v.epoch() == e && n.owned_partitions().len() == v.partitions_of(n.node_id()).len()
        })
    }

    pub(crate) fn wait_settled(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.settled() {
            assert!(
                Instant::now() < deadline,
                "ring {} did not settle",
                self.ring
            );
            self.pump(Duration::from_millis(2));
        }
        self.pump(Duration::ZERO);
    }

    pub(crate) fn remove(&mut self, instance: usize) {
        self.nodes.retain(|(i, _)| *i != instance);
    }

    /// Like [`settled`](Self::settled), except that partitions in `blocked`
    /// (claims a frozen member process holds) are active nowhere here.
    pub(crate) fn settled_except(&self, blocked: &BTreeSet<u32>) -> bool {
        let Some((_, first)) = self.nodes.first() else {
            return true;
        };
        let e = first.view().epoch();
        self.nodes.iter().all(|(_, n)| {
            let v = n.view();
            let want: BTreeSet<u32> = v
                .partitions_of(n.node_id())
                .into_iter()
                .filter(|p| !blocked.contains(p))
                .collect();
            v.epoch() == e && n.owned_partitions().iter().collect::<BTreeSet<u32>>() == want
        })
    }

    pub(crate) fn wait_settled_except(&mut self, blocked: &BTreeSet<u32>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.settled_except(blocked) {
            assert!(
                Instant::now() < deadline,
                "ring {} did not settle (but for the frozen member's claims)",
                self.ring
            );
            self.pump(Duration::from_millis(2));
        }
        self.pump(Duration::ZERO);
    }
}
