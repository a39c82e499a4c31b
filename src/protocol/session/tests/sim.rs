//! A whole ring in one thread: a simulated database ([`db`]: the
//! statements' rules, not SQL), members made of a real [`Session`] each
//! with its threads, users who drain released partitions, and a seeded
//! scheduler that interleaves their steps with delayed and lost answers,
//! lost notifications, pauses up to 3 × TTL, crashes, graceful leaves
//! (waiting for drains), restarts under an old name and joins. Time is
//! simulated.
//!
//! Two observers follow the ring by the same rules as
//! [`RingObserver`](crate::RingObserver) ([`Follow`]), through the same
//! lost notifications and delayed or failed reads.
//!
//! Checked all along: no two members *report* a partition at one instant
//! (active and the local lease valid: what `owns()` answers); tokens
//! strictly increase from owner to owner. Checked at the end, from the
//! effects alone: the intervals in which a member's *user* works on a
//! partition — from `Acquired.at` to `Released.at`, or with a drain to the
//! guard's drop (or the drain's cut) — never intersect between members.
//! That holds only if releases after a lapsed lease are stamped with the
//! deadline and a drained claim is given back only after the drain.
//! Every view an observer publishes is one the ring had at that epoch, and
//! epochs never go back; after the quiet stretch each observer has the
//! ring's current view.

mod db;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use self::db::Db;
use crate::event::ReleaseReason;
use crate::protocol::follow::{Follow, FollowInput, FollowStep};
use crate::protocol::input::{CatchUp, Cleaned, Input, Joined, Notice, Renewal, Took};
use crate::protocol::output::{CleanupStep, Effect, HeartbeatStep, Output, WatcherStep};
use crate::protocol::{Session, SessionConfig, Status, Ticket};
use crate::ring::{Change, RingView};

pub const RING: u32 = 32;
pub const TTL: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_millis(3333);
const LEAD: Duration = Duration::from_millis(4);

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

/// A statement on its way: run in the database at `exec_at`, answered at
/// `deliver_at` (or never: a lost answer).
enum Req {
    CatchUp(u64, Ticket),
    Take(Vec<u32>, Ticket),
    Release(Vec<(u32, u64)>, Ticket),
    Renew(u64, Ticket),
    Rejoin(Ticket),
    Cleanup(Ticket),
}

enum Reply {
    CatchUp(CatchUp),
    Took(Took),
    Released,
    Renewal(Renewal),
    Joined(Option<Joined>),
    Cleaned(Cleaned),
}

struct InFlight {
    req: Req,
    sent_at: Instant,
    exec_at: Instant,
    deliver_at: Instant,
    lost: bool,
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
    /// `stop()` was called: it leaves once its drains are over.
    leaving: bool,
}

/// An observer: the follow rules, notified like the members, reading the
/// database through answers that are delayed and sometimes lost.
struct Observer {
    follow: Follow,
    inbox: Vec<Notice>,
    /// A read on its way: when its answer arrives, and the answer (`None`:
    /// the read failed).
    in_flight: Option<(Instant, Option<FollowInput>)>,
}

/// How often the observers read the change log without being told.
const OBSERVER_POLL: Duration = Duration::from_secs(1);

/// A user holding a drain guard: drops it at `at`.
struct GuardDrop {
    at: Instant,
    member: usize,
    id: Option<u64>,
    partitions: Vec<u32>,
}

/// The simulation. See the module docs.
pub struct Sim {
    rng: Rng,
    t0: Instant,
    now: Instant,
    db: Db,
    members: Vec<Member>,
    next_name: usize,
    drain: Option<Duration>,
    guards: Vec<GuardDrop>,
    /// Open work intervals: (member, partition) → from.
    open: BTreeMap<(usize, u32), Instant>,
    /// Closed work intervals: (member, partition, from, to).
    closed: Vec<(usize, u32, Instant, Instant)>,
    /// Per partition: (last token, member that had it).
    last_token: Vec<(u64, usize)>,
    pub violations: Vec<String>,
    pub activations: u64,
    /// The quiet stretch: short delays, small clock steps, nothing lost.
    quiet: bool,
    observers: Vec<Observer>,
    /// The ring's views by epoch, as the database had them (what an
    /// observer may publish).
    history: BTreeMap<u64, RingView>,
}

impl Sim {
    /// A simulation; `drain`: the members' drain timeout, if any.
    pub fn new(seed: u64, drain: Option<Duration>) -> Sim {
        let t0 = Instant::now();
        Sim {
            rng: Rng::new(seed),
            t0,
            now: t0,
            db: Db::new(),
            members: Vec::new(),
            next_name: 0,
            drain,
            guards: Vec::new(),
            open: BTreeMap::new(),
            closed: Vec::new(),
            last_token: vec![(0, usize::MAX); RING as usize],
            violations: Vec::new(),
            activations: 0,
            quiet: false,
            observers: (0..2)
                .map(|_| Observer {
                    follow: Follow::new(OBSERVER_POLL, t0),
                    inbox: Vec::new(),
                    in_flight: None,
                })
                .collect(),
            history: BTreeMap::new(),
        }
    }

    /// A network or statement delay: never zero (an answer comes after its
    /// request), usually milliseconds, sometimes longer than a lease.
    fn delay(&mut self) -> Duration {
        let d = if self.quiet || self.rng.chance(92) {
            self.rng.ms(3)
        } else {
            self.rng.ms(TTL.as_millis() as u64 * 3 / 2)
        };
        d + Duration::from_micros(1)
    }

    fn lossy(&mut self) -> bool {
        !self.quiet && self.rng.chance(10)
    }

    fn notify(&mut self, notice: Notice) {
        for i in 0..self.members.len() {
            if !self.members[i].alive || self.lossy() {
                continue; // lost, or nobody listening
            }
            let notice = match &notice {
                Notice::Change { epoch, .. } if self.rng.chance(20) => Notice::Change {
                    epoch: *epoch,
                    change: None,
                },
                other => other.clone(),
            };
            self.members[i].inbox.push(notice);
        }
        for k in 0..self.observers.len() {
            if self.lossy() {
                continue;
            }
            let notice = match &notice {
                Notice::Change { epoch, .. } if self.rng.chance(20) => Notice::Change {
                    epoch: *epoch,
                    change: None,
                },
                other => other.clone(),
            };
            self.observers[k].inbox.push(notice);
        }
    }

    /// A notification on one member's own channel (to each live member of
    /// that name: a process listens with its current incarnation).
    fn notify_member(&mut self, node: &str, notice: Notice) {
        for i in 0..self.members.len() {
            if self.members[i].alive && self.members[i].name == node && !self.lossy() {
                self.members[i].inbox.push(notice.clone());
            }
        }
    }

    fn notify_change(&mut self, change: Option<Change>) {
        self.record_view();
        if let Some(change) = change {
            self.notify(Notice::Change {
                epoch: change.epoch,
                change: Some(change),
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
            drain_timeout: self.drain,
            notifications: true,
        };
        let sent_at = self.now;
        let (joined, change) = self.db.join(&name, self.now);
        self.notify_change(change);
        let Some(joined) = joined else { return };
        let mut session = Session::new(cfg, self.now);
        let out = session.step(Input::Joined { joined, sent_at }, self.now);
        self.members.push(Member {
            name,
            session,
            threads: Default::default(),
            inbox: Vec::new(),
            paused_until: self.now,
            alive: true,
            leaving: false,
        });
        let i = self.members.len() - 1;
        self.effects(i, out);
    }

    /// Records the effects of member `i`'s output and checks tokens; a
    /// drained release hands its guard to the member's user.
    fn effects(&mut self, i: usize, out: Output) {
        for e in out.effects {
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!(
                    "t={:?} {} {:?}",
                    self.now - self.t0,
                    self.members[i].name,
                    e
                );
            }
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
                        self.open.insert((i, p), at);
                    }
                }
                // With drains configured, the user finishes the unit of
                // work in progress after a handoff or stop (at the latest
                // at the drain's deadline) and only then drops the guard —
                // whether or not the event carried one.
                Effect::Released {
                    partitions,
                    at,
                    drain,
                    reason: ReleaseReason::Handoff | ReleaseReason::Stopping,
                    ..
                } if self.drain.is_some() => {
                    let work = if self.rng.chance(30) {
                        Duration::ZERO
                    } else {
                        self.rng.ms(TTL.as_millis() as u64 / 3)
                    };
                    let deadline = drain.map_or(at + self.drain.unwrap(), |d| d.deadline);
                    self.guards.push(GuardDrop {
                        at: (at + work).min(deadline),
                        member: i,
                        id: drain.map(|d| d.id),
                        partitions,
                    });
                }
                Effect::Released { partitions, at, .. } => {
                    for p in partitions {
                        self.close(i, p, at);
                    }
                }
                _ => {}
            }
        }
    }

    fn close(&mut self, i: usize, p: u32, at: Instant) {
        if let Some(from) = self.open.remove(&(i, p)) {
            self.closed.push((i, p, from, at.max(from)));
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

    /// Runs `steps` scheduling decisions with chaos.
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
        self.drop_guards();
        self.finish_leaves();
        let r = self.rng.below(1000);
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].alive && !self.members[*i].leaving)
            .collect();
        let pick = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize];
        match r {
            0..=9 if chaos && live.len() < 6 => self.spawn(),
            10..=13 if chaos && live.len() > 1 => {
                let i = pick(&mut self.rng);
                self.crash(i);
            }
            14..=19 if chaos && !live.is_empty() => {
                let i = pick(&mut self.rng);
                let pause = Duration::from_millis(500 + self.rng.below(3 * TTL.as_millis() as u64));
                self.members[i].paused_until = self.now + pause;
            }
            20..=23 if chaos && live.len() > 1 => {
                let i = pick(&mut self.rng);
                self.leave(i);
            }
            401..=440 => {
                let k = self.rng.below(self.observers.len() as u64) as usize;
                self.run_observer(k);
            }
            24..=400 => {
                let d = if !self.quiet && self.rng.chance(3) {
                    self.rng.ms(TTL.as_millis() as u64 / 2)
                } else {
                    self.rng.ms(20)
                };
                self.now += d;
            }
            _ => {
                let any: Vec<usize> = (0..self.members.len())
                    .filter(|i| self.members[*i].alive)
                    .collect();
                if !any.is_empty() {
                    let i = any[self.rng.below(any.len() as u64) as usize];
                    let t = self.rng.below(4) as usize;
                    self.run_thread(i, t);
                }
            }
        }
    }

    /// Keeps the database's current view in the history.
    fn record_view(&mut self) {
        let v = &self.db.view;
        self.history.entry(v.epoch()).or_insert_with(|| v.clone());
    }

    /// One step of observer `k`, as its client's work thread takes it: the
    /// answer of its read if it is in; else what it was notified, then the
    /// read its rules ask for (answered later, or lost).
    fn run_observer(&mut self, k: usize) {
        let now = self.now;
        if let Some((at, _)) = &self.observers[k].in_flight {
            if *at > now {
                return;
            }
            let (_, answer) = self.observers[k].in_flight.take().expect("checked");
            let input = answer.unwrap_or(FollowInput::ReadFailed);
            let changed = self.observers[k].follow.step(input, now);
            self.check_observer(k, changed);
            return;
        }
        let mut changed = false;
        for n in std::mem::take(&mut self.observers[k].inbox) {
            changed |= self.observers[k].follow.step(FollowInput::Notified(n), now);
        }
        self.check_observer(k, changed);
        let read = match self.observers[k].follow.next(now) {
            FollowStep::Wait(_) => return,
            FollowStep::ReadRing => CatchUp::Full(self.db.view.clone()),
            FollowStep::CatchUp { from } => self.db.catch_up(from),
        };
        self.record_view();
        let answer = (!self.lossy()).then_some(FollowInput::Read { timeline: 1, read });
        let at = now + self.delay();
        self.observers[k].in_flight = Some((at, answer));
    }

    /// A view observer `k` published must be the ring's at its epoch, and
    /// not older than the one before.
    fn check_observer(&mut self, k: usize, changed: bool) {
        if !changed {
            return;
        }
        let v = self.observers[k].follow.view();
        let t = (self.now - self.t0).as_secs_f64();
        match self.history.get(&v.epoch()) {
            Some(h) if same_view(h, v) => {}
            Some(_) => self.violations.push(format!(
                "t={t:.3}: observer {k} published a view the ring never had at epoch {}",
                v.epoch()
            )),
            None => self.violations.push(format!(
                "t={t:.3}: observer {k} published epoch {}, which the ring never had",
                v.epoch()
            )),
        }
    }

    /// Users drop the guards whose work is done (a paused process's user
    /// is paused too). Work counts only while the lease is valid: past it,
    /// "stop now" and the tokens are the contract, not the drain.
    fn drop_guards(&mut self) {
        let now = self.now;
        let members = &self.members;
        let (due, rest): (Vec<GuardDrop>, Vec<GuardDrop>) = std::mem::take(&mut self.guards)
            .into_iter()
            .partition(|g| g.at <= now && members[g.member].paused_until <= now);
        self.guards = rest;
        for g in due {
            let lapse = self.members[g.member]
                .session
                .valid_until()
                .map(|v| v - LEAD);
            let end = match lapse {
                Some(l) if l < now => l.min(now),
                _ => now,
            };
            for p in &g.partitions {
                self.close(g.member, *p, end);
            }
            let m = &mut self.members[g.member];
            if let (true, Some(id)) = (m.alive, g.id) {
                let out = m.session.step(Input::Drained { id }, now);
                self.effects(g.member, out);
            }
        }
    }

    /// Stopping members leave once their drains are over.
    fn finish_leaves(&mut self) {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            if m.alive && m.leaving && m.session.still_draining(self.now) == 0 {
                m.alive = false;
                let name = m.name.clone();
                let change = self.db.leave(&name, self.now);
                self.notify_change(change);
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.alive = false;
        // A killed process works on nothing from now on (nothing from its
        // deadline on, if that passed first).
        let end = m
            .session
            .valid_until()
            .map_or(self.now, |v| (v - LEAD).min(self.now));
        let open: Vec<u32> = self
            .open
            .range((i, 0)..(i + 1, 0))
            .map(|(k, _)| k.1)
            .collect();
        for p in open {
            self.close(i, p, end);
        }
        self.guards.retain(|g| g.member != i);
    }

    fn leave(&mut self, i: usize) {
        if self.now < self.members[i].paused_until {
            return;
        }
        let out = self.members[i].session.step(Input::Stop, self.now);
        self.effects(i, out);
        self.members[i].leaving = true;
    }

    fn run_thread(&mut self, i: usize, t: usize) {
        if self.now < self.members[i].paused_until {
            return;
        }
        if t == 3 {
            // The fence thread: no I/O.
            let m = &mut self.members[i];
            if m.session.fence_deadline().is_some_and(|d| d <= self.now) {
                let out = m.session.step(Input::Tick, self.now);
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
                    let out = m.session.step(Input::Notified(n), now);
                    assert!(out.is_empty(), "a notice changed nothing visible");
                }
                let (step, out) = m.session.watcher_next(now);
                self.effects(i, out);
                match step {
                    WatcherStep::Wait(d) => {
                        self.members[i].threads[t].wake_at = Some(now + d);
                        return;
                    }
                    WatcherStep::CatchUp { from, ticket } => Req::CatchUp(from, ticket),
                    WatcherStep::Take { partitions, ticket } => Req::Take(partitions, ticket),
                    WatcherStep::Release { claims, ticket } => Req::Release(claims, ticket),
                }
            }
            HEARTBEAT_T => match self.members[i].session.heartbeat_next(now) {
                HeartbeatStep::Wait(_) | HeartbeatStep::Stop => return,
                HeartbeatStep::Renew { ack, ticket } => Req::Renew(ack, ticket),
                HeartbeatStep::Rejoin => Req::Rejoin(self.members[i].session.ticket()),
            },
            _ => match self.members[i].session.cleanup_next(now) {
                CleanupStep::Wait(_) | CleanupStep::Stop => return,
                CleanupStep::Run { ticket, .. } => Req::Cleanup(ticket),
            },
        };
        let exec_at = now + self.delay();
        let deliver_at = exec_at + self.delay();
        // A connection that dies mid-statement: the statement may have run,
        // its answer never comes.
        let lost = t == WATCHER && self.lossy() && self.rng.chance(30);
        self.members[i].threads[t].in_flight = Some(InFlight {
            req,
            sent_at: now,
            exec_at,
            deliver_at,
            lost,
            reply: None,
        });
    }

    fn execute(&mut self, i: usize, t: usize) {
        let now = self.now;
        let name = self.members[i].name.clone();
        let req = &self.members[i].threads[t].in_flight.as_ref().unwrap().req;
        let (reply, notice) = match req {
            Req::CatchUp(from, _) => (Reply::CatchUp(self.db.catch_up(*from)), None),
            Req::Take(ps, ticket) => (
                Reply::Took(self.db.take(ticket.incarnation(), ps, now)),
                None,
            ),
            Req::Release(claims, ticket) => {
                // Told only to the members waiting, on their own channels.
                for (node, ps) in self.db.release(ticket.incarnation(), claims) {
                    self.notify_member(
                        &node,
                        Notice::Released {
                            partitions: Some(ps),
                        },
                    );
                }
                (Reply::Released, None)
            }
            Req::Renew(ack, ticket) => (
                Reply::Renewal(self.db.renew(ticket.incarnation(), *ack, now)),
                None,
            ),
            Req::Rejoin(_) => {
                let (joined, change) = self.db.join(&name, now);
                self.notify_change(change);
                (Reply::Joined(joined), None)
            }
            Req::Cleanup(ticket) => {
                let (cleaned, change) = self.db.cleanup(ticket.incarnation(), now);
                self.notify_change(change);
                (Reply::Cleaned(cleaned), None)
            }
        };
        if std::env::var("SIM_TRACE").is_ok() {
            let what = match &reply {
                Reply::Took(t) => {
                    format!("took {:?} held_by {:?} live {}", t.got, t.held_by, t.live)
                }
                Reply::Renewal(r) => format!("renewal {:?} held {:?}", r.renewed, r.held),
                Reply::Joined(j) => format!("joined {:?}", j.as_ref().map(|j| j.incarnation)),
                Reply::Cleaned(c) => format!("cleaned {:?}", c.removed),
                Reply::Released => format!("released {:?}", notice),
                Reply::CatchUp(_) => "catch-up".to_string(),
            };
            eprintln!("t={:?} DB {} {}", now - self.t0, name, what);
        }
        if let Some(n) = notice {
            self.notify(n);
        }
        let f = self.members[i].threads[t].in_flight.as_mut().unwrap();
        f.reply = Some(reply);
        // The answer leaves the database now: it arrives strictly later.
        f.deliver_at = f.deliver_at.max(now + Duration::from_micros(1));
    }

    fn deliver(&mut self, i: usize, _t: usize, f: InFlight) {
        let now = self.now;
        let s = &mut self.members[i].session;
        if f.lost {
            let out = s.step(
                Input::WatcherFailed {
                    error: "connection lost".into(),
                },
                now,
            );
            self.effects(i, out);
            return;
        }
        // Every answer goes in through the one entry point, as the edge's do.
        let input = match (f.req, f.reply.unwrap()) {
            (Req::CatchUp(_, ticket), Reply::CatchUp(read)) => Input::CaughtUp { ticket, read },
            (Req::Take(_, ticket), Reply::Took(took)) => Input::Took { ticket, took },
            (Req::Release(_, ticket), Reply::Released) => Input::Released { ticket },
            (Req::Renew(_, ticket), Reply::Renewal(reply)) => Input::Renewed {
                ticket,
                reply,
                sent_at: f.sent_at,
            },
            (Req::Rejoin(_), Reply::Joined(Some(joined))) => {
                if s.status() != Status::Joining {
                    return;
                }
                Input::Joined {
                    joined,
                    sent_at: f.sent_at,
                }
            }
            (Req::Rejoin(ticket), Reply::Joined(None)) => Input::RejoinFailed { ticket },
            (Req::Cleanup(ticket), Reply::Cleaned(cleaned)) => Input::Cleaned { ticket, cleaned },
            _ => unreachable!("a reply of another request"),
        };
        let out = s.step(input, now);
        self.effects(i, out);
    }

    /// The end: every work interval, all pairs.
    pub fn finish(&mut self) {
        let end = self.now;
        let mut all = self.closed.clone();
        for ((i, p), from) in &self.open {
            all.push((*i, *p, *from, end));
        }
        all.sort_by_key(|(_, p, from, _)| (*p, *from));
        for (k, a) in all.iter().enumerate() {
            for b in all[k + 1..].iter().take_while(|b| b.1 == a.1) {
                if a.0 != b.0 && b.2 <= a.3 {
                    self.violations.push(format!(
                        "partition {}: work of {} [{:?}, {:?}] and {} [{:?}, {:?}] overlaps",
                        a.1,
                        self.members[a.0].name,
                        a.2 - self.t0,
                        a.3 - self.t0,
                        self.members[b.0].name,
                        b.2 - self.t0,
                        b.3 - self.t0,
                    ));
                }
            }
        }
    }

    /// Quiet: no chaos, the members catch up; returns the partitions not
    /// active anywhere at the end.
    pub fn settle(&mut self, steps: usize) -> usize {
        self.quiet = true;
        // The last notifications before the quiet stretch are lost to the
        // observers: only their poll can tell them.
        for o in &mut self.observers {
            o.inbox.clear();
        }
        for m in &mut self.members {
            m.paused_until = m.paused_until.min(self.now);
        }
        for _ in 0..steps {
            self.step(false);
            self.check_reports();
        }
        // Every observer has the ring's current view (the poll reads what
        // lost notifications did not say).
        self.record_view();
        for (k, o) in self.observers.iter().enumerate() {
            if !same_view(o.follow.view(), &self.db.view) {
                self.violations.push(format!(
                    "observer {k} is at epoch {} after the quiet stretch, the ring at {}",
                    o.follow.view().epoch(),
                    self.db.view.epoch()
                ));
            }
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

    /// A one-line summary of every live member, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "db epoch {} members {:?}; ",
            self.db.epoch,
            self.db.member_names()
        );
        for m in self.members.iter().filter(|m| m.alive) {
            let o = m.session.ownership();
            out += &format!(
                "[{} {:?} view={} active={} pending={} waiting={:?} unused={} lease_left={:?}] ",
                m.name,
                o.status(),
                o.view_epoch(),
                o.active_count(),
                o.pending_count(),
                m.session.waiting_for(),
                m.session.unused_claims(),
                o.valid_until()
                    .map(|v| v.saturating_duration_since(self.now)),
            );
        }
        out
    }
}

/// Whether two views are the same ring: epoch, size, members and the owner
/// of every partition.
fn same_view(a: &RingView, b: &RingView) -> bool {
    a.epoch() == b.epoch()
        && a.ring_size() == b.ring_size()
        && a.members()
            .iter()
            .map(|m| m.node_id())
            .eq(b.members().iter().map(|m| m.node_id()))
        && (0..a.ring_size()).all(|p| a.owner_of(p) == b.owner_of(p))
}
