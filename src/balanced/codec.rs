//! The balanced table's stored form: [`Table::encode`] writes the table
//! (members with their weights and, in format 2, their capacities and
//! zones; the owner of every partition as bit-packed member indices; in
//! format 3, the pins) to the bytes the database keeps, and
//! [`Table::decode`] reads any of the three formats back, checking the
//! structure but not the balance. The rule that computes the table is in
//! `mod.rs`; this file only turns it into bytes and back.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{BalancedMember, MemberAttrs, Table, NO_OWNER};
use crate::config::MAX_RING_SIZE;
use crate::error::{Error, ErrorKind, Result};

/// First byte of [`Table::encode`]'s output, so that a later layout can be
/// told apart from this one.
const FORMAT_VERSION: u8 = 1;

/// The format [`Table::encode`] writes when a member declares a capacity or
/// a zone: format 1 with each member's attributes, and an index for "no
/// owner".
const FORMAT_VERSION_ATTRS: u8 = 2;

/// The format [`Table::encode`] writes when some partition is pinned:
/// format 2 followed by the pins.
const FORMAT_VERSION_PINS: u8 = 3;

impl Table {
    /// The table in a compact, self-describing form for storage (the
    /// database keeps the table the committing member computed, for members
    /// that must re-read it). Little-endian layout, format 1 when no member
    /// declares a capacity or a zone (and every partition has an owner while
    /// there are members):
    ///
    /// ```text
    /// u8  version (1)
    /// u32 ring_size
    /// u32 member count n
    /// n × (u32 weight, u32 id length, id bytes)   ascending by id
    /// u8  b = bits per owner index (bits of n − 1; 0 when n ≤ 1)
    /// ceil(ring_size · b / 8) bytes: owner indices, b bits each, LSB first
    /// ```
    ///
    /// Format 2 otherwise: the same, but each member also carries its
    /// attributes, and an owner index may be `n`, for "no owner":
    ///
    /// ```text
    /// u8  version (2)
    /// u32 ring_size
    /// u32 member count n
    /// n × (u32 weight, u32 id length, id bytes,
    ///      u32 capacity (0: none), u32 zone length (0: none), zone bytes)
    /// u8  b = bits per owner index (bits of n; 0 when n = 0)
    /// ceil(ring_size · b / 8) bytes: owner indices 0..=n, b bits each
    /// ```
    ///
    /// Format 3 when some partition is pinned: format 2 (with version 3),
    /// then the pins, also those of node ids that are not members:
    ///
    /// ```text
    /// u32 pin count k (≥ 1)
    /// k × (u32 partition, u32 id length, id bytes)   ascending by partition
    /// ```
    ///
    /// Counts are not stored: they follow from the owners. 2^20 partitions
    /// among 4096 members take 1.5 MiB.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let n = self.members.len();
        let v2 = self.is_constrained();
        let (version, bits, none) = if !self.pins.is_empty() {
            (FORMAT_VERSION_PINS, index_bits(n + 1), n as u32)
        } else if v2 {
            (FORMAT_VERSION_ATTRS, index_bits(n + 1), n as u32)
        } else {
            (FORMAT_VERSION, index_bits(n), NO_OWNER)
        };
        let ids: usize = self
            .members
            .iter()
            .map(|m| {
                m.node_id.len()
                    + 8
                    + if v2 {
                        8 + m.zone().map_or(0, str::len)
                    } else {
                        0
                    }
            })
            .sum();
        let packed = (self.ring_size as usize * bits as usize).div_ceil(8);
        let mut out = Vec::with_capacity(1 + 4 + 4 + ids + 1 + packed);
        out.push(version);
        out.extend_from_slice(&self.ring_size.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for m in &self.members {
            out.extend_from_slice(&m.weight.to_le_bytes());
            out.extend_from_slice(&(m.node_id.len() as u32).to_le_bytes());
            out.extend_from_slice(m.node_id.as_bytes());
            if v2 {
                out.extend_from_slice(&m.capacity().unwrap_or(0).to_le_bytes());
                let zone = m.zone().unwrap_or("");
                out.extend_from_slice(&(zone.len() as u32).to_le_bytes());
                out.extend_from_slice(zone.as_bytes());
            }
        }
        out.push(bits);
        if bits > 0 {
            let mut acc: u64 = 0;
            let mut held = 0u32;
            for &o in &self.owner {
                let o = if o == NO_OWNER { none } else { o };
                acc |= (o as u64) << held;
                held += bits as u32;
                while held >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    held -= 8;
                }
            }
            if held > 0 {
                out.push(acc as u8);
            }
        }
        if !self.pins.is_empty() {
            out.extend_from_slice(&(self.pins.len() as u32).to_le_bytes());
            for (p, id) in &self.pins {
                out.extend_from_slice(&p.to_le_bytes());
                out.extend_from_slice(&(id.len() as u32).to_le_bytes());
                out.extend_from_slice(id.as_bytes());
            }
        }
        out
    }

    /// Reads what [`encode`](Table::encode) wrote (any format). Checks the
    /// structure (version, lengths, ids ascending and UTF-8, weights ≥ 1,
    /// zones UTF-8, indices in range, pins present, ascending, inside the
    /// ring and UTF-8), not the balance: see
    /// [`within_quota`](Table::within_quota).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Table> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::Schema,
                format!("stored balanced placement table is malformed: {what}"),
            )
        };
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8().ok_or_else(|| bad("empty"))?;
        if !(FORMAT_VERSION..=FORMAT_VERSION_PINS).contains(&version) {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "stored balanced placement table has format version {version}; this version of leasering reads versions {FORMAT_VERSION} to {FORMAT_VERSION_PINS}"
                ),
            ));
        }
        // Format 3 is format 2 followed by the pins.
        let v2 = version != FORMAT_VERSION;
        let ring_size = r.u32().ok_or_else(|| bad("truncated header"))?;
        if ring_size > MAX_RING_SIZE {
            return Err(bad(&format!("ring_size {ring_size} > {MAX_RING_SIZE}")));
        }
        let n = r.u32().ok_or_else(|| bad("truncated header"))? as usize;
        // Every member takes at least 8 bytes (16 in format 2): do not trust
        // n for allocation.
        if n > bytes.len() / if v2 { 16 } else { 8 } {
            return Err(bad(&format!("{n} members in {} bytes", bytes.len())));
        }
        let mut members: Vec<BalancedMember> = Vec::with_capacity(n);
        let mut total_weight = 0u64;
        for i in 0..n {
            let weight = r.u32().ok_or_else(|| bad("truncated member list"))?;
            let len = r.u32().ok_or_else(|| bad("truncated member list"))? as usize;
            let id = r.take(len).ok_or_else(|| bad("truncated member list"))?;
            let id = std::str::from_utf8(id)
                .map_err(|_| bad(&format!("member {i}'s id is not UTF-8")))?;
            if weight == 0 {
                return Err(bad(&format!("member {id:?} has weight 0")));
            }
            if let Some(prev) = members.last() {
                if *prev.node_id >= *id {
                    return Err(bad(&format!("member ids not ascending at {id:?}")));
                }
            }
            let mut attrs = MemberAttrs::default();
            if v2 {
                let capacity = r.u32().ok_or_else(|| bad("truncated member list"))?;
                let len = r.u32().ok_or_else(|| bad("truncated member list"))? as usize;
                let zone = r.take(len).ok_or_else(|| bad("truncated member list"))?;
                let zone = std::str::from_utf8(zone)
                    .map_err(|_| bad(&format!("member {id:?}'s zone is not UTF-8")))?;
                attrs.capacity = (capacity > 0).then_some(capacity);
                attrs.zone = (!zone.is_empty()).then(|| Arc::from(zone));
            }
            total_weight += weight as u64;
            members.push(BalancedMember::with_attrs(id, weight, attrs));
        }
        // Format 2 has one more index value: n, for no owner.
        let (choices, none) = if v2 { (n + 1, n) } else { (n, usize::MAX) };
        let bits = r.u8().ok_or_else(|| bad("truncated owner table"))?;
        if bits != index_bits(choices) {
            return Err(bad(&format!("{bits} bits per owner for {n} members")));
        }
        let packed = (ring_size as usize * bits as usize).div_ceil(8);
        let data = r.take(packed).ok_or_else(|| bad("truncated owner table"))?;
        let mut pins = BTreeMap::new();
        if version == FORMAT_VERSION_PINS {
            let k = r.u32().ok_or_else(|| bad("truncated pins"))?;
            if k == 0 {
                return Err(bad("format 3 without pins"));
            }
            let mut last: Option<u32> = None;
            for _ in 0..k {
                let p = r.u32().ok_or_else(|| bad("truncated pins"))?;
                let len = r.u32().ok_or_else(|| bad("truncated pins"))? as usize;
                let id = r.take(len).ok_or_else(|| bad("truncated pins"))?;
                let id = std::str::from_utf8(id)
                    .map_err(|_| bad(&format!("the pin of partition {p}: node id is not UTF-8")))?;
                if p >= ring_size {
                    return Err(bad(&format!(
                        "pin of partition {p} >= ring_size {ring_size}"
                    )));
                }
                if last.is_some_and(|l| l >= p) {
                    return Err(bad(&format!("pins not ascending at partition {p}")));
                }
                last = Some(p);
                pins.insert(p, Arc::from(id));
            }
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        let mut owner = Vec::with_capacity(ring_size as usize);
        if bits == 0 {
            // One choice: member 0 (format 1 with one member), else none.
            let only = if choices == 1 && none != 0 {
                0
            } else {
                NO_OWNER
            };
            owner.resize(ring_size as usize, only);
        } else {
            let mask = (1u64 << bits) - 1;
            let mut acc: u64 = 0;
            let mut held = 0u32;
            let mut next = data.iter();
            for _ in 0..ring_size {
                while held < bits as u32 {
                    acc |= (*next.next().expect("length checked") as u64) << held;
                    held += 8;
                }
                let o = (acc & mask) as usize;
                acc >>= bits;
                held -= bits as u32;
                if o == none {
                    owner.push(NO_OWNER);
                } else if o >= n {
                    return Err(bad(&format!("owner index {o} >= {n} members")));
                } else {
                    owner.push(o as u32);
                }
            }
        }
        for &o in &owner {
            if o != NO_OWNER {
                members[o as usize].partitions += 1;
            }
        }
        Ok(Table {
            ring_size,
            owner,
            members,
            total_weight,
            pins,
        })
    }
}

/// Bits needed for an index below `n` (0 when there is at most one choice).
pub(super) fn index_bits(n: usize) -> u8 {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as u8
    }
}

/// A cursor over the bytes being decoded.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}
