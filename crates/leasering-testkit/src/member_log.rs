//! The log format of the member process (`leasering-member`, this crate's
//! bin), written and parsed in one place:
//! ownership events, units of user work and fenced writes, one line each,
//! every time in CLOCK_MONOTONIC nanoseconds.
//!
//! ```text
//! <mono_ns> joined <epoch>
//! <mono_ns> acquired <token> <epoch> <p,p,...>
//! <mono_ns> released <reason> <epoch> <p,p,...>[ drain]
//! <mono_ns> view <epoch> <members>
//! <mono_ns> work-start <p,p,...>
//! <mono_ns> work-end <p,p,...>[ cut]
//! <t0_ns> wrote <t1_ns> <accepted p:token,...|-> <rejected p:token,...|->
//! ```
//!
//! `drain` marks a release that handed the user a drain guard (docs/protocol.md §4
//! rule 7): its claims are given back only when the user's work on them has
//! stopped. The work lines are the drain workload's
//! ([`worker`](crate::worker)): a unit of work on those partitions began
//! (read right *after* the `owned_partitions()` snapshot that listed them)
//! or ended (read *before* the unit's drain guards are dropped). `cut` marks
//! work that did not end on its own: stopped at once by a release that
//! cannot wait (`LeaseExpired`, `Evicted`, a release without a drain), or
//! found at its end to have outlived the member's local lease. Lines
//! written before these fields existed parse as before (no `drain`, no
//! `cut`).
//!
//! This file uses nothing outside `std`: the member process, a bin of the
//! library that cannot use the library's dev-dependencies, compiles it in
//! through `#[path]` to write its lines; the tests and benches parse them
//! through `leasering_testkit::member_log`.

use std::fmt;

/// One line of a member's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Joined {
        at: u64,
        epoch: u64,
    },
    Acquired {
        at: u64,
        token: u64,
        epoch: u64,
        parts: Vec<u32>,
    },
    Released {
        at: u64,
        reason: String,
        epoch: u64,
        parts: Vec<u32>,
        /// A drain guard came with it.
        drain: bool,
    },
    View {
        at: u64,
        epoch: u64,
        members: u32,
    },
    /// A unit of user work on these partitions began.
    WorkStart {
        at: u64,
        parts: Vec<u32>,
    },
    /// The work on these partitions ended; `cut`: it was stopped (or found
    /// to have outlived the lease), it did not finish on its own.
    WorkEnd {
        at: u64,
        parts: Vec<u32>,
        cut: bool,
    },
}

impl Ev {
    /// When it happened.
    pub fn at(&self) -> u64 {
        match self {
            Ev::Joined { at, .. }
            | Ev::Acquired { at, .. }
            | Ev::Released { at, .. }
            | Ev::View { at, .. }
            | Ev::WorkStart { at, .. }
            | Ev::WorkEnd { at, .. } => *at,
        }
    }

    /// A unit-of-work line (not an ownership record).
    pub fn is_work(&self) -> bool {
        matches!(self, Ev::WorkStart { .. } | Ev::WorkEnd { .. })
    }
}

/// One fenced write of a member: `t0` read before it took its
/// `owned_partitions()` snapshot, `t1` after the database answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRec {
    pub t0: u64,
    pub t1: u64,
    pub accepted: Vec<(u32, u64)>,
    pub rejected: Vec<(u32, u64)>,
}

struct Csv<'a>(&'a [u32]);

impl fmt::Display for Csv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

struct Pairs<'a>(&'a [(u32, u64)]);

impl fmt::Display for Pairs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, (p, t)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{t}")?;
        }
        Ok(())
    }
}

/// The line of an event, without its newline.
impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ev::Joined { at, epoch } => write!(f, "{at} joined {epoch}"),
            Ev::Acquired {
                at,
                token,
                epoch,
                parts,
            } => write!(f, "{at} acquired {token} {epoch} {}", Csv(parts)),
            Ev::Released {
                at,
                reason,
                epoch,
                parts,
                drain,
            } => {
                write!(f, "{at} released {reason} {epoch} {}", Csv(parts))?;
                if *drain {
                    f.write_str(" drain")?;
                }
                Ok(())
            }
            Ev::View { at, epoch, members } => write!(f, "{at} view {epoch} {members}"),
            Ev::WorkStart { at, parts } => write!(f, "{at} work-start {}", Csv(parts)),
            Ev::WorkEnd { at, parts, cut } => {
                write!(f, "{at} work-end {}", Csv(parts))?;
                if *cut {
                    f.write_str(" cut")?;
                }
                Ok(())
            }
        }
    }
}

/// The line of a write, without its newline.
impl fmt::Display for WriteRec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} wrote {} {} {}",
            self.t0,
            self.t1,
            Pairs(&self.accepted),
            Pairs(&self.rejected)
        )
    }
}

fn num<T: std::str::FromStr>(s: Option<&str>, what: &str) -> Result<T, String> {
    let s = s.ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

fn parts(s: Option<&str>) -> Result<Vec<u32>, String> {
    match s {
        None | Some("") => Ok(Vec::new()),
        Some(s) => s.split(',').map(|p| num(Some(p), "partition")).collect(),
    }
}

fn pairs(s: Option<&str>) -> Result<Vec<(u32, u64)>, String> {
    match s {
        None => Err("missing write list".into()),
        Some("-") => Ok(Vec::new()),
        Some(s) => s
            .split(',')
            .map(|pt| {
                let (p, t) = pt
                    .split_once(':')
                    .ok_or_else(|| format!("bad write {pt:?}"))?;
                Ok((num(Some(p), "partition")?, num(Some(t), "token")?))
            })
            .collect(),
    }
}

/// An optional last field: `Ok(true)` if it is `word`, `Ok(false)` if there
/// is none.
fn flag(s: Option<&str>, word: &str) -> Result<bool, String> {
    match s {
        None => Ok(false),
        Some(w) if w == word => Ok(true),
        Some(w) => Err(format!("unexpected {w:?} (only {word:?} may follow)")),
    }
}

/// Parses one event line.
pub fn parse_event(line: &str) -> Result<Ev, String> {
    let mut f = line.split(' ');
    let at = num(f.next(), "timestamp")?;
    let ev = match f.next() {
        Some("joined") => Ev::Joined {
            at,
            epoch: num(f.next(), "epoch")?,
        },
        Some("acquired") => Ev::Acquired {
            at,
            token: num(f.next(), "token")?,
            epoch: num(f.next(), "epoch")?,
            parts: parts(f.next())?,
        },
        Some("released") => Ev::Released {
            at,
            reason: f.next().ok_or("missing reason")?.to_string(),
            epoch: num(f.next(), "epoch")?,
            parts: parts(f.next())?,
            drain: flag(f.next(), "drain")?,
        },
        Some("view") => Ev::View {
            at,
            epoch: num(f.next(), "epoch")?,
            members: num(f.next(), "member count")?,
        },
        Some("work-start") => Ev::WorkStart {
            at,
            parts: parts(f.next())?,
        },
        Some("work-end") => Ev::WorkEnd {
            at,
            parts: parts(f.next())?,
            cut: flag(f.next(), "cut")?,
        },
        other => return Err(format!("unknown event {other:?}")),
    };
    match f.next() {
        None => Ok(ev),
        Some(extra) => Err(format!("unexpected {extra:?} at the end")),
    }
}

/// Parses one write line.
pub fn parse_write(line: &str) -> Result<WriteRec, String> {
    let mut f = line.split(' ');
    let t0 = num(f.next(), "t0")?;
    if f.next() != Some("wrote") {
        return Err("not a write".into());
    }
    Ok(WriteRec {
        t0,
        t1: num(f.next(), "t1")?,
        accepted: pairs(f.next())?,
        rejected: pairs(f.next())?,
    })
}

/// The complete lines of a log: a last line without its newline (the
/// process was killed while writing it) is left out.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines().filter(|l| !l.trim().is_empty())
}

/// Parses a whole event log; malformed lines are returned as errors.
pub fn parse_events(text: &str) -> (Vec<Ev>, Vec<String>) {
    let (mut evs, mut errs) = (Vec::new(), Vec::new());
    for l in complete_lines(text) {
        match parse_event(l) {
            Ok(e) => evs.push(e),
            Err(e) => errs.push(format!("{e} in {l:?}")),
        }
    }
    (evs, errs)
}

/// Parses a whole write log; malformed lines are returned as errors.
pub fn parse_writes(text: &str) -> (Vec<WriteRec>, Vec<String>) {
    let (mut ws, mut errs) = (Vec::new(), Vec::new());
    for l in complete_lines(text) {
        match parse_write(l) {
            Ok(w) => ws.push(w),
            Err(e) => errs.push(format!("{e} in {l:?}")),
        }
    }
    (ws, errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_parse() {
        assert_eq!(
            parse_event("10 joined 3"),
            Ok(Ev::Joined { at: 10, epoch: 3 })
        );
        assert_eq!(
            parse_event("11 acquired 3 4 1,2,5"),
            Ok(Ev::Acquired {
                at: 11,
                token: 3,
                epoch: 4,
                parts: vec![1, 2, 5]
            })
        );
        assert_eq!(
            parse_event("12 released LeaseExpired 4 7"),
            Ok(Ev::Released {
                at: 12,
                reason: "LeaseExpired".into(),
                epoch: 4,
                parts: vec![7],
                drain: false
            })
        );
        assert_eq!(
            parse_event("12 released Handoff 4 7,8 drain"),
            Ok(Ev::Released {
                at: 12,
                reason: "Handoff".into(),
                epoch: 4,
                parts: vec![7, 8],
                drain: true
            })
        );
        assert_eq!(
            parse_event("14 work-start 1,5"),
            Ok(Ev::WorkStart {
                at: 14,
                parts: vec![1, 5]
            })
        );
        assert_eq!(
            parse_event("15 work-end 5"),
            Ok(Ev::WorkEnd {
                at: 15,
                parts: vec![5],
                cut: false
            })
        );
        assert_eq!(
            parse_event("16 work-end 1 cut"),
            Ok(Ev::WorkEnd {
                at: 16,
                parts: vec![1],
                cut: true
            })
        );
        assert!(parse_event("12 released Handoff 4 7 drained").is_err());
        assert!(parse_event("16 work-end 1 cut now").is_err());
        assert!(parse_event("16 work-start 1,y").is_err());
        assert_eq!(
            parse_event("13 view 5 3"),
            Ok(Ev::View {
                at: 13,
                epoch: 5,
                members: 3
            })
        );
        assert!(parse_event("x joined 1").is_err());
        assert!(parse_event("1 acquired 2 3 4,x").is_err());
        assert!(parse_event("1 flew 2").is_err());
    }

    #[test]
    fn write_lines_parse() {
        assert_eq!(
            parse_write("5 wrote 9 1:3,2:3 -"),
            Ok(WriteRec {
                t0: 5,
                t1: 9,
                accepted: vec![(1, 3), (2, 3)],
                rejected: vec![]
            })
        );
        assert_eq!(
            parse_write("5 wrote 9 - 4:2").unwrap().rejected,
            vec![(4, 2)]
        );
        assert!(parse_write("5 wrote 9 1:3").is_err());
        assert!(parse_write("5 wrote 9 13 -").is_err());
    }

    #[test]
    fn what_is_written_parses_back() {
        for line in [
            "10 joined 3",
            "11 acquired 3 4 1,2,5",
            "12 released Stopping 4 7",
            "12 released Handoff 4 7,9 drain",
            "13 view 5 3",
            "14 work-start 1,2",
            "15 work-end 2",
            "16 work-end 1 cut",
        ] {
            assert_eq!(parse_event(line).unwrap().to_string(), line);
        }
        for line in ["5 wrote 9 1:3,2:3 -", "5 wrote 9 - -", "6 wrote 8 - 4:2"] {
            assert_eq!(parse_write(line).unwrap().to_string(), line);
        }
    }

    #[test]
    fn a_line_cut_by_a_kill_is_left_out() {
        let (evs, errs) = parse_events("10 joined 3\n11 acquired 3 3 1,2\n12 relea");
        assert_eq!(evs.len(), 2);
        assert!(errs.is_empty());
        assert_eq!(parse_events("").0.len(), 0);
        assert_eq!(parse_events("12 relea").0.len(), 0);
    }
}
