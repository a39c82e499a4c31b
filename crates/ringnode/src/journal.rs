//! The story of a run: members' events and the demo's actions become log
//! lines (with handoff durations), feed the overlap [`Checker`], and count
//! handoffs.
//!
//! Events of different members reach us on different threads, so they are
//! held for a short window and processed in the order of their `at`: a new
//! owner's `Acquired` then comes after the old owner's `Released`, and the
//! gap between them is the handoff's duration. Events stamped long before
//! they arrive (a paused member's release is stamped at its lease deadline)
//! are processed when they come, and say so. With `--drain`, the end of
//! each drain (the old owner's worker done with the released partitions) is
//! an item too: a handoff line then says how much of its time was the drain.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leasering::{Event, ReleaseReason};

use crate::checker::Checker;
use crate::util::human;
use crate::work::Drained;

/// How long events wait for earlier-stamped events of other members.
pub const REORDER_WINDOW: Duration = Duration::from_millis(60);

/// What a line is about, for colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Acquire,
    Release,
    Join,
    View,
    Action,
    Info,
    Warn,
    Bad,
    Log,
}

/// One line of the log.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    /// Member name and colour slot.
    pub member: Option<(String, usize)>,
    pub tone: Tone,
    pub text: String,
}

impl Line {
    pub fn plain(&self, start: Instant) -> String {
        let who = self.member.as_ref().map(|m| m.0.as_str()).unwrap_or("");
        format!(
            "{:>8.3}s {:<8} {}",
            crate::util::since(start, self.at),
            who,
            self.text
        )
    }
}

/// Why a member is going away, as the demo knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    None,
    Crashed,
    Leaving,
}

struct Book {
    joined_at: Option<Instant>,
    awaiting_first: bool,
    last_token: Option<u64>,
    label: Label,
}

enum Item {
    Event {
        member: String,
        slot: usize,
        event: Event,
        recv: Instant,
    },
    Line(Line),
    Drained {
        member: String,
        slot: usize,
        drained: Drained,
    },
}

impl Item {
    fn at(&self) -> Instant {
        match self {
            Item::Event { event, .. } => event.at(),
            Item::Line(l) => l.at,
            Item::Drained { drained, .. } => drained.at,
        }
    }
}

pub struct Journal {
    checker: Checker,
    books: HashMap<String, Book>,
    /// Per partition: the member that activated it last, and when.
    owner: Vec<Option<(String, Instant)>>,
    /// Per partition: the last release (member, when, why).
    last_release: Vec<Option<(String, Instant, &'static str)>>,
    /// Per partition: the end of the last drain (member, when).
    last_drain: Vec<Option<(String, Instant)>>,
    buffer: Vec<(u64, Item)>,
    seq: u64,
    handoffs: u64,
    gaps: Vec<Duration>,
    /// Show `ViewChanged` events.
    pub show_views: bool,
}

impl Journal {
    pub fn new(ring_size: u32, start: Instant) -> Journal {
        Journal {
            checker: Checker::new(start),
            books: HashMap::new(),
            owner: vec![None; ring_size as usize],
            last_release: vec![None; ring_size as usize],
            last_drain: vec![None; ring_size as usize],
            buffer: Vec::new(),
            seq: 0,
            handoffs: 0,
            gaps: Vec::new(),
            show_views: true,
        }
    }

    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// Acquisitions that took partitions over from another member.
    pub fn handoffs(&self) -> u64 {
        self.handoffs
    }

    /// Median and maximum handoff gap (old owner's release to new owner's
    /// activation), over handoffs whose both ends are known.
    pub fn gap_stats(&self) -> Option<(Duration, Duration)> {
        let mut g = self.gaps.clone();
        if g.is_empty() {
            return None;
        }
        g.sort_unstable();
        Some((g[g.len() / 2], g[g.len() - 1]))
    }

    /// The last fencing token a member acquired with.
    pub fn last_token(&self, member: &str) -> Option<u64> {
        self.books.get(member).and_then(|b| b.last_token)
    }

    /// Tells how a member is going away, for its `Released` line.
    pub fn label(&mut self, member: &str, label: Label) {
        self.book(member).label = label;
    }

    fn book(&mut self, member: &str) -> &mut Book {
        self.books.entry(member.to_string()).or_insert(Book {
            joined_at: None,
            awaiting_first: false,
            last_token: None,
            label: Label::None,
        })
    }

    pub fn push_event(&mut self, member: String, slot: usize, event: Event, recv: Instant) {
        self.seq += 1;
        self.buffer.push((
            self.seq,
            Item::Event {
                member,
                slot,
                event,
                recv,
            },
        ));
    }

    pub fn push_line(&mut self, line: Line) {
        self.seq += 1;
        self.buffer.push((self.seq, Item::Line(line)));
    }

    /// A member's worker ended a drain.
    pub fn push_drained(&mut self, member: String, slot: usize, drained: Drained) {
        self.seq += 1;
        self.buffer.push((
            self.seq,
            Item::Drained {
                member,
                slot,
                drained,
            },
        ));
    }

    /// Processes everything stamped before `now − REORDER_WINDOW` (or
    /// everything, with `flush`), in time order; returns the lines.
    pub fn drain(&mut self, now: Instant, flush: bool) -> Vec<Line> {
        let cutoff = now.checked_sub(REORDER_WINDOW).unwrap_or(now);
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        for (seq, item) in self.buffer.drain(..) {
            if flush || item.at() <= cutoff {
                ready.push((seq, item));
            } else {
                keep.push((seq, item));
            }
        }
        self.buffer = keep;
        ready.sort_by_key(|(seq, item)| (item.at(), *seq));
        let mut out = Vec::new();
        for (_, item) in ready {
            match item {
                Item::Line(l) => out.push(l),
                Item::Event {
                    member,
                    slot,
                    event,
                    recv,
                } => {
                    if let Some(l) = self.process(&member, slot, event, recv) {
                        out.push(l);
                    }
                }
                Item::Drained {
                    member,
                    slot,
                    drained,
                } => out.push(self.drained(member, slot, drained)),
            }
        }
        out
    }

    fn process(&mut self, member: &str, slot: usize, event: Event, recv: Instant) -> Option<Line> {
        let line = |tone, text| Line {
            at: event.at(),
            member: Some((member.to_string(), slot)),
            tone,
            text,
        };
        match &event {
            Event::Acquired {
                partitions,
                token,
                at,
                ..
            } => {
                self.checker.acquired(member, partitions, *token, *at);
                let text = self.acquired(member, partitions, *token, *at);
                Some(line(Tone::Acquire, text))
            }
            Event::Released {
                partitions,
                reason,
                at,
                ..
            } => {
                self.checker.released(member, partitions, *at);
                let (text, tone) = self.released(member, partitions, *reason, *at, recv);
                Some(line(tone, text))
            }
            Event::Joined {
                epoch,
                positions,
                at,
                ..
            } => {
                let book = self.book(member);
                let again = book.joined_at.is_some();
                book.joined_at = Some(*at);
                book.awaiting_first = true;
                let text = if again {
                    format!(
                        "rejoined at epoch {epoch} with {} vnodes (its lease had been removed from the database)",
                        positions.len()
                    )
                } else {
                    format!("joined at epoch {epoch} with {} vnodes", positions.len())
                };
                Some(line(Tone::Join, text))
            }
            Event::ViewChanged { epoch, members, .. } => self.show_views.then(|| {
                line(
                    Tone::View,
                    format!("view: epoch {epoch}, {members} members"),
                )
            }),
            _ => None,
        }
    }

    fn acquired(&mut self, member: &str, partitions: &[u32], token: u64, at: Instant) -> String {
        // Per previous owner: (partitions, min gap, max gap, unknown, why,
        // longest drain).
        struct From {
            count: usize,
            min: Option<Duration>,
            max: Option<Duration>,
            unknown: usize,
            why: &'static str,
            drain: Option<Duration>,
        }
        let mut from: Vec<(String, From)> = Vec::new();
        let mut fresh = 0usize;
        let mut again = 0usize;
        for &p in partitions {
            let Some(slot_owner) = self.owner.get_mut(p as usize) else {
                continue;
            };
            let prev = slot_owner.replace((member.to_string(), at));
            match prev {
                Some((o, _)) if o != member => {
                    let rel = self.last_release[p as usize]
                        .as_ref()
                        .filter(|(r, rat, _)| *r == o && *rat <= at);
                    let idx = match from.iter().position(|(n, _)| *n == o) {
                        Some(i) => i,
                        None => {
                            from.push((
                                o.clone(),
                                From {
                                    count: 0,
                                    min: None,
                                    max: None,
                                    unknown: 0,
                                    why: "",
                                    drain: None,
                                },
                            ));
                            from.len() - 1
                        }
                    };
                    let f = &mut from[idx].1;
                    f.count += 1;
                    match rel {
                        Some((_, rat, why)) => {
                            let gap = at - *rat;
                            f.min = Some(f.min.map_or(gap, |m| m.min(gap)));
                            f.max = Some(f.max.map_or(gap, |m| m.max(gap)));
                            f.why = why;
                            // The old owner's drain of this release, if any.
                            let drain = self.last_drain[p as usize]
                                .as_ref()
                                .filter(|(d, dat)| *d == o && *rat <= *dat && *dat <= at)
                                .map(|(_, dat)| *dat - *rat);
                            if let Some(d) = drain {
                                f.drain = Some(f.drain.map_or(d, |m| m.max(d)));
                            }
                        }
                        None => f.unknown += 1,
                    }
                }
                Some(_) => again += 1,
                None => fresh += 1,
            }
        }
        let book = self.book(member);
        book.last_token = Some(token);
        let after_join = if book.awaiting_first {
            book.awaiting_first = false;
            book.joined_at.map(|j| at.saturating_duration_since(j))
        } else {
            None
        };
        let mut text = format!("+{} acquired, token {token}", partitions.len());
        if let Some(d) = after_join {
            text.push_str(&format!(" — {} after its join", human(d)));
        }
        let mut parts = Vec::new();
        for (o, f) in &from {
            let mut s = format!("{} from {o}", f.count);
            if !f.why.is_empty() {
                s.push_str(&format!(" ({})", f.why));
            } else if f.unknown == f.count {
                s.push_str(" (paused? it has not reported releasing them yet)");
            }
            match (f.min, f.max) {
                (Some(a), Some(b)) if human(a) == human(b) => {
                    s.push_str(&format!(", handoff {}", human(b)))
                }
                (Some(a), Some(b)) => s.push_str(&format!(", handoff {}–{}", human(a), human(b))),
                _ => {}
            }
            if let Some(d) = f.drain {
                s.push_str(&format!(" ({} of it {o}'s drain)", human(d)));
            }
            if f.unknown > 0 && f.unknown < f.count {
                s.push_str(&format!(
                    ", {} whose release {o} has not reported yet (paused?)",
                    f.unknown
                ));
            }
            parts.push(s);
            if let Some(max) = f.max {
                self.gaps.push(max);
            }
        }
        if fresh > 0 {
            parts.push(format!("{fresh} never owned before"));
        }
        if again > 0 {
            parts.push(format!("{again} back again"));
        }
        if !from.is_empty() {
            self.handoffs += 1;
        }
        if !parts.is_empty() {
            text.push_str(": ");
            text.push_str(&parts.join("; "));
        }
        text
    }

    fn drained(&mut self, member: String, slot: usize, d: Drained) -> Line {
        for &p in &d.partitions {
            if let Some(last) = self.last_drain.get_mut(p as usize) {
                *last = Some((member.clone(), d.at));
            }
        }
        let took = human(d.at.saturating_duration_since(d.released));
        let n = d.partitions.len();
        let (tone, text) = if d.cut {
            (
                Tone::Warn,
                format!("{n} drain cut short after {took}: their work stops now"),
            )
        } else {
            (
                Tone::Release,
                format!("{n} drained: the unit of work ended {took} after their release, their claims go back"),
            )
        };
        Line {
            at: d.at,
            member: Some((member, slot)),
            tone,
            text,
        }
    }

    fn released(
        &mut self,
        member: &str,
        partitions: &[u32],
        reason: ReleaseReason,
        at: Instant,
        recv: Instant,
    ) -> (String, Tone) {
        let label = self.book(member).label;
        let (why, tone): (&'static str, Tone) = match reason {
            ReleaseReason::Handoff => ("handoff", Tone::Release),
            ReleaseReason::LeaseExpired => ("lease expired", Tone::Warn),
            ReleaseReason::Evicted => ("evicted", Tone::Warn),
            ReleaseReason::Stopping => match label {
                Label::Crashed => ("crash", Tone::Bad),
                Label::Leaving => ("leave", Tone::Release),
                Label::None => ("stop", Tone::Release),
            },
            _ => ("released", Tone::Release),
        };
        let mut taken_after: Vec<Duration> = Vec::new();
        for &p in partitions {
            if let Some(slot) = self.last_release.get_mut(p as usize) {
                *slot = Some((member.to_string(), at, why));
            }
            if let Some(Some((o, oat))) = self.owner.get(p as usize) {
                if o != member && *oat >= at {
                    taken_after.push(*oat - at);
                }
            }
        }
        let mut text = format!("−{} released ({why})", partitions.len());
        match (reason, label) {
            (ReleaseReason::Stopping, Label::Crashed) => text.push_str(
                ": crashed without leaving; they wait until its lease ends in the database",
            ),
            (ReleaseReason::LeaseExpired, _) => {
                text.push_str(": its local lease ran out, it fenced itself")
            }
            _ => {}
        }
        let late = recv.saturating_duration_since(at);
        if late > Duration::from_millis(200) {
            text.push_str(&format!(
                "; stamped at its lease deadline, reported {} later",
                human(late)
            ));
        }
        if !taken_after.is_empty() {
            taken_after.sort_unstable();
            let (a, b) = (taken_after[0], taken_after[taken_after.len() - 1]);
            text.push_str(&format!(
                "; {} already taken over {}–{} after that deadline",
                taken_after.len(),
                human(a),
                human(b)
            ));
            self.gaps.push(b);
        }
        (text, tone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_is_counted_with_its_gap() {
        let s = Instant::now();
        let mut j = Journal::new(8, s);
        let ms = |n| s + Duration::from_millis(n);
        j.push_event(
            "node-0".into(),
            0,
            Event::Acquired {
                partitions: (0..8).collect(),
                token: 1,
                epoch: 1,
                at: ms(1),
            },
            ms(1),
        );
        // The new owner's acquisition arrives before the old owner's release.
        j.push_event(
            "node-1".into(),
            1,
            Event::Acquired {
                partitions: vec![0, 1, 2, 3],
                token: 2,
                epoch: 2,
                at: ms(12),
            },
            ms(12),
        );
        j.push_event(
            "node-0".into(),
            0,
            Event::Released {
                partitions: vec![0, 1, 2, 3],
                reason: ReleaseReason::Handoff,
                epoch: 2,
                at: ms(10),
                drain: None,
            },
            ms(13),
        );
        let lines = j.drain(ms(1000), false);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[2]
                .text
                .contains("4 from node-0 (handoff), handoff 2.00 ms"),
            "{}",
            lines[2].text
        );
        assert_eq!(j.handoffs(), 1);
        assert_eq!(j.checker().overlaps(), 0);
        assert_eq!(j.last_token("node-1"), Some(2));
    }

    #[test]
    fn a_drained_handoff_says_how_long_the_drain_took() {
        let s = Instant::now();
        let mut j = Journal::new(4, s);
        let ms = |n| s + Duration::from_millis(n);
        let event = |member: &str, slot, event: Event| (member.to_string(), slot, event);
        for (member, slot, ev) in [
            event(
                "node-0",
                0,
                Event::Acquired {
                    partitions: vec![0, 1, 2, 3],
                    token: 1,
                    epoch: 1,
                    at: ms(1),
                },
            ),
            event(
                "node-0",
                0,
                Event::Released {
                    partitions: vec![2, 3],
                    reason: ReleaseReason::Handoff,
                    epoch: 2,
                    at: ms(10),
                    drain: None,
                },
            ),
            event(
                "node-1",
                1,
                Event::Acquired {
                    partitions: vec![2, 3],
                    token: 2,
                    epoch: 2,
                    at: ms(315),
                },
            ),
        ] {
            let at = ev.at();
            j.push_event(member, slot, ev, at);
        }
        j.push_drained(
            "node-0".into(),
            0,
            Drained {
                partitions: vec![2, 3],
                released: ms(10),
                at: ms(310),
                cut: false,
            },
        );
        let lines = j.drain(ms(1000), false);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(lines.len(), 4, "{texts:?}");
        assert_eq!(
            texts[2],
            "2 drained: the unit of work ended 300 ms after their release, their claims go back"
        );
        assert!(
            texts[3]
                .ends_with("2 from node-0 (handoff), handoff 305 ms (300 ms of it node-0's drain)"),
            "{texts:?}"
        );
    }
}
