//! What the ring band says about partitions in handoff, or stuck behind a
//! member that cannot give them up, grouped by why (protocol version 2,
//! docs/protocol.md §4): a new owner taking its claims (milliseconds), a new owner
//! waiting for the claim another member still holds (a frozen or crashed
//! holder blocks exactly these, until its lease ends — whether or not it
//! still uses them), an old owner draining them (its work finishes first),
//! an owner that cannot use its own, or nobody in the ring.

use std::collections::BTreeMap;

/// How a member named in the band stands, as the demo knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Live,
    Joining,
    Paused,
    Leaving,
    Crashed,
    /// Not one of the demo's members (a member of an earlier run on a
    /// shared database), or forgotten after its crash.
    Gone,
}

/// Why a partition is in handoff, or not used by anyone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    /// Assigned to `owner`, which is taking its claim: the usual few
    /// milliseconds of a handoff.
    Taking { owner: String },
    /// Assigned to `owner`, whose take found the claim held by `holder`
    /// (empty: locked by another member's take in flight) — which may
    /// still be using it, if it is frozen with its local lease running.
    Claim {
        owner: String,
        holder: String,
        state: State,
    },
    /// Released by `holder` (in `state`), whose worker is still finishing
    /// its unit of work on it; `owner` takes it next (when another member).
    Drain {
        holder: String,
        state: State,
        owner: Option<String>,
    },
    /// Assigned to `owner`, which cannot use it (paused and fenced,
    /// crashed, leaving).
    Stranded { owner: String, state: State },
    /// No member in the ring (as far as the running members know).
    Unowned,
}

/// "waiting for node-4's claim": what a new owner waits for, also in
/// `ringnode node`'s view.
pub fn waiting_for_claim(holder: &str) -> String {
    if holder.is_empty() {
        "waiting for a claim another member's take has locked".to_string()
    } else {
        format!("waiting for {holder}'s claim")
    }
}

/// Until when a member in `state` keeps what it holds.
fn until(state: State) -> &'static str {
    match state {
        State::Live | State::Joining => "",
        State::Paused => " (paused: until it wakes up or its lease ends)",
        State::Crashed => " (crashed: until its lease ends)",
        State::Leaving => " (leaving)",
        State::Gone => " (gone: until its lease ends)",
    }
}

/// One group, as text: `60 → node-5: waiting for node-4's claim (paused: …)`.
pub fn describe(why: &Why, count: u32) -> String {
    match why {
        Why::Taking { owner } => format!("{count} → {owner}: taking their claims"),
        Why::Claim {
            owner,
            holder,
            state,
        } => format!(
            "{count} → {owner}: {}{}",
            waiting_for_claim(holder),
            if holder.is_empty() { "" } else { until(*state) }
        ),
        Why::Drain {
            holder,
            owner: Some(owner),
            ..
        } if owner != holder => {
            format!("{count} → {owner}: {holder} is draining them (its unit of work ends first)")
        }
        // Its own still, in the newest view: a graceful stop drains first.
        Why::Drain { holder, state, .. } => format!(
            "{count} on {holder}: draining{} (its unit of work ends first)",
            if *state == State::Leaving {
                " before it leaves"
            } else {
                ""
            }
        ),
        Why::Stranded { owner, state } => {
            let what = match state {
                State::Paused => "paused and fenced: until it wakes up or its lease ends",
                State::Crashed => "crashed: until its lease ends",
                State::Leaving => "leaving",
                State::Live | State::Joining | State::Gone => "not using them",
            };
            format!("{count} on {owner}: unused ({what})")
        }
        Why::Unowned => format!("{count} unowned: no member in the ring"),
    }
}

/// Counts partitions by why.
#[derive(Debug, Default)]
pub struct Stalls(BTreeMap<Why, u32>);

impl Stalls {
    pub fn add(&mut self, why: Why) {
        *self.0.entry(why).or_default() += 1;
    }

    /// Partitions whose new owner waits for another member's claim
    /// (whether or not the holder still uses them).
    pub fn claim_waits(&self) -> u32 {
        self.0
            .iter()
            .filter(|(w, _)| matches!(w, Why::Claim { .. }))
            .map(|(_, n)| *n)
            .sum()
    }

    /// What the band says under its cells: the groups, or that all
    /// `ring_size` partitions are active.
    pub fn text(&self, ring_size: u32) -> Vec<String> {
        let lines = self.lines();
        if lines.is_empty() {
            vec![format!("all {ring_size} partitions active")]
        } else {
            lines
        }
    }

    /// The groups as text, largest first (ties in a fixed order).
    pub fn lines(&self) -> Vec<String> {
        let mut groups: Vec<(&Why, u32)> = self.0.iter().map(|(w, n)| (w, *n)).collect();
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        groups.into_iter().map(|(w, n)| describe(w, n)).collect()
    }
}

/// The groups joined by ` · `, wrapped at `width` into at most `rows` rows;
/// what does not fit is cut, and the last row then ends with `…`.
pub fn fit(groups: &[String], width: usize, rows: usize) -> Vec<String> {
    let width = width.max(2);
    let mut lines = crate::ui::wrap(&groups.join(" · "), width);
    if lines.len() > rows {
        lines.truncate(rows.max(1));
        if let Some(last) = lines.last_mut() {
            let keep: String = last.chars().take(width - 2).collect();
            *last = format!("{} …", keep.trim_end());
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn every_why_reads_as_a_sentence() {
        let claim = |holder: &str, state| Why::Claim {
            owner: s("node-5"),
            holder: s(holder),
            state,
        };
        let drain = |owner: &str, state| Why::Drain {
            holder: s("node-1"),
            state,
            owner: Some(s(owner)),
        };
        let cases = [
            (
                claim("node-4", State::Paused),
                60,
                "60 → node-5: waiting for node-4's claim (paused: until it wakes up or its lease ends)",
            ),
            (
                claim("node-4", State::Live),
                3,
                "3 → node-5: waiting for node-4's claim",
            ),
            (
                claim("node-9", State::Crashed),
                1,
                "1 → node-5: waiting for node-9's claim (crashed: until its lease ends)",
            ),
            (
                claim("", State::Gone),
                2,
                "2 → node-5: waiting for a claim another member's take has locked",
            ),
            (
                Why::Taking { owner: s("node-2") },
                128,
                "128 → node-2: taking their claims",
            ),
            (
                drain("node-3", State::Live),
                12,
                "12 → node-3: node-1 is draining them (its unit of work ends first)",
            ),
            (
                drain("node-1", State::Leaving),
                7,
                "7 on node-1: draining before it leaves (its unit of work ends first)",
            ),
            (
                Why::Stranded {
                    owner: s("node-4"),
                    state: State::Paused,
                },
                200,
                "200 on node-4: unused (paused and fenced: until it wakes up or its lease ends)",
            ),
            (Why::Unowned, 8, "8 unowned: no member in the ring"),
        ];
        for (why, count, text) in cases {
            assert_eq!(describe(&why, count), text, "{why:?}");
        }
    }

    #[test]
    fn groups_are_counted_largest_first() {
        let mut st = Stalls::default();
        let wait = Why::Claim {
            owner: s("node-1"),
            holder: s("node-0"),
            state: State::Paused,
        };
        let stranded = Why::Stranded {
            owner: s("node-0"),
            state: State::Paused,
        };
        for _ in 0..3 {
            st.add(wait.clone());
        }
        st.add(stranded.clone());
        st.add(Why::Taking { owner: s("node-2") });
        assert_eq!(st.claim_waits(), 3);
        let lines = st.lines();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("3 → node-1: waiting for node-0's claim"),
            "{lines:?}"
        );
        // Equal counts: in the order of the kinds (taking before stranded).
        assert_eq!(lines[1], "1 → node-2: taking their claims");
        assert!(lines[2].starts_with("1 on node-0: unused"), "{lines:?}");
        assert!(Stalls::default().lines().is_empty());
        assert_eq!(
            Stalls::default().text(1024),
            vec!["all 1024 partitions active"]
        );
    }

    #[test]
    fn the_text_fits_its_rows() {
        let groups = vec![
            s("60 → node-5: waiting for node-4's claim"),
            s("3 → node-1: taking their claims"),
        ];
        assert_eq!(
            fit(&groups, 80, 2),
            vec!["60 → node-5: waiting for node-4's claim · 3 → node-1: taking their claims"]
        );
        let rows = fit(&groups, 30, 2);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.chars().count() <= 30), "{rows:?}");
        assert!(rows[1].ends_with(" …"), "{rows:?}");
        assert_eq!(fit(&[], 30, 2), vec![""]);
    }
}
