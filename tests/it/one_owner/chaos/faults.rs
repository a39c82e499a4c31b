//! The faults the chaos harness injects: [`Chaos::inject`] dispatches on the
//! [`Kind`] to one method per kind of fault, each returning once its fault
//! is over (the ring may still be recovering), with the helpers they share
//! (drawing a victim, durations in TTLs, thawing a frozen member).

use std::time::{Duration, Instant};

use leasering_testkit::ProxyMode;

use super::cluster::mono_now;
use super::{
    secs, Chaos, Kind, EXTRA_RINGS, FROZEN_AFTER_CHANGE, SETTLE_QUIET, STEP_TIMEOUT, STOP_TIMEOUT,
};

/// A change made while a member was frozen: from `from` to `to` (its thaw)
/// every partition but `exempt` must be covered again within one lease TTL
/// (the exact, timing-free check that a join and a leave take nothing from
/// a frozen member's lease is `tests/it/one_owner/claims.rs`'s
/// `a_frozen_member_delays_only_the_partitions_whose_claims_it_holds`).
pub(super) struct Isolation {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) exempt: Vec<u32>,
}

pub(super) struct Fault {
    pub(super) kind: Kind,
    pub(super) label: String,
    /// When it began.
    pub(super) start: u64,
    /// From when uncovered time counts: its start, or for a database outage
    /// the moment the database accepted connections again (while it is down
    /// nobody can hold a lease, by design).
    pub(super) from: u64,
    pub(super) isolation: Option<Isolation>,
}

/// What one fault method did: how to name it, and what [`Fault`] takes
/// from it besides its kind and start.
struct Injected {
    label: String,
    /// From when uncovered time counts, when not from the fault's start.
    from: Option<u64>,
    isolation: Option<Isolation>,
}

impl Injected {
    fn labelled(label: String) -> Injected {
        Injected {
            label,
            from: None,
            isolation: None,
        }
    }
}

impl Chaos {
    /// Injects one fault; returns once it is over (the ring may still be
    /// recovering).
    pub(super) fn inject(&mut self, kind: Kind) -> Result<Fault, String> {
        let start = mono_now();
        let done = match kind {
            Kind::Kill => self.kill()?,
            Kind::Pause => self.pause()?,
            Kind::Restart => self.restart()?,
            Kind::JoinBurst => self.join_burst()?,
            Kind::PauseDuringJoin => self.pause_during_join()?,
            Kind::JoinWhileFrozen => self.join_while_frozen()?,
            Kind::LeaveWhileFrozen => self.leave_while_frozen()?,
            Kind::MultiRingKill => self.multi_ring_kill()?,
            Kind::MultiRingPause => self.multi_ring_pause()?,
            Kind::StallAfterJoin => self.stall_after_join()?,
            Kind::Cut => self.cut()?,
            Kind::Stall => self.stall()?,
            Kind::SlowLink => self.slow_link()?,
            Kind::DbStopFast | Kind::DbStopImmediate | Kind::DbKill | Kind::DbRestart => {
                self.db_outage(kind, start)?
            }
        };
        Ok(Fault {
            kind,
            label: done.label,
            start,
            from: done.from.unwrap_or(start),
            isolation: done.isolation,
        })
    }

    /// `kill -9` of a random member once the ring has settled, and a fresh
    /// replacement; waits for the replacement to be ready. Counted from the
    /// kill.
    fn kill(&mut self) -> Result<Injected, String> {
        // Only a settled member is killed: its log then holds every
        // change it made (nothing in flight), which the checker
        // relies on to end its activity at the kill.
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        let v = self.victim();
        let t = self.cluster.kill(v);
        let id = self.cluster.fresh_node_id();
        let r = self.cluster.spawn(&id);
        self.cluster.wait_ready(&[r], STEP_TIMEOUT)?;
        Ok(Injected {
            label: format!("kill -9 {}, replaced by {}", self.name(v), self.name(r)),
            from: Some(t),
            isolation: None,
        })
    }

    /// `SIGSTOP` of a random member for 0.5–3 × TTL, then `SIGCONT`; waits
    /// for nothing else.
    fn pause(&mut self) -> Result<Injected, String> {
        let v = self.victim();
        let d = self.ttl_times(0.5, 3.0);
        self.cluster.pause(v);
        self.sleep(d);
        self.cluster.resume(v);
        Ok(Injected::labelled(format!(
            "SIGSTOP {} for {}",
            self.name(v),
            secs(d)
        )))
    }

    /// Graceful stop of a random member and its restart under the same node
    /// id (with its extra rings, if any); waits for the stop and for the
    /// restarted member to be ready.
    fn restart(&mut self) -> Result<Injected, String> {
        let v = self.victim();
        let id = self.cluster.members[v].node_id.clone();
        let extra = self.cluster.members[v].extra_rings;
        self.cluster.stop_many(&[v], STOP_TIMEOUT)?;
        // Restarted as it was: a multi-ring process with its rings.
        let r = self.cluster.spawn_with(&id, extra);
        self.cluster.wait_ready(&[r], STEP_TIMEOUT)?;
        Ok(Injected::labelled(format!(
            "graceful restart of {} as {}",
            self.name(v),
            self.name(r)
        )))
    }

    /// 2–3 members join at once, then as many leave at once; waits for the
    /// joiners to be ready, the ring to settle, and the leavers to stop.
    fn join_burst(&mut self) -> Result<Injected, String> {
        let k = self.rng.range(2, 3) as usize;
        let new = self.cluster.spawn_fresh(k, STEP_TIMEOUT)?;
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        let leave = self.some_members(k);
        self.cluster.stop_many(&leave, STOP_TIMEOUT)?;
        Ok(Injected::labelled(format!(
            "{k} joined at once ({}), then {} left at once",
            new.iter()
                .map(|&i| self.name(i))
                .collect::<Vec<_>>()
                .join(" "),
            leave
                .iter()
                .map(|&i| self.name(i))
                .collect::<Vec<_>>()
                .join(" ")
        )))
    }

    /// 1–2 members start joining while a random member is stopped for
    /// 0.5–2 × TTL, then as many leave; waits for the joiners to be ready
    /// (after the thaw), the ring to settle, and the leavers to stop.
    fn pause_during_join(&mut self) -> Result<Injected, String> {
        let v = self.victim();
        let k = self.rng.range(1, 2) as usize;
        let d = self.ttl_times(0.5, 2.0);
        let ids: Vec<String> = (0..k).map(|_| self.cluster.fresh_node_id()).collect();
        let new: Vec<usize> = ids.iter().map(|id| self.cluster.spawn(id)).collect();
        self.cluster.pause(v);
        self.sleep(d);
        self.cluster.resume(v);
        self.cluster.wait_ready(&new, STEP_TIMEOUT)?;
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        let leave = self.some_members(k);
        self.cluster.stop_many(&leave, STOP_TIMEOUT)?;
        Ok(Injected::labelled(format!(
            "{k} joined while {} was stopped for {}, then {} left",
            self.name(v),
            secs(d),
            leave
                .iter()
                .map(|&i| self.name(i))
                .collect::<Vec<_>>()
                .join(" ")
        )))
    }

    /// A member joins and is ready while a random member is frozen
    /// (thawed 0.8–2.5 × TTL after the freeze, at least
    /// [`FROZEN_AFTER_CHANGE`] after the join), then one member leaves;
    /// waits for the joiner, the thaw, the ring to settle and the leaver to
    /// stop. The partitions the frozen member neither owns nor claims are
    /// judged apart ([`Isolation`]).
    fn join_while_frozen(&mut self) -> Result<Injected, String> {
        // Unlike pause_during_join, the join completes while the
        // member is frozen, and the partitions it does not hold
        // are judged on their own: they must not wait for it.
        let v = self.victim();
        let d = self.ttl_times(0.8, 2.5);
        let mut exempt = self.cluster.owned_of(v);
        let frozen = Instant::now();
        let frozen_at = mono_now();
        self.cluster.pause(v);
        // And what it holds claims of (a take in flight when it
        // froze still commits: read again once the joiner is in).
        self.exempt_claims(&mut exempt, v)?;
        let id = self.cluster.fresh_node_id();
        let r = self.cluster.spawn(&id);
        self.cluster.wait_ready(&[r], STEP_TIMEOUT)?;
        self.exempt_claims(&mut exempt, v)?;
        let thawed = self.thaw_later(v, frozen, d);
        let isolation = Some(Isolation {
            from: frozen_at,
            to: thawed,
            exempt,
        });
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        let leave = self.some_members(1);
        self.cluster.stop_many(&leave, STOP_TIMEOUT)?;
        Ok(Injected {
            label: format!(
                "{} joined while {} was stopped for {}, then {} left",
                self.name(r),
                self.name(v),
                secs(Duration::from_nanos(thawed - frozen_at)),
                self.names(&leave)
            ),
            from: None,
            isolation,
        })
    }

    /// A member leaves gracefully while another is frozen (thawed 0.8–2.5 ×
    /// TTL after the freeze, at least [`FROZEN_AFTER_CHANGE`] after the
    /// leave), then a fresh member joins; first tops the ring up to three
    /// live members. Waits for the leaver to stop, the thaw, and the joiner
    /// to be ready. The partitions the frozen member neither owns, nor
    /// claims, nor is given by the leave are judged apart ([`Isolation`]).
    fn leave_while_frozen(&mut self) -> Result<Injected, String> {
        // The frozen member, the leaver, and someone to take over.
        while self.cluster.live().len() < 3 {
            self.cluster.spawn_fresh(1, STEP_TIMEOUT)?;
            self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        }
        let v = self.victim();
        let others: Vec<usize> = self
            .cluster
            .live()
            .into_iter()
            .filter(|&i| i != v && !self.cluster.members[i].paused)
            .collect();
        let l = others[self.rng.below(others.len() as u64) as usize];
        let d = self.ttl_times(0.8, 2.5);
        // Left out of the judgement: what the frozen member holds,
        // and what the leave gives it (nobody else may take those
        // before its lease ends) — the ring without the leaver, as
        // the library builds it from the vnodes.
        let mut exempt = self.cluster.owned_of(v);
        let (vn, ln) = (
            self.cluster.members[v].node_id.clone(),
            self.cluster.members[l].node_id.clone(),
        );
        let vnodes = self.cluster.vnodes()?;
        let after = leasering::RingView::build(
            0,
            self.cluster.settings.ring_size,
            vnodes
                .iter()
                .filter(|(_, n)| *n != ln)
                .map(|(p, n)| (*p, n.as_str())),
        );
        exempt.extend(
            self.cluster
                .owned_of(l)
                .into_iter()
                .filter(|&p| after.owner_of(p) == Some(vn.as_str())),
        );
        exempt.sort_unstable();
        let frozen = Instant::now();
        let frozen_at = mono_now();
        self.cluster.pause(v);
        self.exempt_claims(&mut exempt, v)?;
        self.cluster.stop_many(&[l], STOP_TIMEOUT)?;
        self.exempt_claims(&mut exempt, v)?;
        let thawed = self.thaw_later(v, frozen, d);
        let isolation = Some(Isolation {
            from: frozen_at,
            to: thawed,
            exempt,
        });
        let r = self.cluster.spawn_fresh(1, STEP_TIMEOUT)?;
        Ok(Injected {
            label: format!(
                "{} left while {} was stopped for {}, then {} joined",
                self.name(l),
                self.name(v),
                secs(Duration::from_nanos(thawed - frozen_at)),
                self.names(&r)
            ),
            from: None,
            isolation,
        })
    }

    /// A process serving several rings on one client (one held
    /// connection, four threads for all its members) joins; waits for it
    /// to be ready and the ring to settle; returns its index. Counted from
    /// the join: that is judged too.
    fn join_multi_ring(&mut self) -> Result<usize, String> {
        let id = self.cluster.fresh_node_id();
        let v = self.cluster.spawn_with(&id, EXTRA_RINGS);
        self.cluster.wait_ready(&[v], STEP_TIMEOUT)?;
        // Settled: it holds its share when the fault hits, and (as
        // for kill) its log holds every change it made.
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        Ok(v)
    }

    /// A multi-ring process joins, then dies with `kill -9`, all its
    /// members at once: the checked ring must fare exactly as with a
    /// one-ring process. Waits for the join and the ring to settle before
    /// the kill; it replaces nobody (the ring is back to its size).
    fn multi_ring_kill(&mut self) -> Result<Injected, String> {
        let v = self.join_multi_ring()?;
        let rings = EXTRA_RINGS + 1;
        // It replaces nobody: the ring is back to its size.
        self.cluster.kill(v);
        Ok(Injected::labelled(format!(
            "{} joined ({rings} rings), then kill -9",
            self.name(v)
        )))
    }

    /// A multi-ring process joins, then freezes (`SIGSTOP`, thawed after
    /// 0.8–2.5 × TTL) with all its members at once, then one member leaves;
    /// waits for the join, the ring to settle (before the freeze and after
    /// the thaw), and the leaver to stop.
    fn multi_ring_pause(&mut self) -> Result<Injected, String> {
        let v = self.join_multi_ring()?;
        let rings = EXTRA_RINGS + 1;
        let d = self.ttl_times(0.8, 2.5);
        self.cluster.pause(v);
        self.sleep(d);
        self.cluster.resume(v);
        // Back to the ring's size once it is whole again.
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        let leave = self.some_members(1);
        self.cluster.stop_many(&leave, STOP_TIMEOUT)?;
        Ok(Injected::labelled(format!(
            "{} joined ({rings} rings), SIGSTOP for {}, then {} left",
            self.name(v),
            secs(d),
            self.names(&leave)
        )))
    }

    /// A newcomer's link stalls for 1.2–2.5 × TTL the moment it first
    /// acquires a partition, then one member leaves; waits for the first
    /// acquisition, the newcomer to be ready, the ring to settle, and the
    /// leaver to stop.
    fn stall_after_join(&mut self) -> Result<Injected, String> {
        // A newcomer's link stalls the moment it first acquires:
        // before any renewal since its activation.
        let id = self.cluster.fresh_node_id();
        let r = self.cluster.spawn(&id);
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.cluster.owned_count(r) == 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} acquired nothing within {STEP_TIMEOUT:?}",
                    self.name(r)
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let d = self.ttl_times(1.2, 2.5);
        self.cluster.members[r].proxy.set_mode(ProxyMode::Stall);
        self.sleep(d);
        self.cluster.members[r].proxy.set_mode(ProxyMode::Pass);
        self.cluster.wait_ready(&[r], STEP_TIMEOUT)?;
        self.cluster.wait_settled(SETTLE_QUIET, STEP_TIMEOUT)?;
        let leave = self.some_members(1);
        self.cluster.stop_many(&leave, STOP_TIMEOUT)?;
        Ok(Injected::labelled(format!(
            "{} joined, stalled for {} as soon as it acquired, then {} left",
            self.name(r),
            secs(d),
            self.name(leave[0])
        )))
    }

    /// Cuts a random member's database connections, half the time with new
    /// ones refused for 0.3–1.5 × TTL; waits only for the refusal to end.
    fn cut(&mut self) -> Result<Injected, String> {
        let v = self.victim();
        let refuse = if self.rng.chance(0.5) {
            Some(self.ttl_times(0.3, 1.5))
        } else {
            None
        };
        let proxy = &self.cluster.members[v].proxy;
        if let Some(d) = refuse {
            proxy.set_mode(ProxyMode::Refuse);
            proxy.cut();
            self.sleep(d);
            self.cluster.members[v].proxy.set_mode(ProxyMode::Pass);
        } else {
            proxy.cut();
        }
        Ok(Injected::labelled(match refuse {
            Some(d) => format!(
                "cut {}'s connections, refused for {}",
                self.name(v),
                secs(d)
            ),
            None => format!("cut {}'s connections", self.name(v)),
        }))
    }

    /// Stalls a random member's database traffic (nothing passes either
    /// way) for 1.2–2.5 × TTL, or a quarter of the time 0.7–1 × TTL; waits
    /// for the stall to end.
    fn stall(&mut self) -> Result<Injected, String> {
        // Mostly longer than the TTL (the member's lease ends in the
        // database); now and then just under it (it fenced itself,
        // its lease is still live when the stall ends).
        let v = self.victim();
        let d = if self.rng.chance(0.25) {
            self.ttl_times(0.7, 1.0)
        } else {
            self.ttl_times(1.2, 2.5)
        };
        self.cluster.members[v].proxy.set_mode(ProxyMode::Stall);
        self.sleep(d);
        self.cluster.members[v].proxy.set_mode(ProxyMode::Pass);
        Ok(Injected::labelled(format!(
            "stalled {}'s connections for {}",
            self.name(v),
            secs(d)
        )))
    }

    /// Delays a random member's database traffic by 20–150 ms for 1–2.5 ×
    /// TTL; waits for the delay to end.
    fn slow_link(&mut self) -> Result<Injected, String> {
        let v = self.victim();
        let delay = Duration::from_millis(self.rng.range(20, 150));
        let d = self.ttl_times(1.0, 2.5);
        self.cluster.members[v]
            .proxy
            .set_mode(ProxyMode::Delay(delay));
        self.sleep(d);
        self.cluster.members[v].proxy.set_mode(ProxyMode::Pass);
        Ok(Injected::labelled(format!(
            "delayed {}'s traffic by {delay:?} for {}",
            self.name(v),
            secs(d)
        )))
    }

    /// PostgreSQL stopped (`db_stop_fast`, `db_stop_immediate`), killed
    /// (`db_kill`) for 0.25–2 × TTL, or restarted at once (`db_restart`),
    /// under the members; waits for it to accept connections again, from
    /// when the fault counts (while it is down nobody can hold a lease).
    fn db_outage(&mut self, kind: Kind, start: u64) -> Result<Injected, String> {
        let down = if kind == Kind::DbRestart {
            Duration::ZERO
        } else {
            self.ttl_times(0.25, 2.0)
        };
        let db = &self.cluster.db;
        match kind {
            Kind::DbStopImmediate => db.stop_immediate(),
            Kind::DbKill => db.kill(),
            _ => db.stop_fast(),
        }
        .map_err(|e| format!("stopping PostgreSQL: {e}"))?;
        self.sleep(down);
        self.cluster
            .db
            .start_again()
            .map_err(|e| format!("starting PostgreSQL again: {e}"))?;
        let from = mono_now();
        Ok(Injected {
            label: format!(
                "PostgreSQL {} for {}",
                match kind {
                    Kind::DbStopImmediate => "stopped (immediate)",
                    Kind::DbKill => "killed",
                    Kind::DbRestart => "restarted",
                    _ => "stopped (fast)",
                },
                secs(Duration::from_nanos(from - start))
            ),
            from: Some(from),
            isolation: None,
        })
    }

    fn ttl_times(&mut self, lo: f64, hi: f64) -> Duration {
        self.ttl.mul_f64(self.rng.range_f64(lo, hi))
    }

    /// Adds to `exempt` the partitions whose claims frozen member `v`
    /// holds in the database now (its claims outlive a local lease it lost
    /// just before it froze, and a take in flight when it froze still
    /// commits).
    fn exempt_claims(&self, exempt: &mut Vec<u32>, v: usize) -> Result<(), String> {
        exempt.extend(self.cluster.claims_of(v)?);
        exempt.sort_unstable();
        exempt.dedup();
        Ok(())
    }

    /// A random live, running member.
    fn victim(&mut self) -> usize {
        let live: Vec<usize> = self
            .cluster
            .live()
            .into_iter()
            .filter(|&i| !self.cluster.members[i].paused)
            .collect();
        live[self.rng.below(live.len() as u64) as usize]
    }

    /// `k` random live members.
    fn some_members(&mut self, k: usize) -> Vec<usize> {
        let mut live = self.cluster.live();
        self.rng.shuffle(&mut live);
        live.truncate(k);
        live
    }

    fn name(&self, i: usize) -> String {
        self.cluster.members[i].name.clone()
    }

    fn names(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|&i| self.name(i))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Keeps member `v` frozen until `d` after `frozen` and at least
    /// [`FROZEN_AFTER_CHANGE`] from now, then thaws it; returns the instant
    /// of the thaw.
    fn thaw_later(&mut self, v: usize, frozen: Instant, d: Duration) -> u64 {
        let rest = d.saturating_sub(frozen.elapsed()).max(FROZEN_AFTER_CHANGE);
        self.sleep(rest);
        let t = mono_now();
        self.cluster.resume(v);
        t
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}
