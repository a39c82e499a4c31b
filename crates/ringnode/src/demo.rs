//! `ringnode demo`: a throwaway PostgreSQL (or `--database-url`), N members
//! in this process, and either a live dashboard or, with `--plain`, one
//! line per event, a status line per second and a final summary line.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::member_config::MemberConfig;
use crossbeam_channel::{unbounded, Receiver};
use crossterm::event::{
    self as term_event, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers,
};
use leasering_testkit::rng::Rng;
use leasering_testkit::{Sampler, TestPostgres};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Cell as TableCell, Paragraph, Row as TableRow, Table};

use crate::band;
use crate::cli::{DemoArgs, MAX_MEMBERS};
use crate::cluster::{zones_line, Cell, Cluster, Counts, Msg, Phase, Settings, Snapshot};
use crate::journal::{Journal, Line, Tone};
use crate::signals;
use crate::ui::{self, member_color, zone_color, Screen};
use crate::util::{
    clock, describe_target, human, parse_database_url, preflight, AppError, AppResult,
};

/// Why the demo ends.
enum Quit {
    Key,
    TimeUp,
    Signal(i32),
    Panic,
    Failed(AppError),
}

/// Random joins, leaves, crashes and pauses.
struct Churn {
    on: bool,
    rng: Rng,
    seed: u64,
    every: Duration,
    next: Instant,
    pause: Duration,
    ttl: Duration,
    /// The drain of a handoff (`--drain`), zero without.
    drain: Duration,
    min_live: usize,
    max_members: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Join,
    Leave,
    Crash,
    Pause,
    /// Toggle readiness (`set_ready`).
    Ready,
    /// Toggle an operator's cordon.
    Cordon,
}

impl Churn {
    fn step(&mut self, now: Instant, cluster: &Arc<Cluster>, end: Option<Instant>) {
        if !self.on || now < self.next {
            return;
        }
        self.next = now + self.every.mul_f64(0.5 + self.rng.unit());
        let c = cluster.counts();
        // Near the end of a timed run, only actions the ring recovers from
        // before the end: the final count then sees a settled ring.
        let room = |settle: Duration| end.is_none_or(|e| now + settle <= e);
        // A join or a leave settles in milliseconds, plus the drain.
        let quick = Duration::from_secs(1) + self.drain;
        let members = c.total - c.crashed;
        let mut options: Vec<(u32, Action)> = Vec::new();
        if c.live < self.min_live {
            if members < self.max_members && room(quick) {
                options.push((1, Action::Join));
            }
        } else {
            if members < self.max_members && room(quick) {
                options.push((3, Action::Join));
            }
            if c.live > self.min_live && room(quick) {
                options.push((2, Action::Leave));
            }
            if c.live > self.min_live
                && c.crashed == 0
                && room(self.ttl + Duration::from_millis(1500))
            {
                options.push((1, Action::Crash));
            }
            if c.live > self.min_live
                && c.paused == 0
                && room(self.pause + Duration::from_millis(1500))
            {
                options.push((1, Action::Pause));
            }
        }
        let total: u32 = options.iter().map(|o| o.0).sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng.below(total as u64) as u32;
        let mut action = options[0].1;
        for (w, a) in &options {
            if pick < *w {
                action = *a;
                break;
            }
            pick -= w;
        }
        perform(cluster, action, None, self.pause, "churn", &mut self.rng);
    }
}

/// Does `action` to `target`, or to a random live member.
fn perform(
    cluster: &Arc<Cluster>,
    action: Action,
    target: Option<String>,
    pause: Duration,
    origin: &str,
    rng: &mut Rng,
) {
    if let Action::Join = action {
        cluster.join(origin);
        return;
    }
    let Some(name) = target.or_else(|| cluster.pick(rng)) else {
        return;
    };
    match action {
        Action::Leave => cluster.leave(&name, origin),
        Action::Crash => cluster.crash(&name, origin),
        Action::Pause => cluster.pause(&name, pause, origin),
        Action::Ready => cluster.toggle_ready(&name, origin),
        Action::Cordon => cluster.toggle_cordon(&name, origin),
        Action::Join => {}
    }
}

struct Demo {
    cluster: Arc<Cluster>,
    rx: Receiver<Msg>,
    journal: Journal,
    churn: Churn,
    start: Instant,
    end: Option<Instant>,
    settle_until: Option<Instant>,
    pause: Duration,
    ttl: Duration,
    ring_size: u32,
    sampler: Option<Sampler>,
    db_desc: String,
    rng: Rng,
}

impl Demo {
    /// Moves messages into the journal; returns the lines ready to show.
    fn pump(&mut self, flush: bool) -> Vec<Line> {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Event {
                    member,
                    slot,
                    event,
                    recv,
                } => self.journal.push_event(member, slot, event, recv),
                Msg::Line(l) => self.journal.push_line(l),
                Msg::Label { member, label } => self.journal.label(&member, label),
                Msg::Drained {
                    member,
                    slot,
                    drained,
                } => self.journal.push_drained(member, slot, drained),
            }
        }
        self.journal.drain(Instant::now(), flush)
    }

    fn step(&mut self, now: Instant) {
        self.cluster.tick();
        self.churn.step(now, &self.cluster, self.end);
    }

    fn note(&mut self, tone: Tone, text: String) {
        self.journal.push_line(Line {
            at: Instant::now(),
            member: None,
            tone,
            text,
        });
    }

    fn sampled(&self) -> (u64, u64) {
        self.sampler
            .as_ref()
            .map_or((0, 0), |s| (s.samples(), s.overlaps()))
    }

    fn overlaps(&self) -> u64 {
        self.journal.checker().overlaps() + self.sampled().1
    }

    fn settled(&self, snap: &Snapshot, c: &Counts) -> bool {
        snap.tally.active == self.ring_size
            && snap.tally.double == 0
            && c.starting + c.paused + c.leaving + c.crashed == 0
            && snap.rows.iter().all(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.joined && s.pending == 0)
            })
    }

    /// With `--seconds`: time up, and the ring settled (or waited long enough).
    fn time_up(&mut self, now: Instant) -> bool {
        let Some(end) = self.end else {
            return false;
        };
        if now < end {
            return false;
        }
        let snap = self.cluster.snapshot();
        let counts = self.cluster.counts();
        if self.settled(&snap, &counts) {
            return true;
        }
        match self.settle_until {
            None => {
                let wait = self.pause + self.ttl * 2 + Duration::from_secs(5);
                self.settle_until = Some(now + wait);
                self.churn.on = false;
                self.note(
                    Tone::Info,
                    format!(
                        "time is up: waiting for the ring to settle (at most {})",
                        human(wait)
                    ),
                );
                false
            }
            Some(t) => now >= t,
        }
    }

    fn status_line(&self, snap: &Snapshot, c: &Counts) -> String {
        format!(
            "status t={:.1}s epoch={} members={} largest_share={:.2} paused={} crashed={} active={}/{} pending={} waiting={} claim_waits={} draining={} overlaps={} handoffs={} moves_pending={}",
            self.start.elapsed().as_secs_f64(),
            snap.epoch,
            snap.in_ring,
            snap.share_max_over_mean,
            c.paused,
            c.crashed,
            snap.tally.active,
            self.ring_size,
            snap.tally.pending,
            snap.tally.waiting,
            snap.stalls.claim_waits(),
            snap.tally.draining,
            self.overlaps(),
            self.journal.handoffs(),
            snap.moves_pending
        )
    }

    /// The band's text as one line.
    fn band_line(&self, snap: &Snapshot) -> String {
        format!("ring: {}", snap.stalls.text(self.ring_size).join(" · "))
    }

    /// Stops every member, drains their last events, stops the checks and
    /// tears the database down. `show` gets the last lines.
    fn finish(&mut self, db: Option<TestPostgres>, mut show: impl FnMut(&Line)) -> Summary {
        let snap = self.cluster.snapshot();
        self.note(Tone::Info, "stopping every member (graceful leave)…".into());
        self.cluster
            .stop_all(Instant::now() + Duration::from_secs(10));
        for l in self.pump(true) {
            show(&l);
        }
        let (samples, sampled) = self.sampled();
        let sampler_examples = self
            .sampler
            .take()
            .map(|s| s.finish().examples)
            .unwrap_or_default();
        self.cluster.forget_all();
        if let Some(db) = db {
            drop(db);
            self.note(
                Tone::Info,
                "throwaway PostgreSQL stopped and removed".into(),
            );
        }
        for l in self.pump(true) {
            show(&l);
        }
        let checker = self.journal.checker();
        let mut examples: Vec<String> = checker.examples();
        examples.extend(sampler_examples);
        Summary {
            members: snap.in_ring,
            active: snap.tally.active,
            overlaps: checker.overlaps() + sampled,
            handoffs: self.journal.handoffs(),
            intervals: checker.intervals(),
            regressions: checker.regressions(),
            samples,
            gaps: self.journal.gap_stats(),
            examples,
            ran: self.start.elapsed(),
        }
    }
}

struct Summary {
    members: usize,
    active: u32,
    overlaps: u64,
    handoffs: u64,
    intervals: u64,
    regressions: u64,
    samples: u64,
    gaps: Option<(Duration, Duration)>,
    examples: Vec<String>,
    ran: Duration,
}

impl Summary {
    fn check_line(&self) -> String {
        let gaps = match self.gaps {
            Some((median, max)) => format!(
                " handoff_median={} handoff_max={}",
                human(median),
                human(max)
            ),
            None => String::new(),
        };
        format!(
            "check: ran={} intervals={} token_regressions={} samples={}{gaps}",
            clock(self.ran),
            self.intervals,
            self.regressions,
            self.samples
        )
    }

    fn final_line(&self) -> String {
        format!(
            "demo: members={} partitions_active={} overlaps={} handoffs={}",
            self.members, self.active, self.overlaps, self.handoffs
        )
    }
}

/// Lines to stdout; a closed stdout (`| head`) just ends the printing.
struct Out {
    broken: bool,
}

impl Out {
    fn line(&mut self, s: &str) {
        if self.broken {
            return;
        }
        let mut o = std::io::stdout().lock();
        if writeln!(o, "{s}").and_then(|_| o.flush()).is_err() {
            self.broken = true;
        }
    }
}

pub fn run(args: DemoArgs) -> AppResult<u8> {
    let ttl = args.lease_ttl;
    let mut cfg = MemberConfig::new(args.ring_id.clone());
    cfg.ring_size = args.ring_size;
    cfg.vnode_count = args.vnodes;
    cfg.placement = args.effective_placement();
    cfg.max_moving = args.max_moving;
    cfg.lease_ttl = ttl;
    cfg.schema = args.schema.clone();
    if let Some(unit) = args.drain {
        // The timeout only bounds a worker that never finishes; this one
        // always does, after one unit. A graceful stop waits for drains
        // within its stop timeout, so that must outlast them.
        let timeout = unit * 2;
        cfg.drain_timeout = Some(timeout);
        cfg.stop_timeout = cfg.stop_timeout.max(timeout + Duration::from_secs(2));
    }
    cfg.validate()?;
    let pause = args.pause.unwrap_or(ttl * 3 / 2);
    let plain = args.plain || !ui::stdout_is_tty();
    let external = match &args.database_url {
        Some(url) => Some(parse_database_url(url)?),
        None => None,
    };
    signals::install();
    let mut out = Out { broken: false };

    // The database.
    let (db, pg, db_desc) = match external {
        Some(pg) => {
            let version = preflight(&pg)?;
            let desc = format!("PostgreSQL {version} at {}", describe_target(&pg));
            (None, pg, desc)
        }
        None => {
            if plain {
                out.line("demo: starting a throwaway PostgreSQL (initdb)…");
            } else {
                eprintln!("ringnode: starting a throwaway PostgreSQL (initdb)…");
            }
            let db = TestPostgres::start().map_err(|e| {
                let mut lines = e.message().lines();
                let first = lines.next().unwrap_or("unknown error").to_string();
                let more = lines.count();
                AppError(if more > 0 {
                    format!("cannot start a throwaway PostgreSQL: {first} (and {more} more lines; use --database-url to use another server)")
                } else {
                    format!("cannot start a throwaway PostgreSQL: {first}")
                })
            })?;
            let pg = db.config();
            let version = preflight(&pg)?;
            let desc = format!("throwaway PostgreSQL {version} on 127.0.0.1:{}", db.port());
            (Some(db), pg, desc)
        }
    };

    let (tx, rx) = unbounded::<Msg>();
    if plain {
        ui::init_logging(None);
    } else {
        let tx = tx.clone();
        ui::init_logging(Some(Box::new(move |l| {
            let _ = tx.send(Msg::Line(l));
        })));
    }

    let settings = Settings {
        pg,
        member: cfg,
        work_unit: args.drain,
        zones: args.zone_names(),
    };
    let cluster = Cluster::new(settings, tx);
    let start = Instant::now();
    let (rng, seed) = match args.seed {
        Some(s) => (Rng::new(s), s),
        None => Rng::fresh(),
    };
    let mut demo = Demo {
        cluster: cluster.clone(),
        rx,
        journal: Journal::new(args.ring_size, start),
        churn: Churn {
            on: args.churn,
            rng,
            seed,
            every: args.churn_every,
            next: start + Duration::from_millis(800),
            pause,
            ttl,
            drain: args.drain.unwrap_or_default(),
            min_live: 2,
            max_members: (args.nodes as usize + 3).clamp(6, MAX_MEMBERS as usize),
        },
        start,
        end: args.seconds.map(|s| start + s),
        settle_until: None,
        pause,
        ttl,
        ring_size: args.ring_size,
        sampler: None,
        db_desc,
        rng: Rng::new(seed ^ 0x5eed),
    };
    demo.journal.show_views = plain;

    let header = format!(
        "demo: {} · ring {:?} · {} partitions · {} members × {} vnodes{} · lease TTL {} · churn {}{}",
        demo.db_desc,
        args.ring_id,
        args.ring_size,
        args.nodes,
        args.vnodes,
        zones_note(&args.zone_names(), args.effective_placement()) + &budget_note(args.max_moving),
        human(ttl),
        if args.churn {
            format!("on (seed {})", demo.churn.seed)
        } else {
            "off".into()
        },
        drain_note(args.drain)
    );
    if plain {
        if !args.plain {
            out.line("demo: stdout is not a terminal: plain output (as with --plain)");
        }
        out.line(&header);
    }
    if let Some(addr) = args.http {
        // Before the first member starts: nothing it emits is lost.
        let metrics = crate::http::install_recorder()?;
        let c = cluster.clone();
        crate::http::serve(
            &addr.to_string(),
            metrics,
            std::sync::Arc::new(move || c.readiness()),
        )?;
        if plain {
            out.line(&format!(
                "demo: serving /metrics, /healthz and /readyz on http://{addr}"
            ));
        }
    }

    // The first members, in parallel; a failure here ends the demo with
    // one line (bad ring size for an existing ring, privileges, ...).
    // A few at a time: joins serialise on the ring's row lock, and with a
    // short TTL the statement timeout is short too (TTL/3, at least 1 s).
    let mut failure = None;
    let reserved: Vec<(String, usize)> = (0..args.nodes).map(|_| cluster.reserve()).collect();
    for batch in reserved.chunks(4) {
        let starts: Vec<_> = batch
            .iter()
            .cloned()
            .map(|(name, slot)| {
                let c = cluster.clone();
                std::thread::spawn(move || c.start_reserved(name, slot))
            })
            .collect();
        for h in starts {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    failure = failure.or(Some(AppError(format!("could not start a member: {e}"))))
                }
                Err(_) => failure = failure.or(Some(AppError("a member's start panicked".into()))),
            }
        }
        if failure.is_some() || signals::received().is_some() {
            break;
        }
    }
    if let Some(e) = failure {
        cluster.forget_starting();
        cluster.stop_all(Instant::now() + Duration::from_secs(10));
        cluster.forget_all();
        drop(db);
        return Err(e);
    }
    // Every 2 ms for scripts and CI; the dashboard is lighter on the CPU.
    let every = Duration::from_millis(if plain { 2 } else { 5 });
    demo.sampler = Some(Sampler::start(every, {
        let c = cluster.clone();
        move || c.nodes()
    }));

    let quit = if plain {
        plain_loop(&mut demo, &mut out)
    } else {
        tui_loop(&mut demo)
    };

    let summary = demo.finish(db, |l| {
        if plain {
            out.line(&l.plain(start));
        }
    });
    let code = match &quit {
        Quit::Key | Quit::TimeUp => 0,
        Quit::Signal(sig) => 128 + *sig as u8,
        Quit::Panic | Quit::Failed(_) => 1,
    };
    if !plain {
        // The dashboard is gone: a short report on the shell.
        out.line(&header);
    }
    out.line(&summary.check_line());
    for e in &summary.examples {
        eprintln!("ringnode: OVERLAP {e}");
    }
    out.line(&summary.final_line());
    match quit {
        Quit::Failed(e) => Err(e),
        Quit::Panic => Err(AppError(
            "a thread panicked (message above); members stopped, database torn down".into(),
        )),
        Quit::Signal(sig) => {
            eprintln!("ringnode: stopped by {}", signals::name(sig));
            Ok(code)
        }
        _ if summary.overlaps > 0 => {
            eprintln!("ringnode: {} overlaps found", summary.overlaps);
            Ok(1)
        }
        _ => Ok(code),
    }
}

/// ` · 3 zones (zone-a, zone-b, zone-c), balanced placement` with
/// `--zones`.
fn zones_note(zones: &[String], placement: leasering::Placement) -> String {
    if zones.is_empty() {
        return String::new();
    }
    format!(
        " · {} zone{} ({}), {placement} placement",
        zones.len(),
        if zones.len() == 1 { "" } else { "s" },
        zones.join(", ")
    )
}

/// ` · move budget 8 (balanced placement)` with `--max-moving 8`.
fn budget_note(max_moving: Option<u32>) -> String {
    max_moving
        .map(|m| format!(" · move budget {m} (balanced placement)"))
        .unwrap_or_default()
}

/// ` · drained handoffs, unit of work 2.00 s` with `--drain`.
fn drain_note(unit: Option<Duration>) -> String {
    unit.map(|u| format!(" · drained handoffs, unit of work {}", human(u)))
        .unwrap_or_default()
}

/// Lines of stdin, read on a thread — when it is not a terminal: a demo run
/// in the background of a shell would be stopped (SIGTTIN) by reading it.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = unbounded();
    if !ui::stdin_is_tty() {
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                for line in std::io::stdin().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("commands on stdin are off: no thread to read them: {e}");
        }
    }
    rx
}

/// How often `--plain` looks at the band's text (printed when it changes).
const BAND_EVERY: Duration = Duration::from_millis(250);

fn plain_loop(demo: &mut Demo, out: &mut Out) -> Quit {
    let mut next_status = demo.start + Duration::from_secs(1);
    let mut next_band = demo.start;
    let mut last_band = String::new();
    let commands = stdin_lines();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        for line in commands.try_iter() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_command(&line) {
                Ok(c) => {
                    if let Some(q) = run_command(demo, c) {
                        return q;
                    }
                }
                Err(e) => demo.note(Tone::Warn, format!("stdin: {e}")),
            }
        }
        demo.step(now);
        for l in demo.pump(false) {
            out.line(&l.plain(demo.start));
        }
        if ui::panicked() {
            return Quit::Panic;
        }
        if let Some(sig) = signals::received() {
            return Quit::Signal(sig);
        }
        if now >= next_band {
            // The band's text when it changes: what is in handoff, and
            // what waits for whose claim.
            let text = demo.band_line(&demo.cluster.snapshot());
            if text != last_band {
                last_band = text.clone();
                demo.note(Tone::Info, text);
            }
            next_band = now + BAND_EVERY;
        }
        if now >= next_status {
            let snap = demo.cluster.snapshot();
            let counts = demo.cluster.counts();
            out.line(&demo.status_line(&snap, &counts));
            // Each zone's partitions and weighted share (`--zones`, or a
            // shared ring whose members have zones).
            if !snap.zones.is_empty() {
                out.line(&zones_line(&snap.zones));
            }
            while next_status <= now {
                next_status += Duration::from_secs(1);
            }
        }
        if demo.time_up(now) {
            return Quit::TimeUp;
        }
    }
}

/// What the dashboard keeps between frames.
struct Board {
    log: VecDeque<Line>,
    scroll: usize,
    selected: Option<String>,
    quitting: bool,
}

const LOG_KEEP: usize = 5000;

fn tui_loop(demo: &mut Demo) -> Quit {
    let mut screen = match Screen::enter() {
        Ok(s) => s,
        Err(e) => {
            return Quit::Failed(AppError(format!(
                "cannot use the terminal: {e} (try --plain)"
            )))
        }
    };
    let mut board = Board {
        log: VecDeque::new(),
        scroll: 0,
        selected: None,
        quitting: false,
    };
    let frame = Duration::from_millis(100);
    let mut next_frame = Instant::now();
    let quit = loop {
        let wait = next_frame
            .saturating_duration_since(Instant::now())
            .min(frame);
        match term_event::poll(wait) {
            Ok(true) => match term_event::read() {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                    if let Some(q) = on_key(demo, &mut board, k.code, k.modifiers) {
                        break q;
                    }
                    next_frame = Instant::now();
                }
                Ok(TermEvent::Resize(..)) => next_frame = Instant::now(),
                Ok(_) => {}
                Err(e) => break Quit::Failed(AppError(format!("terminal input: {e}"))),
            },
            Ok(false) => {}
            Err(e) => break Quit::Failed(AppError(format!("terminal input: {e}"))),
        }
        if ui::panicked() {
            break Quit::Panic;
        }
        if let Some(sig) = signals::received() {
            break Quit::Signal(sig);
        }
        let now = Instant::now();
        if now >= next_frame {
            demo.step(now);
            let lines = demo.pump(false);
            push_log(&mut board, lines);
            if demo.time_up(now) {
                break Quit::TimeUp;
            }
            let snap = demo.cluster.snapshot();
            if let Some(sel) = &board.selected {
                if !snap.rows.iter().any(|r| &r.name == sel) {
                    board.selected = None; // it left, or was forgotten after a crash
                }
            }
            if let Err(e) = screen.term.draw(|f| draw(f, demo, &snap, &board)) {
                break Quit::Failed(AppError(format!("terminal output: {e}")));
            }
            next_frame = now + frame;
        }
    };
    if !ui::panicked() {
        // (After a panic the hook has restored the terminal already.)
        board.quitting = true;
        let lines = demo.pump(false);
        push_log(&mut board, lines);
        let snap = demo.cluster.snapshot();
        let _ = screen.term.draw(|f| draw(f, demo, &snap, &board));
    }
    quit
}

fn push_log(board: &mut Board, lines: Vec<Line>) {
    for l in lines {
        board.log.push_back(l);
        if board.scroll > 0 {
            board.scroll += 1;
        }
    }
    while board.log.len() > LOG_KEEP {
        board.log.pop_front();
    }
    board.scroll = board.scroll.min(board.log.len().saturating_sub(1));
}

fn on_key(demo: &mut Demo, board: &mut Board, code: KeyCode, mods: KeyModifiers) -> Option<Quit> {
    let command = match code {
        KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => return Some(Quit::Key),
        KeyCode::Char('Q') => return Some(Quit::Key),
        // The same letters as the lines `--plain` reads on stdin; `l`, `k`
        // and `p` go to the member chosen with ↑↓, if any.
        KeyCode::Char(c) => match parse_command(c.encode_utf8(&mut [0; 4])) {
            Ok(Command::Act(action, None)) => Some(Command::Act(action, board.selected.clone())),
            Ok(command) => Some(command),
            Err(_) => None,
        },
        KeyCode::Up | KeyCode::Down => {
            let names: Vec<String> = demo
                .cluster
                .snapshot()
                .rows
                .into_iter()
                .map(|r| r.name)
                .collect();
            let pos = board
                .selected
                .as_ref()
                .and_then(|s| names.iter().position(|n| n == s));
            board.selected = match (code, pos) {
                (_, _) if names.is_empty() => None,
                (KeyCode::Up, None) => names.last().cloned(),
                (KeyCode::Up, Some(0)) => None,
                (KeyCode::Up, Some(i)) => Some(names[i - 1].clone()),
                (_, None) => Some(names[0].clone()),
                (_, Some(i)) if i + 1 >= names.len() => None,
                (_, Some(i)) => Some(names[i + 1].clone()),
            };
            None
        }
        KeyCode::Esc => {
            board.selected = None;
            None
        }
        KeyCode::PageUp => {
            board.scroll = (board.scroll + 10).min(board.log.len().saturating_sub(1));
            None
        }
        KeyCode::PageDown => {
            board.scroll = board.scroll.saturating_sub(10);
            None
        }
        KeyCode::End => {
            board.scroll = 0;
            None
        }
        KeyCode::Home => {
            board.scroll = board.log.len().saturating_sub(1);
            None
        }
        _ => None,
    };
    command.and_then(|c| run_command(demo, c))
}

/// What a key of the dashboard, or a line on stdin with `--plain`, asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    /// Join, or leave, crash or pause this member (`None`: a random live one).
    Act(Action, Option<String>),
    Churn,
    Views,
    Quit,
}

/// `j`, `l [member]`, `k [member]`, `p [member]`, `c` (churn on/off), `v`
/// (view changes shown/hidden), `q`.
fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let target = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(format!("{line:?}: at most a command and a member"));
    }
    let action = match verb {
        "j" => Action::Join,
        "l" => Action::Leave,
        "k" => Action::Crash,
        "p" => Action::Pause,
        "r" => Action::Ready,
        "u" => Action::Cordon,
        "c" | "v" | "q" if target.is_some() => {
            return Err(format!("{line:?}: {verb} takes no member"))
        }
        "c" => return Ok(Command::Churn),
        "v" => return Ok(Command::Views),
        "q" => return Ok(Command::Quit),
        _ => {
            return Err(format!(
                "{line:?}: not a command (j, l [member], k [member], p [member], r [member], u [member], c, v, q)"
            ))
        }
    };
    if matches!(action, Action::Join) && target.is_some() {
        return Err(format!("{line:?}: a new member gets the next name"));
    }
    Ok(Command::Act(action, target))
}

fn run_command(demo: &mut Demo, command: Command) -> Option<Quit> {
    let (action, wanted) = match command {
        Command::Quit => return Some(Quit::Key),
        Command::Churn => {
            demo.churn.on = !demo.churn.on;
            demo.churn.next = Instant::now() + Duration::from_millis(300);
            let state = if demo.churn.on { "on" } else { "off" };
            demo.note(Tone::Action, format!("[c] churn {state}"));
            return None;
        }
        Command::Views => {
            demo.journal.show_views = !demo.journal.show_views;
            let state = if demo.journal.show_views {
                "shown"
            } else {
                "hidden"
            };
            demo.note(Tone::Action, format!("[v] view changes {state}"));
            return None;
        }
        Command::Act(action, wanted) => (action, wanted),
    };
    let key = match action {
        Action::Join => "j",
        Action::Leave => "l",
        Action::Crash => "k",
        Action::Pause => "p",
        Action::Ready => "r",
        Action::Cordon => "u",
    };
    let counts = demo.cluster.counts();
    match action {
        Action::Join if counts.total - counts.crashed >= MAX_MEMBERS as usize => {
            demo.note(
                Tone::Warn,
                format!("[j] already {MAX_MEMBERS} members: no more joins"),
            );
        }
        Action::Join => perform(&demo.cluster, action, None, demo.pause, key, &mut demo.rng),
        _ => {
            let live = |name: &String| {
                demo.cluster
                    .snapshot()
                    .rows
                    .iter()
                    .any(|r| &r.name == name && r.phase == Phase::Live)
            };
            match wanted {
                Some(name) if !live(&name) => demo.note(
                    Tone::Warn,
                    format!(
                        "[{key}] {name} is not live (paused, crashed, leaving, starting or no member): nothing done"
                    ),
                ),
                None if counts.live == 0 => {
                    demo.note(Tone::Warn, format!("[{key}] no live member"))
                }
                t => perform(&demo.cluster, action, t, demo.pause, key, &mut demo.rng),
            }
        }
    }
    None
}

/// Rows of text under the band's cells.
const BAND_TEXT_ROWS: usize = 2;

fn draw(f: &mut ratatui::Frame, demo: &Demo, snap: &Snapshot, board: &Board) {
    let area = f.area();
    let inner_w = area.width.saturating_sub(2) as usize;
    let max_band = 8;
    let band_h = ui::band_rows(snap.cells.len(), inner_w, max_band) as u16;
    let table_h = (snap.rows.len() as u16 + 3).clamp(4, 16);
    let pal = Palette::of(demo, snap);
    let zoned = !pal.zones.is_empty();
    let [head, ring, table, log, foot] = Layout::vertical([
        Constraint::Length(if zoned { 6 } else { 5 }),
        Constraint::Length(band_h + BAND_TEXT_ROWS as u16 + 2),
        Constraint::Length(table_h),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);

    // Header.
    let counts = demo.cluster.counts();
    let overlaps = demo.overlaps();
    let (samples, _) = demo.sampled();
    let ok = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);
    let bad = Style::new()
        .fg(Color::White)
        .bg(Color::Red)
        .add_modifier(Modifier::BOLD);
    let dim = Style::new().fg(Color::DarkGray);
    let s = &demo.cluster.settings.member;
    let line1 = TextLine::from(vec![
        Span::styled("leasering demo", Style::new().bold()),
        Span::raw(format!(
            " · ring {:?} · {} partitions · {} placement · {} vnodes a member · lease TTL {} · {} · up {}",
            s.ring_id,
            s.ring_size,
            s.placement,
            s.vnode_count,
            human(s.lease_ttl),
            demo.db_desc,
            clock(demo.start.elapsed())
        )),
    ]);
    let mut spans2 = vec![
        Span::raw(format!("epoch {} · members in the ring ", snap.epoch)),
        Span::styled(snap.in_ring.to_string(), Style::new().bold()),
        Span::raw(format!(
            " · largest share {:.2}× its fair share",
            snap.share_max_over_mean
        )),
    ];
    let others: Vec<String> = [
        (counts.starting, "joining"),
        (counts.paused, "paused"),
        (counts.leaving, "leaving"),
        (counts.crashed, "crashed"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if !others.is_empty() {
        spans2.push(Span::raw(format!(" ({})", others.join(", "))));
    }
    spans2.push(Span::raw(" · active "));
    spans2.push(Span::styled(
        format!("{}/{}", snap.tally.active, s.ring_size),
        if snap.tally.active == s.ring_size {
            ok
        } else {
            Style::new().fg(Color::Yellow).bold()
        },
    ));
    spans2.push(Span::raw(format!(
        " · pending {} · waiting for a claim {}{} · owner away {} · churn ",
        snap.tally.pending,
        snap.stalls.claim_waits(),
        if demo.cluster.settings.work_unit.is_some() {
            format!(" · draining {}", snap.tally.draining)
        } else {
            String::new()
        },
        snap.tally.waiting
    )));
    spans2.push(if demo.churn.on {
        Span::styled("ON", Style::new().fg(Color::LightMagenta).bold())
    } else {
        Span::raw("off")
    });
    let gaps = match demo.journal.gap_stats() {
        Some((median, max)) => format!(" (median {}, max {})", human(median), human(max)),
        None => String::new(),
    };
    let line3 = TextLine::from(vec![
        Span::raw(format!(
            "handoffs {}{gaps} · overlaps ",
            demo.journal.handoffs()
        )),
        Span::styled(overlaps.to_string(), if overlaps == 0 { ok } else { bad }),
        Span::styled(
            format!(
                " — checked: {} activity intervals from events, {} samples of owned_partitions()",
                demo.journal.checker().intervals(),
                samples
            ),
            dim,
        ),
    ]);
    let mut head_lines = vec![line1, TextLine::from(spans2), line3];
    if zoned {
        head_lines.push(pal.zones_line(snap));
    }
    f.render_widget(Paragraph::new(head_lines).block(Block::bordered()), head);

    // The ring.
    let (mut lines, per) = ui::band(
        &snap.cells,
        inner_w,
        max_band,
        |c| c == Cell::Double,
        |c, starts| match c {
            Cell::Active(slot) if starts => (
                ui::slot_label(slot),
                Style::new().fg(Color::Black).bg(pal.member(slot)).bold(),
            ),
            Cell::Active(slot) => ('█', Style::new().fg(pal.member(slot))),
            Cell::Pending(slot) if starts => (
                ui::slot_label(slot),
                Style::new().fg(pal.member(slot)).bold(),
            ),
            Cell::Pending(slot) => ('░', Style::new().fg(pal.member(slot))),
            // Labelled by the member that waits, drawn in the holder's colour.
            Cell::Claimed { owner, .. } if starts => (
                ui::slot_label(owner),
                Style::new().fg(pal.member(owner)).bold(),
            ),
            Cell::Claimed { holder, .. } => (
                '▞',
                Style::new().fg(holder.map_or(Color::Gray, |h| pal.member(h))),
            ),
            Cell::Draining(slot) if starts => (
                ui::slot_label(slot),
                Style::new().fg(pal.member(slot)).bold(),
            ),
            Cell::Draining(slot) => ('≈', Style::new().fg(pal.member(slot))),
            Cell::Waiting(slot) => ('·', Style::new().fg(pal.member(slot)).bold()),
            Cell::Free => ('·', dim),
            Cell::Double => ('!', bad),
        },
    );
    let unit = if per == 1 {
        "a cell each".to_string()
    } else {
        format!("a cell per {per}")
    };
    let title = format!(
        " ring ({} partitions, {unit}, runs labelled by member): █ active ░ taking its claim ▞ waiting for another's claim{} · owner away ",
        s.ring_size,
        if demo.cluster.settings.work_unit.is_some() {
            " ≈ old owner draining"
        } else {
            ""
        }
    );
    // Under the cells, in words: who waits for whose claim, what drains.
    let text = band::fit(&snap.stalls.text(s.ring_size), inner_w, BAND_TEXT_ROWS);
    lines.extend(
        text.into_iter()
            .map(|t| TextLine::from(Span::styled(t, Style::new().fg(Color::Gray)))),
    );
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        ring,
    );

    // Members.
    let now = Instant::now();
    let header = TableRow::new(
        [
            "",
            "member",
            "state",
            "vnodes",
            "epoch",
            "active",
            "pending",
            "waiting for",
            "draining",
            "lease left",
            "token",
            "renewals",
        ]
        .map(|h| TableCell::from(h).style(Style::new().bold())),
    );
    let rows: Vec<TableRow> = snap
        .rows
        .iter()
        .map(|r| {
            let st = r.status.as_ref();
            let (state, tone) = match r.phase {
                Phase::Starting => ("joining…".to_string(), Color::Cyan),
                Phase::Live => match st {
                    Some(s) if !s.joined => ("rejoining".into(), Color::Cyan),
                    Some(s) if s.lease_left.is_none() => {
                        ("fenced (no lease)".into(), Color::LightMagenta)
                    }
                    _ => ("live".into(), Color::Green),
                },
                Phase::Paused { until } => {
                    let left = human(until.saturating_duration_since(now));
                    let fenced = st.is_some_and(|s| s.lease_left.is_none());
                    (
                        format!("paused {left}{}", if fenced { ", fenced" } else { "" }),
                        Color::LightMagenta,
                    )
                }
                Phase::Leaving => ("leaving…".into(), Color::Yellow),
                Phase::Crashed { at } => (
                    format!("crashed {} ago", human(now.saturating_duration_since(at))),
                    Color::LightRed,
                ),
            };
            let dash = || "—".to_string();
            let num = |v: Option<String>| v.unwrap_or_else(dash);
            let crashed = matches!(r.phase, Phase::Crashed { .. });
            let selected = board.selected.as_deref() == Some(r.name.as_str());
            let cells = vec![
                TableCell::from(if selected {
                    "▶▶".to_string()
                } else {
                    format!("{}█", ui::slot_label(r.slot))
                })
                .style(Style::new().fg(pal.member(r.slot)).bold()),
                TableCell::from(match &r.zone {
                    Some(z) => format!("{} {z}", r.name),
                    None => r.name.clone(),
                })
                .style(Style::new().fg(pal.member(r.slot)).bold()),
                TableCell::from(state).style(Style::new().fg(tone)),
                TableCell::from(num(r.vnodes.map(|v| v.to_string()))),
                TableCell::from(num(st.filter(|_| !crashed).map(|s| s.epoch.to_string()))),
                TableCell::from(num(st.map(|s| s.active.to_string()))),
                TableCell::from(num(st.filter(|_| !crashed).map(|s| s.pending.to_string()))),
                TableCell::from(num(st
                    .filter(|_| !crashed)
                    .and_then(|s| claim_waits(&s.waiting_for)))),
                TableCell::from(num(st.filter(|_| !crashed).map(|s| s.draining.to_string()))),
                TableCell::from(num(st.and_then(|s| s.lease_left).map(human))),
                TableCell::from(num(demo.journal.last_token(&r.name).map(|t| t.to_string()))),
                TableCell::from(num(st.map(|s| s.renewals.to_string()))),
            ];
            let row = TableRow::new(cells);
            if selected {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    // The member's name, and its zone after it.
    let name_w = snap
        .rows
        .iter()
        .map(|r| r.name.chars().count() + r.zone.as_ref().map_or(0, |z| z.chars().count() + 1))
        .max()
        .unwrap_or(0)
        .clamp(10, 40) as u16;
    let widths = [
        Constraint::Length(2),
        Constraint::Length(name_w),
        Constraint::Length(24),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(8),
    ];
    // Scrolls to the selected member when they do not all fit.
    let mut state = ratatui::widgets::TableState::default().with_selected(
        board
            .selected
            .as_ref()
            .and_then(|sel| snap.rows.iter().position(|r| &r.name == sel)),
    );
    let shown = table.height.saturating_sub(3) as usize;
    let title = if snap.rows.len() > shown {
        format!(" members ({} — ↑↓ to see them all) ", snap.rows.len())
    } else {
        " members ".to_string()
    };
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        table,
        &mut state,
    );

    // The log, newest at the bottom.
    let lines = ui::log_tail(
        board.log.iter(),
        board.scroll,
        demo.start,
        log.width.saturating_sub(2) as usize,
        log.height.saturating_sub(2) as usize,
        &|slot| pal.member(slot),
    );
    let title = if board.scroll > 0 {
        format!(
            " events — scrolled back {} lines (End: follow) ",
            board.scroll
        )
    } else {
        " events (handoff = old owner's release → new owner's activation) ".to_string()
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        log,
    );

    // Keys.
    let footer = if board.quitting {
        TextLine::from(Span::styled(
            " quitting: stopping every member, then the database… ",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ))
    } else {
        let target = match &board.selected {
            Some(n) => n.clone(),
            None => "random".into(),
        };
        let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Black).bg(Color::Gray));
        TextLine::from(vec![
            key(" j "),
            Span::raw(" join  "),
            key(" l "),
            Span::raw(" leave  "),
            key(" k "),
            Span::raw(" crash  "),
            key(" p "),
            Span::raw(format!(" pause {}  ", human(demo.pause))),
            key(" r "),
            Span::raw(" ready  "),
            key(" u "),
            Span::raw(" cordon  "),
            key(" c "),
            Span::raw(" churn  "),
            key(" v "),
            Span::raw(" view events  "),
            key(" ↑↓ "),
            Span::raw(format!(" target: {target}  ")),
            key(" PgUp/PgDn "),
            Span::raw(" scroll  "),
            key(" q "),
            Span::raw(" quit"),
        ])
    };
    f.render_widget(Paragraph::new(footer), foot);
}

/// How the dashboard colours members: with zones (`--zones`), each by its
/// zone's colour (a fixed palette, cycling); else each its own.
struct Palette {
    /// The zones in colour order: the demo's own (`zone-a`, …) first, then
    /// any other the ring shows.
    zones: Vec<String>,
    /// Per member slot, its zone's index in `zones`.
    by_slot: HashMap<usize, usize>,
}

impl Palette {
    fn of(demo: &Demo, snap: &Snapshot) -> Palette {
        let mut zones: Vec<String> = demo.cluster.settings.zones.clone();
        let seen = snap
            .rows
            .iter()
            .filter_map(|r| r.zone.as_deref())
            .chain(snap.zones.iter().filter_map(|z| z.zone.as_deref()));
        for z in seen {
            if !zones.iter().any(|k| k == z) {
                zones.push(z.to_string());
            }
        }
        let by_slot = snap
            .rows
            .iter()
            .filter_map(|r| {
                let z = r.zone.as_deref()?;
                Some((r.slot, zones.iter().position(|k| k == z)?))
            })
            .collect();
        Palette { zones, by_slot }
    }

    /// A member's colour, by its slot.
    fn member(&self, slot: usize) -> Color {
        match self.by_slot.get(&slot) {
            Some(&i) => zone_color(i),
            None => member_color(slot),
        }
    }

    fn zone(&self, zone: &str) -> Option<Color> {
        self.zones.iter().position(|k| k == zone).map(zone_color)
    }

    /// `zones: zone-a 342 (341.3) · …`, each zone's name in its colour.
    fn zones_line(&self, snap: &Snapshot) -> TextLine<'static> {
        let mut spans = vec![Span::raw("zones: ")];
        if snap.zones.is_empty() {
            spans.push(Span::styled(
                "no view yet",
                Style::new().fg(Color::DarkGray),
            ));
        }
        for (i, z) in snap.zones.iter().enumerate() {
            if i > 0 {
                spans.push(Span::raw(" · "));
            }
            let name = z.zone.clone().unwrap_or_else(|| "no zone".into());
            let style = match z.zone.as_deref().and_then(|n| self.zone(n)) {
                Some(c) => Style::new().fg(c).bold(),
                None => Style::new().bold(),
            };
            spans.push(Span::styled(name, style));
            spans.push(Span::raw(format!(" {} ({:.1})", z.partitions, z.share)));
        }
        spans.push(Span::styled(
            " — partitions (weighted share)",
            Style::new().fg(Color::DarkGray),
        ));
        TextLine::from(spans)
    }
}

/// A member's claim waits for the table: `node-4: 60`, `node-4: 60 +1`
/// (one more holder), `None` when it waits for nobody.
fn claim_waits(waiting_for: &[(String, Vec<u32>)]) -> Option<String> {
    let (holder, ps) = waiting_for.iter().max_by_key(|(_, ps)| ps.len())?;
    let holder = if holder.is_empty() { "?" } else { holder };
    let more = match waiting_for.len() - 1 {
        0 => String::new(),
        n => format!(" +{n}"),
    };
    Some(format!("{holder}: {}{more}", ps.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_the_keys() {
        assert_eq!(parse_command("j"), Ok(Command::Act(Action::Join, None)));
        assert_eq!(
            parse_command(" p node-0 "),
            Ok(Command::Act(Action::Pause, Some("node-0".into())))
        );
        assert_eq!(parse_command("k"), Ok(Command::Act(Action::Crash, None)));
        assert_eq!(parse_command("c"), Ok(Command::Churn));
        assert_eq!(parse_command("q"), Ok(Command::Quit));
        assert!(parse_command("j node-9").is_err());
        assert!(parse_command("q now").is_err());
        assert!(parse_command("l a b").is_err());
        assert!(parse_command("x").unwrap_err().contains("not a command"));
        assert_eq!(parse_command("r"), Ok(Command::Act(Action::Ready, None)));
        assert_eq!(
            parse_command("u node-1"),
            Ok(Command::Act(Action::Cordon, Some("node-1".into())))
        );
    }

    /// A demo of four members over three zones, nothing started: enough
    /// for `draw`.
    fn zoned_demo() -> Demo {
        let (tx, rx) = unbounded();
        let settings = Settings {
            pg: r2d2_postgres::postgres::Config::new(),
            member: MemberConfig::new("demo"),
            work_unit: None,
            zones: ["zone-a", "zone-b", "zone-c"].map(String::from).to_vec(),
        };
        let start = Instant::now();
        Demo {
            cluster: Cluster::new(settings, tx),
            rx,
            journal: Journal::new(16, start),
            churn: Churn {
                on: false,
                rng: Rng::new(1),
                seed: 1,
                every: Duration::from_secs(1),
                next: start,
                pause: Duration::from_secs(1),
                ttl: Duration::from_secs(3),
                drain: Duration::ZERO,
                min_live: 2,
                max_members: 6,
            },
            start,
            end: None,
            settle_until: None,
            pause: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
            ring_size: 16,
            sampler: None,
            db_desc: "no database".into(),
            rng: Rng::new(2),
        }
    }

    /// The text of each row of a rendered buffer.
    fn rows_of(buf: &ratatui::buffer::Buffer) -> Vec<String> {
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf.cell((x, y)).map_or(" ", |c| c.symbol()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_dashboard_colours_members_by_zone_and_sums_up_the_zones() {
        use crate::cluster::{Row, Tally, ZoneTally};
        let demo = zoned_demo();
        let zones = ["zone-a", "zone-b", "zone-c", "zone-a"];
        let rows: Vec<Row> = zones
            .iter()
            .enumerate()
            .map(|(slot, z)| Row {
                name: format!("node-{slot}"),
                slot,
                phase: Phase::Live,
                status: None,
                vnodes: Some(8),
                draining: Vec::new(),
                zone: Some(z.to_string()),
            })
            .collect();
        let cells: Vec<Cell> = (0..16).map(|p| Cell::Active(p / 4)).collect();
        let tally = |z: &str, partitions, share| ZoneTally {
            zone: Some(z.to_string()),
            partitions,
            share,
        };
        let snap = Snapshot {
            rows,
            tally: Tally {
                active: 16,
                ..Tally::default()
            },
            cells,
            stalls: Default::default(),
            epoch: 4,
            in_ring: 4,
            share_max_over_mean: 1.0,
            moves_pending: 0,
            zones: vec![
                tally("zone-a", 8, 8.0),
                tally("zone-b", 4, 4.0),
                tally("zone-c", 4, 4.0),
            ],
        };
        let board = Board {
            log: VecDeque::new(),
            scroll: 0,
            selected: None,
            quitting: false,
        };
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(200, 50)).unwrap();
        term.draw(|f| draw(f, &demo, &snap, &board)).unwrap();
        let buf = term.backend().buffer();
        let text = rows_of(buf);
        let all = text.join("\n");
        assert!(
            text.iter()
                .any(|l| l.contains("zones: zone-a 8 (8.0) · zone-b 4 (4.0) · zone-c 4 (4.0)")),
            "{all}"
        );
        // Each member's name with its zone, in its zone's colour (node-3
        // shares node-0's, zone-a's); the band's runs too.
        let colour_at = |needle: &str| {
            let (y, l) = text
                .iter()
                .enumerate()
                .find(|(_, l)| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{all}"));
            let x = l[..l.find(needle).unwrap()].chars().count();
            buf.cell((x as u16, y as u16)).unwrap().fg
        };
        for (slot, z) in zones.iter().enumerate() {
            let i = ["zone-a", "zone-b", "zone-c"]
                .iter()
                .position(|k| k == z)
                .unwrap();
            assert_eq!(
                colour_at(&format!("node-{slot} {z}")),
                zone_color(i),
                "node-{slot}\n{all}"
            );
        }
        assert_ne!(zone_color(0), zone_color(1));
        assert_ne!(zone_color(1), zone_color(2));
        // The band: one cell a partition, node-3's run (label `3`) is
        // zone-a's colour.
        let band_row = text
            .iter()
            .position(|l| l.contains("0███1███2███3███"))
            .unwrap_or_else(|| panic!("no band in\n{all}"));
        let x = text[band_row].find("0███1███2███3███").unwrap();
        let x = text[band_row][..x].chars().count() as u16;
        let bg = |dx: u16| buf.cell((x + dx, band_row as u16)).unwrap().bg;
        assert_eq!(bg(12), zone_color(0));
        assert_eq!(bg(4), zone_color(1));
        // The keys are all there, `r` and `u` among them.
        assert!(
            all.contains(" r  ready ") && all.contains(" u  cordon "),
            "{all}"
        );
    }

    #[test]
    fn without_zones_the_dashboard_has_no_zone_line() {
        let mut demo = zoned_demo();
        Arc::get_mut(&mut demo.cluster)
            .unwrap()
            .settings
            .zones
            .clear();
        let snap = demo.cluster.snapshot();
        let board = Board {
            log: VecDeque::new(),
            scroll: 0,
            selected: None,
            quitting: false,
        };
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(200, 50)).unwrap();
        term.draw(|f| draw(f, &demo, &snap, &board)).unwrap();
        let all = rows_of(term.backend().buffer()).join("\n");
        assert!(!all.contains("zones:"), "{all}");
        assert!(all.contains("leasering demo"), "{all}");
    }

    #[test]
    fn claim_waits_name_the_biggest_holder() {
        assert_eq!(claim_waits(&[]), None);
        let w = vec![
            ("node-1".to_string(), vec![1, 2]),
            ("node-4".to_string(), vec![3, 4, 5]),
        ];
        assert_eq!(claim_waits(&w).as_deref(), Some("node-4: 3 +1"));
        assert_eq!(
            claim_waits(&[(String::new(), vec![7])]).as_deref(),
            Some("?: 1")
        );
    }
}
