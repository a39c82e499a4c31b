//! Pins (issue 19): an operator's `leasering::pin` of a partition to a
//! node id, stored with the ring (`pins`) and applied as a membership
//! change, so that every member's placement table takes it at the same
//! epoch.

use postgres::types::Type;
use postgres::Client;

use super::membership::{ChangeSet, RecordValues, StoredPlacement};
use super::payload::Pins;
use super::Store;
use crate::balanced::Table;
use crate::error::{Error, ErrorKind, Result};

impl Store {
    /// Pins `partition` to `node` (`Some`) or unpins it (`None`), in one
    /// transaction under the ring's lock: the `pins` row written, and — if
    /// that changed anything — a membership change recorded (epoch bump,
    /// change-log entry with the pin, balanced table updated, one NOTIFY).
    /// Returns the change's epoch, `None` when nothing changed.
    pub(crate) fn set_pin(
        &self,
        client: &mut Client,
        partition: u32,
        node: Option<&str>,
    ) -> Result<Option<u64>> {
        let s = &self.s;
        let mut tx = self.begin(client)?;
        let rows = tx
            .query_typed(
                &format!(
                    "WITH adv AS (SELECT pg_advisory_xact_lock($2), set_config('idle_in_transaction_session_timeout', $3, true))
                     SELECT r.epoch, r.placement, r.placement_table, r.ring_size FROM {s}.rings r, adv
                     WHERE r.ring_id = $1 FOR NO KEY UPDATE OF r"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&self.ring_lock, Type::INT8),
                    (&self.ring_lock_idle(), Type::TEXT),
                ],
            )
            .map_err(|e| Error::db("lock the ring", e))?;
        let what = match node {
            Some(n) => format!("pin partition {partition} to node {n:?}"),
            None => format!("unpin partition {partition}"),
        };
        let Some(row) = rows.first() else {
            return Err(Error::invalid(
                "ring_id",
                format!(
                    "no ring {:?} in schema {}: cannot {what}",
                    self.ring_id, self.schema
                ),
            ));
        };
        let epoch = row.get::<_, i64>(0) as u64;
        let placement = StoredPlacement::from_row(row.get(1), row.get(2))?;
        let size = row.get::<_, i32>(3) as u32;
        let StoredPlacement::Balanced(stored, _) = &placement else {
            return Err(Error::invalid(
                "placement",
                format!(
                    "ring {:?} uses hashed placement, which is a function of the positions alone: \
                     cannot {what} (pins need Placement::Balanced)",
                    self.ring_id
                ),
            ));
        };
        if partition >= size {
            return Err(Error::invalid(
                "partition",
                format!(
                    "partition {partition} is out of range: ring {:?} has {size} partitions (0..={})",
                    self.ring_id,
                    size - 1
                ),
            ));
        }
        let p = partition as i32;
        let changed: bool = match node {
            Some(n) => tx
                .query_typed(
                    &format!(
                        "WITH old AS (SELECT node_id FROM {s}.pins WHERE ring_id = $1 AND partition = $2),
                              up AS (INSERT INTO {s}.pins (ring_id, partition, node_id) VALUES ($1, $2, $3)
                                     ON CONFLICT (ring_id, partition) DO UPDATE SET node_id = $3, pinned_at = now())
                         SELECT (SELECT node_id FROM old) IS DISTINCT FROM $3"
                    ),
                    &[(&self.ring_id, Type::TEXT), (&p, Type::INT4), (&n, Type::TEXT)],
                )
                .map_err(|e| Error::db("write the pin", e))?
                .first()
                .is_some_and(|r| r.get(0)),
            None => tx
                .query_typed(
                    &format!(
                        "WITH del AS (DELETE FROM {s}.pins WHERE ring_id = $1 AND partition = $2 RETURNING 1)
                         SELECT count(*) > 0 FROM del"
                    ),
                    &[(&self.ring_id, Type::TEXT), (&p, Type::INT4)],
                )
                .map_err(|e| Error::db("remove the pin", e))?
                .first()
                .is_some_and(|r| r.get(0)),
        };
        if !changed {
            tx.commit().map_err(|e| Error::db("commit the pin", e))?;
            return Ok(None);
        }
        let pinned: Vec<(u32, String)> = node
            .map(|n| vec![(partition, n.to_string())])
            .unwrap_or_default();
        let unpinned: Vec<u32> = if node.is_none() {
            vec![partition]
        } else {
            Vec::new()
        };
        let pins = Pins {
            pinned: &pinned,
            unpinned: &unpinned,
        };
        // The operator's store does not know the ring's size (its config
        // has the default): the ring's row does.
        let mut t = match stored.as_deref() {
            None => Table::empty(size),
            Some(bytes) => Table::decode(bytes)?,
        };
        if t.ring_size() != size {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "ring {:?}: its stored placement table has {} partitions, the ring {size}",
                    self.ring_id,
                    t.ring_size()
                ),
            ));
        }
        let budget = self.allowance(&mut tx, &placement, &t)?;
        t.apply_change_within(&[], &[], &[], None, (&pinned, &unpinned), budget);
        let set = ChangeSet {
            first_epoch: epoch + 1,
            removed: &[],
            eligible: &[],
            ineligible: &[],
            freeing: &[],
            added: &[],
            table: Some(t.encode()),
            pins,
            budgets: vec![budget],
        };
        let mut values = RecordValues::default();
        let (tail, mut params) = self.record_changes(&set, 2, &mut values);
        params.insert(0, (&self.ring_id, Type::TEXT));
        let rows = tx
            .query_typed(&format!("WITH {tail}"), &params)
            .map_err(|e| Error::db("record the pin", e))?;
        super::notified(rows.first().map_or(0, |r| r.get(0)));
        tx.commit().map_err(|e| Error::db("commit the pin", e))?;
        log::info!(target: "leasering", ring = self.ring_id.as_str();
            "ring {:?}: {what} (epoch {})", self.ring_id, epoch + 1);
        Ok(Some(epoch + 1))
    }

    /// Every pin of the ring: `(partition, node id)`, ascending.
    pub(crate) fn pins(
        &self,
        client: &mut impl postgres::GenericClient,
    ) -> Result<Vec<(u32, String)>> {
        let rows = client
            .query_typed(
                &format!(
                    "SELECT partition, node_id FROM {}.pins WHERE ring_id = $1 ORDER BY partition",
                    self.s
                ),
                &[(&self.ring_id, Type::TEXT)],
            )
            .map_err(|e| Error::db("read the pins", e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
            .collect())
    }
}
