//! [`OwnedPartitions`]: the cheap snapshot returned by
//! [`RingNode::owned_partitions`](crate::RingNode::owned_partitions).

use std::fmt;
use std::sync::Arc;

use crate::clock::coarse_now_ns;

#[derive(Debug, Default, Clone)]
pub(crate) struct OwnedInner {
    pub(crate) epoch: u64,
    /// Ascending.
    pub(crate) partitions: Vec<u32>,
    /// `tokens[i]` is the token of `partitions[i]`.
    pub(crate) tokens: Vec<u64>,
}

/// The partitions active on this member at one moment, with their tokens.
///
/// A snapshot is an `Arc` clone, so taking one costs a few nanoseconds. It
/// carries the lease deadline in force when it was taken and **reports
/// nothing once that deadline has passed** (`iter`, `contains`, `len` all
/// answer as if empty), so a snapshot kept across a long pause never claims
/// partitions the member may have lost meanwhile. Take a fresh one per unit
/// of work.
#[derive(Clone)]
pub struct OwnedPartitions {
    pub(crate) inner: Arc<OwnedInner>,
    /// Coarse-clock nanoseconds after which the snapshot reports nothing.
    pub(crate) deadline_ns: u64,
}

impl OwnedPartitions {
    fn live(&self) -> Option<&OwnedInner> {
        (coarse_now_ns() < self.deadline_ns).then_some(&*self.inner)
    }

    /// The epoch of the view the snapshot was taken in.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Whether the lease under the snapshot still runs.
    pub fn is_valid(&self) -> bool {
        self.live().is_some()
    }

    /// The active partitions, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.live()
            .map(|i| i.partitions.as_slice())
            .unwrap_or(&[])
            .iter()
            .copied()
    }

    /// Whether `p` is active.
    pub fn contains(&self, p: u32) -> bool {
        self.token(p).is_some()
    }

    /// The fencing token of `p`, if active.
    pub fn token(&self, p: u32) -> Option<u64> {
        let inner = self.live()?;
        let i = inner.partitions.binary_search(&p).ok()?;
        Some(inner.tokens[i])
    }

    /// Number of active partitions.
    pub fn len(&self) -> usize {
        self.live().map_or(0, |i| i.partitions.len())
    }

    /// Whether no partition is active.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The active partitions as a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
}

impl fmt::Debug for OwnedPartitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPartitions")
            .field("epoch", &self.inner.epoch)
            .field("valid", &self.is_valid())
            .field("len", &self.inner.partitions.len())
            .finish()
    }
}

impl<'a> IntoIterator for &'a OwnedPartitions {
    type Item = u32;
    type IntoIter = Box<dyn Iterator<Item = u32> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
