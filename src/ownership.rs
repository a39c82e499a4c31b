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
pub(crate) enum Action {
    /// These partitions stop being active now.
    Release {
        partitions: Vec<u32>,
        reason: ReleaseReason,
    },
    /// These partitions become active now, with this fencing token.
    Acquire { partitions: Vec<u32>, token: u64 },
}

/// Where the member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
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
pub(crate) struct Ownership {
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
    pub(crate) fn new(me: &str, ring_size: u32, ttl: Duration, margin: Duration) -> Ownership {
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

    pub(crate) fn status(&self) -> Status {
        self.status
    }

    pub(crate) fn view(&self) -> Option<&RingView> {
        self.view.as_ref()
    }

    /// The epoch of the adopted view, which is what this member may
    /// acknowledge; 0 when it has none.
    pub(crate) fn view_epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch())
    }

    pub(crate) fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Token of `p` if active (ignoring the deadline).
    #[cfg(test)]
    pub(crate) fn token(&self, p: u32) -> Option<u64> {
        match self.active.get(p as usize) {
            Some(&t) if t != 0 => Some(t),
            _ => None,
        }
    }

    /// Active partitions and their tokens, ascending (ignoring the deadline).
    pub(crate) fn active(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.assigned
            .iter()
            .map(|p| (*p, self.active[*p as usize]))
            .filter(|(_, t)| *t != 0)
    }

    pub(crate) fn active_count(&self) -> u32 {
        self.active_count
    }

    /// Pending partitions and their `since`, ascending.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.assigned
            .iter()
            .map(|p| (*p, self.pending[*p as usize]))
            .filter(|(_, s)| *s != 0)
    }

    pub(crate) fn pending_count(&self) -> u32 {
        self.pending_count
    }

    pub(crate) fn has_pending(&self) -> bool {
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
    pub(crate) fn joined(&mut self, view: RingView, sent_at: Instant) -> Vec<Action> {
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
    pub(crate) fn adopt(&mut self, view: RingView) -> Vec<Action> {
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
    pub(crate) fn barrier(
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
    pub(crate) fn renewed(&mut self, sent_at: Instant, now: Instant) -> Vec<Action> {
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
    pub(crate) fn fence(&mut self, now: Instant) -> Vec<Action> {
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
    pub(crate) fn evicted(&mut self) -> Vec<Action> {
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
    pub(crate) fn stop(&mut self) -> Vec<Action> {
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
mod tests {
    use super::*;
    use crate::ring::Change;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(1);

    fn acquired(actions: &[Action]) -> Vec<u32> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Acquire { partitions, .. } = a {
                out.extend(partitions);
            }
        }
        out.sort();
        out
    }

    fn released(actions: &[Action]) -> Vec<u32> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Release { partitions, .. } = a {
                out.extend(partitions);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn lone_member_activates_everything_with_its_join_epoch() {
        let t0 = Instant::now();
        let mut m = Ownership::new("a", 8, TTL, MARGIN);
        let v = RingView::build(1, 8, [(3, "a")]);
        assert!(m.joined(v, t0).is_empty());
        assert_eq!(m.pending().count(), 8);
        let acts = m.barrier(1, None, t0);
        assert_eq!(
            acts,
            vec![Action::Acquire {
                partitions: (0..8).collect(),
                token: 1
            }]
        );
        assert_eq!(m.active_count(), 8);
    }

    #[test]
    fn joiner_waits_for_the_old_owner_ack() {
        let t0 = Instant::now();
        let v1 = RingView::build(1, 8, [(7, "a")]);
        let v2 = v1.apply(&Change {
            epoch: 2,
            removed: vec![],
            added: Some(("b".into(), vec![3])),
        });
        let mut a = Ownership::new("a", 8, TTL, MARGIN);
        a.joined(v1, t0);
        a.barrier(1, None, t0);
        let mut b = Ownership::new("b", 8, TTL, MARGIN);
        b.joined(v2.clone(), t0);
        // a has acked only epoch 1: b must wait.
        assert!(b.barrier(2, Some(1), t0).is_empty());
        // a adopts epoch 2: releases 0..=3 first.
        let rel = a.adopt(v2);
        assert_eq!(released(&rel), vec![0, 1, 2, 3]);
        assert_eq!(a.active_count(), 4);
        // after a's ack of 2, b activates with token 2.
        let acts = b.barrier(2, Some(2), t0);
        assert_eq!(acquired(&acts), vec![0, 1, 2, 3]);
        assert_eq!(b.token(0), Some(2));
    }

    #[test]
    fn barrier_needs_view_at_snapshot_epoch_and_a_running_lease() {
        let t0 = Instant::now();
        let mut m = Ownership::new("a", 4, TTL, MARGIN);
        m.joined(RingView::build(5, 4, [(0, "a")]), t0);
        assert!(m.barrier(6, None, t0).is_empty(), "view behind snapshot");
        assert!(m.barrier(5, None, t0 + TTL).is_empty(), "lease ran out");
        assert_eq!(acquired(&m.barrier(5, None, t0)).len(), 4);
    }

    #[test]
    fn fence_releases_everything_and_renewal_goes_back_through_barrier() {
        let t0 = Instant::now();
        let mut m = Ownership::new("a", 4, TTL, MARGIN);
        m.joined(RingView::build(1, 4, [(0, "a")]), t0);
        m.barrier(1, None, t0);
        assert!(m.fence(t0 + Duration::from_secs(8)).is_empty());
        let acts = m.fence(t0 + Duration::from_secs(9));
        assert_eq!(
            acts,
            vec![Action::Release {
                partitions: vec![0, 1, 2, 3],
                reason: ReleaseReason::LeaseExpired
            }]
        );
        let t1 = t0 + Duration::from_secs(12);
        assert!(m.renewed(t1, t1).is_empty());
        assert_eq!(acquired(&m.barrier(1, None, t1)).len(), 4);
    }

    #[test]
    fn late_renewal_after_deadline_fences_first() {
        let t0 = Instant::now();
        let mut m = Ownership::new("a", 4, TTL, MARGIN);
        m.joined(RingView::build(1, 4, [(0, "a")]), t0);
        m.barrier(1, None, t0);
        // A renewal sent before the deadline, answered after it.
        let acts = m.renewed(t0 + Duration::from_secs(8), t0 + Duration::from_secs(9));
        assert_eq!(released(&acts), vec![0, 1, 2, 3]);
        assert_eq!(m.active_count(), 0);
    }

    #[test]
    fn jump_resets_since_but_keeps_active() {
        let t0 = Instant::now();
        let v1 = RingView::build(1, 16, [(7, "a"), (15, "b")]);
        let mut a = Ownership::new("a", 16, TTL, MARGIN);
        a.joined(v1.clone(), t0);
        a.barrier(1, None, t0);
        let v2 = v1.apply(&Change {
            epoch: 2,
            removed: vec!["b".into()],
            added: None,
        });
        // contiguous: since of new partitions is 2
        a.adopt(v2.clone());
        assert!(a.pending().all(|(_, s)| s == 2));
        // jump from 2 to 5, still owning the same: pending since restarts at 5
        let v5 = RingView::build(5, 16, [(7, "a")]);
        a.adopt(v5);
        assert!(a.pending().all(|(_, s)| s == 5));
        assert_eq!(a.active_count(), 8, "active partitions survive the jump");
        assert!(a.active().all(|(_, t)| t == 1));
    }

    #[test]
    fn stop_and_evict_release_everything() {
        let t0 = Instant::now();
        let mut m = Ownership::new("a", 4, TTL, MARGIN);
        m.joined(RingView::build(1, 4, [(0, "a")]), t0);
        m.barrier(1, None, t0);
        let acts = m.evicted();
        assert_eq!(released(&acts).len(), 4);
        assert_eq!(m.status(), Status::Joining);
        assert!(m.barrier(1, None, t0).is_empty());
        m.joined(RingView::build(3, 4, [(0, "a")]), t0);
        m.barrier(3, None, t0);
        let acts = m.stop();
        assert!(matches!(
            &acts[0],
            Action::Release {
                reason: ReleaseReason::Stopping,
                ..
            }
        ));
        assert!(m.joined(RingView::build(4, 4, [(0, "a")]), t0).is_empty());
        assert_eq!(m.status(), Status::Stopped);
    }

    // ---- a randomised protocol check over the real state machine --------
    //
    // A miniature of DESIGN §4 in one thread: a "database" (epoch, ring,
    // acks), members that adopt, acknowledge and run the barrier in random
    // order, sometimes jumping over epochs, joins and leaves. After every
    // step: no partition active on two members; tokens strictly increase
    // from owner to owner.

    struct SimDb {
        epoch: u64,
        history: Vec<RingView>,  // index = epoch
        acked: Vec<Option<u64>>, // per member id; None = not a member
    }

    fn check(members: &[Ownership], last: &mut [(u64, usize)]) -> Result<(), TestCaseError> {
        let size = last.len();
        for p in 0..size as u32 {
            let holders: Vec<usize> = members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.token(p).is_some())
                .map(|(i, _)| i)
                .collect();
            prop_assert!(
                holders.len() <= 1,
                "partition {} active on {:?}",
                p,
                holders
            );
            if let Some(&i) = holders.first() {
                let tok = members[i].token(p).unwrap();
                let (lt, lo) = last[p as usize];
                prop_assert!(
                    tok > lt || (tok == lt && lo == i),
                    "token regression on {}: {} after {} of {}",
                    p,
                    tok,
                    lt,
                    lo
                );
                last[p as usize] = (tok, i);
            }
        }
        Ok(())
    }

    /// The state machine as first written: every transition scans the
    /// whole ring. The real one walks only the member's assigned partitions;
    /// `matches_the_full_scan_reference` checks they never differ.
    struct Reference {
        me: String,
        view: Option<RingView>,
        active: Vec<u64>,
        pending: Vec<u64>,
    }

    impl Reference {
        fn adopt(&mut self, view: RingView, contiguous: bool) -> Vec<Action> {
            let epoch = view.epoch();
            let mut released = Vec::new();
            for p in 0..self.active.len() {
                if view.owner_of(p as u32) == Some(self.me.as_str()) {
                    if self.active[p] == 0 && !(contiguous && self.pending[p] != 0) {
                        self.pending[p] = epoch;
                    }
                } else {
                    if self.active[p] != 0 {
                        self.active[p] = 0;
                        released.push(p as u32);
                    }
                    self.pending[p] = 0;
                }
            }
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
        fn barrier(&mut self, min_ack: Option<u64>) -> Vec<Action> {
            let mut by_token: Vec<(u64, Vec<u32>)> = Vec::new();
            for p in 0..self.active.len() {
                let since = self.pending[p];
                if since == 0 || min_ack.is_some_and(|a| a < since) {
                    continue;
                }
                self.pending[p] = 0;
                self.active[p] = since;
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
        fn release_all(&mut self, reason: ReleaseReason, to_pending: Option<u64>) -> Vec<Action> {
            let mut released = Vec::new();
            for p in 0..self.active.len() {
                if self.active[p] != 0 {
                    self.active[p] = 0;
                    if let Some(e) = to_pending {
                        self.pending[p] = e;
                    }
                    released.push(p as u32);
                }
            }
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_the_full_scan_reference(
            ops in proptest::collection::vec((0u8..7, 0usize..5, 0u64..12), 1..120),
        ) {
            const SIZE: u32 = 48;
            let t0 = Instant::now();
            let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
            // A history of views: members joining and leaving at random.
            let mut history = vec![RingView::build(1, SIZE, [(7u32, "n0")])];
            let mut m = Ownership::new("n0", SIZE, TTL, MARGIN);
            let mut r = Reference { me: "n0".into(), view: None, active: vec![0; SIZE as usize], pending: vec![0; SIZE as usize] };
            let mut clock = t0;
            let joined = m.joined(history[0].clone(), t0);
            r.view = None;
            let mut want = r.adopt(history[0].clone(), false);
            want.retain(|_| false);
            prop_assert_eq!(joined, want);
            for (op, who, x) in ops {
                let got;
                let want;
                match op {
                    0 => { // a ring change: someone joins or leaves
                        let last = history.last().unwrap();
                        let epoch = last.epoch() + 1;
                        let name = &names[who];
                        let change = if last.member(name).is_some() && who != 0 {
                            Change { epoch, removed: vec![name.clone()], added: None }
                        } else {
                            let taken: Vec<u32> = last.vnodes().map(|(p, _)| p).collect();
                            let ps = crate::placement::choose_positions(&format!("{name}-{x}"), 2, SIZE, |p| taken.contains(&p)).unwrap();
                            Change { epoch, removed: vec![], added: Some((name.clone(), ps)) }
                        };
                        let next = last.apply(&change);
                        history.push(next);
                        continue;
                    }
                    1 | 2 => { // adopt the next view, or jump to the newest
                        let cur = m.view_epoch();
                        let newest = history.last().unwrap().epoch();
                        let target = if op == 1 { (cur + 1).min(newest) } else { newest };
                        let v = history[(target - 1) as usize].clone();
                        let contiguous = target == cur + 1;
                        got = m.adopt(v.clone());
                        want = if target > cur { r.adopt(v, contiguous) } else { Vec::new() };
                    }
                    3 | 4 => { // barrier at the view's epoch
                        let min_ack = (x > 0).then_some(x);
                        got = m.barrier(m.view_epoch(), min_ack, clock);
                        want = r.barrier(min_ack);
                    }
                    5 => { // the lease runs out, then a renewal
                        clock += TTL * 2;
                        let later = clock;
                        got = m.fence(later);
                        let e = m.view_epoch();
                        want = r.release_all(ReleaseReason::LeaseExpired, Some(e));
                        m.renewed(later, later);
                    }
                    _ => { // eviction and a rejoin at the newest view
                        let mut g = m.evicted();
                        let mut w = r.release_all(ReleaseReason::Evicted, None);
                        r.pending.iter_mut().for_each(|s| *s = 0);
                        let v = history.last().unwrap().clone();
                        if v.member("n0").is_some() {
                            g.extend(m.joined(v.clone(), clock));
                            w.extend(r.adopt(v, false));
                        }
                        got = g;
                        want = w;
                    }
                }
                prop_assert_eq!(&got, &want);
                for p in 0..SIZE {
                    let rt = r.active[p as usize];
                    prop_assert_eq!(m.token(p), (rt != 0).then_some(rt), "token of {}", p);
                    prop_assert_eq!(m.pending[p as usize], r.pending[p as usize], "pending {}", p);
                }
                prop_assert_eq!(m.pending_count as usize, r.pending.iter().filter(|s| **s != 0).count());
                prop_assert_eq!(m.active_count as usize, r.active.iter().filter(|t| **t != 0).count());
                prop_assert_eq!(m.active().map(|(p, _)| p).collect::<Vec<_>>(),
                    (0..SIZE).filter(|p| r.active[*p as usize] != 0).collect::<Vec<_>>());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn random_interleavings_never_overlap(ops in proptest::collection::vec((0u8..6, 0usize..6, any::<u32>()), 1..300)) {
            const SIZE: u32 = 32;
            let t0 = Instant::now();
            let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
            let mut members: Vec<Ownership> = names.iter().map(|n| Ownership::new(n, SIZE, TTL, MARGIN)).collect();
            let mut db = SimDb { epoch: 0, history: vec![RingView::empty(0, SIZE)], acked: vec![None; 6] };
            let mut last = vec![(0u64, usize::MAX); SIZE as usize];
            for (op, who, r) in ops {
                let m = &mut members[who];
                match op {
                    0 => { // join (if not a member)
                        if db.acked[who].is_none() && m.status() != Status::Stopped {
                            let taken: Vec<u32> = db.history[db.epoch as usize].vnodes().map(|(p, _)| p).collect();
                            if let Some(ps) = crate::placement::choose_positions(&names[who], 2, SIZE, |p| taken.contains(&p)) {
                                db.epoch += 1;
                                let v = db.history.last().unwrap().apply(&Change { epoch: db.epoch, removed: vec![], added: Some((names[who].clone(), ps)) });
                                db.history.push(v.clone());
                                db.acked[who] = Some(db.epoch);
                                m.joined(v, t0);
                            }
                        }
                    }
                    1 | 2 => { // adopt the next view, or jump to the newest
                        if db.acked[who].is_some() {
                            let target = if op == 1 { (m.view_epoch() + 1).min(db.epoch) } else { db.epoch };
                            m.adopt(db.history[target as usize].clone());
                        }
                    }
                    3 => { // acknowledge (a renewal carrying the view's epoch)
                        if let Some(a) = db.acked[who].as_mut() { *a = (*a).max(m.view_epoch()); }
                    }
                    4 => { // barrier from a consistent snapshot
                        if db.acked[who].is_some() {
                            let others = db.acked.iter().enumerate().filter(|(i, _)| *i != who).filter_map(|(_, a)| *a).min();
                            m.barrier(db.epoch, others, t0);
                        }
                    }
                    _ => { // graceful leave (rarely), then may rejoin
                        if db.acked[who].is_some() && r % 4 == 0 {
                            m.evicted(); // releases everything locally first, like stop()
                            db.acked[who] = None;
                            db.epoch += 1;
                            let v = db.history.last().unwrap().apply(&Change { epoch: db.epoch, removed: vec![names[who].clone()], added: None });
                            db.history.push(v);
                        }
                    }
                }
                check(&members, &mut last)?;
            }
        }
    }
}
