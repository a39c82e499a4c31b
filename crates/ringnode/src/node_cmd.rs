//! `ringnode node`: one member in this process against a shared database —
//! run one per terminal, like the Go demo — with a live view of the ring as
//! this member sees it. `q` or Ctrl+C leaves gracefully (the successors take
//! over within milliseconds); with `--crash` they exit without leaving (the
//! others take over when the lease runs out).

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use crossterm::event::{
    self as term_event, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers,
};
use leasering::{Event, ReleaseReason, RingNode, RingView};

use crate::member_config::MemberConfig;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Cell as TableCell, Paragraph, Row as TableRow, Table};

use crate::band::waiting_for_claim;
use crate::cli::NodeArgs;
use crate::cluster::start_member;
use crate::journal::{Line, Tone};
use crate::signals;
use crate::ui::{self, member_color, Screen};
use crate::util::{
    clock, describe_target, human, parse_database_url, preflight, slot_of, AppError, AppResult,
};

/// Turns this member's events into lines.
struct Story {
    me: String,
    slot: usize,
    /// When each recent epoch was adopted (or joined): a partition's token
    /// is the epoch that assigned it, so `Acquired.at` minus this is how
    /// long its handoff took.
    adopted: VecDeque<(u64, Instant)>,
    /// The last (re)join, until the first acquisition after it.
    joined_at: Option<Instant>,
    members: BTreeSet<String>,
    last_token: Option<u64>,
}

impl Story {
    fn line(&mut self, ev: &Event, view: &RingView) -> Option<Line> {
        let (tone, text) = match ev {
            Event::Joined {
                epoch,
                positions,
                at,
                ..
            } => {
                self.adopted.push_back((*epoch, *at));
                self.joined_at = Some(*at);
                self.members = names(view);
                (
                    Tone::Join,
                    format!(
                        "joined at epoch {epoch} with {} vnodes: {positions:?}",
                        positions.len()
                    ),
                )
            }
            Event::ViewChanged {
                epoch, members, at, ..
            } => {
                self.adopted.push_back((*epoch, *at));
                if self.adopted.len() > 256 {
                    self.adopted.pop_front();
                }
                let now = names(view);
                let came: Vec<&String> = now.difference(&self.members).collect();
                let went: Vec<&String> = self.members.difference(&now).collect();
                let mut text = format!("view: epoch {epoch}, {members} members");
                if !came.is_empty() {
                    text.push_str(&format!(" · joined: {}", join(&came)));
                }
                if !went.is_empty() {
                    text.push_str(&format!(" · gone: {}", join(&went)));
                }
                self.members = now;
                (Tone::View, text)
            }
            Event::Acquired {
                partitions,
                token,
                epoch,
                at,
                ..
            } => {
                self.last_token = Some(*token);
                let mut text = format!(
                    "+{} acquired, token {token} (epoch {epoch})",
                    partitions.len()
                );
                if let Some(j) = self.joined_at.take() {
                    text.push_str(&format!(
                        " — {} after its join",
                        human(at.saturating_duration_since(j))
                    ));
                } else if let Some((_, c)) = self.adopted.iter().rev().find(|(e, _)| e == token) {
                    text.push_str(&format!(
                        " — handoff {} after epoch {token} assigned them",
                        human(at.saturating_duration_since(*c))
                    ));
                }
                (Tone::Acquire, text)
            }
            Event::Released {
                partitions,
                reason,
                epoch,
                ..
            } => {
                let why = match reason {
                    ReleaseReason::Handoff => "handoff: another member's arc now",
                    ReleaseReason::LeaseExpired => "lease expired locally: fenced itself",
                    ReleaseReason::Evicted => "evicted: its lease was gone from the database",
                    ReleaseReason::Stopping => "stopping",
                    _ => "released",
                };
                let tone = match reason {
                    ReleaseReason::Handoff | ReleaseReason::Stopping => Tone::Release,
                    _ => Tone::Warn,
                };
                (
                    tone,
                    format!("−{} released ({why}) at epoch {epoch}", partitions.len()),
                )
            }
            _ => return None,
        };
        Some(Line {
            at: ev.at(),
            member: Some((self.me.clone(), self.slot)),
            tone,
            text,
        })
    }
}

fn names(view: &RingView) -> BTreeSet<String> {
    view.members()
        .iter()
        .map(|m| m.node_id().to_string())
        .collect()
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

pub fn run(args: NodeArgs) -> AppResult<u8> {
    let mut cfg = MemberConfig::new(args.ring_id.clone());
    cfg.ring_size = args.ring_size;
    cfg.vnode_count = args.vnodes;
    cfg.placement = args.placement;
    cfg.metadata = args.metadata.clone();
    cfg.zone = args.zone.clone();
    cfg.capacity = args.capacity;
    cfg.max_moving = args.max_moving;
    cfg.lease_ttl = args.lease_ttl;
    cfg.failover_grace = args.failover_grace;
    cfg.schema = args.schema.clone();
    cfg.node_id = args.node_id.clone();
    cfg.validate()?;
    let pg = parse_database_url(&args.database_url)?;
    let version = preflight(&pg)?;
    let target = describe_target(&pg);
    signals::install();
    let plain = args.plain || !ui::stdout_is_tty();
    let (log_tx, log_rx) = unbounded::<Line>();
    if plain {
        ui::init_logging(None);
    } else {
        ui::init_logging(Some(Box::new(move |l| {
            let _ = log_tx.send(l);
        })));
    }

    let metrics = match args.http {
        // Before the member starts: nothing it emits is lost.
        Some(_) => Some(crate::http::install_recorder()?),
        None => None,
    };
    let start = Instant::now();
    let (node, events) = start_member(pg, &cfg)?;
    if let (Some(addr), Some(metrics)) = (args.http, metrics) {
        let served = crate::http::serve(
            &addr.to_string(),
            metrics,
            crate::http::member_ready(node.clone()),
        );
        if let Err(e) = served {
            let _ = node.stop();
            return Err(e);
        }
        if plain {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "serving /metrics, /healthz and /readyz on http://{addr}");
        }
    }
    let me = node.node_id().to_string();
    let mut app = App {
        story: Story {
            me: me.clone(),
            slot: slot_of(&me),
            adopted: VecDeque::new(),
            joined_at: None,
            members: BTreeSet::new(),
            last_token: None,
        },
        start,
        node: node.clone(),
        events,
        log_rx,
        log: VecDeque::new(),
        header: format!(
            "{}ring {:?} · {} partitions · {} placement · lease TTL {} · PostgreSQL {version} at {target}",
            attrs_note(args.zone.as_deref(), args.capacity),
            args.ring_id,
            args.ring_size,
            args.placement,
            human(args.lease_ttl)
        ),
        crash: args.crash,
    };
    let outcome = if plain { app.plain() } else { app.tui() };
    // Leave (or crash) whatever ended the loop.
    let t0 = Instant::now();
    let farewell = if args.crash {
        node.crash();
        format!(
            "{me}: exited without leaving (--crash): the others take over when its lease ends, within {}",
            human(args.lease_ttl)
        )
    } else {
        match node.stop() {
            Ok(()) => format!("{me}: left the ring in {}", human(t0.elapsed())),
            Err(e) => format!("{me}: leave failed, its lease will expire instead: {e}"),
        }
    };
    drop(node);
    match outcome {
        Ok(code) => {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{farewell}");
            Ok(code)
        }
        Err(e) => {
            eprintln!("ringnode: {farewell}");
            Err(e)
        }
    }
}

/// `zone z1 · capacity 5 · ` for the header (each part only when set).
fn attrs_note(zone: Option<&str>, capacity: Option<u32>) -> String {
    let mut s = String::new();
    if let Some(z) = zone {
        s.push_str(&format!("zone {z} · "));
    }
    if let Some(c) = capacity {
        s.push_str(&format!("capacity {c} · "));
    }
    s
}

struct App {
    story: Story,
    start: Instant,
    node: RingNode,
    events: Receiver<Event>,
    log_rx: Receiver<Line>,
    log: VecDeque<Line>,
    header: String,
    crash: bool,
}

impl App {
    fn pump(&mut self) -> Vec<Line> {
        let view = self.node.view();
        let mut out: Vec<Line> = self
            .events
            .try_iter()
            .filter_map(|ev| self.story.line(&ev, &view))
            .collect();
        out.extend(self.log_rx.try_iter());
        out
    }

    fn status_line(&self) -> String {
        let st = self.node.status();
        format!(
            "status t={:.1}s epoch={} members={} joined={} active={} pending={} waiting_for={} draining={} lease_left={} renewals={} token={}",
            self.start.elapsed().as_secs_f64(),
            st.epoch,
            self.node.view().members().len(),
            st.joined,
            st.active,
            st.pending,
            if st.waiting_for.is_empty() {
                "-".to_string()
            } else {
                st.waiting_for
                    .iter()
                    .map(|(h, ps)| format!("{}:{}", if h.is_empty() { "?" } else { h }, ps.len()))
                    .collect::<Vec<_>>()
                    .join(",")
            },
            st.draining,
            st.lease_left.map(human).unwrap_or_else(|| "none".into()),
            st.renewals,
            self.story.last_token.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        )
    }

    fn plain(&mut self) -> AppResult<u8> {
        let mut out = std::io::stdout();
        let mut say = |s: &str| {
            let _ = writeln!(out, "{s}").and_then(|_| out.flush());
        };
        say(&format!("node: {} · {}", self.story.me, self.header));
        let mut next_status = self.start + Duration::from_secs(1);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            for l in self.pump() {
                say(&l.plain(self.start));
            }
            if ui::panicked() {
                return Err(AppError("a thread panicked (message above)".into()));
            }
            if let Some(sig) = signals::received() {
                say(&format!("node: {} received", signals::name(sig)));
                return Ok(0);
            }
            if Instant::now() >= next_status {
                say(&self.status_line());
                next_status += Duration::from_secs(1);
            }
        }
    }

    fn tui(&mut self) -> AppResult<u8> {
        let mut screen = Screen::enter()
            .map_err(|e| AppError(format!("cannot use the terminal: {e} (try --plain)")))?;
        let frame = Duration::from_millis(100);
        let mut next_frame = Instant::now();
        loop {
            let wait = next_frame
                .saturating_duration_since(Instant::now())
                .min(frame);
            if term_event::poll(wait)? {
                if let TermEvent::Key(k) = term_event::read()? {
                    if k.kind != KeyEventKind::Release {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Char('Q')) {
                            return Ok(0);
                        }
                    }
                }
                next_frame = Instant::now();
            }
            if ui::panicked() {
                return Err(AppError("a thread panicked (message above)".into()));
            }
            if signals::received().is_some() {
                return Ok(0);
            }
            let now = Instant::now();
            if now >= next_frame {
                for l in self.pump() {
                    self.log.push_back(l);
                }
                while self.log.len() > 2000 {
                    self.log.pop_front();
                }
                screen.term.draw(|f| self.draw(f))?;
                next_frame = now + frame;
            }
        }
    }

    fn draw(&self, f: &mut ratatui::Frame) {
        let area = f.area();
        let view = self.node.view();
        let owned = self.node.owned_partitions();
        let st = self.node.status();
        let me = &self.story.me;
        let inner_w = area.width.saturating_sub(2) as usize;
        let band_h = ui::band_rows(view.ring_size() as usize, inner_w, 8) as u16;
        let table_h = (view.members().len() as u16 + 3).clamp(4, 14);
        let [head, ring, table, log, foot] = Layout::vertical([
            Constraint::Length(4),
            Constraint::Length(band_h + 2),
            Constraint::Length(table_h),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .areas(area);

        let mine = Style::new().fg(member_color(self.story.slot)).bold();
        let state = if st.stopped {
            "stopped".to_string()
        } else if !st.joined {
            "rejoining".to_string()
        } else if st.lease_left.is_none() {
            "fenced (no lease)".to_string()
        } else {
            "member".to_string()
        };
        let line1 = TextLine::from(vec![
            Span::styled("leasering node ", Style::new().bold()),
            Span::styled(me.clone(), mine),
            Span::raw(format!(" · {}", self.header)),
        ]);
        // What its pending partitions wait for: the claims other members
        // still hold (a frozen or crashed holder's, until its lease ends).
        let waits: String = st
            .waiting_for
            .iter()
            .map(|(h, ps)| format!(" · {} ({})", waiting_for_claim(h), ps.len()))
            .collect();
        let draining = if st.draining > 0 {
            format!(" · draining {}", st.draining)
        } else {
            String::new()
        };
        let line2 = TextLine::from(vec![Span::raw(format!(
            "{state} · epoch {} · members {} · active {} · pending {}{waits}{draining} · lease left {} · renewals {} (failed {}) · last token {} · up {}",
            st.epoch,
            view.members().len(),
            st.active,
            st.pending,
            st.lease_left.map(human).unwrap_or_else(|| "—".into()),
            st.renewals,
            st.renewal_failures,
            self.story.last_token.map(|t| t.to_string()).unwrap_or_else(|| "—".into()),
            clock(self.start.elapsed())
        ))]);
        f.render_widget(
            Paragraph::new(vec![line1, line2]).block(Block::bordered()),
            head,
        );

        #[derive(Clone, Copy, PartialEq)]
        enum C {
            Mine(bool),
            /// Mine, pending: its claim is held by another member (slot).
            MineHeld(Option<usize>),
            Other(usize),
            Free,
        }
        let mut held = vec![None; view.ring_size() as usize];
        for (holder, ps) in &st.waiting_for {
            let slot = (!holder.is_empty()).then(|| slot_of(holder));
            for p in ps {
                if let Some(h) = held.get_mut(*p as usize) {
                    *h = Some(slot);
                }
            }
        }
        let cells: Vec<C> = (0..view.ring_size())
            .map(|p| match view.owner_of(p) {
                Some(o) if o == me.as_str() => match held[p as usize] {
                    Some(holder) if !owned.contains(p) => C::MineHeld(holder),
                    _ => C::Mine(owned.contains(p)),
                },
                Some(o) => C::Other(slot_of(o)),
                None => C::Free,
            })
            .collect();
        let my = member_color(self.story.slot);
        let (lines, per) = ui::band(
            &cells,
            inner_w,
            8,
            |_| false,
            |c, starts| match c {
                C::Mine(true) if starts => (
                    ui::slot_label(self.story.slot),
                    Style::new().fg(Color::Black).bg(my).bold(),
                ),
                C::Mine(true) => ('█', Style::new().fg(my)),
                C::Other(slot) if starts => (
                    ui::slot_label(slot),
                    Style::new().fg(member_color(slot)).bold(),
                ),
                C::Mine(false) => ('░', Style::new().fg(my)),
                C::MineHeld(holder) => (
                    '▞',
                    Style::new().fg(holder.map_or(Color::Gray, member_color)),
                ),
                C::Other(slot) => (
                    '▒',
                    Style::new()
                        .fg(member_color(slot))
                        .add_modifier(Modifier::DIM),
                ),
                C::Free => ('·', Style::new().fg(Color::DarkGray)),
            },
        );
        let unit = if per == 1 {
            String::new()
        } else {
            format!(", one cell per {per} partitions")
        };
        let title = format!(
            " the ring as {me} sees it (epoch {}{unit}, runs labelled by member) — █ mine, active  ░ mine, pending  ▞ mine, waiting for another member's claim (its colour)  ▒ another member's arc ",
            view.epoch()
        );
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(title)),
            ring,
        );

        let size = view.ring_size().max(1) as f64;
        let rows: Vec<TableRow> = view
            .members()
            .iter()
            .map(|m| {
                let slot = slot_of(m.node_id());
                let mut name = m.node_id().to_string();
                if let Some(z) = m.zone() {
                    name.push_str(&format!(" {z}"));
                }
                if let Some(c) = m.capacity() {
                    name.push_str(&format!(" (cap {c})"));
                }
                if m.node_id() == me.as_str() {
                    name.push_str(" (this one)");
                }
                TableRow::new(vec![
                    TableCell::from(format!("{}█", ui::slot_label(slot)))
                        .style(Style::new().fg(member_color(slot)).bold()),
                    TableCell::from(name).style(Style::new().fg(member_color(slot)).bold()),
                    TableCell::from(m.positions().len().to_string()),
                    TableCell::from(m.partition_count().to_string()),
                    TableCell::from(format!(
                        "{:.1} %",
                        m.partition_count() as f64 * 100.0 / size
                    )),
                ])
            })
            .collect();
        let header = TableRow::new(
            ["", "member", "vnodes", "partitions", "share"]
                .map(|h| TableCell::from(h).style(Style::new().bold())),
        );
        let widths = [
            Constraint::Length(2),
            Constraint::Length(40),
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(8),
        ];
        f.render_widget(
            Table::new(rows, widths)
                .header(header)
                .block(Block::bordered().title(" members in this view (arcs, not activity) ")),
            table,
        );

        let lines = ui::log_tail(
            self.log.iter(),
            0,
            self.start,
            log.width.saturating_sub(2) as usize,
            log.height.saturating_sub(2) as usize,
            &member_color,
        );
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" events of this member ")),
            log,
        );

        let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Black).bg(Color::Gray));
        let what = if self.crash {
            " exit WITHOUT leaving (--crash): the others wait for the lease to end"
        } else {
            " leave gracefully: the successors take over within milliseconds"
        };
        f.render_widget(
            Paragraph::new(TextLine::from(vec![
                key(" q "),
                Span::raw(" or "),
                key(" Ctrl+C "),
                Span::raw(what),
            ])),
            foot,
        );
    }
}
