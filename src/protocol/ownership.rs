//! The partition state machine of one member (docs/protocol.md §4): which
//! partitions are *active* (usable now, each under its claim's fencing
//! token) and which are *pending* (assigned by the view, waiting for their
//! claim).
//!
//! Pure, in the manner of raft-rs: it is driven by inputs — a view adopted,
//! claims taken, a renewal that succeeded, the clock passing the local
//! deadline, an eviction, a stop — and returns the [`Action`]s the caller
//! must publish, in order. It never does I/O and never reads a clock itself
//! (`now` is an input). What happens to a claim once its partition stops
//! being active (draining, releasing) is the session's business: every
//! release here names the tokens it gave up.

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
        /// The claim token each was used under (`tokens[i]` of
        /// `partitions[i]`): the claims to drain and give back.
        tokens: Vec<u64>,
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

/// What a take's answer did to one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Activated (or already active under this token).
    Used,
    /// Not usable: the partition is no longer assigned here, or the local
    /// lease has run out. The claim must be given back.
    Stray,
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
    /// Claim token per active partition; 0 = not active. Tokens start at 1.
    active: Vec<u64>,
    active_count: u32,
    valid_until: Option<Instant>,
    /// The partitions the adopted view assigns to this member, ascending:
    /// every one is active or pending. Transitions walk only this list —
    /// O(own partitions), not O(ring_size).
    assigned: Vec<u32>,
    /// Whether each partition is in `assigned` (O(1) membership).
    is_assigned: Vec<bool>,
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
            active_count: 0,
            valid_until: None,
            assigned: Vec::new(),
            is_assigned: vec![false; ring_size as usize],
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

    /// The epoch of the adopted view; 0 when it has none.
    pub fn view_epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch())
    }

    /// The local lease deadline, if a lease runs.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Whether the local lease runs at `now`.
    pub fn lease_runs(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }

    /// Token of `p` if active (ignoring the deadline).
    pub fn token(&self, p: u32) -> Option<u64> {
        match self.active.get(p as usize) {
            Some(&t) if t != 0 => Some(t),
            _ => None,
        }
    }

    /// Whether the view assigns `p` to this member.
    pub fn is_assigned(&self, p: u32) -> bool {
        self.is_assigned.get(p as usize).copied().unwrap_or(false)
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

    /// Pending partitions (assigned, not active), ascending.
    pub fn pending(&self) -> impl Iterator<Item = u32> + '_ {
        self.assigned
            .iter()
            .copied()
            .filter(|p| self.active[*p as usize] == 0)
    }

    /// Number of pending partitions.
    pub fn pending_count(&self) -> u32 {
        self.assigned.len() as u32 - self.active_count
    }

    /// Whether any partition is pending.
    pub fn has_pending(&self) -> bool {
        self.pending_count() != 0
    }

    /// The join transaction committed: `view` is the ring with this member in
    /// it; `sent_at` is when the join was sent. Everything assigned is
    /// pending; anything still active from an earlier membership is
    /// released first.
    pub fn joined(&mut self, view: RingView, sent_at: Instant) -> Vec<Action> {
        if self.status == Status::Stopped {
            return Vec::new();
        }
        let released = self.release_all(ReleaseReason::Evicted);
        self.status = Status::Member;
        self.view = None;
        self.valid_until = Some(sent_at + self.local_lease);
        self.adopt_unchecked(view);
        released
    }

    /// Adopts a newer view (docs/protocol.md §4): every active partition the
    /// view no longer gives this member stops being active first; newly
    /// assigned ones are pending. Older or equal views are ignored.
    pub fn adopt(&mut self, view: RingView) -> Vec<Action> {
        if self.status != Status::Member || view.epoch() <= self.view_epoch() {
            return Vec::new();
        }
        self.adopt_unchecked(view)
    }

    /// Adopts `view` whatever its epoch: after the database moved to a new
    /// timeline, the view at an epoch may not be the one this member had
    /// under that epoch (the promoted standby lost the last changes and
    /// made others since). Handoffs as for [`Ownership::adopt`].
    pub fn resync(&mut self, view: RingView) -> Vec<Action> {
        if self.status != Status::Member {
            return Vec::new();
        }
        self.adopt_unchecked(view)
    }

    fn adopt_unchecked(&mut self, view: RingView) -> Vec<Action> {
        let next = view.partitions_of(&self.me);
        let (mut partitions, mut tokens) = (Vec::new(), Vec::new());
        for &p in &self.assigned {
            self.is_assigned[p as usize] = false;
        }
        for &p in &next {
            self.is_assigned[p as usize] = true;
        }
        for &p in &self.assigned {
            let t = self.active[p as usize];
            if t != 0 && !self.is_assigned[p as usize] {
                self.active[p as usize] = 0;
                partitions.push(p);
                tokens.push(t);
            }
        }
        self.active_count -= partitions.len() as u32;
        self.assigned = next;
        self.view = Some(view);
        release(partitions, tokens, ReleaseReason::Handoff)
    }

    /// A take's answer arrived at `now`: the claims it holds for this
    /// member (`(partition, token)`, ascending). A claim activates its
    /// partition if the partition is pending and the local lease still runs
    /// *now* — the database lease then has not ended, so nobody else can
    /// hold the claim (docs/protocol.md §4). Returns the acquisitions and,
    /// per claim, what became of it.
    pub fn claimed(&mut self, claims: &[(u32, u64)], now: Instant) -> (Vec<Action>, Vec<Taken>) {
        let usable = self.status == Status::Member && self.lease_runs(now);
        let mut by_token: Vec<(u64, Vec<u32>)> = Vec::new();
        let mut fate = Vec::with_capacity(claims.len());
        for &(p, token) in claims {
            if self.active.get(p as usize).is_some_and(|t| *t != 0) {
                // A repeated answer for a partition in use: its claim is
                // this member's, whatever the token says (it can only be
                // the same one), and is never given back while in use.
                fate.push(Taken::Used);
                continue;
            }
            if !usable || !self.is_assigned(p) || token == 0 {
                fate.push(Taken::Stray);
                continue;
            }
            self.active[p as usize] = token;
            self.active_count += 1;
            fate.push(Taken::Used);
            match by_token.iter_mut().find(|(t, _)| *t == token) {
                Some((_, ps)) => ps.push(p),
                None => by_token.push((token, vec![p])),
            }
        }
        by_token.sort_unstable_by_key(|(t, _)| *t);
        let actions = by_token
            .into_iter()
            .map(|(token, mut partitions)| {
                partitions.sort_unstable();
                Action::Acquire { partitions, token }
            })
            .collect();
        (actions, fate)
    }

    /// A renewal sent at `sent_at` succeeded. If the local lease had already
    /// run out at `now`, this member fences first: the renewal cannot make
    /// stale partitions valid again (they are taken anew).
    pub fn renewed(&mut self, sent_at: Instant, now: Instant) -> Vec<Action> {
        if self.status == Status::Joining {
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
    /// partition is released (`LeaseExpired`) and is pending again, to be
    /// taken anew once the lease is renewed.
    pub fn fence(&mut self, now: Instant) -> Vec<Action> {
        if self.lease_runs(now) || self.active_count == 0 {
            return Vec::new();
        }
        self.release_all(ReleaseReason::LeaseExpired)
    }

    /// The database no longer has this member's lease (removed, or expired
    /// there): release everything and forget the view; the caller rejoins.
    pub fn evicted(&mut self) -> Vec<Action> {
        if self.status == Status::Stopped {
            return Vec::new();
        }
        let actions = self.release_all(ReleaseReason::Evicted);
        self.unassign_all();
        self.view = None;
        self.valid_until = None;
        self.status = Status::Joining;
        actions
    }

    /// `stop()`: release everything; nothing becomes active again. The lease
    /// runs on (renewals may still extend it) while the released
    /// partitions drain.
    pub fn stop(&mut self) -> Vec<Action> {
        let actions = self.release_all(ReleaseReason::Stopping);
        self.unassign_all();
        self.status = Status::Stopped;
        actions
    }

    fn unassign_all(&mut self) {
        for &p in &self.assigned {
            self.is_assigned[p as usize] = false;
        }
        self.assigned.clear();
    }

    fn release_all(&mut self, reason: ReleaseReason) -> Vec<Action> {
        let (mut partitions, mut tokens) = (Vec::new(), Vec::new());
        for &p in &self.assigned {
            let t = std::mem::take(&mut self.active[p as usize]);
            if t != 0 {
                partitions.push(p);
                tokens.push(t);
            }
        }
        self.active_count = 0;
        release(partitions, tokens, reason)
    }
}

fn release(partitions: Vec<u32>, tokens: Vec<u64>, reason: ReleaseReason) -> Vec<Action> {
    if partitions.is_empty() {
        Vec::new()
    } else {
        vec![Action::Release {
            partitions,
            tokens,
            reason,
        }]
    }
}

#[cfg(test)]
mod tests;
