//! The NOTIFY payloads of a ring's channel (pure): a membership change —
//! its epoch and, where it fits, the change itself, so that members apply
//! it without a read — and a release of claims, naming the partitions, so
//! that members waiting for them take them at once.

use crate::protocol::input::Notice;
use crate::ring::Change;

/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
pub(crate) const MAX_PAYLOAD: usize = 7900;

/// The NOTIFY payload of a change: `<epoch>` followed, when it fits, by the
/// change itself, so that members apply it without reading the change log:
/// ` r<len>:<ring id>` then `-<len>:<node>` per removed member, then
/// `+<len>:<node>@<p>,<p>,…` for an added one, followed by
/// `~<len>:<metadata>` when it has metadata (`len` in bytes).
pub(crate) fn notify_payload(
    ring_id: &str,
    epoch: u64,
    removed: &[String],
    added: Option<(&str, &[u32], Option<&str>)>,
) -> String {
    use std::fmt::Write;
    let mut out = format!("{epoch} r{}:{ring_id}", ring_id.len());
    for n in removed {
        let _ = write!(out, "-{}:{n}", n.len());
    }
    if let Some((n, ps, md)) = added {
        let _ = write!(out, "+{}:{n}@", n.len());
        write_list(&mut out, ps.iter());
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

/// A NOTIFY payload, parsed. `None` for a payload of another ring (a
/// channel-name collision) or one that does not parse.
pub(crate) fn parse_payload(ring_id: &str, payload: &str) -> Option<Notice> {
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
        return Some(Notice::Released { partitions });
    }
    let (epoch, rest) = match payload.split_once(' ') {
        Some((e, rest)) => (e.parse::<u64>().ok()?, rest),
        None => {
            let epoch = payload.parse::<u64>().ok()?;
            return Some(Notice::Change {
                epoch,
                change: None,
            });
        }
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
    };
    while let Some(tail) = rest.strip_prefix('-') {
        let (n, r) = field(tail)?;
        change.removed.push(n.to_string());
        rest = r;
    }
    if let Some(tail) = rest.strip_prefix('+') {
        let (n, r) = field(tail)?;
        let r = r.strip_prefix('@')?;
        let (list, md) = match r.split_once('~') {
            Some((list, md)) => {
                let (md, end) = field(md)?;
                if !end.is_empty() {
                    return None;
                }
                (list, Some(md.to_string()))
            }
            None => (r, None),
        };
        change.added = Some((n.to_string(), parse_list(list)?));
        change.added_metadata = md;
    } else if !rest.is_empty() {
        return None;
    }
    Some(Notice::Change {
        epoch,
        change: Some(change),
    })
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
            Some(("x+y@z,", &[3, 1, 7], Some("10.0.0.1:80 ~1:x"))),
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
            notify_payload("orders", 9, &big, None),
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

    proptest! {
        #[test]
        fn any_change_survives_the_payload(
            ring in "\\PC{1,30}",
            epoch in any::<u64>(),
            removed in proptest::collection::vec("\\PC{1,20}", 0..4),
            added in proptest::option::of(("\\PC{1,20}", proptest::collection::vec(any::<u32>(), 0..10))),
            metadata in proptest::option::of("\\PC{0,40}"),
        ) {
            let md = metadata.as_deref().filter(|_| added.is_some());
            let p = notify_payload(&ring, epoch, &removed, added.as_ref().map(|(n, ps)| (n.as_str(), ps.as_slice(), md)));
            let (e, ch) = change_of(parse_payload(&ring, &p).unwrap());
            prop_assert_eq!(e, epoch);
            let ch = ch.unwrap();
            prop_assert_eq!(ch.removed, removed);
            prop_assert_eq!(ch.added, added);
            prop_assert_eq!(ch.added_metadata.as_deref(), md);
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
