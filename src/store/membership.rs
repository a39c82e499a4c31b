//! The membership transactions, serialised per ring: join, leave, and the
//! removal of members whose lease expired in the database. They queue on a
//! transaction-scoped advisory lock of the ring before they touch its row:
//! hundreds of members joining at once queued on the row lock itself, and
//! every commit woke every waiter to contend for the row again (the
//! database's lock manager was most of its CPU); an advisory lock hands
//! itself to one waiter at a time. Every change bumps the epoch,
//! appends to the change log and notifies, in the same transaction; a
//! removed member's claims are freed in it too.
//!
//! Every statement here is sent typed and unnamed (`query_typed`): one
//! round trip each, no prepared statement left on a connection the pool
//! hands to others (and nothing a pooler in transaction mode would refuse).

use postgres::types::{ToSql, Type};
use postgres::Client;

use super::payload::notify_payload;
use super::{pg_i64, Store, Tx, CHANGES_KEPT};
use crate::error::{Error, ErrorKind, Result};
use crate::placement::choose_positions;
use crate::protocol::input::{Cleaned, Joined};
use crate::ring::RingView;

/// A typed parameter.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// `(position, node id)` pairs of a ring.
type Vnodes = Vec<(u32, String)>;

/// What a change statement records besides the caller's own CTEs: the
/// removed members (whose claims it frees) and the one added.
struct ChangeRecord<'a> {
    epoch: u64,
    removed: &'a [String],
    freeing: &'a [i64],
    added: Option<(&'a str, &'a [u32])>,
}

impl Store {
    /// The CTEs and final `SELECT` that record a change, shared by every
    /// change transaction: the claims of the removed incarnations freed (a
    /// statement after the one that deleted their rows, so that it sees
    /// the takes that committed while the deletion waited for them; locked
    /// in partition order), epoch bump, change-log entry (the log trimmed to
    /// the last `CHANGES_KEPT` entries) and the NOTIFY carrying the change.
    /// The ring id is `$1`; the record's values follow the caller's
    /// parameters, from `$<first>` on. Returns the SQL and the parameters.
    fn record_change<'a>(
        &'a self,
        rec: &'a ChangeRecord<'a>,
        first: usize,
        values: &'a mut RecordValues,
    ) -> (String, Vec<Param<'a>>) {
        let s = &self.s;
        let [f, e, r, a, ps, k, c, pl] = std::array::from_fn(|i| first + i);
        values.epoch = pg_i64(rec.epoch);
        values.positions = rec
            .added
            .map(|(_, ps)| ps.iter().map(|p| *p as i32).collect())
            .unwrap_or_default();
        values.payload = notify_payload(&self.ring_id, rec.epoch, rec.removed, rec.added);
        values.added = rec.added.map(|(n, _)| n.to_string());
        let sql = format!(
            "lk AS (SELECT ctid AS tid FROM {s}.claims WHERE ring_id = $1 AND holder = ANY(${f})
                    ORDER BY partition FOR UPDATE),
             freed AS (UPDATE {s}.claims c SET holder = NULL, released_at = now()
                       WHERE c.ctid = ANY(ARRAY(SELECT tid FROM lk))),
             bump AS (UPDATE {s}.rings SET epoch = ${e}, changed_at = now() WHERE ring_id = $1),
             ins AS (INSERT INTO {s}.changes (ring_id, epoch, removed, added, positions)
                     VALUES ($1, ${e}, ${r}, ${a}, ${ps})),
             trim AS (DELETE FROM {s}.changes WHERE ring_id = $1 AND epoch <= ${e} - ${k})
             SELECT pg_notify(${c}, ${pl})"
        );
        let params: Vec<Param<'a>> = vec![
            (&rec.freeing, Type::INT8_ARRAY),
            (&values.epoch, Type::INT8),
            (&rec.removed, Type::TEXT_ARRAY),
            (&values.added, Type::TEXT),
            (&values.positions, Type::INT4_ARRAY),
            (&CHANGES_KEPT, Type::INT8),
            (&self.channel, Type::TEXT),
            (&values.payload, Type::TEXT),
        ];
        (sql, params)
    }

    /// Records a change that removed members (leave, cleanup) in one
    /// statement.
    fn commit_removal(
        &self,
        tx: &mut Tx<'_>,
        epoch: u64,
        removed: &[String],
        freeing: &[i64],
    ) -> Result<()> {
        let rec = ChangeRecord {
            epoch,
            removed,
            freeing,
            added: None,
        };
        let mut values = RecordValues::default();
        let (tail, mut params) = self.record_change(&rec, 2, &mut values);
        params.insert(0, (&self.ring_id, Type::TEXT));
        tx.query_typed(&format!("WITH {tail}"), &params)
            .map_err(|e| Error::db("record the change", e))?;
        Ok(())
    }

    /// Locks the ring row and deletes the members matching `which` (an SQL
    /// condition on `m`, with `$1` the ring id and `$2` this member's node
    /// id), in one statement. Returns the ring's epoch (`None`: no such
    /// ring) and the deleted members' node ids and incarnations.
    fn lock_and_delete(
        &self,
        tx: &mut Tx<'_>,
        which: &str,
    ) -> Result<(Option<u64>, Vec<String>, Vec<i64>)> {
        let s = &self.s;
        let rows = tx
            .query_typed(
                &format!(
                    "WITH adv AS (SELECT pg_advisory_xact_lock($3)),
                          lk AS (SELECT r.epoch FROM {s}.rings r, adv WHERE r.ring_id = $1 FOR NO KEY UPDATE OF r),
                          d AS (DELETE FROM {s}.members m USING lk WHERE m.ring_id = $1 AND {which}
                                RETURNING m.node_id, m.incarnation)
                     SELECT (SELECT epoch FROM lk), d.node_id, d.incarnation FROM (SELECT 1) one LEFT JOIN d ON true"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&self.node_id, Type::TEXT),
                    (&self.ring_lock, Type::INT8),
                ],
            )
            .map_err(|e| Error::db("remove members", e))?;
        let epoch = rows
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|e| e as u64);
        let removed = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(1))
            .collect();
        let incarnations = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<i64>>(2))
            .collect();
        Ok((epoch, removed, incarnations))
    }

    /// The join transaction (DESIGN §4 "Join"), in five round trips: begin
    /// (with its timeouts); create-or-lock the ring row; remove expired
    /// members, check the node id and read the ring (one snapshot, taken
    /// after the lock); insert the member and its vnodes, free the removed
    /// members' claims, record the change and notify (one statement);
    /// commit. The ring row stays locked for the last three only.
    pub(crate) fn join(&self, client: &mut Client) -> Result<Joined> {
        let mut tx = self.begin(client)?;
        let epoch = self.create_or_lock_ring(&mut tx)?;
        let (removed, gone, mut pairs) = self.read_ring_for_join(&mut tx)?;
        let positions = self.pick_positions(&pairs)?;
        let epoch = epoch + 1;
        let incarnation = self.insert_member(&mut tx, epoch, &positions, &removed, &gone)?;
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
        let size = self.ring_size as i32;
        let rows = tx
            .query_typed(
                &format!(
                    "INSERT INTO {s}.rings AS r (ring_id, ring_size)
                     SELECT $1, $2 FROM (SELECT pg_advisory_xact_lock($3)) adv
                     ON CONFLICT (ring_id) DO UPDATE SET epoch = r.epoch
                     RETURNING r.ring_size, r.epoch"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&size, Type::INT4),
                    (&self.ring_lock, Type::INT8),
                ],
            )
            .map_err(|e| Error::db("lock the ring", e))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Database, "lock the ring: no row"))?;
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
    /// has our node id or is of protocol version 1, and returns the removed
    /// members, their incarnations and the remaining vnodes (the removed
    /// members' vnodes go with them, ON DELETE CASCADE).
    fn read_ring_for_join(&self, tx: &mut Tx<'_>) -> Result<(Vec<String>, Vec<i64>, Vnodes)> {
        let s = &self.s;
        let rows = tx
            .query_typed(
                &format!(
                    "WITH gone AS (DELETE FROM {s}.members WHERE ring_id = $1 AND expires_at <= now()
                                   RETURNING node_id, incarnation)
                     SELECT 0, node_id, 0, incarnation FROM gone
                     UNION ALL
                     SELECT 1, node_id, 0, 0::bigint FROM {s}.members WHERE ring_id = $1 AND node_id = $2 AND expires_at > now()
                     UNION ALL
                     SELECT 3, node_id, 0, 0 FROM {s}.members WHERE ring_id = $1 AND protocol = 1 AND expires_at > now()
                     UNION ALL
                     SELECT 2, node_id, position, 0 FROM {s}.vnodes WHERE ring_id = $1"
                ),
                &[(&self.ring_id, Type::TEXT), (&self.node_id, Type::TEXT)],
            )
            .map_err(|e| Error::db("read the ring", e))?;
        let mut removed: Vec<String> = Vec::new();
        let mut gone: Vec<i64> = Vec::new();
        let mut older: Vec<String> = Vec::new();
        let mut vnodes: Vec<(u32, String)> = Vec::with_capacity(rows.len() + 8);
        for r in &rows {
            match r.get::<_, i32>(0) {
                0 => {
                    removed.push(r.get(1));
                    gone.push(r.get(3));
                }
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
        Ok((removed, gone, vnodes))
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

    /// Inserts the member (its lease from the database's clock, a fresh
    /// incarnation) and its vnodes, frees the claims of the expired members
    /// the join removed, and records the change at `epoch`, in one
    /// statement. Returns the incarnation.
    fn insert_member(
        &self,
        tx: &mut Tx<'_>,
        epoch: u64,
        positions: &[u32],
        removed: &[String],
        gone: &[i64],
    ) -> Result<i64> {
        let s = &self.s;
        let pos_i32: Vec<i32> = positions.iter().map(|p| *p as i32).collect();
        let idx_i32: Vec<i32> = (0..positions.len() as i32).collect();
        let incarnation = crate::config::random_incarnation();
        let vnode_count = self.vnode_count as i32;
        let acked = pg_i64(epoch);
        let rec = ChangeRecord {
            epoch,
            removed,
            freeing: gone,
            added: Some((&self.node_id, positions)),
        };
        let mut values = RecordValues::default();
        let (tail, record) = self.record_change(&rec, 8, &mut values);
        let mut params: Vec<Param<'_>> = vec![
            (&self.ring_id, Type::TEXT),
            (&self.node_id, Type::TEXT),
            (&vnode_count, Type::INT4),
            (&acked, Type::INT8),
            (&self.ttl_s, Type::FLOAT8),
            (&pos_i32, Type::INT4_ARRAY),
            (&idx_i32, Type::INT4_ARRAY),
        ];
        params.extend(record);
        params.push((&incarnation, Type::INT8));
        let rows = tx
            .query_typed(
                &format!(
                    "WITH mem AS (INSERT INTO {s}.members (ring_id, node_id, vnode_count, acked_epoch, expires_at, incarnation, protocol)
                                  VALUES ($1, $2, $3, $4, now() + $5 * interval '1 second', $16, 2)
                                  RETURNING node_id, incarnation),
                          vn AS (INSERT INTO {s}.vnodes (ring_id, position, node_id, vnode_idx)
                                 SELECT $1, t.p, mem.node_id, t.i FROM mem, unnest($6::int[], $7::int[]) AS t(p, i)),
                          {tail}, (SELECT incarnation FROM mem)"
                ),
                &params,
            )
            .map_err(|e| Error::db("insert the member", e))?;
        rows.first()
            .map(|r| r.get(1))
            .ok_or_else(|| Error::new(ErrorKind::Database, "insert the member: no row"))
    }

    /// Graceful leave, in four round trips: begin; lock the ring and delete
    /// this member and its vnodes; free its claims, bump the epoch and
    /// notify; commit. Returns the new epoch, or `None` if the member was
    /// already gone.
    pub(crate) fn leave(&self, client: &mut Client) -> Result<Option<u64>> {
        let mut tx = self.begin(client)?;
        let (epoch, removed, incarnations) = self.lock_and_delete(&mut tx, "m.node_id = $2")?;
        let Some(epoch) = epoch.filter(|_| !removed.is_empty()) else {
            return Ok(None);
        };
        self.commit_removal(&mut tx, epoch + 1, &removed, &incarnations)?;
        tx.commit().map_err(|e| Error::db("commit the leave", e))?;
        Ok(Some(epoch + 1))
    }

    /// Removes every member whose lease has expired in the database (crash
    /// cleanup; idempotent). Checks without the ring lock first (and reads
    /// the next expiry of the others in the same statement), so that many
    /// members firing at once mostly do a cheap read.
    pub(crate) fn cleanup(&self, client: &mut Client) -> Result<Cleaned> {
        let s = &self.s;
        let mut tx = self.begin(client)?;
        let rows = tx
            .query_typed(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {s}.members WHERE ring_id = $1 AND expires_at <= now()),
                            n.node_id, n.ms
                     FROM (SELECT 1) one LEFT JOIN
                          (SELECT node_id, (extract(epoch FROM expires_at - now()) * 1000)::float8 AS ms
                           FROM {s}.members WHERE ring_id = $1 AND node_id <> $2 AND expires_at > now()
                           ORDER BY expires_at LIMIT 1) n ON true"
                ),
                &[(&self.ring_id, Type::TEXT), (&self.node_id, Type::TEXT)],
            )
            .map_err(|e| Error::db("look for expired members", e))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Database, "look for expired members: no row"))?;
        let mut out = Cleaned {
            next_expiry: row
                .get::<_, Option<String>>(1)
                .zip(row.get::<_, Option<f64>>(2)),
            ..Cleaned::default()
        };
        if row.get::<_, bool>(0) {
            let (epoch, removed, incarnations) =
                self.lock_and_delete(&mut tx, "m.expires_at <= now()")?;
            if let (Some(epoch), false) = (epoch, removed.is_empty()) {
                self.commit_removal(&mut tx, epoch + 1, &removed, &incarnations)?;
                out.epoch = Some(epoch + 1);
                out.removed = removed;
            }
        }
        tx.commit()
            .map_err(|e| Error::db("commit the cleanup", e))?;
        Ok(out)
    }
}

/// The values [`Store::record_change`] computes, kept alive for its
/// parameters.
#[derive(Default)]
struct RecordValues {
    epoch: i64,
    positions: Vec<i32>,
    payload: String,
    added: Option<String>,
}
