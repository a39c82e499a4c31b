//! The NOTIFY payloads of a ring's channel (pure): the membership changes
//! of one transaction — their epochs and, where they fit, the changes
//! themselves, so that members apply them without a read; one NOTIFY per
//! transaction, however many members it adds — and a release of claims,
//! naming the partitions, so that members waiting for them take them at
//! once.

use crate::protocol::input::Notice;
use crate::ring::Change;

/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
pub(crate) const MAX_PAYLOAD: usize = 7900;

/// The one NOTIFY payload of a transaction that recorded `changes` (each
/// one [`notify_payload`], in epoch order): all of them, separated by a
/// newline, when they fit; else the last epoch alone (members read the
/// change log).
pub(crate) fn transaction_payload(changes: &[String]) -> String {
    let joined = changes.join("\n");
    if joined.len() <= MAX_PAYLOAD {
        return joined;
    }
    let last = changes.last().map(String::as_str).unwrap_or("0");
    last.split(' ').next().unwrap_or("0").to_string()
}

/// A member added by a change: node id, positions, metadata, whether it is
/// eligible, and its placement attributes (stored form).
pub(crate) type Added<'a> = (&'a str, &'a [u32], Option<&'a str>, bool, Option<&'a str>);

/// The eligibility flips and pins of a change (issue 19).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Flips<'a> {
    /// Members made eligible.
    pub(crate) eligible: &'a [String],
    /// Members made ineligible.
    pub(crate) ineligible: &'a [String],
    /// Partitions pinned and unpinned.
    pub(crate) pins: Pins<'a>,
    /// On a ring with a move budget, how many moves between live members
    /// this change may make ([`Change::move_budget`]).
    pub(crate) budget: Option<u32>,
}

/// The pins a change sets and removes (issue 19: an operator's
/// `ringnode pin`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pins<'a> {
    /// `(partition, node id)` pinned.
    pub(crate) pinned: &'a [(u32, String)],
    /// Partitions unpinned.
    pub(crate) unpinned: &'a [u32],
}

/// The NOTIFY payload of a change: `<epoch>` followed, when it fits, by the
/// change itself, so that members apply it without reading the change log:
/// ` r<len>:<ring id>` then `-<len>:<node>` per removed member,
/// `!<len>:<node>` per member made ineligible, `*<len>:<node>` per member
/// made eligible, `^<p>=<len>:<node>` per partition pinned and `_<p>` per
/// partition unpinned (schema version 5), `%<k>` for the moves a ring with
/// a move budget allows the change, then `+<len>:<node>@<p>,<p>,…` for an added one, followed
/// by `?` when it joined ineligible, `#<len>:<attributes>` when it has
/// placement attributes (capacity, zone: schema version 5) and
/// `~<len>:<metadata>` when it has metadata (`len` in bytes). The
/// eligibility and attribute marks are additions: a payload without them
/// reads as before.
pub(crate) fn notify_payload(
    ring_id: &str,
    epoch: u64,
    removed: &[String],
    flips: Flips<'_>,
    added: Option<Added<'_>>,
) -> String {
    use std::fmt::Write;
    let mut out = format!("{epoch} r{}:{ring_id}", ring_id.len());
    for n in removed {
        let _ = write!(out, "-{}:{n}", n.len());
    }
    for n in flips.ineligible {
        let _ = write!(out, "!{}:{n}", n.len());
    }
    for n in flips.eligible {
        let _ = write!(out, "*{}:{n}", n.len());
    }
    for (p, n) in flips.pins.pinned {
        let _ = write!(out, "^{p}={}:{n}", n.len());
    }
    for p in flips.pins.unpinned {
        let _ = write!(out, "_{p}");
    }
    if let Some(k) = flips.budget {
        let _ = write!(out, "%{k}");
    }
    if let Some((n, ps, md, eligible, attrs)) = added {
        let _ = write!(out, "+{}:{n}@", n.len());
        write_list(&mut out, ps.iter());
        if !eligible {
            out.push('?');
        }
        if let Some(a) = attrs {
            let _ = write!(out, "#{}:{a}", a.len());
        }
        if let Some(md) = md {
            let _ = write!(out, "~{}:{md}", md.len());
        }
    }
    if out.len() > MAX_PAYLOAD {
        return epoch.to_string();
    }
    out
}

/// The NOTIFY payload of a release: `R r<len>:<ring id>` followed, when it
/// fits, by ` <p>,<p>,…`. (Members of version 1 do not parse it, and ignore
/// it.)
/// The release statement builds it in SQL from [`release_head`], the same
/// way.
#[cfg(test)]
pub(crate) fn release_payload(ring_id: &str, partitions: &[u32]) -> String {
    let mut out = format!("{} ", release_head(ring_id));
    write_list(&mut out, partitions.iter());
    if out.len() > MAX_PAYLOAD {
        out = release_head(ring_id);
    }
    out
}

/// The head of a release payload, `R r<len>:<ring id>`: all of it when the
/// partitions do not fit.
pub(crate) fn release_head(ring_id: &str) -> String {
    format!("R r{}:{ring_id}", ring_id.len())
}

fn write_list<'a>(out: &mut String, items: impl Iterator<Item = &'a u32>) {
    use std::fmt::Write;
    for (i, p) in items.enumerate() {
        let _ = write!(out, "{}{p}", if i == 0 { "" } else { "," });
    }
}

fn parse_list(s: &str) -> Option<Vec<u32>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(|p| p.parse::<u32>().ok()).collect()
}

/// A length-prefixed field: `<len>:<bytes>`.
fn field(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once(':')?;
    let len: usize = len.parse().ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// A NOTIFY payload, parsed: a release, or the changes of one
/// transaction. Empty for a payload of another ring (a channel-name
/// collision) or one that does not parse.
pub(crate) fn parse_payloads(ring_id: &str, payload: &str) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut rest = payload;
    loop {
        match parse_one(ring_id, rest) {
            Some((n, tail)) => {
                out.push(n);
                match tail.strip_prefix('\n') {
                    Some(next) => rest = next,
                    None if tail.is_empty() => return out,
                    None => return Vec::new(),
                }
            }
            None => return Vec::new(),
        }
    }
}

/// The first notice of `payload` and what follows it.
fn parse_one<'a>(ring_id: &str, payload: &'a str) -> Option<(Notice, &'a str)> {
    if let Some(rest) = payload.strip_prefix("R ") {
        let (ring, rest) = field(rest.strip_prefix('r')?)?;
        if ring != ring_id {
            return None;
        }
        let partitions = match rest.strip_prefix(' ') {
            Some(list) => Some(parse_list(list)?),
            None if rest.is_empty() => None,
            None => return None,
        };
        return Some((Notice::Released { partitions }, ""));
    }
    // The epoch alone (the changes did not fit), or followed by a change.
    let digits = payload
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(payload.len());
    let epoch = payload[..digits].parse::<u64>().ok()?;
    let rest = &payload[digits..];
    let Some(rest) = rest.strip_prefix(' ') else {
        let change = None;
        return Some((Notice::Change { epoch, change }, rest));
    };
    let (ring, mut rest) = field(rest.strip_prefix('r')?)?;
    if ring != ring_id {
        return None;
    }
    let mut change = Change {
        epoch,
        removed: Vec::new(),
        added: None,
        added_metadata: None,
        ..Default::default()
    };
    while let Some(tail) = rest.strip_prefix('-') {
        let (n, r) = field(tail)?;
        change.removed.push(n.to_string());
        rest = r;
    }
    while let Some(tail) = rest.strip_prefix('!') {
        let (n, r) = field(tail)?;
        change.ineligible.push(n.to_string());
        rest = r;
    }
    while let Some(tail) = rest.strip_prefix('*') {
        let (n, r) = field(tail)?;
        change.eligible.push(n.to_string());
        rest = r;
    }
    while let Some(tail) = rest.strip_prefix('^') {
        let (p, r) = tail.split_once('=')?;
        let (n, r) = field(r)?;
        change.pinned.push((p.parse().ok()?, n.to_string()));
        rest = r;
    }
    while let Some(tail) = rest.strip_prefix('_') {
        let end = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        change.unpinned.push(tail[..end].parse().ok()?);
        rest = &tail[end..];
    }
    if let Some(tail) = rest.strip_prefix('%') {
        let end = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        change.move_budget = Some(tail[..end].parse().ok()?);
        rest = &tail[end..];
    }
    if let Some(tail) = rest.strip_prefix('+') {
        let (n, r) = field(tail)?;
        let r = r.strip_prefix('@')?;
        let end = r.find(['~', '?', '#', '\n']).unwrap_or(r.len());
        change.added = Some((n.to_string(), parse_list(&r[..end])?));
        rest = &r[end..];
        if let Some(tail) = rest.strip_prefix('?') {
            change.added_ineligible = true;
            rest = tail;
        }
        if let Some(a) = rest.strip_prefix('#') {
            let (a, tail) = field(a)?;
            let attrs = crate::attrs::decode(Some(a));
            change.added_capacity = attrs.capacity;
            change.added_zone = attrs.zone.map(|z| z.to_string());
            rest = tail;
        }
        if let Some(md) = rest.strip_prefix('~') {
            let (md, tail) = field(md)?;
            change.added_metadata = Some(md.to_string());
            rest = tail;
        }
    }
    Some((
        Notice::Change {
            epoch,
            change: Some(change),
        },
        rest,
    ))
}

/// [`parse_payloads`] of a payload that holds one notice.
#[cfg(test)]
pub(crate) fn parse_payload(ring_id: &str, payload: &str) -> Option<Notice> {
    let mut v = parse_payloads(ring_id, payload);
    (v.len() == 1).then(|| v.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn change_of(n: Notice) -> (u64, Option<Change>) {
        match n {
            Notice::Change { epoch, change } => (epoch, change),
            other => panic!("not a change: {other:?}"),
        }
    }

    #[test]
    fn payloads_round_trip_and_name_their_ring() {
        let p = notify_payload(
            "orders",
            42,
            &["a b".into(), "c:d-e".into()],
            Flips::default(),
            Some(("x+y@z,", &[3, 1, 7], Some("10.0.0.1:80 ~1:x"), true, None)),
        );
        let (e, ch) = change_of(parse_payload("orders", &p).unwrap());
        assert_eq!(e, 42);
        let ch = ch.unwrap();
        assert_eq!(ch.epoch, 42);
        assert_eq!(ch.removed, vec!["a b".to_string(), "c:d-e".to_string()]);
        assert_eq!(ch.added, Some(("x+y@z,".to_string(), vec![3, 1, 7])));
        assert_eq!(ch.added_metadata.as_deref(), Some("10.0.0.1:80 ~1:x"));
        assert!(
            parse_payload("other", &p).is_none(),
            "a payload of another ring is ignored"
        );
        assert_eq!(
            change_of(parse_payload("orders", "17").unwrap()),
            (17, None)
        );
        assert!(parse_payload("orders", "junk").is_none());
        let big: Vec<String> = (0..100).map(|i| format!("{i:0>100}")).collect();
        assert_eq!(
            notify_payload("orders", 9, &big, Flips::default(), None),
            "9",
            "too big: the epoch only"
        );
    }

    #[test]
    fn releases_name_their_partitions_when_they_fit() {
        let p = release_payload("orders", &[3, 9, 12]);
        assert_eq!(
            parse_payload("orders", &p),
            Some(Notice::Released {
                partitions: Some(vec![3, 9, 12])
            })
        );
        assert_eq!(parse_payload("other", &p), None);
        let many: Vec<u32> = (0..5000).collect();
        let p = release_payload("orders", &many);
        assert!(p.len() <= MAX_PAYLOAD);
        assert_eq!(
            parse_payload("orders", &p),
            Some(Notice::Released { partitions: None }),
            "too many: a release without a list (every waiting taker retries)"
        );
        assert_eq!(parse_payload("orders", "R r6:orders x"), None);
    }

    #[test]
    fn a_transactions_changes_travel_in_one_payload_or_as_its_last_epoch() {
        let md = "10.0.0.1:80\n~2:x";
        let changes: Vec<String> = (0..3u64)
            .map(|i| {
                let removed: Vec<String> = if i == 0 {
                    vec!["gone\nx".into()]
                } else {
                    vec![]
                };
                let name = format!("n{i}");
                notify_payload(
                    "orders",
                    10 + i,
                    &removed,
                    Flips::default(),
                    Some((&name, &[i as u32, 7], Some(md), true, None)),
                )
            })
            .collect();
        let p = transaction_payload(&changes);
        let notices = parse_payloads("orders", &p);
        assert_eq!(notices.len(), 3, "{p:?}");
        for (i, n) in notices.into_iter().enumerate() {
            let (e, ch) = change_of(n);
            assert_eq!(e, 10 + i as u64);
            let ch = ch.unwrap();
            assert_eq!(ch.added, Some((format!("n{i}"), vec![i as u32, 7])));
            assert_eq!(ch.added_metadata.as_deref(), Some(md));
            assert_eq!(ch.removed.is_empty(), i != 0);
        }
        assert!(parse_payloads("other", &p).is_empty());
        // Too many for one payload: the last epoch alone.
        let many: Vec<String> = (0..200u64)
            .map(|i| {
                notify_payload(
                    "orders",
                    i + 1,
                    &[],
                    Flips::default(),
                    Some((&format!("{i:0>60}"), &[1, 2], None, true, None)),
                )
            })
            .collect();
        let p = transaction_payload(&many);
        assert_eq!(p, "200");
        assert_eq!(
            parse_payloads("orders", &p),
            vec![Notice::Change {
                epoch: 200,
                change: None
            }]
        );
        // Garbage after a change makes the whole payload unreadable (the
        // member then reads the change log), never half of it.
        assert!(parse_payloads("orders", &format!("{}junk", changes[0])).is_empty());
    }

    proptest! {
        #[test]
        fn any_run_of_changes_survives_one_payload(
            ring in "\\PC{1,30}",
            first in 0u64..1_000_000,
            changes in proptest::collection::vec(
                (proptest::collection::vec("\\PC{1,12}", 0..3),
                 proptest::option::of(("\\PC{1,12}", proptest::collection::vec(any::<u32>(), 0..5),
                                       proptest::option::of("\\PC{0,20}")))),
                1..6),
        ) {
            let payloads: Vec<String> = changes
                .iter()
                .enumerate()
                .map(|(i, (removed, added))| {
                    notify_payload(
                        &ring,
                        first + i as u64,
                        removed,
                        Flips::default(),
                        added.as_ref().map(|(n, ps, md)| (n.as_str(), ps.as_slice(), md.as_deref(), true, None)),
                    )
                })
                .collect();
            let p = transaction_payload(&payloads);
            let parsed = parse_payloads(&ring, &p);
            if p.len() < payloads.iter().map(String::len).sum::<usize>() {
                // Did not fit: the last epoch alone.
                prop_assert_eq!(parsed.len(), 1);
            } else {
                prop_assert_eq!(parsed.len(), changes.len());
                for (i, (n, (removed, added))) in parsed.into_iter().zip(&changes).enumerate() {
                    let (e, ch) = change_of(n);
                    prop_assert_eq!(e, first + i as u64);
                    if let Some(ch) = ch {
                        prop_assert_eq!(&ch.removed, removed);
                        prop_assert_eq!(
                            ch.added,
                            added.as_ref().map(|(n, ps, _)| (n.clone(), ps.clone()))
                        );
                        prop_assert_eq!(
                            ch.added_metadata.as_deref(),
                            added.as_ref().and_then(|(_, _, md)| md.as_deref())
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_change_survives_the_payload(
            ring in "\\PC{1,30}",
            epoch in any::<u64>(),
            removed in proptest::collection::vec("\\PC{1,20}", 0..4),
            eligible in proptest::collection::vec("\\PC{1,20}", 0..3),
            ineligible in proptest::collection::vec("\\PC{1,20}", 0..3),
            added in proptest::option::of(("\\PC{1,20}", proptest::collection::vec(any::<u32>(), 0..10))),
            added_eligible in any::<bool>(),
            metadata in proptest::option::of("\\PC{0,40}"),
            capacity in proptest::option::of(1u32..),
            pinned in proptest::collection::vec((any::<u32>(), "\\PC{1,20}"), 0..3),
            unpinned in proptest::collection::vec(any::<u32>(), 0..3),
            zone in proptest::option::of("[a-z0-9:.-]{1,20}"),
            budget in proptest::option::of(any::<u32>()),
        ) {
            let md = metadata.as_deref().filter(|_| added.is_some());
            let pinned: Vec<(u32, String)> = pinned;
            let flips = Flips {
                eligible: &eligible,
                ineligible: &ineligible,
                pins: Pins { pinned: &pinned, unpinned: &unpinned },
                budget,
            };
            let attrs = crate::attrs::encode(&crate::attrs::MemberAttrs {
                capacity,
                zone: zone.as_deref().map(std::sync::Arc::from),
            });
            let attrs = attrs.filter(|_| added.is_some());
            let p = notify_payload(&ring, epoch, &removed, flips,
                added.as_ref().map(|(n, ps)| (n.as_str(), ps.as_slice(), md, added_eligible, attrs.as_deref())));
            let (e, ch) = change_of(parse_payload(&ring, &p).unwrap());
            prop_assert_eq!(e, epoch);
            let ch = ch.unwrap();
            prop_assert_eq!(ch.removed, removed);
            prop_assert_eq!(ch.eligible, eligible);
            prop_assert_eq!(ch.ineligible, ineligible);
            prop_assert_eq!(ch.pinned, pinned);
            prop_assert_eq!(ch.unpinned, unpinned);
            prop_assert_eq!(ch.move_budget, budget);
            prop_assert_eq!(ch.added_ineligible, added.is_some() && !added_eligible);
            let some = added.is_some();
            prop_assert_eq!(ch.added, added);
            prop_assert_eq!(ch.added_metadata.as_deref(), md);
            prop_assert_eq!(ch.added_capacity, capacity.filter(|_| some));
            prop_assert_eq!(ch.added_zone, zone.filter(|_| some));
        }

        #[test]
        fn any_release_survives_the_payload(
            ring in "\\PC{1,30}",
            partitions in proptest::collection::vec(any::<u32>(), 0..50),
        ) {
            let p = release_payload(&ring, &partitions);
            prop_assert_eq!(parse_payload(&ring, &p), Some(Notice::Released { partitions: Some(partitions) }));
        }
    }
}
