//! The ownership state machine of one member (DESIGN §4): which partitions
//! are *active* (usable now) and which are *pending* (assigned by the view
//! but waiting for the handoff barrier).
//!
//! Pure, in the manner of raft-rs: it is driven by inputs — a view adopted,
//! a barrier snapshot read, a renewal that succeeded, the clock passing the
//! local deadline, an eviction, a stop — and returns the [`Action`]s the
//! caller must publish, in order. It never does I/O and never reads a clock
//! itself (`now` is an input), so every interleaving can be tested without a
//! database.

use std::time::{Duration, Instant};

use crate::event::ReleaseReason;
use crate::ring::RingView;

/// What the caller must make visible, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// These partitions stop being active now.
    Release {
        /// The partitions, ascending.
        partitions: Vec<u32>,
        /// Why.
        reason: ReleaseReason,
    },
    /// These partitions become active now, with this fencing token.
    Acquire {
        /// The partitions, ascending.
        partitions: Vec<u32>,
        /// Their fencing token.
        token: u64,
    },
}

/// Where the member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not (or no longer) in the ring: before the first join, after an
    /// eviction while rejoining.
    Joining,
    /// In the ring with a view.
    Member,
    /// `stop()` was called: nothing will ever become active again.
    Stopped,
}

/// The state of one member. See the module docs.
#[derive(Debug)]
pub struct Ownership {
    me: String,
    /// The local lease: TTL minus margin, counted from the moment a
    /// successful renewal was *sent*.
    local_lease: Duration,
    status: Status,
    view: Option<RingView>,
    /// Token (`since`) per active partition; 0 = not active. Epochs start at
    /// 1 for the first member, so 0 is never a token.
    active: Vec<u64>,
    /// `since` per pending partition; 0 = not pending.
    pending: Vec<u64>,
    active_count: u32,
    pending_count: u32,
    valid_until: Option<Instant>,
    /// The partitions the adopted view assigns to this member, ascending.
    /// Invariant: every active or pending partition is in it, so every
    /// transition only walks this list — O(own partitions), not
    /// O(ring_size), which matters with hundreds of members on a big ring.
    assigned: Vec<u32>,
}

impl Ownership {
    /// A member `me` of a ring of `ring_size` partitions, not joined yet.
    /// Its local lease lasts `ttl − margin` from the sending of a renewal.
    pub fn new(me: &str, ring_size: u32, ttl: Duration, margin: Duration) -> Ownership {
        Ownership {
            me: me.to_string(),
            local_lease: ttl.saturating_sub(margin),
            status: Status::Joining,
            view: None,
            active: vec![0; ring_size as usize],
            pending: vec![0; ring_size as usize],
            active_count: 0,
            pending_count: 0,
            valid_until: None,
            assigned: Vec::new(),
        }
    }

    /// Where the member is in its life.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The adopted view, if any.
    pub fn view(&self) -> Option<&RingView> {
        self.view.as_ref()
    }

    /// The epoch of the adopted view, which is what this member may
    /// acknowledge; 0 when it has none.
    pub fn view_epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch())
    }

    /// The local lease deadline, if a lease runs.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Token of `p` if active (ignoring the deadline).
    pub fn token(&self, p: u32) -> Option<u64> {
        match self.active.get(p as usize) {
            Some(&t) if t != 0 => Some(t),
            _ => None,
        }
    }

    /// Active partitions and their tokens, ascending (ignoring the deadline).
    pub fn active(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.assigned
            .iter()
            .map(|p| (*p, self.active[*p as usize]))
            .filter(|(_, t)| *t != 0)
    }

    /// Number of active partitions (ignoring the deadline).
    pub fn active_count(&self) -> u32 {
        self.active_count
    }

    /// Pending partitions and their `since`, ascending.
    pub fn pending(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.assigned
            .iter()
            .map(|p| (*p, self.pending[*p as usize]))
            .filter(|(_, s)| *s != 0)
    }

    /// Number of pending partitions.
    pub fn pending_count(&self) -> u32 {
        self.pending_count
    }

    /// Whether any partition is pending.
    pub fn has_pending(&self) -> bool {
        self.pending_count != 0
    }

    fn set_pending(&mut self, p: usize, since: u64) {
        let old = std::mem::replace(&mut self.pending[p], since);
        match (old != 0, since != 0) {
            (false, true) => self.pending_count += 1,
            (true, false) => self.pending_count -= 1,
            _ => {}
        }
    }

    fn clear_pending(&mut self) {
        for i in 0..self.assigned.len() {
            let p = self.assigned[i] as usize;
            self.set_pending(p, 0);
        }
    }

    /// The join transaction committed: `view` is the ring with this member in
    /// it; `sent_at` is when the join was sent. Everything assigned is
    /// pending since the join's epoch.
    pub fn joined(&mut self, view: RingView, sent_at: Instant) -> Vec<Action> {
        if self.status == Status::Stopped {
            return Vec::new();
        }
        let released = self.release_all(ReleaseReason::Evicted);
        self.clear_pending();
        self.assigned.clear();
        self.status = Status::Member;
        self.view = None;
        self.valid_until = Some(sent_at + self.local_lease);
        self.adopt_unchecked(view, false);
        released
    }

    /// Adopts a newer view (DESIGN §4, "Adopting a view"): first releases
    /// every active partition the view no longer gives this member, then
    /// marks newly assigned ones pending. `since` survives only if the view
    /// is the direct successor of the current one; on a jump over epochs it
    /// restarts at the new epoch. Older or equal views are ignored.
    pub fn adopt(&mut self, view: RingView) -> Vec<Action> {
        if self.status != Status::Member {
            return Vec::new();
        }
        let current = self.view_epoch();
        if view.epoch() <= current {
            return Vec::new();
        }
        let contiguous = view.epoch() == current + 1;
        self.adopt_unchecked(view, contiguous)
    }

    fn adopt_unchecked(&mut self, view: RingView, contiguous: bool) -> Vec<Action> {
        let epoch = view.epoch();
        let next = view.partitions_of(&self.me);
        let mut released = Vec::new();
        // Partitions the view no longer gives this member (both lists are
        // ascending): release if active, forget if pending.
        let old = std::mem::take(&mut self.assigned);
        let mut k = 0;
        for &p in &old {
            while k < next.len() && next[k] < p {
                k += 1;
            }
            if k < next.len() && next[k] == p {
                continue;
            }
            let p = p as usize;
            if self.active[p] != 0 {
                self.active[p] = 0;
                released.push(p as u32);
            }
            self.set_pending(p, 0);
        }
        // Partitions it gives: kept if active; pending keeps its `since`
        // only across a contiguous adoption, else starts at this epoch.
        for &p in &next {
            let p = p as usize;
            if self.active[p] == 0 && !(contiguous && self.pending[p] != 0) {
                self.set_pending(p, epoch);
            }
        }
        self.assigned = next;
        self.active_count -= released.len() as u32;
        self.view = Some(view);
        if released.is_empty() {
            Vec::new()
        } else {
            vec![Action::Release {
                partitions: released,
                reason: ReleaseReason::Handoff,
            }]
        }
    }

    /// The handoff barrier (DESIGN §4, "Activation"). `snapshot_epoch` and
    /// `others_min_ack` come from one consistent read: the ring's epoch and
    /// the smallest `acked_epoch` among the *other live* members (`None` if
    /// there are none). Activates every pending partition whose `since` the
    /// smallest ack has reached — but only if this member's view is at the
    /// snapshot's epoch and its local lease still runs at `now`.
    pub fn barrier(
        &mut self,
        snapshot_epoch: u64,
        others_min_ack: Option<u64>,
        now: Instant,
    ) -> Vec<Action> {
        if self.status != Status::Member
            || self.view_epoch() != snapshot_epoch
            || !self.lease_runs(now)
        {
            return Vec::new();
        }
        let mut by_token: Vec<(u64, Vec<u32>)> = Vec::new();
        if self.pending_count == 0 {
            return Vec::new();
        }
        for i in 0..self.assigned.len() {
            let p = self.assigned[i] as usize;
            let since = self.pending[p];
            if since == 0 || others_min_ack.is_some_and(|ack| ack < since) {
                continue;
            }
            self.set_pending(p, 0);
            self.active[p] = since;
            self.active_count += 1;
            match by_token.iter_mut().find(|(t, _)| *t == since) {
                Some((_, ps)) => ps.push(p as u32),
                None => by_token.push((since, vec![p as u32])),
            }
        }
        by_token.sort_unstable_by_key(|(t, _)| *t);
        by_token
            .into_iter()
            .map(|(token, partitions)| Action::Acquire { partitions, token })
            .collect()
    }

    /// A renewal sent at `sent_at` succeeded. If the local lease had already
    /// run out at `now`, this member fences first (the renewal cannot make
    /// stale partitions valid again: they go back through the barrier).
    pub fn renewed(&mut self, sent_at: Instant, now: Instant) -> Vec<Action> {
        if self.status != Status::Member {
            return Vec::new();
        }
        let actions = self.fence(now);
        let candidate = sent_at + self.local_lease;
        if self.valid_until.is_none_or(|v| v < candidate) {
            self.valid_until = Some(candidate);
        }
        actions
    }

    /// Self-fencing: if the local lease has run out at `now`, every active
    /// partition is released (`LeaseExpired`) and becomes pending again with
    /// `since` = the current epoch, to be re-activated through the barrier
    /// once the lease is renewed.
    pub fn fence(&mut self, now: Instant) -> Vec<Action> {
        if self.lease_runs(now) || self.active_count == 0 {
            return Vec::new();
        }
        let epoch = self.view_epoch();
        let mut released = Vec::new();
        for i in 0..self.assigned.len() {
            let p = self.assigned[i] as usize;
            if self.active[p] != 0 {
                self.active[p] = 0;
                self.set_pending(p, epoch);
                released.push(p as u32);
            }
        }
        self.active_count = 0;
        vec![Action::Release {
            partitions: released,
            reason: ReleaseReason::LeaseExpired,
        }]
    }

    /// The database no longer has this member's lease (removed, or expired
    /// there): release everything and forget the view; the caller rejoins.
    pub fn evicted(&mut self) -> Vec<Action> {
        if self.status == Status::Stopped {
            return Vec::new();
        }
        let actions = self.release_all(ReleaseReason::Evicted);
        self.clear_pending();
        self.assigned.clear();
        self.view = None;
        self.valid_until = None;
        self.status = Status::Joining;
        actions
    }

    /// `stop()`: release everything; nothing becomes active again.
    pub fn stop(&mut self) -> Vec<Action> {
        let actions = self.release_all(ReleaseReason::Stopping);
        self.clear_pending();
        self.status = Status::Stopped;
        self.valid_until = None;
        actions
    }

    fn lease_runs(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }

    fn release_all(&mut self, reason: ReleaseReason) -> Vec<Action> {
        let mut released = Vec::new();
        for &p in &self.assigned {
            if self.active[p as usize] != 0 {
                self.active[p as usize] = 0;
                released.push(p);
            }
        }
        self.active_count = 0;
        if released.is_empty() {
            Vec::new()
        } else {
            vec![Action::Release {
                partitions: released,
                reason,
            }]
        }
    }
}

#[cfg(test)]
mod tests;
