//! The simulated database: the rules of the statements (not SQL), each
//! applied atomically at one instant of simulated time.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{RING, TTL};
use crate::placement::choose_positions;
use crate::protocol::input::{CatchUp, Cleaned, Joined, Renewal, Took};
use crate::ring::{Change, RingView};

/// Changes the simulated log keeps: an older catch-up reads the whole ring.
const LOG_KEPT: usize = 3;

struct Row {
    incarnation: i64,
    acked: u64,
    expires: Instant,
    positions: Vec<u32>,
}

/// A claim row: holder incarnation (cleared when its member row goes) and
/// token.
#[derive(Default, Clone)]
struct Claim {
    holder: Option<i64>,
    token: u64,
    /// The member whose take found it held (told when it is released).
    waiter: Option<String>,
}

/// See the module docs.
pub struct Db {
    pub epoch: u64,
    members: BTreeMap<String, Row>,
    claims: BTreeMap<u32, Claim>,
    /// The change log with each change's commit time.
    log: Vec<(Change, Instant)>,
    pub view: RingView,
    incarnations: i64,
}

impl Db {
    pub fn new() -> Db {
        Db {
            epoch: 0,
            members: BTreeMap::new(),
            claims: BTreeMap::new(),
            log: Vec::new(),
            view: RingView::empty(0, RING),
            incarnations: 0,
        }
    }

    pub fn member_names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    fn commit(
        &mut self,
        removed: Vec<String>,
        added: Option<(String, Vec<u32>)>,
        now: Instant,
    ) -> Change {
        self.epoch += 1;
        let change = Change {
            epoch: self.epoch,
            removed,
            added,
            added_metadata: None,
            ..Default::default()
        };
        self.view = self.view.apply(&change);
        self.log.push((change.clone(), now));
        change
    }

    /// Deletes member rows; their claims free themselves (ON DELETE SET NULL).
    fn delete(&mut self, names: &[String]) {
        for n in names {
            if let Some(row) = self.members.remove(n) {
                for c in self.claims.values_mut() {
                    if c.holder == Some(row.incarnation) {
                        c.holder = None;
                    }
                }
            }
        }
    }

    fn expired(&self, now: Instant) -> Vec<String> {
        let dead = self.members.iter().filter(|(_, r)| r.expires <= now);
        dead.map(|(n, _)| n.clone()).collect()
    }

    fn live(&self, incarnation: i64, now: Instant) -> Option<&Row> {
        self.members
            .values()
            .find(|r| r.incarnation == incarnation && r.expires > now)
    }

    pub fn join(&mut self, node: &str, now: Instant) -> (Option<Joined>, Option<Change>) {
        if self.members.get(node).is_some_and(|r| r.expires > now) {
            return (None, None); // node id in use: the transaction fails
        }
        let removed = self.expired(now);
        self.delete(&removed);
        let taken: Vec<u32> = self
            .members
            .values()
            .flat_map(|r| r.positions.clone())
            .collect();
        let positions = choose_positions(node, 2, RING, |p| taken.contains(&p)).unwrap();
        self.incarnations += 1;
        let row = Row {
            incarnation: self.incarnations,
            acked: self.epoch + 1,
            expires: now + TTL,
            positions: positions.clone(),
        };
        self.members.insert(node.to_string(), row);
        let change = self.commit(
            removed.clone(),
            Some((node.to_string(), positions.clone())),
            now,
        );
        let joined = Joined {
            view: self.view.clone(),
            positions,
            removed,
            incarnation: self.incarnations,
        };
        (Some(joined), Some(change))
    }

    fn next_expiry(&self, incarnation: i64, now: Instant) -> Option<(String, f64)> {
        let others = self
            .members
            .iter()
            .filter(|(_, r)| r.incarnation != incarnation);
        let (n, r) = others.min_by_key(|(_, r)| r.expires)?;
        let ms = if r.expires > now {
            (r.expires - now).as_secs_f64() * 1000.0
        } else {
            -((now - r.expires).as_secs_f64() * 1000.0)
        };
        Some((n.clone(), ms))
    }

    /// The renewal: only a live row, the lag bound (behind since the first
    /// change not acknowledged was committed), the claims held.
    pub fn renew(&mut self, incarnation: i64, ack: u64, now: Instant) -> Renewal {
        let epoch = self.epoch;
        let next_expiry = self.next_expiry(incarnation, now);
        let held: Vec<(u32, u64)> = self
            .claims
            .iter()
            .filter(|(_, c)| c.holder == Some(incarnation))
            .map(|(p, c)| (*p, c.token))
            .collect();
        let log = &self.log;
        let renewed = match self
            .members
            .values_mut()
            .find(|r| r.incarnation == incarnation)
        {
            Some(r) if r.expires > now => {
                let acked = r.acked.max(ack);
                let since =
                    (acked < epoch).then(|| log.get(acked as usize).map_or(now, |(_, at)| *at));
                let refuse = since.is_some_and(|s| s + TTL / 2 <= now);
                r.acked = acked;
                if !refuse {
                    r.expires = now + TTL;
                }
                Some(!refuse)
            }
            _ => None,
        };
        Renewal {
            epoch,
            renewed,
            next_expiry,
            held,
            timeline: None,
        }
    }

    /// The take: free claims (never taken, released, holder gone) get the
    /// taker and `GREATEST(token + 1, epoch)`; its own keep their token.
    pub fn take(&mut self, incarnation: i64, partitions: &[u32], now: Instant) -> Took {
        let mut took = Took {
            live: self.live(incarnation, now).is_some(),
            ..Took::default()
        };
        if !took.live {
            return took;
        }
        let names: BTreeMap<i64, String> = self
            .members
            .iter()
            .map(|(n, r)| (r.incarnation, n.clone()))
            .collect();
        let me = names.get(&incarnation).cloned();
        for &p in partitions {
            let c = self.claims.entry(p).or_default();
            match c.holder {
                Some(h) if h == incarnation => took.got.push((p, c.token)),
                None => {
                    c.token = (c.token + 1).max(self.epoch);
                    c.holder = Some(incarnation);
                    c.waiter = None;
                    took.got.push((p, c.token));
                }
                Some(h) => {
                    c.waiter = me.clone();
                    took.held_by
                        .push((p, names.get(&h).cloned().unwrap_or_default()))
                }
            }
        }
        took
    }

    /// The release by token: never frees a newer claim. Returns the freed
    /// partitions that someone waited for, by waiter.
    pub fn release(
        &mut self,
        incarnation: i64,
        claims: &[(u32, u64)],
    ) -> BTreeMap<String, Vec<u32>> {
        let mut told: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &(p, token) in claims {
            if let Some(c) = self.claims.get_mut(&p) {
                if c.holder == Some(incarnation) && c.token == token {
                    c.holder = None;
                    if let Some(w) = c.waiter.take() {
                        told.entry(w).or_default().push(p);
                    }
                }
            }
        }
        told
    }

    pub fn catch_up(&self, from: u64) -> CatchUp {
        let first = self.log.len().saturating_sub(LOG_KEPT) as u64 + 1;
        // From 0 (a re-read after a timeline change): the whole ring, as
        // the store does.
        if from == 0 || from + 1 < first {
            return CatchUp::Full(self.view.clone());
        }
        CatchUp::Changes(
            self.log[from as usize..]
                .iter()
                .map(|(c, _)| c.clone())
                .collect(),
        )
    }

    pub fn cleanup(&mut self, incarnation: i64, now: Instant) -> (Cleaned, Option<Change>) {
        let removed = self.expired(now);
        let mut change = None;
        let mut epoch = None;
        if !removed.is_empty() {
            self.delete(&removed);
            let c = self.commit(removed.clone(), None, now);
            epoch = Some(c.epoch);
            change = Some(c);
        }
        let next_expiry = self.next_expiry(incarnation, now);
        let cleaned = Cleaned {
            removed,
            epoch,
            next_expiry,
        };
        (cleaned, change)
    }

    pub fn leave(&mut self, node: &str, now: Instant) -> Option<Change> {
        if !self.members.contains_key(node) {
            return None;
        }
        self.delete(&[node.to_string()]);
        Some(self.commit(vec![node.to_string()], None, now))
    }
}
