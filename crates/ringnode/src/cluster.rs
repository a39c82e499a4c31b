//! The demo's members, all in this process: each a [`RingNode`] with its own
//! connection pool (as if it were its own process), started, stopped,
//! crashed and paused on worker threads so that the caller — the terminal
//! UI — never waits on the database. Every member's events go, through a
//! collector thread (which also drives the member's simulated worker with
//! `--drain`), to one channel of [`Msg`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use leasering::{ErrorKind, Event, NodeStatus, RingNode, RingView};

use crate::member_config::MemberConfig;
use leasering_testkit::rng::Rng;
use parking_lot::Mutex;
use r2d2_postgres::postgres::{self, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use crate::band::{Stalls, State, Why};
use crate::journal::{Label, Line, Tone};
use crate::util::{human, slot_of};
use crate::work::{Drained, Work};

/// What the members need to know.
#[derive(Clone)]
pub struct Settings {
    pub pg: postgres::Config,
    /// The members' configuration, validated; each gets its own node id.
    pub member: MemberConfig,
    /// With `--drain`: each member's simulated worker, whose unit of work
    /// takes this long (`member.drain_timeout` is set too).
    pub work_unit: Option<Duration>,
    /// With `--zones`: the zones, given to the members in turn (each
    /// member's `zone`); empty without.
    pub zones: Vec<String>,
}

/// Starts one member configured by `cfg` (the fields the demo's flags set,
/// node id included) on a pool of its own to `pg`, with an event receiver
/// registered before the start: the demo's members and `ringnode node`
/// alike.
pub fn start_member(
    pg: postgres::Config,
    cfg: &MemberConfig,
) -> leasering::Result<(RingNode, Receiver<Event>)> {
    let pool = r2d2::Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(3))
        .build_unchecked(PostgresConnectionManager::new(pg, NoTls));
    let mut b = cfg.builder(pool);
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
    /// Its simulated worker, with `--drain`.
    pub work: Option<Arc<Work>>,
    /// Its zone (`--zones`), given when it was reserved.
    pub zone: Option<String>,
}

impl Phase {
    /// How the band names a member in this phase.
    fn state(self) -> State {
        match self {
            Phase::Starting => State::Joining,
            Phase::Live => State::Live,
            Phase::Paused { .. } => State::Paused,
            Phase::Leaving => State::Leaving,
            Phase::Crashed { .. } => State::Crashed,
        }
    }
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
    /// A member's worker ended a drain: the claims go back.
    Drained {
        member: String,
        slot: usize,
        drained: Drained,
    },
}

/// A partition as the dashboard paints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Active on exactly one member (its slot).
    Active(usize),
    /// Assigned to a running member (its slot), taking its claim.
    Pending(usize),
    /// Assigned to a running member, whose take found the claim held by
    /// another member (`None`: locked by a take in flight); counted as
    /// pending.
    Claimed { owner: usize, holder: Option<usize> },
    /// Released by a member (its slot) whose worker is still finishing its
    /// unit of work on it (`--drain`): the claim goes back after that.
    Draining(usize),
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
    /// Partitions its worker is draining (with `--drain`).
    pub draining: Vec<u32>,
    /// Its zone (`--zones`).
    pub zone: Option<String>,
}

/// Everything the dashboard and the status lines show, read from the
/// members' in-memory state (no database access).
pub struct Snapshot {
    pub rows: Vec<Row>,
    /// Per partition, how to paint it; counted in `tally`.
    pub cells: Vec<Cell>,
    pub tally: Tally,
    /// The partitions in handoff or unused, grouped by why: the band's text.
    pub stalls: Stalls,
    /// Newest epoch among the running members' views.
    pub epoch: u64,
    /// Members in the ring (joined, running, not crashed).
    pub in_ring: usize,
    /// The largest member's partitions over its weighted fair share, in
    /// the newest view (1.00: perfectly even; 0 with no view).
    pub share_max_over_mean: f64,
    /// Per zone, in the newest view: its partitions and weighted share
    /// (empty when no member has a zone).
    pub zones: Vec<ZoneTally>,
    /// Moves the ring's move budget still holds back, in the newest view
    /// (`--max-moving`; 0 without a budget).
    pub moves_pending: u64,
}

/// A zone's partitions in a view, and its share of the ring by weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneTally {
    /// The zone's name; `None` for the members without a zone (each of
    /// them a zone of its own for the placement), counted together.
    pub zone: Option<String>,
    /// Partitions the view assigns to the zone's members.
    pub partitions: u32,
    /// The ring's size times the zone's eligible weight over all eligible
    /// weight (ready, not cordoned members; capacities not counted).
    pub share: f64,
}

/// Each zone's partitions and weighted share in `view`, zones by name,
/// the members without a zone last; empty when no member has a zone.
pub fn zone_tallies(view: &RingView) -> Vec<ZoneTally> {
    tally_zones(
        view.ring_size(),
        view.members()
            .iter()
            .map(|m| (m.zone(), m.partition_count(), m.weight(), m.is_eligible())),
    )
}

/// [`zone_tallies`] of members given as (zone, partitions, weight,
/// eligible).
fn tally_zones<'a>(
    ring_size: u32,
    members: impl Iterator<Item = (Option<&'a str>, u32, u32, bool)> + Clone,
) -> Vec<ZoneTally> {
    if members.clone().all(|m| m.0.is_none()) {
        return Vec::new();
    }
    let total: u64 = members.clone().filter(|m| m.3).map(|m| m.2 as u64).sum();
    // (false, zone) sorts before (true, None): the zoneless last.
    let mut by: std::collections::BTreeMap<(bool, Option<&str>), (u32, u64)> =
        std::collections::BTreeMap::new();
    for (zone, partitions, weight, eligible) in members {
        let e = by.entry((zone.is_none(), zone)).or_default();
        e.0 += partitions;
        if eligible {
            e.1 += weight as u64;
        }
    }
    by.into_iter()
        .map(|((_, zone), (partitions, weight))| ZoneTally {
            zone: zone.map(str::to_string),
            partitions,
            share: if total == 0 {
                0.0
            } else {
                ring_size as f64 * weight as f64 / total as f64
            },
        })
        .collect()
}

/// `zones: zone-a 342 (341.3) · zone-b 341 (341.3) · …`: each zone's
/// partitions and, in brackets, its weighted share.
pub fn zones_line(zones: &[ZoneTally]) -> String {
    let parts: Vec<String> = zones.iter().map(ZoneTally::text).collect();
    format!("zones: {}", parts.join(" · "))
}

impl ZoneTally {
    /// `zone-a 342 (341.3)`.
    pub fn text(&self) -> String {
        format!(
            "{} {} ({:.1})",
            self.zone.as_deref().unwrap_or("no zone"),
            self.partitions,
            self.share
        )
    }
}

/// The largest ratio of a member's partitions to its weighted fair share.
pub fn share_max_over_mean(view: &RingView) -> f64 {
    let total: u64 = view.members().iter().map(|m| m.weight() as u64).sum();
    view.members()
        .iter()
        .map(|m| {
            let share = view.ring_size() as f64 * m.weight() as f64 / total.max(1) as f64;
            m.partition_count() as f64 / share.max(f64::MIN_POSITIVE)
        })
        .fold(0.0, f64::max)
}

/// How many partitions are painted each way (free ones are the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub active: u32,
    pub pending: u32,
    pub draining: u32,
    pub waiting: u32,
    pub double: u32,
}

impl Tally {
    fn of(cells: &[Cell]) -> Tally {
        let mut t = Tally::default();
        for c in cells {
            match c {
                Cell::Active(_) => t.active += 1,
                Cell::Pending(_) | Cell::Claimed { .. } => t.pending += 1,
                Cell::Draining(_) => t.draining += 1,
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
    /// The next member's zone, in turn (with `--zones`).
    next_zone: AtomicUsize,
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
            next_zone: AtomicUsize::new(0),
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

    /// Reserves the next `node-N` and lists it as starting, with the next
    /// zone in turn (`--zones`).
    pub fn reserve(&self) -> (String, usize) {
        let slot = self.next_slot.fetch_add(1, Ordering::SeqCst);
        let name = format!("node-{slot}");
        let zones = &self.settings.zones;
        let zone = (!zones.is_empty()).then(|| {
            let turn = self.next_zone.fetch_add(1, Ordering::SeqCst);
            zones[turn % zones.len()].clone()
        });
        self.members.lock().push(Member {
            name: name.clone(),
            slot,
            node: None,
            phase: Phase::Starting,
            work: None,
            zone,
        });
        (name, slot)
    }

    /// A listed member's zone.
    pub fn zone_of(&self, name: &str) -> Option<String> {
        self.members
            .lock()
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.zone.clone())
    }

    fn start_member(&self, name: &str) -> leasering::Result<(RingNode, Receiver<Event>)> {
        let mut pg = self.settings.pg.clone();
        pg.application_name(&format!("ringnode {name}"));
        let mut cfg = self.settings.member.clone();
        cfg.node_id = Some(name.to_string());
        cfg.zone = self.zone_of(name);
        start_member(pg, &cfg)
    }

    /// ` in zone-b` for a member with a zone, else nothing.
    fn in_zone(&self, name: &str) -> String {
        self.zone_of(name)
            .map(|z| format!(" in {z}"))
            .unwrap_or_default()
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
                    let work = self.settings.work_unit.map(|u| Arc::new(Work::new(u)));
                    self.spawn_collector(name.clone(), slot, rx, work.clone());
                    let orphan = {
                        let mut ms = self.members.lock();
                        match ms.iter_mut().find(|m| m.name == name) {
                            Some(m) if !self.closing.load(Ordering::SeqCst) => {
                                m.node = Some(node.clone());
                                m.phase = Phase::Live;
                                m.work = work;
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
                            format!(
                                "started{}: join committed in {}",
                                self.in_zone(&name),
                                human(t0.elapsed())
                            ),
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

    /// Forwards a member's events, and ends its worker's drains on time:
    /// it waits for the next event or the next drain's end, whichever comes
    /// first.
    fn spawn_collector(
        &self,
        name: String,
        slot: usize,
        rx: Receiver<Event>,
        work: Option<Arc<Work>>,
    ) {
        let tx = self.tx.clone();
        self.spawn(format!("events-{name}"), move || {
            let report = |ended: Vec<Drained>| {
                ended.into_iter().all(|drained| {
                    let member = name.clone();
                    tx.send(Msg::Drained {
                        member,
                        slot,
                        drained,
                    })
                    .is_ok()
                })
            };
            loop {
                let next = match work.as_ref().and_then(|w| w.next_due()) {
                    Some(due) => rx.recv_deadline(due),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                let sent = match (next, &work) {
                    (Ok(mut event), _) => {
                        let cut = work
                            .as_ref()
                            .map(|w| w.on_event(&mut event))
                            .unwrap_or_default();
                        let msg = Msg::Event {
                            member: name.clone(),
                            slot,
                            event,
                            recv: Instant::now(),
                        };
                        tx.send(msg).is_ok() && report(cut)
                    }
                    (Err(RecvTimeoutError::Timeout), Some(w)) => report(w.due(Instant::now())),
                    (Err(_), _) => false,
                };
                if !sent {
                    break;
                }
            }
            // The member is gone (or the demo is): no work is left to drain.
            if let Some(w) = &work {
                report(w.abandon(Instant::now()));
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
            format!("[{origin}] joining{}…", self.in_zone(&name)),
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
        self.take_with_work(name, phase)
            .map(|(node, slot, _)| (node, slot))
    }

    fn take_with_work(
        &self,
        name: &str,
        phase: Phase,
    ) -> Option<(RingNode, usize, Option<Arc<Work>>)> {
        let mut ms = self.members.lock();
        let m = ms.iter_mut().find(|m| m.name == name)?;
        if !matches!(m.phase, Phase::Live | Phase::Paused { .. }) {
            return None;
        }
        let node = m.node.clone()?;
        m.phase = phase;
        Some((node, m.slot, m.work.clone()))
    }

    /// A live (or paused) member's node, leaving its phase as it is.
    fn live_node(&self, name: &str) -> Option<(RingNode, usize)> {
        let ms = self.members.lock();
        let m = ms.iter().find(|m| m.name == name)?;
        if !matches!(m.phase, Phase::Live | Phase::Paused { .. }) {
            return None;
        }
        Some((m.node.clone()?, m.slot))
    }

    /// Toggles a member's readiness (`set_ready`), on a worker thread: not
    /// ready, it sheds its partitions with drain and stays a live member
    /// holding nothing; ready again, it takes a share.
    pub fn toggle_ready(self: &Arc<Self>, name: &str, origin: &str) {
        let Some((node, slot)) = self.live_node(name) else {
            return;
        };
        let me = self.clone();
        let (name, origin) = (name.to_string(), origin.to_string());
        self.spawn(format!("ready-{name}"), move || {
            let to = !node.status().ready;
            let what = if to {
                "ready: takes a share"
            } else {
                "not ready: sheds its partitions, stays a member"
            };
            match node.set_ready(to) {
                Ok(()) => me.note(
                    Some((&name, slot)),
                    Tone::Action,
                    format!("[{origin}] {what}"),
                ),
                Err(e) => me.note(
                    Some((&name, slot)),
                    Tone::Warn,
                    format!("[{origin}] set_ready({to}) failed: {e}"),
                ),
            }
        });
    }

    /// Toggles an operator's cordon of a member (`leasering::cordon`, as
    /// `ringnode cordon` / `uncordon` do), on a worker thread.
    pub fn toggle_cordon(self: &Arc<Self>, name: &str, origin: &str) {
        let Some((node, slot)) = self.live_node(name) else {
            return;
        };
        let me = self.clone();
        let (name, origin) = (name.to_string(), origin.to_string());
        let (pg, schema, ring) = (
            self.settings.pg.clone(),
            self.settings.member.schema.clone(),
            self.settings.member.ring_id.clone(),
        );
        self.spawn(format!("cordon-{name}"), move || {
            let node_id = node.node_id().to_string();
            let result = pg
                .connect(NoTls)
                .map_err(|e| e.to_string())
                .and_then(|mut c| {
                    let cordoned: bool = c
                        .query_one(
                            &format!(
                                "SELECT EXISTS (SELECT 1 FROM \"{schema}\".cordons
                                                WHERE ring_id = $1 AND node_id = $2)"
                            ),
                            &[&ring, &node_id],
                        )
                        .map_err(|e| e.to_string())?
                        .get(0);
                    leasering::cordon(&mut c, &schema, &ring, &node_id, !cordoned)
                        .map(|_| !cordoned)
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(true) => me.note(
                    Some((&name, slot)),
                    Tone::Action,
                    format!("[{origin}] cordoned: sheds its partitions, stays a member"),
                ),
                Ok(false) => me.note(
                    Some((&name, slot)),
                    Tone::Action,
                    format!("[{origin}] uncordoned: takes a share"),
                ),
                Err(e) => me.note(
                    Some((&name, slot)),
                    Tone::Warn,
                    format!("[{origin}] cordon failed: {e}"),
                ),
            }
        });
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
        let Some((node, slot, work)) = self.take_with_work(name, Phase::Crashed { at }) else {
            return;
        };
        // A crash kills the worker too: what it was draining stops now.
        for drained in work.map(|w| w.kill(at)).unwrap_or_default() {
            let _ = self.tx.send(Msg::Drained {
                member: name.to_string(),
                slot,
                drained,
            });
        }
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

    /// The demo's readiness (`/readyz`): ready while at least one member
    /// is live and every live member (not starting, paused, leaving or
    /// crashed: those are the demo's own doing) is healthy; otherwise the
    /// reason names the first that is not.
    pub fn readiness(&self) -> Result<String, String> {
        let live: Vec<(String, RingNode)> = self
            .members
            .lock()
            .iter()
            .filter(|m| m.phase == Phase::Live)
            .filter_map(|m| m.node.clone().map(|n| (m.name.clone(), n)))
            .collect();
        if live.is_empty() {
            return Err("no live member".into());
        }
        let mut active = 0;
        for (name, node) in &live {
            let st = node.status();
            if let leasering::Health::Unhealthy(why) = &st.health {
                return Err(format!("{name}: {why}"));
            }
            active += st.active;
        }
        Ok(format!(
            "ready: {} live members, {active} active partitions",
            live.len()
        ))
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
            .map(|n| n.view())
            .max_by_key(|v| v.epoch())
    }

    /// The state of every member, from memory.
    pub fn snapshot(&self) -> Snapshot {
        type Listed = (
            String,
            usize,
            Phase,
            Option<RingNode>,
            Option<Arc<Work>>,
            Option<String>,
        );
        let listed: Vec<Listed> = self
            .members
            .lock()
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.slot,
                    m.phase,
                    m.node.clone(),
                    m.work.clone(),
                    m.zone.clone(),
                )
            })
            .collect();
        let size = self.settings.member.ring_size as usize;
        let mut active_by: Vec<Option<usize>> = vec![None; size];
        let mut double = vec![false; size];
        let mut newest: Option<RingView> = None;
        let mut rows = Vec::with_capacity(listed.len());
        let mut in_ring = 0;
        for (name, slot, phase, node, work, zone) in listed {
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
                        newest = Some(n.view());
                    }
                }
            }
            rows.push(Row {
                name,
                slot,
                phase,
                status,
                vnodes: None,
                draining: work.map(|w| w.draining()).unwrap_or_default(),
                zone,
            });
        }
        let seen: Vec<Seen> = rows.iter().map(Seen::of).collect();
        let (cells, stalls) = paint(&seen, &active_by, &double, newest.as_ref());
        if let Some(v) = &newest {
            for r in rows.iter_mut() {
                r.vnodes = v.member(&r.name).map(|m| m.positions().len());
            }
        }
        Snapshot {
            rows,
            tally: Tally::of(&cells),
            cells,
            stalls,
            epoch: newest.as_ref().map_or(0, |v| v.epoch()),
            share_max_over_mean: newest.as_ref().map_or(0.0, share_max_over_mean),
            zones: newest.as_ref().map(zone_tallies).unwrap_or_default(),
            moves_pending: newest.as_ref().map_or(0, |v| v.moves_pending()),
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

/// What [`paint`] needs to know of a member.
struct Seen<'a> {
    name: &'a str,
    slot: usize,
    phase: Phase,
    /// Its pending partitions whose claim another member holds, by holder.
    waiting_for: &'a [(String, Vec<u32>)],
    /// The partitions its worker drains.
    draining: &'a [u32],
}

impl Seen<'_> {
    fn of(r: &Row) -> Seen<'_> {
        Seen {
            name: &r.name,
            slot: r.slot,
            phase: r.phase,
            waiting_for: r.status.as_ref().map_or(&[], |s| &s.waiting_for),
            draining: &r.draining,
        }
    }
}

/// Each partition's cell, and why the ones in handoff or unused are so:
/// the active ones from `active_by` (and `double`), the rest from `newest`
/// (the newest view among the running members), the claims their owners
/// wait for, and the workers' drains.
fn paint(
    rows: &[Seen],
    active_by: &[Option<usize>],
    double: &[bool],
    newest: Option<&RingView>,
) -> (Vec<Cell>, Stalls) {
    let by_name: HashMap<&str, (usize, Phase)> =
        rows.iter().map(|r| (r.name, (r.slot, r.phase))).collect();
    let who = |name: &str| -> (usize, State) {
        match by_name.get(name) {
            Some((slot, phase)) => (*slot, phase.state()),
            None => (slot_of(name), State::Gone),
        }
    };
    // `owner` waits for the claim `holder` has: why, and the holder's slot.
    let claim_wait = |owner: &str, holder: &str| -> (Why, Option<usize>) {
        let h = (!holder.is_empty()).then(|| who(holder));
        let why = Why::Claim {
            owner: owner.to_string(),
            holder: holder.to_string(),
            state: h.map_or(State::Gone, |h| h.1),
        };
        (why, h.map(|h| h.0))
    };
    let size = active_by.len();
    // Per partition: the member that waits for its claim, and the holder.
    let mut claim: Vec<Option<(&str, &str)>> = vec![None; size];
    let mut drained_by: Vec<Option<&str>> = vec![None; size];
    for r in rows {
        for (holder, ps) in r.waiting_for {
            for p in ps {
                if let Some(c) = claim.get_mut(*p as usize) {
                    *c = Some((r.name, holder.as_str()));
                }
            }
        }
        for p in r.draining {
            if let Some(d) = drained_by.get_mut(*p as usize) {
                *d = Some(r.name);
            }
        }
    }
    let mut stalls = Stalls::default();
    let cells = (0..size)
        .map(|p| {
            if double[p] {
                return Cell::Double;
            }
            let owner = newest.and_then(|v| v.owner_of(p as u32));
            if let Some(slot) = active_by[p] {
                // Still in use by its old owner, while the new one waits
                // for its claim: a handoff in progress (milliseconds,
                // unless the old owner is frozen).
                if let Some((o, (waiter, holder))) = owner.zip(claim[p]) {
                    if waiter == o && who(o).0 != slot {
                        stalls.add(claim_wait(o, holder).0);
                    }
                }
                return Cell::Active(slot);
            }
            let (cell, why) = if let Some(holder) = drained_by[p] {
                let (slot, state) = who(holder);
                let why = Why::Drain {
                    holder: holder.to_string(),
                    state,
                    owner: owner.map(str::to_string),
                };
                (Cell::Draining(slot), why)
            } else if let Some(o) = owner {
                let (slot, state) = who(o);
                match (state, claim[p]) {
                    (State::Live | State::Joining, Some((waiter, holder))) if waiter == o => {
                        let (why, holder) = claim_wait(o, holder);
                        let cell = Cell::Claimed {
                            owner: slot,
                            holder,
                        };
                        (cell, why)
                    }
                    (State::Live | State::Joining, _) => {
                        let why = Why::Taking {
                            owner: o.to_string(),
                        };
                        (Cell::Pending(slot), why)
                    }
                    (state, _) => {
                        let why = Why::Stranded {
                            owner: o.to_string(),
                            state,
                        };
                        (Cell::Waiting(slot), why)
                    }
                }
            } else {
                (Cell::Free, Why::Unowned)
            };
            stalls.add(why);
            cell
        })
        .collect();
    (cells, stalls)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(
        name: &'a str,
        phase: Phase,
        waiting_for: &'a [(String, Vec<u32>)],
        draining: &'a [u32],
    ) -> Seen<'a> {
        Seen {
            name,
            slot: slot_of(name),
            phase,
            waiting_for,
            draining,
        }
    }

    /// Eight partitions, four of them node-1's (it just joined and took
    /// them over from node-0), whichever they are.
    fn view() -> (RingView, Vec<u32>, Vec<u32>) {
        let v = RingView::build(2, 8, [(0, "node-1"), (4, "node-0")]);
        let (mine, theirs) = (v.partitions_of("node-1"), v.partitions_of("node-0"));
        assert_eq!((mine.len(), theirs.len()), (4, 4));
        (v, mine, theirs)
    }

    /// Per partition, the slot of the member it is active on.
    fn active_on(slot: usize, partitions: &[u32]) -> Vec<Option<usize>> {
        (0..8u32)
            .map(|p| partitions.contains(&p).then_some(slot))
            .collect()
    }

    #[test]
    fn a_frozen_holder_is_named_whether_or_not_it_still_uses_them() {
        let (v, mine, theirs) = view();
        let waits = vec![("node-0".to_string(), mine.clone())];
        let until = Instant::now();
        let rows = [
            seen("node-0", Phase::Paused { until }, &[], &[]),
            seen("node-1", Phase::Live, &waits, &[]),
        ];
        // Frozen, its local lease still running: node-0 still reports two
        // of node-1's partitions (not yet the other two) and all its own.
        let still: Vec<u32> = mine[..2].iter().chain(&theirs).copied().collect();
        let (cells, stalls) = paint(&rows, &active_on(0, &still), &[false; 8], Some(&v));
        assert_eq!(cells[mine[0] as usize], Cell::Active(0));
        assert_eq!(
            cells[mine[2] as usize],
            Cell::Claimed {
                owner: 1,
                holder: Some(0)
            }
        );
        assert_eq!(
            stalls.lines(),
            vec!["4 → node-1: waiting for node-0's claim (paused: until it wakes up or its lease ends)"]
        );
        assert_eq!(Tally::of(&cells).pending, 2);
        // Fenced: nothing of node-0's is active, its own arc is unused.
        let (cells, stalls) = paint(&rows, &[None; 8], &[false; 8], Some(&v));
        assert_eq!(cells[theirs[0] as usize], Cell::Waiting(0));
        assert_eq!(
            stalls.lines()[1],
            "4 on node-0: unused (paused and fenced: until it wakes up or its lease ends)"
        );
    }

    #[test]
    fn zones_are_tallied_with_their_weighted_share() {
        let none: [(Option<&str>, u32, u32, bool); 2] = [(None, 10, 8, true), (None, 6, 8, true)];
        assert!(tally_zones(16, none.into_iter()).is_empty());
        // node-0..4 over three zones, as `--zones 3` gives them; node-4
        // not eligible (cordoned): its weight is no share.
        let ms = [
            (Some("zone-a"), 300, 8, true),
            (Some("zone-b"), 260, 8, true),
            (Some("zone-c"), 256, 8, true),
            (Some("zone-a"), 208, 8, true),
            (Some("zone-b"), 0, 8, false),
            (None, 0, 8, true),
        ];
        let t = tally_zones(1024, ms.into_iter());
        let names: Vec<Option<&str>> = t.iter().map(|z| z.zone.as_deref()).collect();
        assert_eq!(
            names,
            [Some("zone-a"), Some("zone-b"), Some("zone-c"), None]
        );
        assert_eq!(t[0].partitions, 508);
        assert_eq!(t[1].partitions, 260);
        assert!((t[0].share - 409.6).abs() < 1e-9, "{t:?}");
        assert!((t[1].share - 204.8).abs() < 1e-9, "{t:?}");
        assert_eq!(
            zones_line(&t),
            "zones: zone-a 508 (409.6) · zone-b 260 (204.8) · zone-c 256 (204.8) · no zone 0 (204.8)"
        );
    }

    #[test]
    fn a_drain_comes_before_the_claim_wait_and_pending_is_taking() {
        let (v, mine, theirs) = view();
        // node-0 drains two of node-1's partitions, whose claims node-1
        // already knows are node-0's; the other two are being taken.
        let waits = vec![("node-0".to_string(), mine[..2].to_vec())];
        let rows = [
            seen("node-0", Phase::Live, &[], &mine[..2]),
            seen("node-1", Phase::Live, &waits, &[]),
        ];
        let (cells, stalls) = paint(&rows, &active_on(0, &theirs), &[false; 8], Some(&v));
        assert_eq!(cells[mine[0] as usize], Cell::Draining(0));
        assert_eq!(cells[mine[2] as usize], Cell::Pending(1));
        assert_eq!(
            stalls.lines(),
            vec![
                "2 → node-1: taking their claims",
                "2 → node-1: node-0 is draining them (its unit of work ends first)"
            ]
        );
        assert_eq!(stalls.claim_waits(), 0);
        let t = Tally::of(&cells);
        assert_eq!((t.active, t.pending, t.draining), (4, 2, 2));
    }
}
