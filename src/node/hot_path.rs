//! The lock-free mirror the hot path reads: an atomic bitset of active
//! partitions, the lease deadline on the coarse clock, and the snapshot
//! behind [`OwnedPartitions`] with a per-thread cache. Written only by
//! [`HotPath::publish`], under the session's write lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::clock::{coarse_now_ns, hot_deadline_ns};
use crate::owned::{OwnedInner, OwnedPartitions};
use crate::protocol::output::Effect;

thread_local! {
    /// This thread's copy of the last snapshot it handed out:
    /// (hot path uid, snapshot version, snapshot).
    static SNAPSHOT_CACHE: std::cell::RefCell<(u64, u64, Option<Arc<OwnedInner>>)> =
        const { std::cell::RefCell::new((0, 0, None)) };
}

/// Source of [`HotPath::uid`].
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// See the module docs.
pub(crate) struct HotPath {
    /// Bit `p` set: partition `p` is active.
    bits: Box<[AtomicU64]>,
    /// Coarse-clock nanoseconds until which the bits may be believed; 0 =
    /// nothing valid.
    deadline_ns: AtomicU64,
    snapshot: RwLock<Arc<OwnedInner>>,
    /// Bumped after every replacement of `snapshot` (for the per-thread
    /// copies of `owned_partitions`).
    snapshot_version: AtomicU64,
    /// Unique per member of this process (never reused, unlike an address).
    uid: u64,
}

impl HotPath {
    pub(crate) fn new(ring_size: u32) -> HotPath {
        let words = (ring_size as usize).div_ceil(64);
        HotPath {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            deadline_ns: AtomicU64::new(0),
            snapshot: RwLock::new(Arc::new(OwnedInner::default())),
            snapshot_version: AtomicU64::new(1),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// One atomic bit and a coarse-clock check of the deadline.
    #[inline]
    pub(crate) fn owns(&self, p: u32) -> bool {
        match self.bits.get((p >> 6) as usize) {
            Some(word) => {
                word.load(Ordering::Acquire) & (1u64 << (p & 63)) != 0
                    && coarse_now_ns() < self.deadline_ns.load(Ordering::Acquire)
            }
            None => false,
        }
    }

    /// The current snapshot: a version check and a reference count
    /// increment on this thread's own copy, which no other thread contends
    /// for; a changed version makes the thread fetch the new snapshot.
    #[inline]
    pub(crate) fn owned_partitions(&self) -> OwnedPartitions {
        let version = self.snapshot_version.load(Ordering::Acquire);
        let deadline_ns = self.deadline_ns.load(Ordering::Acquire);
        let snapshot = SNAPSHOT_CACHE
            .try_with(|cache| {
                let mut cache = cache.borrow_mut();
                if let (uid, v, Some(snap)) = &*cache {
                    if *uid == self.uid && *v == version {
                        return snap.clone();
                    }
                }
                let own = Arc::new(OwnedInner::clone(&self.snapshot.read()));
                *cache = (self.uid, version, Some(own.clone()));
                own
            })
            .unwrap_or_else(|_| self.snapshot.read().clone());
        OwnedPartitions {
            inner: snapshot,
            deadline_ns,
        }
    }

    /// Makes one output's ownership effects visible: releases reach the
    /// bits before a (possibly extended) deadline does, and acquisitions
    /// after it, so there is no instant at which a released partition
    /// answers `true` under a new deadline. Then the snapshot, rebuilt from
    /// `active` (the state after the output), if anything changed.
    pub(crate) fn publish<I>(
        &self,
        effects: &[Effect],
        valid_until: Option<Instant>,
        epoch: u64,
        active: impl FnOnce() -> I,
    ) where
        I: Iterator<Item = (u32, u64)>,
    {
        let mut changed = false;
        for e in effects {
            if let Effect::Released { partitions, .. } = e {
                changed = true;
                for p in partitions {
                    self.bits[(*p >> 6) as usize].fetch_and(!(1u64 << (p & 63)), Ordering::AcqRel);
                }
            }
        }
        self.deadline_ns
            .store(hot_deadline_ns(valid_until), Ordering::Release);
        for e in effects {
            if let Effect::Acquired { partitions, .. } = e {
                changed = true;
                for p in partitions {
                    self.bits[(*p >> 6) as usize].fetch_or(1u64 << (p & 63), Ordering::AcqRel);
                }
            }
        }
        if !changed {
            return;
        }
        let (partitions, tokens): (Vec<u32>, Vec<u64>) = active().unzip();
        let mut snapshot = self.snapshot.write();
        *snapshot = Arc::new(OwnedInner {
            epoch,
            partitions,
            tokens,
        });
        // Under the lock: a reader that sees the new version reads the new
        // snapshot.
        self.snapshot_version.fetch_add(1, Ordering::AcqRel);
    }
}
