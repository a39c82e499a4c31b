//! The move budget (issue 19, [`NodeBuilder::max_moving`](crate::NodeBuilder::max_moving)):
//! what a ring's budget leaves a change, and the budget's next step.
//!
//! A partition is **in motion** while the balanced table gives it to a
//! member that does not hold its claim: a move not yet taken (its old owner
//! still serving or draining it, or the release on its way), or an orphan
//! not yet taken. Every change to a ring with a budget `M` is written under
//! the ring's lock with `M − in motion` as its allowance (at least 0): the
//! table's target-count rule moves at most that many partitions between
//! members that stay ([`Table::apply_change_within`]); orphans are placed
//! whatever the allowance. The allowance is part of the change
//! ([`Change::move_budget`](crate::Change)), so every member computes the
//! same table.
//!
//! What the budget holds back is moved by later **steps**: a change with
//! nothing in it but its allowance. A member that took claims writes one
//! ([`Store::step`]) when its view's table still has moves pending, and
//! every member tries one now and then while they are (a safety net for a
//! step lost with its member). A step is written once at least a quarter
//! of the budget is free, or what is pending fits in what is free: fewer,
//! larger steps. The step reads the claims under the lock, so it never lets
//! more than `M` be in motion, whoever writes it.

use postgres::types::Type;
use postgres::Client;

use super::membership::{ChangeSet, RecordValues, StoredPlacement};
use super::{Store, Tx};
use crate::balanced::Table;
use crate::error::{Error, Result};

/// Who holds each claim of a ring, read under its lock: what tells the
/// partitions in motion.
pub(super) struct Motion {
    /// By partition: the node id of the member holding its claim, if one
    /// does.
    holders: Vec<Option<String>>,
}

impl Motion {
    /// The partitions `t` gives to a member that does not hold their claim.
    pub(super) fn in_motion(&self, t: &Table) -> u32 {
        (0..t.ring_size())
            .filter(|&p| {
                t.owner_of(p).is_some_and(|o| {
                    self.holders.get(p as usize).and_then(|h| h.as_deref()) != Some(o)
                })
            })
            .count() as u32
    }

    /// What a budget of `m` leaves a change to `t` (the table before it).
    pub(super) fn left(&self, m: u32, t: &Table) -> u32 {
        m.saturating_sub(self.in_motion(t))
    }
}

impl Store {
    /// Under the ring's lock, on a ring with a budget (`placement`'s): who
    /// holds each claim. `None` without a budget (nothing read).
    pub(super) fn read_motion(
        &self,
        tx: &mut Tx<'_>,
        placement: &StoredPlacement,
    ) -> Result<Option<(u32, Motion)>> {
        let Some(m) = placement.max_moving() else {
            return Ok(None);
        };
        let s = &self.s;
        let rows = tx
            .query_typed(
                &format!(
                    "SELECT c.partition, m.node_id FROM {s}.claims c
                       LEFT JOIN {s}.members m ON m.incarnation = c.holder AND m.ring_id = c.ring_id
                      WHERE c.ring_id = $1"
                ),
                &[(&self.ring_id, Type::TEXT)],
            )
            .map_err(|e| Error::db("read the claims in motion", e))?;
        let mut holders = Vec::new();
        for r in &rows {
            let p = r.get::<_, i32>(0).max(0) as usize;
            if holders.len() <= p {
                holders.resize(p + 1, None);
            }
            holders[p] = r.get(1);
        }
        Ok(Some((m, Motion { holders })))
    }

    /// What a ring's budget leaves one change to `t` (the table before
    /// it), read under the ring's lock: `None` without a budget.
    pub(super) fn allowance(
        &self,
        tx: &mut Tx<'_>,
        placement: &StoredPlacement,
        t: &Table,
    ) -> Result<Option<u32>> {
        Ok(self
            .read_motion(tx, placement)?
            .map(|(m, motion)| motion.left(m, t)))
    }

    /// The budget's next step, in one transaction under the ring's lock:
    /// when the stored table has moves pending and fewer than the budget
    /// are in motion, a change that makes the moves the budget allows now
    /// (epoch bump, change-log entry, table, one NOTIFY). Returns its
    /// epoch; `None` when there was nothing to do (no budget, balanced,
    /// or the budget spent).
    pub(crate) fn step(&self, client: &mut Client) -> Result<Option<u64>> {
        let s = &self.s;
        let mut tx = self.begin(client)?;
        let rows = tx
            .query_typed(
                &format!(
                    "WITH adv AS (SELECT pg_advisory_xact_lock($2), set_config('idle_in_transaction_session_timeout', $3, true))
                     SELECT r.epoch, r.placement, r.placement_table FROM {s}.rings r, adv
                     WHERE r.ring_id = $1 FOR NO KEY UPDATE OF r"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&self.ring_lock, Type::INT8),
                    (&self.ring_lock_idle(), Type::TEXT),
                ],
            )
            .map_err(|e| Error::db("lock the ring", e))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let epoch = row.get::<_, i64>(0) as u64;
        let placement = StoredPlacement::from_row(row.get(1), row.get(2))?;
        let StoredPlacement::Balanced(Some(stored), _) = &placement else {
            return Ok(None);
        };
        let mut t = Table::decode(stored)?;
        if t.pending_moves() == 0 {
            return Ok(None);
        }
        let Some((m, motion)) = self.read_motion(&mut tx, &placement)? else {
            return Ok(None);
        };
        let k = motion.left(m, &t);
        // A step once a quarter of the budget is free (or what is pending
        // fits): each take that completes does not cost a change of its
        // own (a join of 4 to 4 on 1024 partitions with a budget of 16
        // took 341 changes stepping at every free unit, for 512 moves).
        if k == 0 || (k < m.div_ceil(4) && u64::from(k) < t.pending_moves()) {
            return Ok(None);
        }
        let moved = t.apply_change_within(&[], &[], &[], None, (&[], &[]), Some(k));
        if moved.is_empty() {
            return Ok(None);
        }
        let set = ChangeSet {
            first_epoch: epoch + 1,
            removed: &[],
            eligible: &[],
            ineligible: &[],
            freeing: &[],
            added: &[],
            table: Some(t.encode()),
            pins: Default::default(),
            budgets: vec![Some(k)],
        };
        let mut values = RecordValues::default();
        let (tail, mut params) = self.record_changes(&set, 2, &mut values);
        params.insert(0, (&self.ring_id, Type::TEXT));
        let rows = tx
            .query_typed(&format!("WITH {tail}"), &params)
            .map_err(|e| Error::db("record the move budget's step", e))?;
        super::notified(rows.first().map_or(0, |r| r.get(0)));
        tx.commit()
            .map_err(|e| Error::db("commit the move budget's step", e))?;
        log::debug!(target: "leasering", ring = self.ring_id.as_str(), node = self.node_id.as_str();
            "ring {:?}: move budget step of {} partitions (allowance {k}, {} pending after it; epoch {})",
            self.ring_id, moved.len(), t.pending_moves(), epoch + 1);
        Ok(Some(epoch + 1))
    }
}
