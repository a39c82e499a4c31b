//! A whole ring in one thread: a simulated database (the statements' rules,
//! not SQL), members made of a real [`Session`] each with its four
//! "threads", and a seeded scheduler that interleaves their steps with
//! delayed answers, lost notifications, pauses up to 3 × TTL, crashes,
//! graceful leaves and joins. Time is simulated.
//!
//! Checked all along: no two members *report* a partition at one instant
//! (active and the local lease valid: what `owns()` answers); tokens
//! strictly increase from owner to owner. Checked at the end, from the
//! effects alone: the activity intervals `[Acquired.at, Released.at]` of
//! different members never intersect — which holds only if releases after
//! a lapsed lease are stamped with the deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::placement::choose_positions;
use crate::protocol::input::{CatchUp, Cleaned, Joined, Notice, Renewal};
use crate::protocol::output::{CleanupStep, Effect, HeartbeatStep, Output, WatcherStep};
use crate::protocol::{Session, SessionConfig, Status, Ticket};
use crate::ring::{Change, RingView};

pub const RING: u32 = 32;
pub const TTL: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_millis(3333);
const LEAD: Duration = Duration::from_millis(4);
/// Changes the simulated log keeps: an older catch-up reads the whole ring.
const LOG_KEPT: usize = 3;

/// xorshift64*: small, seeded, good enough to pick interleavings.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn ms(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

struct Row {
    acked: u64,
    expires: Instant,
    behind_since: Option<Instant>,
    positions: Vec<u32>,
}

/// The database: the rules of the statements, applied atomically.
pub struct Db {
    epoch: u64,
    members: BTreeMap<String, Row>,
    log: Vec<Change>,
    view: RingView,
}

impl Db {
    fn new() -> Db {
        Db {
            epoch: 0,
            members: BTreeMap::new(),
            log: Vec::new(),
            view: RingView::empty(0, RING),
        }
    }

    fn commit(&mut self, removed: Vec<String>, added: Option<(String, Vec<u32>)>) -> Change {
        self.epoch += 1;
        let change = Change {
            epoch: self.epoch,
            removed,
            added,
        };
        self.view = self.view.apply(&change);
        self.log.push(change.clone());
        change
    }

    fn expired(&self, now: Instant) -> Vec<String> {
        let dead = self.members.iter().filter(|(_, r)| r.expires <= now);
        dead.map(|(n, _)| n.clone()).collect()
    }

    fn join(&mut self, node: &str, now: Instant) -> (Option<Joined>, Option<Change>) {
        if self.members.get(node).is_some_and(|r| r.expires > now) {
            return (None, None); // node id in use: the transaction fails
        }
        let removed = self.expired(now);
        for n in &removed {
            self.members.remove(n);
        }
        let taken: Vec<u32> = self
            .members
            .values()
            .flat_map(|r| r.positions.clone())
            .collect();
        let positions = choose_positions(node, 2, RING, |p| taken.contains(&p)).unwrap();
        let row = Row {
            acked: self.epoch + 1,
            expires: now + TTL,
            behind_since: None,
            positions: positions.clone(),
        };
        self.members.insert(node.to_string(), row);
        let change = self.commit(removed.clone(), Some((node.to_string(), positions.clone())));
        let joined = Joined {
            view: self.view.clone(),
            positions,
            removed,
        };
        (Some(joined), Some(change))
    }

    fn others_min_ack(&self, node: &str, now: Instant) -> Option<u64> {
        let live = self
            .members
            .iter()
            .filter(|(n, r)| n.as_str() != node && r.expires > now);
        live.map(|(_, r)| r.acked).min()
    }

    fn next_expiry(&self, node: &str, now: Instant) -> Option<(String, f64)> {
        let others = self.members.iter().filter(|(n, _)| n.as_str() != node);
        let (n, r) = others.min_by_key(|(_, r)| r.expires)?;
        let ms = if r.expires > now {
            (r.expires - now).as_secs_f64() * 1000.0
        } else {
            -((now - r.expires).as_secs_f64() * 1000.0)
        };
        Some((n.clone(), ms))
    }

    /// The renewal/acknowledgement: only a live row, the lag bound.
    fn renew(&mut self, node: &str, ack: u64, full: bool, now: Instant) -> Renewal {
        let epoch = self.epoch;
        let barrier = full.then(|| self.others_min_ack(node, now));
        let next_expiry = if full {
            self.next_expiry(node, now)
        } else {
            None
        };
        let renewed = match self.members.get_mut(node) {
            Some(r) if r.expires > now => {
                let acked = r.acked.max(ack);
                let refuse = acked < epoch && r.behind_since.is_some_and(|b| b + TTL / 2 <= now);
                r.behind_since = if acked >= epoch {
                    None
                } else {
                    r.behind_since.or(Some(now))
                };
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
            barrier,
            next_expiry,
        }
    }

    fn catch_up(&self, from: u64) -> CatchUp {
        let first = self.log.len().saturating_sub(LOG_KEPT) as u64 + 1;
        if from + 1 < first {
            return CatchUp::Full(self.view.clone());
        }
        CatchUp::Changes(self.log[from as usize..].to_vec())
    }

    fn cleanup(&mut self, node: &str, now: Instant) -> (Cleaned, Option<Change>) {
        let removed = self.expired(now);
        let mut change = None;
        let mut epoch = None;
        if !removed.is_empty() {
            for n in &removed {
                self.members.remove(n);
            }
            let c = self.commit(removed.clone(), None);
            epoch = Some(c.epoch);
            change = Some(c);
        }
        let next_expiry = self.next_expiry(node, now);
        let cleaned = Cleaned {
            removed,
            epoch,
            next_expiry,
        };
        (cleaned, change)
    }

    fn leave(&mut self, node: &str) -> Option<Change> {
        self.members.remove(node)?;
        Some(self.commit(vec![node.to_string()], None))
    }
}

/// A statement on its way: run in the database at `exec_at`, answered at
/// `deliver_at`.
enum Req {
    CatchUp(u64, Ticket),
    Ack(u64, bool, Ticket),
    Barrier(Ticket),
    Renew(u64, Ticket),
    Rejoin,
    Cleanup,
}

enum Reply {
    CatchUp(CatchUp),
    Renewal(Renewal),
    Barrier(u64, Option<u64>),
    Joined(Option<Joined>),
    Cleaned(Cleaned),
}

struct InFlight {
    req: Req,
    sent_at: Instant,
    exec_at: Instant,
    deliver_at: Instant,
    reply: Option<Reply>,
}

/// Per thread of a member: what it waits for.
#[derive(Default)]
struct Thread {
    wake_at: Option<Instant>,
    in_flight: Option<InFlight>,
}

const WATCHER: usize = 0;
const HEARTBEAT_T: usize = 1;

struct Member {
    name: String,
    session: Session,
    threads: [Thread; 3],
    inbox: Vec<Notice>,
    paused_until: Instant,
    alive: bool,
}

/// The simulation. See the module docs.
pub struct Sim {
    rng: Rng,
    t0: Instant,
    now: Instant,
    db: Db,
    members: Vec<Member>,
    next_name: usize,
    /// Open activity intervals: (member, partition) → (token, from).
    open: BTreeMap<(usize, u32), (u64, Instant)>,
    /// Closed intervals: (member, partition, from, to).
    closed: Vec<(usize, u32, Instant, Instant)>,
    /// Per partition: (last token, member that had it).
    last_token: Vec<(u64, usize)>,
    pub violations: Vec<String>,
    pub activations: u64,
    /// The quiet stretch: short delays, small clock steps, nothing lost.
    quiet: bool,
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let t0 = Instant::now();
        Sim {
            rng: Rng::new(seed),
            t0,
            now: t0,
            db: Db::new(),
            members: Vec::new(),
            next_name: 0,
            open: BTreeMap::new(),
            closed: Vec::new(),
            last_token: vec![(0, usize::MAX); RING as usize],
            violations: Vec::new(),
            activations: 0,
            quiet: false,
        }
    }

    fn delay(&mut self) -> Duration {
        if self.quiet || self.rng.chance(92) {
            self.rng.ms(3)
        } else {
            self.rng.ms(TTL.as_millis() as u64 * 3 / 2)
        }
    }

    fn notify(&mut self, change: Option<Change>) {
        let Some(change) = change else { return };
        for i in 0..self.members.len() {
            if !self.members[i].alive || (!self.quiet && self.rng.chance(10)) {
                continue; // lost, or nobody listening
            }
            let carried = (!self.rng.chance(20)).then(|| change.clone());
            self.members[i].inbox.push(Notice {
                epoch: change.epoch,
                change: carried,
            });
        }
    }

    /// A member process starts: `start()` joins synchronously.
    fn spawn(&mut self) {
        // Sometimes a restart under an old name (while its lease may live).
        let name = if self.next_name > 0 && self.rng.chance(25) {
            format!("n{}", self.rng.below(self.next_name as u64))
        } else {
            self.next_name += 1;
            format!("n{}", self.next_name - 1)
        };
        if self.members.iter().any(|m| m.alive && m.name == name) {
            return;
        }
        let cfg = SessionConfig {
            node_id: name.clone(),
            ring_size: RING,
            lease_ttl: TTL,
            margin: MARGIN,
            heartbeat_interval: HEARTBEAT,
            hot_path_lead: LEAD,
        };
        let sent_at = self.now;
        let (joined, change) = self.db.join(&name, self.now);
        self.notify(change);
        let Some(joined) = joined else { return };
        let mut session = Session::new(cfg, self.now);
        let out = session.joined(joined, sent_at, self.now);
        self.members.push(Member {
            name,
            session,
            threads: Default::default(),
            inbox: Vec::new(),
            paused_until: self.now,
            alive: true,
        });
        let i = self.members.len() - 1;
        self.effects(i, out);
    }

    /// Records the effects of member `i`'s output and checks tokens.
    fn effects(&mut self, i: usize, out: Output) {
        for e in out.effects {
            match e {
                Effect::Acquired {
                    partitions,
                    token,
                    at,
                    ..
                } => {
                    for p in partitions {
                        self.activations += 1;
                        let (last, by) = self.last_token[p as usize];
                        if token < last || (token == last && by != i) {
                            self.violations
                                .push(format!("token regression on {p}: {token} after {last}"));
                        }
                        self.last_token[p as usize] = (token, i);
                        self.open.insert((i, p), (token, at));
                    }
                }
                Effect::Released { partitions, at, .. } => {
                    for p in partitions {
                        if let Some((_, from)) = self.open.remove(&(i, p)) {
                            self.closed.push((i, p, from, at));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// No two members report one partition now.
    fn check_reports(&mut self) {
        let mut holder = vec![usize::MAX; RING as usize];
        for (i, m) in self.members.iter().enumerate() {
            let own = m.session.ownership();
            let valid = m.alive && own.valid_until().is_some_and(|v| self.now + LEAD < v);
            if !valid {
                continue;
            }
            for (p, _) in own.active() {
                if holder[p as usize] != usize::MAX {
                    let t = (self.now - self.t0).as_secs_f64();
                    self.violations.push(format!(
                        "t={t:.3}: partition {p} reported by {} and {}",
                        self.members[holder[p as usize]].name, m.name
                    ));
                }
                holder[p as usize] = i;
            }
        }
    }

    /// Runs `steps` scheduling decisions, then a quiet stretch.
    pub fn run(&mut self, steps: usize) {
        self.spawn();
        self.spawn();
        for _ in 0..steps {
            self.step(true);
            self.check_reports();
            if self.violations.len() > 3 {
                return;
            }
        }
    }

    fn step(&mut self, chaos: bool) {
        let r = self.rng.below(1000);
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].alive)
            .collect();
        match r {
            0..=9 if chaos && live.len() < 6 => self.spawn(),
            10..=13 if chaos && live.len() > 1 => {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.crash(i);
            }
            14..=19 if chaos && !live.is_empty() => {
                let i = live[self.rng.below(live.len() as u64) as usize];
                let pause = Duration::from_millis(500 + self.rng.below(3 * TTL.as_millis() as u64));
                self.members[i].paused_until = self.now + pause;
            }
            20..=23 if chaos && live.len() > 1 => {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.leave(i);
            }
            24..=400 => {
                let d = if !self.quiet && self.rng.chance(3) {
                    self.rng.ms(TTL.as_millis() as u64 / 2)
                } else {
                    self.rng.ms(20)
                };
                self.now += d;
            }
            _ if !live.is_empty() => {
                let i = live[self.rng.below(live.len() as u64) as usize];
                let t = self.rng.below(4) as usize;
                self.run_thread(i, t);
            }
            _ => {}
        }
    }

    fn crash(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.alive = false;
        // A killed process reports nothing from now on; what it had active
        // ends here (at its deadline if that passed first).
        let end = m
            .session
            .valid_until()
            .map_or(self.now, |v| (v - LEAD).min(self.now));
        let open: Vec<(usize, u32)> = self
            .open
            .range((i, 0)..(i + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for k in open {
            let (_, from) = self.open.remove(&k).unwrap();
            self.closed.push((i, k.1, from, end.max(from)));
        }
    }

    fn leave(&mut self, i: usize) {
        if self.now < self.members[i].paused_until {
            return;
        }
        let out = self.members[i].session.stop(self.now);
        self.effects(i, out);
        let name = self.members[i].name.clone();
        let change = self.db.leave(&name);
        self.notify(change);
        self.members[i].alive = false;
    }

    fn run_thread(&mut self, i: usize, t: usize) {
        if self.now < self.members[i].paused_until {
            return;
        }
        if t == 3 {
            // The fence thread: no I/O.
            let m = &mut self.members[i];
            if m.session.fence_deadline().is_some_and(|d| d <= self.now) {
                let out = m.session.tick(self.now);
                self.effects(i, out);
            }
            return;
        }
        if let Some(f) = self.members[i].threads[t].in_flight.as_mut() {
            if f.reply.is_none() {
                if f.exec_at <= self.now {
                    self.execute(i, t);
                }
            } else if f.deliver_at <= self.now {
                let f = self.members[i].threads[t].in_flight.take().unwrap();
                self.deliver(i, t, f);
            }
            return;
        }
        self.next_step(i, t);
    }

    fn next_step(&mut self, i: usize, t: usize) {
        let now = self.now;
        let waiting = self.members[i].threads[t].wake_at.is_some_and(|w| w > now);
        let req = match t {
            WATCHER => {
                if waiting && self.members[i].inbox.is_empty() {
                    return;
                }
                let m = &mut self.members[i];
                for n in m.inbox.drain(..) {
                    m.session.notified(n);
                }
                let (step, out) = m.session.watcher_next(now);
                self.effects(i, out);
                match step {
                    WatcherStep::Wait(d) => {
                        self.members[i].threads[t].wake_at = Some(now + d);
                        return;
                    }
                    WatcherStep::CatchUp { from, ticket } => Req::CatchUp(from, ticket),
                    WatcherStep::Ack {
                        epoch,
                        barrier,
                        ticket,
                    } => Req::Ack(epoch, barrier, ticket),
                    WatcherStep::Barrier { ticket } => Req::Barrier(ticket),
                }
            }
            HEARTBEAT_T => match self.members[i].session.heartbeat_next(now) {
                HeartbeatStep::Wait(_) | HeartbeatStep::Stop => return,
                HeartbeatStep::Renew { ack, ticket } => Req::Renew(ack, ticket),
                HeartbeatStep::Rejoin => Req::Rejoin,
            },
            _ => match self.members[i].session.cleanup_next(now) {
                CleanupStep::Wait(_) | CleanupStep::Stop => return,
                CleanupStep::Run { .. } => Req::Cleanup,
            },
        };
        let exec_at = now + self.delay();
        let deliver_at = exec_at + self.delay();
        self.members[i].threads[t].in_flight = Some(InFlight {
            req,
            sent_at: now,
            exec_at,
            deliver_at,
            reply: None,
        });
    }

    fn execute(&mut self, i: usize, t: usize) {
        let now = self.now;
        let name = self.members[i].name.clone();
        let req = &self.members[i].threads[t].in_flight.as_ref().unwrap().req;
        let (reply, change) = match *req {
            Req::CatchUp(from, _) => (Reply::CatchUp(self.db.catch_up(from)), None),
            Req::Ack(epoch, full, _) => {
                (Reply::Renewal(self.db.renew(&name, epoch, full, now)), None)
            }
            Req::Barrier(_) => {
                let min = self.db.others_min_ack(&name, now);
                (Reply::Barrier(self.db.epoch, min), None)
            }
            Req::Renew(ack, _) => (Reply::Renewal(self.db.renew(&name, ack, true, now)), None),
            Req::Rejoin => {
                let (joined, change) = self.db.join(&name, now);
                (Reply::Joined(joined), change)
            }
            Req::Cleanup => {
                let (cleaned, change) = self.db.cleanup(&name, now);
                (Reply::Cleaned(cleaned), change)
            }
        };
        self.notify(change);
        self.members[i].threads[t].in_flight.as_mut().unwrap().reply = Some(reply);
    }

    fn deliver(&mut self, i: usize, _t: usize, f: InFlight) {
        let now = self.now;
        let s = &mut self.members[i].session;
        let out = match (f.req, f.reply.unwrap()) {
            (Req::CatchUp(_, ticket), Reply::CatchUp(read)) => s.caught_up(ticket, read, now),
            (Req::Ack(epoch, _, ticket), Reply::Renewal(r)) => {
                s.acked(ticket, epoch, r, f.sent_at, now)
            }
            (Req::Barrier(ticket), Reply::Barrier(e, min)) => s.barrier_read(ticket, e, min, now),
            (Req::Renew(_, ticket), Reply::Renewal(r)) => s.renewed(ticket, r, f.sent_at, now),
            (Req::Rejoin, Reply::Joined(Some(j))) => {
                if s.status() == Status::Joining {
                    s.joined(j, f.sent_at, now)
                } else {
                    Output::default()
                }
            }
            (Req::Rejoin, Reply::Joined(None)) => {
                s.rejoin_failed(now);
                Output::default()
            }
            (Req::Cleanup, Reply::Cleaned(c)) => s.cleaned(c, now),
            _ => unreachable!("a reply of another request"),
        };
        self.effects(i, out);
    }

    /// The end: every interval from the effects, all pairs.
    pub fn finish(&mut self) {
        let end = self.now;
        let mut all = self.closed.clone();
        for ((i, p), (_, from)) in &self.open {
            all.push((*i, *p, *from, end));
        }
        all.sort_by_key(|(_, p, from, _)| (*p, *from));
        for (k, a) in all.iter().enumerate() {
            for b in all[k + 1..].iter().take_while(|b| b.1 == a.1) {
                if a.0 != b.0 && b.2 <= a.3 {
                    self.violations.push(format!(
                        "partition {}: intervals of {} and {} intersect ({:?} after the start)",
                        a.1,
                        self.members[a.0].name,
                        self.members[b.0].name,
                        b.2 - self.t0
                    ));
                }
            }
        }
    }

    /// Quiet: no chaos, the members catch up; every partition should end
    /// up active exactly once.
    pub fn settle(&mut self, steps: usize) -> usize {
        self.quiet = true;
        for m in &mut self.members {
            m.paused_until = m.paused_until.min(self.now);
        }
        for _ in 0..steps {
            self.step(false);
            self.check_reports();
        }
        let mut covered = vec![false; RING as usize];
        for m in self.members.iter().filter(|m| m.alive) {
            let own = m.session.ownership();
            if own.valid_until().is_some_and(|v| self.now + LEAD < v) {
                for (p, _) in own.active() {
                    covered[p as usize] = true;
                }
            }
        }
        covered.iter().filter(|c| !**c).count()
    }
}

impl Sim {
    /// A one-line summary of every member, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "db epoch {} members {:?}; ",
            self.db.epoch,
            self.db.members.keys().collect::<Vec<_>>()
        );
        for m in self.members.iter().filter(|m| m.alive) {
            let o = m.session.ownership();
            let v = o.view().map(|v| v.partitions_of(&m.name));
            let pend: Vec<u32> = o.pending().map(|(p, _)| p).collect();
            out += &format!(
                "{} view parts {:?} pending {:?} db view parts {:?}; ",
                m.name,
                v,
                pend,
                self.db.view.partitions_of(&m.name)
            );
        }
        for m in &self.members {
            let o = m.session.ownership();
            out += &format!(
                "[{} alive={} {:?} view={} active={} pending={} lease_left={:?} paused={}] ",
                m.name,
                m.alive,
                o.status(),
                o.view_epoch(),
                o.active_count(),
                o.pending_count(),
                o.valid_until()
                    .map(|v| v.saturating_duration_since(self.now)),
                m.paused_until > self.now,
            );
        }
        out
    }
}
