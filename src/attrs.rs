//! A member's placement attributes — its capacity and its zone (issue 19)
//! — and their one text form, stored with the member (`members.attrs`),
//! its join request and the change that adds it, and carried by the
//! change's notification: `zone=<zone> capacity=<n>`, each part only when
//! set, nothing (SQL `NULL`) for a plain member. Pure.

use std::sync::Arc;

pub(crate) use crate::balanced::MemberAttrs;

/// The stored form of `attrs`; `None` for a plain member.
pub(crate) fn encode(attrs: &MemberAttrs) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(z) = &attrs.zone {
        parts.push(format!("zone={z}"));
    }
    if let Some(c) = attrs.capacity {
        parts.push(format!("capacity={c}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The attributes of a stored form. Lenient: a part it does not know (a
/// later version's) is skipped, a capacity that does not parse is none —
/// every process reads the same text the same way, which is what the
/// placement needs.
pub(crate) fn decode(text: Option<&str>) -> MemberAttrs {
    let mut out = MemberAttrs::default();
    for part in text.unwrap_or("").split(' ') {
        match part.split_once('=') {
            Some(("zone", z)) if !z.is_empty() => out.zone = Some(Arc::from(z)),
            Some(("capacity", c)) => out.capacity = c.parse().ok().filter(|c| *c > 0),
            _ => {}
        }
    }
    out
}

/// The stored form of a configuration's attributes.
pub(crate) fn of_config(cfg: &crate::Config) -> Option<String> {
    encode(&MemberAttrs {
        capacity: cfg.capacity,
        zone: cfg.zone.as_deref().map(Arc::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_plain_member_stores_nothing() {
        assert_eq!(encode(&MemberAttrs::default()), None);
        assert_eq!(decode(None), MemberAttrs::default());
    }

    #[test]
    fn the_stored_form_reads_as_an_operator_would_write_it() {
        let a = MemberAttrs {
            capacity: Some(40),
            zone: Some(Arc::from("eu-west-1a")),
        };
        assert_eq!(encode(&a).as_deref(), Some("zone=eu-west-1a capacity=40"));
    }

    #[test]
    fn parts_of_a_later_version_are_skipped() {
        let a = decode(Some("zone=a rack=7 capacity=x"));
        assert_eq!(a.zone.as_deref(), Some("a"));
        assert_eq!(a.capacity, None);
    }

    proptest! {
        #[test]
        fn every_valid_attribute_set_round_trips(
            capacity in proptest::option::of(1u32..),
            zone in proptest::option::of("[A-Za-z0-9._:-]{1,63}"),
        ) {
            let a = MemberAttrs { capacity, zone: zone.as_deref().map(Arc::from) };
            prop_assert_eq!(decode(encode(&a).as_deref()), a);
        }
    }
}
