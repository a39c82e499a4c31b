//! The terminal: entering and always leaving raw mode and the alternate
//! screen (on return, on error, on panic), logging into the dashboard, and
//! the pieces both dashboards draw with.

use std::io::{self, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossterm::cursor::Show;
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use ratatui::Terminal;

use crate::journal::{Line, Tone};

static TUI_ACTIVE: AtomicBool = AtomicBool::new(false);
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Installs a panic hook that restores the terminal first (so the message is
/// readable and the shell usable), records the panic so the main loop shuts
/// down cleanly, then prints as usual.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        PANICKED.store(true, Ordering::SeqCst);
        default(info);
    }));
}

/// Whether any thread panicked.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

/// Leaves raw mode and the alternate screen if we are in them. Idempotent.
pub fn restore() {
    if TUI_ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// The terminal in raw mode on the alternate screen; restored on drop.
pub struct Screen {
    pub term: Term,
}

impl Screen {
    pub fn enter() -> io::Result<Screen> {
        TUI_ACTIVE.store(true, Ordering::SeqCst);
        let setup = || -> io::Result<Term> {
            enable_raw_mode()?;
            execute!(io::stdout(), EnterAlternateScreen)?;
            let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            term.hide_cursor()?;
            term.clear()?;
            Ok(term)
        };
        match setup() {
            Ok(term) => Ok(Screen { term }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Whether stdout is a terminal.
pub fn stdout_is_tty() -> bool {
    is_tty(libc::STDOUT_FILENO)
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    is_tty(libc::STDIN_FILENO)
}

fn is_tty(fd: libc::c_int) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Sends each log record, as a line, to the dashboard's log.
struct LogPipe {
    sink: LineSink,
    buf: Vec<u8>,
}

/// Where log lines go in a terminal UI.
pub type LineSink = Box<dyn Fn(Line) + Send>;

impl Write for LogPipe {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if !text.is_empty() {
                (self.sink)(Line {
                    at: Instant::now(),
                    member: None,
                    tone: Tone::Log,
                    text,
                });
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Logging (`RUST_LOG`, default `warn`): into `to` when given (the terminal
/// UI owns the screen), else to stderr.
pub fn init_logging(to: Option<LineSink>) {
    use env_logger::{Builder, Env, Target};
    let mut b = Builder::from_env(Env::default().default_filter_or("warn"));
    b.format(|buf, record| {
        writeln!(
            buf,
            "{} {}: {}",
            record.level(),
            record.target(),
            record.args()
        )
    });
    if let Some(sink) = to {
        b.target(Target::Pipe(Box::new(LogPipe {
            sink,
            buf: Vec::new(),
        })));
        b.write_style(env_logger::WriteStyle::Never);
    }
    let _ = b.try_init();
}

/// Colours of members, by slot: distinct on a 256-colour terminal.
const PALETTE: [u8; 12] = [39, 208, 41, 171, 220, 45, 203, 118, 135, 214, 33, 162];

pub fn member_color(slot: usize) -> Color {
    Color::Indexed(PALETTE[slot % PALETTE.len()])
}

/// Colours of zones (`ringnode demo --zones`), by zone index, cycling:
/// few and far apart (blue, orange, green, purple, yellow, red, cyan, pink).
const ZONE_PALETTE: [u8; 8] = [33, 208, 40, 135, 226, 196, 51, 213];

pub fn zone_color(index: usize) -> Color {
    Color::Indexed(ZONE_PALETTE[index % ZONE_PALETTE.len()])
}

pub fn tone_style(tone: Tone) -> Style {
    match tone {
        Tone::Acquire => Style::new().fg(Color::Green),
        Tone::Release => Style::new().fg(Color::Yellow),
        Tone::Join => Style::new().fg(Color::Cyan),
        Tone::View => Style::new().fg(Color::DarkGray),
        Tone::Action => Style::new().fg(Color::White).add_modifier(Modifier::BOLD),
        Tone::Info => Style::new().fg(Color::Gray),
        Tone::Warn => Style::new().fg(Color::LightMagenta),
        Tone::Bad => Style::new().fg(Color::LightRed),
        Tone::Log => Style::new().fg(Color::DarkGray),
    }
}

/// Width of a log line's prefix: time and member.
const PREFIX: usize = 19;

/// One log line with colours (its member's from `colour` of its slot),
/// wrapped at `width` (continuations indented).
pub fn log_lines(
    l: &Line,
    start: Instant,
    width: usize,
    colour: &dyn Fn(usize) -> Color,
) -> Vec<TextLine<'static>> {
    let mut first = vec![Span::styled(
        format!("{:>8.3}s ", crate::util::since(start, l.at)),
        Style::new().fg(Color::DarkGray),
    )];
    match &l.member {
        Some((name, slot)) => first.push(Span::styled(
            format!("{name:<8} "),
            Style::new().fg(colour(*slot)).add_modifier(Modifier::BOLD),
        )),
        None => first.push(Span::raw(format!("{:<8} ", ""))),
    }
    let style = tone_style(l.tone);
    let room = width.saturating_sub(PREFIX).max(20);
    let mut out = Vec::new();
    let mut spans = Some(first);
    for chunk in wrap(&l.text, room) {
        let mut line = spans
            .take()
            .unwrap_or_else(|| vec![Span::raw(" ".repeat(PREFIX))]);
        line.push(Span::styled(chunk, style));
        out.push(TextLine::from(line));
    }
    out
}

/// Splits `text` into pieces of at most `width` characters, at spaces
/// where possible.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    for word in text.split(' ') {
        let w = word.chars().count();
        if len > 0 && len + 1 + w > width {
            out.push(std::mem::take(&mut line));
            len = 0;
        }
        if len > 0 {
            line.push(' ');
            len += 1;
        }
        let mut chars = word.chars().peekable();
        while chars.peek().is_some() {
            if len == width {
                out.push(std::mem::take(&mut line));
                len = 0;
            }
            line.push(chars.next().unwrap_or(' '));
            len += 1;
        }
    }
    out.push(line);
    out
}

/// The last lines of `log` (skipping the newest `skip` entries) that fill
/// `height` rows of `width` columns, oldest first; members in `colour` of
/// their slot.
pub fn log_tail<'a>(
    log: impl DoubleEndedIterator<Item = &'a Line>,
    skip: usize,
    start: Instant,
    width: usize,
    height: usize,
    colour: &dyn Fn(usize) -> Color,
) -> Vec<TextLine<'static>> {
    let mut rows: Vec<TextLine<'static>> = Vec::new();
    for l in log.rev().skip(skip) {
        let mut lines = log_lines(l, start, width, colour);
        if rows.len() + lines.len() > height {
            if rows.is_empty() {
                // Taller than the panel: its last rows.
                lines.drain(..lines.len() - height);
            } else {
                break; // no entry is shown without its first row
            }
        }
        lines.reverse();
        rows.extend(lines);
    }
    rows.reverse();
    rows
}

/// A member's one-character label: its slot in base 36.
pub fn slot_label(slot: usize) -> char {
    std::char::from_digit((slot % 36) as u32, 36).unwrap_or('#')
}

/// The ring as rows of cells, `width` cells a row, at most `max_rows` rows:
/// one partition a cell when it fits, else groups of partitions (a group
/// shows its first partition, unless one of them is flagged by `alarm`).
/// `paint` gets each cell and whether it starts a run of equal cells.
pub fn band<T: Copy + PartialEq>(
    cells: &[T],
    width: usize,
    max_rows: usize,
    alarm: impl Fn(T) -> bool,
    paint: impl Fn(T, bool) -> (char, Style),
) -> (Vec<TextLine<'static>>, usize) {
    let width = width.max(1);
    let per = cells.len().div_ceil(width * max_rows.max(1)).max(1);
    let groups: Vec<T> = cells
        .chunks(per)
        .map(|g| g.iter().copied().find(|c| alarm(*c)).unwrap_or(g[0]))
        .collect();
    let lines = groups
        .chunks(width)
        .enumerate()
        .map(|(r, row)| {
            let mut spans: Vec<Span<'static>> = Vec::new();
            let mut run = String::new();
            let mut run_style = Style::new();
            for (i, c) in row.iter().enumerate() {
                let k = r * width + i;
                let starts = k == 0 || groups[k - 1] != *c;
                let (ch, style) = paint(*c, starts);
                if style != run_style && !run.is_empty() {
                    spans.push(Span::styled(std::mem::take(&mut run), run_style));
                }
                run_style = style;
                run.push(ch);
            }
            if !run.is_empty() {
                spans.push(Span::styled(run, run_style));
            }
            TextLine::from(spans)
        })
        .collect();
    (lines, per)
}

/// Rows the band needs for `n` cells at `width`.
pub fn band_rows(n: usize, width: usize, max_rows: usize) -> usize {
    let width = width.max(1);
    let per = n.div_ceil(width * max_rows.max(1)).max(1);
    n.div_ceil(per).div_ceil(width).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping() {
        assert_eq!(wrap("ab cd ef", 5), vec!["ab cd", "ef"]);
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("", 3), vec![""]);
        assert!(wrap("a long line of words to wrap", 7)
            .iter()
            .all(|l| l.chars().count() <= 7));
    }

    #[test]
    fn bands_fit() {
        let cells: Vec<u8> = (0..1024).map(|i| (i / 100) as u8).collect();
        let (lines, per) = band(
            &cells,
            156,
            8,
            |_| false,
            |c, start| {
                (
                    if start { slot_label(c as usize) } else { '#' },
                    Style::new(),
                )
            },
        );
        assert_eq!((lines.len(), per), (band_rows(1024, 156, 8), 1));
        let (lines, per) = band(&cells, 10, 8, |c| c == 5, |_, _| ('x', Style::new()));
        assert_eq!(per, 13);
        assert!(lines.len() <= 8);
        assert_eq!(slot_label(11), 'b');
    }
}
