//! The NOTIFY payload of a membership change (pure): the epoch and, where it
//! fits, the change itself, so that members apply it without a read.

use crate::ring::Change;

/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7900;

/// The NOTIFY payload of a change: `<epoch>` followed, when it fits, by the
/// change itself, so that members apply it without reading the change log:
/// ` r<len>:<ring id>` then `-<len>:<node>` per removed member, then
/// `+<len>:<node>@<p>,<p>,…` for an added one (`len` in bytes).
pub(crate) fn notify_payload(
    ring_id: &str,
    epoch: u64,
    removed: &[String],
    added: Option<(&str, &[u32])>,
) -> String {
    use std::fmt::Write;
    let mut out = format!("{epoch} r{}:{ring_id}", ring_id.len());
    for n in removed {
        let _ = write!(out, "-{}:{n}", n.len());
    }
    if let Some((n, ps)) = added {
        let _ = write!(out, "+{}:{n}@", n.len());
        for (i, p) in ps.iter().enumerate() {
            let _ = write!(out, "{}{p}", if i == 0 { "" } else { "," });
        }
    }
    if out.len() > MAX_PAYLOAD {
        return epoch.to_string();
    }
    out
}

/// A NOTIFY payload, parsed: the epoch, and the change if it carries one.
/// `None` for a payload of another ring (a channel-name collision) or one
/// that does not parse.
pub(crate) fn parse_payload(ring_id: &str, payload: &str) -> Option<(u64, Option<Change>)> {
    let (epoch, rest) = match payload.split_once(' ') {
        Some((e, rest)) => (e.parse::<u64>().ok()?, rest),
        None => return Some((payload.parse::<u64>().ok()?, None)),
    };
    // A length-prefixed field: `<len>:<bytes>`.
    fn field(s: &str) -> Option<(&str, &str)> {
        let (len, rest) = s.split_once(':')?;
        let len: usize = len.parse().ok()?;
        Some((rest.get(..len)?, rest.get(len..)?))
    }
    let (ring, mut rest) = field(rest.strip_prefix('r')?)?;
    if ring != ring_id {
        return None;
    }
    let mut change = Change {
        epoch,
        removed: Vec::new(),
        added: None,
    };
    while let Some(tail) = rest.strip_prefix('-') {
        let (n, r) = field(tail)?;
        change.removed.push(n.to_string());
        rest = r;
    }
    if let Some(tail) = rest.strip_prefix('+') {
        let (n, r) = field(tail)?;
        let ps = r.strip_prefix('@')?;
        let positions = if ps.is_empty() {
            Vec::new()
        } else {
            ps.split(',')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?
        };
        change.added = Some((n.to_string(), positions));
    } else if !rest.is_empty() {
        return None;
    }
    Some((epoch, Some(change)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn payloads_round_trip_and_name_their_ring() {
        let p = notify_payload(
            "orders",
            42,
            &["a b".into(), "c:d-e".into()],
            Some(("x+y@z,", &[3, 1, 7])),
        );
        let (e, ch) = parse_payload("orders", &p).unwrap();
        assert_eq!(e, 42);
        let ch = ch.unwrap();
        assert_eq!(ch.epoch, 42);
        assert_eq!(ch.removed, vec!["a b".to_string(), "c:d-e".to_string()]);
        assert_eq!(ch.added, Some(("x+y@z,".to_string(), vec![3, 1, 7])));
        assert!(
            parse_payload("other", &p).is_none(),
            "a payload of another ring is ignored"
        );
        assert_eq!(parse_payload("orders", "17").unwrap(), (17, None));
        assert!(parse_payload("orders", "junk").is_none());
        let big: Vec<String> = (0..100).map(|i| format!("{i:0>100}")).collect();
        assert_eq!(
            notify_payload("orders", 9, &big, None),
            "9",
            "too big: the epoch only"
        );
    }

    proptest! {
        #[test]
        fn any_change_survives_the_payload(
            ring in "\\PC{1,30}",
            epoch in any::<u64>(),
            removed in proptest::collection::vec("\\PC{1,20}", 0..4),
            added in proptest::option::of(("\\PC{1,20}", proptest::collection::vec(any::<u32>(), 0..10))),
        ) {
            let p = notify_payload(&ring, epoch, &removed, added.as_ref().map(|(n, ps)| (n.as_str(), ps.as_slice())));
            let (e, ch) = parse_payload(&ring, &p).unwrap();
            prop_assert_eq!(e, epoch);
            let ch = ch.unwrap();
            prop_assert_eq!(ch.removed, removed);
            prop_assert_eq!(ch.added, added);
        }
    }
}
