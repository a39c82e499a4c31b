//! `ringnode demo`: a throwaway PostgreSQL (or `--database-url`), N members
//! in this process, and either a live dashboard or, with `--plain`, one
//! line per event, a status line per second and a final summary line.

use std::collections::VecDeque;
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

use crate::cli::{DemoArgs, MAX_MEMBERS};
use crate::cluster::{zones_line, Cluster, Counts, Msg, Phase, Settings, Snapshot};
use crate::journal::{Journal, Line, Tone};
use crate::signals;
use crate::ui::{self, Screen};
use crate::util::{
    clock, describe_target, human, parse_database_url, preflight, AppError, AppResult,
};

mod draw;

use draw::draw;

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
}
