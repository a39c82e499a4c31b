//! The membership transactions, each under the ring's row lock (which
//! serialises the ring's changes): join, leave, and the removal of members
//! whose lease expired in the database. Every change bumps the epoch,
//! appends to the change log and notifies, in the same transaction.

use postgres::Client;

use super::payload::notify_payload;
use super::{pg_i64, Store, Tx, CHANGES_KEPT};
use crate::error::{Error, ErrorKind, Result};
use crate::placement::choose_positions;
use crate::protocol::input::{Cleaned, Joined};
use crate::ring::RingView;

impl Store {
    /// The statement tail that records a change, shared by every change
    /// transaction: epoch bump, change-log entry (the log trimmed to the
    /// last `CHANGES_KEPT` entries) and the NOTIFY carrying the change —
    /// CTEs after the caller's own, then the final `SELECT pg_notify`. The
    /// ring id is `$1`; `p` names the other parameters' numbers.
    fn record_change_sql(&self, p: ChangeParams) -> String {
        let s = &self.s;
        format!(
            "bump AS (UPDATE {s}.rings SET epoch = ${e}, changed_at = now() WHERE ring_id = $1),
             ins AS (INSERT INTO {s}.changes (ring_id, epoch, removed, added, positions)
                     VALUES ($1, ${e}, ${r}, ${a}, ${ps})),
             trim AS (DELETE FROM {s}.changes WHERE ring_id = $1 AND epoch <= ${e} - ${k})
             SELECT pg_notify(${c}, ${pl})",
            e = p.epoch,
            r = p.removed,
            a = p.added,
            ps = p.positions,
            k = p.kept,
            c = p.channel,
            pl = p.payload,
        )
    }

    /// Records a change (see [`Store::record_change_sql`]) in one statement,
    /// inside the transaction that made it.
    fn commit_change(
        &self,
        tx: &mut Tx<'_>,
        epoch: u64,
        removed: &[String],
        added: Option<(&str, &[u32])>,
    ) -> Result<()> {
        let positions: Vec<i32> = added
            .map(|(_, ps)| ps.iter().map(|p| *p as i32).collect())
            .unwrap_or_default();
        let payload = notify_payload(&self.ring_id, epoch, removed, added);
        let tail = self.record_change_sql(ChangeParams {
            epoch: 2,
            removed: 3,
            added: 4,
            positions: 5,
            kept: 6,
            channel: 7,
            payload: 8,
        });
        tx.execute(
            &format!("WITH {tail}"),
            &[
                &self.ring_id,
                &pg_i64(epoch),
                &removed,
                &added.map(|(n, _)| n),
                &positions,
                &CHANGES_KEPT,
                &self.channel,
                &payload,
            ],
        )
        .map_err(|e| Error::db("record the change", e))?;
        Ok(())
    }

    fn lock_ring(&self, tx: &mut Tx<'_>) -> Result<Option<(u32, u64)>> {
        let row = tx
            .query_opt(
                &format!(
                    "SELECT ring_size, epoch FROM {}.rings WHERE ring_id = $1 FOR UPDATE",
                    self.s
                ),
                &[&self.ring_id],
            )
            .map_err(|e| Error::db("lock the ring", e))?;
        Ok(row.map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64)))
    }

    /// Removes the members whose lease has expired in the database. Their
    /// claims free themselves (`ON DELETE SET NULL`); they are locked first,
    /// in partition order — the order takes and releases lock them in — so
    /// that the cascade cannot deadlock with a take.
    fn delete_expired(&self, tx: &mut Tx<'_>) -> Result<Vec<String>> {
        let s = &self.s;
        let rows = tx
            .query(
                &format!(
                    "WITH lk AS (SELECT c.partition FROM {s}.claims c JOIN {s}.members m ON m.incarnation = c.holder
                                 WHERE c.ring_id = $1 AND m.ring_id = $1 AND m.expires_at <= now()
                                 ORDER BY c.partition FOR UPDATE OF c),
                          gone AS (DELETE FROM {s}.members WHERE ring_id = $1 AND expires_at <= now() RETURNING node_id)
                     SELECT NULL::text FROM (SELECT count(*) FROM lk) AS locked
                     UNION ALL
                     SELECT node_id FROM gone"
                ),
                &[&self.ring_id],
            )
            .map_err(|e| Error::db("remove expired members", e))?;
        Ok(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)).collect())
    }

    /// The join transaction (DESIGN §4 "Join"), in five round trips: begin
    /// (with its timeouts); create-or-lock the ring row; remove expired
    /// members, check the node id and read the ring (one snapshot, taken
    /// after the lock); insert the member, its vnodes and the change, bump
    /// the epoch and notify (one statement); commit. The ring row stays
    /// locked for the last three only.
    pub(crate) fn join(&self, client: &mut Client) -> Result<Joined> {
        let mut tx = self.begin(client)?;
        let epoch = self.create_or_lock_ring(&mut tx)?;
        let (removed, mut pairs) = self.read_ring_for_join(&mut tx)?;
        let positions = self.pick_positions(&pairs)?;
        let epoch = epoch + 1;
        let incarnation = self.insert_member(&mut tx, epoch, &positions, &removed)?;
        tx.commit().map_err(|e| Error::db("commit the join", e))?;
        pairs.extend(positions.iter().map(|p| (*p, self.node_id.clone())));
        let view = RingView::build(
            epoch,
            self.ring_size,
            pairs.iter().map(|(p, n)| (*p, n.as_str())),
        );
        Ok(Joined {
            view,
            positions,
            removed,
            incarnation,
        })
    }

    /// Creates the ring row or locks the existing one, checking its size;
    /// returns its epoch. `DO UPDATE` (a no-op) rather than `DO NOTHING`: it
    /// locks the row and returns it, so this is one statement.
    fn create_or_lock_ring(&self, tx: &mut Tx<'_>) -> Result<u64> {
        let s = &self.s;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO {s}.rings AS r (ring_id, ring_size) VALUES ($1, $2)
                     ON CONFLICT (ring_id) DO UPDATE SET epoch = r.epoch
                     RETURNING r.ring_size, r.epoch"
                ),
                &[&self.ring_id, &(self.ring_size as i32)],
            )
            .map_err(|e| Error::db("lock the ring", e))?;
        let (stored_size, epoch) = (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1) as u64);
        if stored_size != self.ring_size {
            return Err(Error::ring_size_mismatch(
                &self.ring_id,
                stored_size,
                self.ring_size,
            ));
        }
        Ok(epoch)
    }

    /// One snapshot, taken after the lock: removes the expired members
    /// (their deletion is not visible to the rest of the statement, hence
    /// `expires_at > now()` and the filter below), fails if a live member
    /// has our node id, and returns the removed members and the remaining
    /// vnodes (the removed members' vnodes go with them, ON DELETE CASCADE).
    fn read_ring_for_join(&self, tx: &mut Tx<'_>) -> Result<(Vec<String>, Vnodes)> {
        let s = &self.s;
        let rows = tx
            .query(
                &format!(
                    "WITH lk AS (SELECT c.partition FROM {s}.claims c JOIN {s}.members m ON m.incarnation = c.holder
                                 WHERE c.ring_id = $1 AND m.ring_id = $1 AND m.expires_at <= now()
                                 ORDER BY c.partition FOR UPDATE OF c),
                          gone AS (DELETE FROM {s}.members WHERE ring_id = $1 AND expires_at <= now() RETURNING node_id)
                     SELECT 4, NULL::text, count(*)::int FROM lk
                     UNION ALL
                     SELECT 0, node_id, 0 FROM gone
                     UNION ALL
                     SELECT 1, node_id, 0 FROM {s}.members WHERE ring_id = $1 AND node_id = $2 AND expires_at > now()
                     UNION ALL
                     SELECT 3, node_id, 0 FROM {s}.members WHERE ring_id = $1 AND protocol = 1 AND expires_at > now()
                     UNION ALL
                     SELECT 2, node_id, position FROM {s}.vnodes WHERE ring_id = $1"
                ),
                &[&self.ring_id, &self.node_id],
            )
            .map_err(|e| Error::db("read the ring", e))?;
        let mut removed: Vec<String> = Vec::new();
        let mut older: Vec<String> = Vec::new();
        let mut vnodes: Vec<(u32, String)> = Vec::with_capacity(rows.len() + 8);
        for r in &rows {
            match r.get::<_, i32>(0) {
                0 => removed.push(r.get(1)),
                1 => return Err(Error::node_id_in_use(&self.node_id, &self.ring_id)),
                2 => vnodes.push((r.get::<_, i32>(2) as u32, r.get(1))),
                3 => older.push(r.get(1)),
                _ => {}
            }
        }
        if !older.is_empty() {
            return Err(Error::protocol_mismatch(&self.ring_id, older));
        }
        vnodes.retain(|(_, n)| !removed.contains(n));
        Ok((removed, vnodes))
    }

    /// This member's positions among the free ones (DESIGN §2).
    fn pick_positions(&self, vnodes: &[(u32, String)]) -> Result<Vec<u32>> {
        let mut taken = vec![false; self.ring_size as usize];
        for (p, _) in vnodes {
            if let Some(t) = taken.get_mut(*p as usize) {
                *t = true;
            }
        }
        choose_positions(&self.node_id, self.vnode_count, self.ring_size, |p| {
            taken[p as usize]
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::RingFull,
                format!(
                    "ring {:?} has {} free positions, node {:?} needs vnode_count {}",
                    self.ring_id,
                    taken.iter().filter(|t| !**t).count(),
                    self.node_id,
                    self.vnode_count
                ),
            )
        })
    }

    /// Inserts the member (its lease from the database's clock) and its
    /// vnodes and records the change at `epoch`, in one statement.
    fn insert_member(
        &self,
        tx: &mut Tx<'_>,
        epoch: u64,
        positions: &[u32],
        removed: &[String],
    ) -> Result<i64> {
        let s = &self.s;
        let pos_i32: Vec<i32> = positions.iter().map(|p| *p as i32).collect();
        let idx_i32: Vec<i32> = (0..positions.len() as i32).collect();
        let incarnation = crate::config::random_incarnation();
        let payload = notify_payload(
            &self.ring_id,
            epoch,
            removed,
            Some((&self.node_id, positions)),
        );
        let tail = self.record_change_sql(ChangeParams {
            epoch: 4,
            removed: 8,
            added: 2,
            positions: 6,
            kept: 9,
            channel: 10,
            payload: 11,
        });
        let row = tx
            .query_one(
            &format!(
                "WITH mem AS (INSERT INTO {s}.members (ring_id, node_id, vnode_count, acked_epoch, expires_at, incarnation, protocol)
                              VALUES ($1, $2, $3, $4, now() + $5 * interval '1 second', $12, 2)
                              RETURNING node_id, incarnation),
                      vn AS (INSERT INTO {s}.vnodes (ring_id, position, node_id, vnode_idx)
                             SELECT $1, t.p, mem.node_id, t.i FROM mem, unnest($6::int[], $7::int[]) AS t(p, i)),
                      {tail}, (SELECT incarnation FROM mem)"
            ),
            &[
                &self.ring_id,
                &self.node_id,
                &(self.vnode_count as i32),
                &pg_i64(epoch),
                &self.ttl_s,
                &pos_i32,
                &idx_i32,
                &removed,
                &CHANGES_KEPT,
                &self.channel,
                &payload,
                &incarnation,
            ],
        )
        .map_err(|e| Error::db("insert the member", e))?;
        Ok(row.get(1))
    }

    /// Graceful leave: removes this member and its vnodes, bumps the epoch
    /// and notifies. Returns the new epoch, or `None` if the member was
    /// already gone.
    pub(crate) fn leave(&self, client: &mut Client) -> Result<Option<u64>> {
        let mut tx = self.begin(client)?;
        let Some((_, epoch)) = self.lock_ring(&mut tx)? else {
            return Ok(None);
        };
        // The member's claims free themselves with its row; locked first in
        // partition order (see `delete_expired`).
        let s = &self.s;
        let row = tx
            .query_one(
                &format!(
                    "WITH lk AS (SELECT c.partition FROM {s}.claims c JOIN {s}.members m ON m.incarnation = c.holder
                                 WHERE c.ring_id = $1 AND m.ring_id = $1 AND m.node_id = $2
                                 ORDER BY c.partition FOR UPDATE OF c),
                          d AS (DELETE FROM {s}.members WHERE ring_id = $1 AND node_id = $2 RETURNING 1)
                     SELECT (SELECT count(*) FROM lk), (SELECT count(*) FROM d)"
                ),
                &[&self.ring_id, &self.node_id],
            )
            .map_err(|e| Error::db("delete the member", e))?;
        if row.get::<_, i64>(1) == 0 {
            return Ok(None);
        }
        let removed = vec![self.node_id.clone()];
        self.commit_change(&mut tx, epoch + 1, &removed, None)?;
        tx.commit().map_err(|e| Error::db("commit the leave", e))?;
        Ok(Some(epoch + 1))
    }

    /// Removes every member whose lease has expired in the database (crash
    /// cleanup; idempotent). Checks without the ring lock first, so that
    /// many members firing at once mostly do a cheap read.
    pub(crate) fn cleanup(&self, client: &mut Client) -> Result<Cleaned> {
        let s = &self.s;
        let mut tx = self.begin(client)?;
        let any = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM {s}.members WHERE ring_id = $1 AND expires_at <= now())"),
                &[&self.ring_id],
            )
            .map_err(|e| Error::db("look for expired members", e))?
            .get::<_, bool>(0);
        let mut out = Cleaned::default();
        if any {
            if let Some((_, epoch)) = self.lock_ring(&mut tx)? {
                let removed = self.delete_expired(&mut tx)?;
                if !removed.is_empty() {
                    self.commit_change(&mut tx, epoch + 1, &removed, None)?;
                    out.epoch = Some(epoch + 1);
                    out.removed = removed;
                }
            }
        }
        let row = tx
            .query_opt(
                &format!(
                    "SELECT node_id, (extract(epoch FROM expires_at - now()) * 1000)::float8
                     FROM {s}.members WHERE ring_id = $1 AND node_id <> $2
                     ORDER BY expires_at LIMIT 1"
                ),
                &[&self.ring_id, &self.node_id],
            )
            .map_err(|e| Error::db("read the next expiry", e))?;
        out.next_expiry = row.map(|r| (r.get(0), r.get(1)));
        tx.commit()
            .map_err(|e| Error::db("commit the cleanup", e))?;
        Ok(out)
    }

    // ---- the per-member hot statements on a held connection -------------
}

/// `(position, node id)` pairs of a ring.
type Vnodes = Vec<(u32, String)>;

/// Parameter numbers of [`Store::record_change_sql`]'s values.
struct ChangeParams {
    epoch: u8,
    removed: u8,
    added: u8,
    positions: u8,
    kept: u8,
    channel: u8,
    payload: u8,
}
