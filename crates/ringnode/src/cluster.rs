//! The demo's members, all in this process: each a [`RingNode`] with its own
//! connection pool (as if it were its own process), started, stopped,
//! crashed and paused on worker threads so that the caller — the terminal
//! UI — never waits on the database. Every member's events go, through a
//! collector thread, to one channel of [`Msg`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use leasering::{Config, ErrorKind, Event, NodeStatus, RingNode, RingView};
use leasering_testkit::rng::Rng;
use parking_lot::Mutex;
use r2d2_postgres::postgres::{self, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use crate::journal::{Label, Line, Tone};
use crate::util::{human, slot_of};

/// What the members need to know.
#[derive(Clone)]
pub struct Settings {
    pub pg: postgres::Config,
    /// The members' configuration, validated; each gets its own node id.
    pub member: Config,
}

/// Starts one member configured by `cfg` (the fields the demo's flags set,
/// node id included) on a pool of its own to `pg`, with an event receiver
/// registered before the start: the demo's members and `ringnode node`
/// alike.
pub fn start_member(
    pg: postgres::Config,
    cfg: &Config,
) -> leasering::Result<(RingNode, Receiver<Event>)> {
    let pool = r2d2::Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(3))
        .build_unchecked(PostgresConnectionManager::new(pg, NoTls));
    let mut b = RingNode::builder(pool, cfg.ring_id.clone())
        .vnode_count(cfg.vnode_count)
        .ring_size(cfg.ring_size)
        .lease_ttl(cfg.lease_ttl)
        .schema(cfg.schema.clone())
        .start_timeout(cfg.start_timeout);
    if let Some(id) = &cfg.node_id {
        b = b.node_id(id.clone());
    }
    let rx = b.subscribe();
    let node = b.start()?;
    Ok((node, rx))
}

/// Where a member stands, from the demo's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Live,
    Paused { until: Instant },
    Leaving,
    Crashed { at: Instant },
}

pub struct Member {
    pub name: String,
    pub slot: usize,
    pub node: Option<RingNode>,
    pub phase: Phase,
}

/// What reaches the demo's loop.
pub enum Msg {
    Event {
        member: String,
        slot: usize,
        event: Event,
        recv: Instant,
    },
    Line(Line),
    Label {
        member: String,
        label: Label,
    },
}

/// A partition as the dashboard paints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Active on exactly one member (its slot).
    Active(usize),
    /// Assigned to a running member, waiting for the handoff barrier.
    Pending(usize),
    /// Assigned to a member that is crashed, paused or leaving: nobody may
    /// use it until that member's lease ends (or it comes back).
    Waiting(usize),
    /// Nobody in the ring.
    Free,
    /// Active on two members at once: never expected.
    Double,
}

/// One member's row.
pub struct Row {
    pub name: String,
    pub slot: usize,
    pub phase: Phase,
    pub status: Option<NodeStatus>,
    pub vnodes: Option<usize>,
}

/// Everything the dashboard and the status lines show, read from the
/// members' in-memory state (no database access).
pub struct Snapshot {
    pub rows: Vec<Row>,
    /// Per partition, how to paint it; counted in `tally`.
    pub cells: Vec<Cell>,
    pub tally: Tally,
    /// Newest epoch among the running members' views.
    pub epoch: u64,
    /// Members in the ring (joined, running, not crashed).
    pub in_ring: usize,
}

/// How many partitions are painted each way (free ones are the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub active: u32,
    pub pending: u32,
    pub waiting: u32,
    pub double: u32,
}

impl Tally {
    fn of(cells: &[Cell]) -> Tally {
        let mut t = Tally::default();
        for c in cells {
            match c {
                Cell::Active(_) => t.active += 1,
                Cell::Pending(_) => t.pending += 1,
                Cell::Waiting(_) => t.waiting += 1,
                Cell::Double => t.double += 1,
                Cell::Free => {}
            }
        }
        t
    }
}

pub struct Cluster {
    pub settings: Settings,
    members: Mutex<Vec<Member>>,
    next_slot: AtomicUsize,
    tx: Sender<Msg>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closing: AtomicBool,
}

impl Cluster {
    pub fn new(settings: Settings, tx: Sender<Msg>) -> Arc<Cluster> {
        Arc::new(Cluster {
            settings,
            members: Mutex::new(Vec::new()),
            next_slot: AtomicUsize::new(0),
            tx,
            threads: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        })
    }

    fn note(&self, member: Option<(&str, usize)>, tone: Tone, text: String) {
        let _ = self.tx.send(Msg::Line(Line {
            at: Instant::now(),
            member: member.map(|(n, s)| (n.to_string(), s)),
            tone,
            text,
        }));
    }

    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) {
        match std::thread::Builder::new().name(name).spawn(f) {
            Ok(h) => self.threads.lock().push(h),
            Err(e) => self.note(None, Tone::Bad, format!("could not start a thread: {e}")),
        }
    }

    /// Reserves the next `node-N` and lists it as starting.
    pub fn reserve(&self) -> (String, usize) {
        let slot = self.next_slot.fetch_add(1, Ordering::SeqCst);
        let name = format!("node-{slot}");
        self.members.lock().push(Member {
            name: name.clone(),
            slot,
            node: None,
            phase: Phase::Starting,
        });
        (name, slot)
    }

    fn start_member(&self, name: &str) -> leasering::Result<(RingNode, Receiver<Event>)> {
        let mut pg = self.settings.pg.clone();
        pg.application_name(&format!("ringnode {name}"));
        let mut cfg = self.settings.member.clone();
        cfg.node_id = Some(name.to_string());
        start_member(pg, &cfg)
    }

    /// Starts a reserved member; blocks until it joined (or failed, in which
    /// case it is no longer listed). A node id still held by a live member
    /// (of an earlier run, on a shared database) moves on to the next `N`.
    pub fn start_reserved(
        self: &Arc<Self>,
        mut name: String,
        mut slot: usize,
    ) -> leasering::Result<String> {
        let t0 = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.start_member(&name) {
                Ok((node, rx)) => {
                    self.spawn_collector(name.clone(), slot, rx);
                    let orphan = {
                        let mut ms = self.members.lock();
                        match ms.iter_mut().find(|m| m.name == name) {
                            Some(m) if !self.closing.load(Ordering::SeqCst) => {
                                m.node = Some(node.clone());
                                m.phase = Phase::Live;
                                None
                            }
                            _ => Some(node),
                        }
                    };
                    if let Some(node) = orphan {
                        // The demo is quitting: this one leaves at once.
                        let _ = node.stop();
                        self.remove(&name);
                    } else {
                        self.note(
                            Some((&name, slot)),
                            Tone::Info,
                            format!("started: join committed in {}", human(t0.elapsed())),
                        );
                    }
                    return Ok(name);
                }
                Err(e)
                    if e.kind() == ErrorKind::Timeout
                        && attempts < 4
                        && !self.closing.load(Ordering::SeqCst) =>
                {
                    // Many joins at once queue on the ring's row lock; with
                    // a short TTL the statement timeout is short too.
                    self.note(
                        Some((&name, slot)),
                        Tone::Warn,
                        format!("join timed out ({e}): trying again"),
                    );
                }
                Err(e) if e.kind() == ErrorKind::NodeIdInUse && attempts < 20 => {
                    let next = self.next_slot.fetch_add(1, Ordering::SeqCst);
                    let new_name = format!("node-{next}");
                    self.note(
                        Some((&name, slot)),
                        Tone::Warn,
                        format!("node id in use (a member of an earlier run?): trying {new_name}"),
                    );
                    if let Some(m) = self.members.lock().iter_mut().find(|m| m.name == name) {
                        m.name = new_name.clone();
                        m.slot = next;
                    }
                    name = new_name;
                    slot = next;
                }
                Err(e) => {
                    self.remove(&name);
                    return Err(e);
                }
            }
        }
    }

    fn remove(&self, name: &str) {
        self.members.lock().retain(|m| m.name != name);
    }

    fn spawn_collector(&self, name: String, slot: usize, rx: Receiver<Event>) {
        let tx = self.tx.clone();
        self.spawn(format!("events-{name}"), move || {
            for event in rx {
                let msg = Msg::Event {
                    member: name.clone(),
                    slot,
                    event,
                    recv: Instant::now(),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
    }

    /// Joins a new member, on a worker thread.
    pub fn join(self: &Arc<Self>, origin: &str) {
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let (name, slot) = self.reserve();
        self.note(
            Some((&name, slot)),
            Tone::Action,
            format!("[{origin}] joining…"),
        );
        let me = self.clone();
        self.spawn(format!("join-{name}"), move || {
            if let Err(e) = me.start_reserved(name.clone(), slot) {
                me.note(
                    Some((&name, slot)),
                    Tone::Bad,
                    format!("could not join: {e}"),
                );
            }
        });
    }

    fn take_for(&self, name: &str, phase: Phase) -> Option<(RingNode, usize)> {
        let mut ms = self.members.lock();
        let m = ms.iter_mut().find(|m| m.name == name)?;
        if !matches!(m.phase, Phase::Live | Phase::Paused { .. }) {
            return None;
        }
        let node = m.node.clone()?;
        m.phase = phase;
        Some((node, m.slot))
    }

    /// Graceful leave, on a worker thread.
    pub fn leave(self: &Arc<Self>, name: &str, origin: &str) {
        let Some((node, slot)) = self.take_for(name, Phase::Leaving) else {
            return;
        };
        let _ = self.tx.send(Msg::Label {
            member: name.to_string(),
            label: Label::Leaving,
        });
        self.note(
            Some((name, slot)),
            Tone::Action,
            format!("[{origin}] leaving gracefully…"),
        );
        let me = self.clone();
        let name = name.to_string();
        self.spawn(format!("leave-{name}"), move || {
            let t0 = Instant::now();
            let result = node.stop();
            me.remove(&name);
            drop(node);
            match result {
                Ok(()) => me.note(
                    Some((&name, slot)),
                    Tone::Info,
                    format!("left the ring in {}", human(t0.elapsed())),
                ),
                Err(e) => me.note(
                    Some((&name, slot)),
                    Tone::Warn,
                    format!("leave failed, its lease will expire instead: {e}"),
                ),
            }
        });
    }

    /// A crash: the member stops without leaving; its lease runs out in the
    /// database and the survivors remove it.
    pub fn crash(self: &Arc<Self>, name: &str, origin: &str) {
        let at = Instant::now();
        let Some((node, slot)) = self.take_for(name, Phase::Crashed { at }) else {
            return;
        };
        let _ = self.tx.send(Msg::Label {
            member: name.to_string(),
            label: Label::Crashed,
        });
        self.note(
            Some((name, slot)),
            Tone::Bad,
            format!(
                "[{origin}] crash: stops without leaving (its lease ends within {})",
                human(self.settings.member.lease_ttl)
            ),
        );
        let name = name.to_string();
        self.spawn(format!("crash-{name}"), move || node.crash());
    }

    /// Freezes a member's threads for `d` (its hot path keeps answering, and
    /// stops reporting partitions when its local lease runs out).
    pub fn pause(&self, name: &str, d: Duration, origin: &str) {
        let until = Instant::now() + d;
        let Some((node, slot)) = self.take_for(name, Phase::Paused { until }) else {
            return;
        };
        node.pause_threads_for(d);
        self.note(
            Some((name, slot)),
            Tone::Warn,
            format!(
                "[{origin}] paused for {} (lease TTL {}): its threads are frozen",
                human(d),
                human(self.settings.member.lease_ttl)
            ),
        );
    }

    /// A random member among the live ones (not paused, crashed, leaving).
    pub fn pick(&self, rng: &mut Rng) -> Option<String> {
        let ms = self.members.lock();
        let live: Vec<&Member> = ms.iter().filter(|m| m.phase == Phase::Live).collect();
        rng.pick(&live).map(|m| m.name.clone())
    }

    /// Members by phase: (all listed, live, paused, starting, crashed, leaving).
    pub fn counts(&self) -> Counts {
        let ms = self.members.lock();
        let mut c = Counts::default();
        for m in ms.iter() {
            c.total += 1;
            match m.phase {
                Phase::Live => c.live += 1,
                Phase::Paused { .. } => c.paused += 1,
                Phase::Starting => c.starting += 1,
                Phase::Crashed { .. } => c.crashed += 1,
                Phase::Leaving => c.leaving += 1,
            }
        }
        c
    }

    /// Nodes that may hold partitions, for the sampler.
    pub fn nodes(&self) -> Vec<(String, RingNode)> {
        self.members
            .lock()
            .iter()
            .filter_map(|m| m.node.clone().map(|n| (m.name.clone(), n)))
            .collect()
    }

    /// Housekeeping: paused members whose pause ended are live again; a
    /// crashed member is forgotten once the ring no longer lists it.
    pub fn tick(&self) {
        let now = Instant::now();
        let newest = self.newest_view();
        let mut resumed = Vec::new();
        let mut ms = self.members.lock();
        let running = ms
            .iter()
            .filter(|m| !matches!(m.phase, Phase::Crashed { .. }))
            .count();
        for m in ms.iter_mut() {
            if let Phase::Paused { until } = m.phase {
                if now >= until {
                    m.phase = Phase::Live;
                    resumed.push((m.name.clone(), m.slot));
                }
            }
        }
        ms.retain(|m| match m.phase {
            Phase::Crashed { at } => {
                let listed = newest.as_ref().is_some_and(|v| v.member(&m.name).is_some());
                let grace = now.saturating_duration_since(at);
                !(grace > Duration::from_millis(300) && !listed
                    || running == 0 && grace > self.settings.member.lease_ttl * 2)
            }
            _ => true,
        });
        drop(ms);
        for (name, slot) in resumed {
            self.note(
                Some((&name, slot)),
                Tone::Info,
                "pause over: its threads run again".into(),
            );
        }
    }

    fn newest_view(&self) -> Option<RingView> {
        let nodes: Vec<RingNode> = self
            .members
            .lock()
            .iter()
            .filter(|m| !matches!(m.phase, Phase::Crashed { .. }))
            .filter_map(|m| m.node.clone())
            .collect();
        nodes
            .iter()
            .filter(|n| n.status().joined)
            .map(|n| n.ring())
            .max_by_key(|v| v.epoch())
    }

    /// The state of every member, from memory.
    pub fn snapshot(&self) -> Snapshot {
        let listed: Vec<(String, usize, Phase, Option<RingNode>)> = self
            .members
            .lock()
            .iter()
            .map(|m| (m.name.clone(), m.slot, m.phase, m.node.clone()))
            .collect();
        let size = self.settings.member.ring_size as usize;
        let mut active_by: Vec<Option<usize>> = vec![None; size];
        let mut double = vec![false; size];
        let mut newest: Option<RingView> = None;
        let mut rows = Vec::with_capacity(listed.len());
        let mut in_ring = 0;
        for (name, slot, phase, node) in listed {
            let status = node.as_ref().map(|n| n.status());
            if let Some(n) = &node {
                for p in n.owned_partitions().iter() {
                    let Some(a) = active_by.get_mut(p as usize) else {
                        continue;
                    };
                    if a.is_some() {
                        double[p as usize] = true;
                    }
                    *a = Some(slot);
                }
                let running = !matches!(phase, Phase::Crashed { .. });
                if let Some(st) = status
                    .as_ref()
                    .filter(|s| s.joined && !s.stopped && running)
                {
                    in_ring += 1;
                    if newest.as_ref().is_none_or(|v| v.epoch() < st.epoch) {
                        newest = Some(n.ring());
                    }
                }
            }
            rows.push(Row {
                name,
                slot,
                phase,
                status,
                vnodes: None,
            });
        }
        let by_name: HashMap<&str, (usize, Phase)> = rows
            .iter()
            .map(|r| (r.name.as_str(), (r.slot, r.phase)))
            .collect();
        let cells: Vec<Cell> = (0..size)
            .map(|p| {
                if double[p] {
                    return Cell::Double;
                }
                if let Some(slot) = active_by[p] {
                    return Cell::Active(slot);
                }
                let owner = newest.as_ref().and_then(|v| v.owner_of(p as u32));
                match owner {
                    None => Cell::Free,
                    Some(o) => match by_name.get(o) {
                        Some((slot, Phase::Live | Phase::Starting)) => Cell::Pending(*slot),
                        Some((slot, _)) => Cell::Waiting(*slot),
                        None => Cell::Waiting(slot_of(o)),
                    },
                }
            })
            .collect();
        if let Some(v) = &newest {
            for r in rows.iter_mut() {
                r.vnodes = v.member(&r.name).map(|m| m.positions().len());
            }
        }
        Snapshot {
            rows,
            tally: Tally::of(&cells),
            cells,
            epoch: newest.as_ref().map_or(0, |v| v.epoch()),
            in_ring,
        }
    }

    /// Stops every member gracefully (in parallel) and waits for all worker
    /// and collector threads, at most until `deadline`. No new member starts
    /// afterwards.
    pub fn stop_all(self: &Arc<Self>, deadline: Instant) {
        self.closing.store(true, Ordering::SeqCst);
        let names: Vec<String> = self
            .members
            .lock()
            .iter()
            .filter(|m| matches!(m.phase, Phase::Live | Phase::Paused { .. }))
            .map(|m| m.name.clone())
            .collect();
        for name in names {
            self.leave(&name, "quit");
        }
        self.wait_idle(deadline);
    }

    /// Waits for the worker and collector threads to finish, at most until
    /// `deadline`; returns whether they all did.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let mut threads = self.threads.lock();
            let mut i = 0;
            while i < threads.len() {
                if threads[i].is_finished() {
                    let _ = threads.swap_remove(i).join();
                } else {
                    i += 1;
                }
            }
            let busy = !threads.is_empty();
            drop(threads);
            // Members still listed (starting, or crashed and not yet
            // released by their threads) keep their collectors alive.
            if !busy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Forgets members reserved but never started.
    pub fn forget_starting(&self) {
        self.members
            .lock()
            .retain(|m| !(m.phase == Phase::Starting && m.node.is_none()));
    }

    /// Drops every member handle (after `stop_all`), so that collectors end.
    pub fn forget_all(&self) {
        let ms: Vec<Member> = std::mem::take(&mut *self.members.lock());
        for m in ms {
            if let Some(n) = m.node {
                if !n.status().stopped {
                    n.crash();
                }
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub total: usize,
    pub live: usize,
    pub paused: usize,
    pub starting: usize,
    pub crashed: usize,
    pub leaving: usize,
}
