//! The dashboard's drawing: one frame of `ringnode demo`'s live view from
//! the demo's state, a snapshot of the cluster and the board (what the
//! dashboard keeps between frames) — the header (ring, counts, handoffs,
//! overlaps and, with zones, the zones line), the ring's band with its
//! stalls in words, the members' table, the event log and the keys — and
//! what only the drawing needs: the palette that colours members by zone
//! and the table's summary of a member's claim waits. It reads the demo and
//! changes nothing; the loop that calls it, the keys and the board's
//! updates are `demo.rs`'s.

use std::collections::HashMap;
use std::time::Instant;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Cell as TableCell, Paragraph, Row as TableRow, Table};

use super::{Board, Demo};
use crate::band;
use crate::cluster::{Cell, Counts, Phase, Row, Snapshot};
use crate::ui::{self, member_color, zone_color};
use crate::util::{clock, human};

/// Rows of text under the band's cells.
const BAND_TEXT_ROWS: usize = 2;

/// The band's most rows of cells.
const MAX_BAND: usize = 8;

/// What is well (no overlap, every partition active).
const OK: Style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);
/// What must never happen (an overlap, a partition active twice).
const BAD: Style = Style::new()
    .fg(Color::White)
    .bg(Color::Red)
    .add_modifier(Modifier::BOLD);
/// Asides, and free partitions.
const DIM: Style = Style::new().fg(Color::DarkGray);

pub(super) fn draw(f: &mut ratatui::Frame, demo: &Demo, snap: &Snapshot, board: &Board) {
    let area = f.area();
    let inner_w = area.width.saturating_sub(2) as usize;
    let band_h = ui::band_rows(snap.cells.len(), inner_w, MAX_BAND) as u16;
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
    draw_header(f, head, demo, snap, &pal);
    draw_ring(f, ring, inner_w, demo, snap, &pal);
    draw_members(f, table, demo, snap, board, &pal);
    draw_log(f, log, demo, board, &pal);
    draw_keys(f, foot, demo, board);
}

/// The header: the ring's settings, its members and partitions, the
/// handoffs and the overlaps checked, and with zones the zones line.
fn draw_header(f: &mut ratatui::Frame, head: Rect, demo: &Demo, snap: &Snapshot, pal: &Palette) {
    let counts = demo.cluster.counts();
    let overlaps = demo.overlaps();
    let (samples, _) = demo.sampled();
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
    let line2 = partitions_line(demo, snap, &counts);
    let gaps = match demo.journal.gap_stats() {
        Some((median, max)) => format!(" (median {}, max {})", human(median), human(max)),
        None => String::new(),
    };
    let line3 = TextLine::from(vec![
        Span::raw(format!(
            "handoffs {}{gaps} · overlaps ",
            demo.journal.handoffs()
        )),
        Span::styled(overlaps.to_string(), if overlaps == 0 { OK } else { BAD }),
        Span::styled(
            format!(
                " — checked: {} activity intervals from events, {} samples of owned_partitions()",
                demo.journal.checker().intervals(),
                samples
            ),
            DIM,
        ),
    ]);
    let mut head_lines = vec![line1, line2, line3];
    if !pal.zones.is_empty() {
        head_lines.push(pal.zones_line(snap));
    }
    f.render_widget(Paragraph::new(head_lines).block(Block::bordered()), head);
}

/// The header's second line: the epoch, the members in the ring and the
/// others, the partitions active, pending, waiting, draining; the churn.
fn partitions_line(demo: &Demo, snap: &Snapshot, counts: &Counts) -> TextLine<'static> {
    let s = &demo.cluster.settings.member;
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
            OK
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
    TextLine::from(spans2)
}

/// The ring: a band of cells, runs labelled by member, and under it, in
/// words, who waits for whose claim and what drains.
fn draw_ring(
    f: &mut ratatui::Frame,
    ring: Rect,
    inner_w: usize,
    demo: &Demo,
    snap: &Snapshot,
    pal: &Palette,
) {
    let s = &demo.cluster.settings.member;
    let (mut lines, per) = ui::band(
        &snap.cells,
        inner_w,
        MAX_BAND,
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
            Cell::Free => ('·', DIM),
            Cell::Double => ('!', BAD),
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
}

/// The members' table, scrolled to the selected member when they do not
/// all fit.
fn draw_members(
    f: &mut ratatui::Frame,
    table: Rect,
    demo: &Demo,
    snap: &Snapshot,
    board: &Board,
    pal: &Palette,
) {
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
        .map(|r| member_row(r, now, demo, board, pal))
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
}

/// One member's row of the table, reversed when it is the selected one.
fn member_row(
    r: &Row,
    now: Instant,
    demo: &Demo,
    board: &Board,
    pal: &Palette,
) -> TableRow<'static> {
    let st = r.status.as_ref();
    let (state, tone) = match r.phase {
        Phase::Starting => ("joining…".to_string(), Color::Cyan),
        Phase::Live => match st {
            Some(s) if !s.joined => ("rejoining".into(), Color::Cyan),
            Some(s) if s.lease_left.is_none() => ("fenced (no lease)".into(), Color::LightMagenta),
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
}

/// The log, newest at the bottom.
fn draw_log(f: &mut ratatui::Frame, log: Rect, demo: &Demo, board: &Board, pal: &Palette) {
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
}

/// The keys, or the note that the demo is quitting.
fn draw_keys(f: &mut ratatui::Frame, foot: Rect, demo: &Demo, board: &Board) {
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
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::Duration;

    use crossbeam_channel::unbounded;
    use leasering_testkit::rng::Rng;

    use crate::cluster::{Cluster, Settings};
    use crate::demo::Churn;
    use crate::journal::Journal;
    use crate::member_config::MemberConfig;

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
