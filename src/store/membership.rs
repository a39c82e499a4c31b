//! The membership transactions, serialised per ring: leave, the removal of
//! members whose lease expired in the database, and the change recording
//! they share with the join ([`super::join`]). They queue on a
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

use super::payload::{notify_payload, transaction_payload, Flips, Pins};
use super::{pg_i64, Store, Tx, CHANGES_KEPT};
use crate::balanced::Table;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::input::Cleaned;

/// A typed parameter.
pub(super) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// `(position, node id)` pairs of a ring.
pub(super) type Vnodes = Vec<(u32, String)>;

/// The changes one transaction records: the expired or leaving members
/// removed (in the first change, which frees their claims) and the members
/// added, one change each, from epoch `first_epoch` on.
pub(super) struct ChangeSet<'a> {
    pub(super) first_epoch: u64,
    pub(super) removed: &'a [String],
    /// Members made eligible / ineligible (in the first change).
    pub(super) eligible: &'a [String],
    pub(super) ineligible: &'a [String],
    pub(super) freeing: &'a [i64],
    /// Node id, positions and metadata of each member added.
    pub(super) added: &'a [Added<'a>],
    /// The balanced placement's table after the last change, encoded
    /// (`None`: a hashed ring).
    pub(super) table: Option<Vec<u8>>,
    /// Partitions pinned and unpinned (in the first change).
    pub(super) pins: Pins<'a>,
    /// On a ring with a move budget, the moves between live members each
    /// change was allowed (by index; missing: none, no budget).
    pub(super) budgets: Vec<Option<u32>>,
}

pub(super) use super::payload::Added;

impl Store {
    /// The CTEs and final `SELECT` that record a set of changes, shared by
    /// every change transaction: the claims of the removed incarnations
    /// freed (a statement after the one that deleted their rows, so that it
    /// sees the takes that committed while the deletion waited for them;
    /// locked in partition order), epoch bump, one change-log entry per
    /// change (the log trimmed to the last `CHANGES_KEPT` entries) and one
    /// NOTIFY for the transaction, carrying its changes (or, when they do
    /// not fit, its last epoch). One NOTIFY per transaction, not per
    /// change: every NOTIFY wakes every listening backend of the database,
    /// and notifying commits serialise on one lock of the instance. The ring id is `$1`; the values
    /// follow the caller's parameters, from `$<first>` on. Returns the SQL
    /// and the parameters.
    pub(super) fn record_changes<'a>(
        &'a self,
        set: &'a ChangeSet<'a>,
        first: usize,
        values: &'a mut RecordValues,
    ) -> (String, Vec<Param<'a>>) {
        let s = &self.s;
        let [f, r, es, ads, fs, ts, ps, last, k, c, pls, mds, tbl, el, inel, aes, ats, pp, pn, up, bg] =
            std::array::from_fn(|i| first + i);
        let n = set.added.len().max(1);
        for i in 0..n {
            let epoch = set.first_epoch + i as u64;
            let first_change = i == 0;
            let removed: &[String] = if first_change { set.removed } else { &[] };
            let added = set.added.get(i).copied();
            values.epochs.push(pg_i64(epoch));
            values.from.push(values.positions.len() as i32 + 1);
            if let Some((name, positions, md, eligible, attrs)) = added {
                values.added.push(Some(name.to_string()));
                values.positions.extend(positions.iter().map(|p| *p as i32));
                values.metadata.push(md.map(str::to_string));
                values.added_eligible.push(eligible);
                values.attrs.push(attrs.map(str::to_string));
            } else {
                values.added.push(None);
                values.metadata.push(None);
                values.added_eligible.push(true);
                values.attrs.push(None);
            }
            values.to.push(values.positions.len() as i32);
            let flips = Flips {
                eligible: if first_change { set.eligible } else { &[] },
                ineligible: if first_change { set.ineligible } else { &[] },
                pins: if first_change {
                    set.pins
                } else {
                    Pins::default()
                },
                budget: set.budgets.get(i).copied().flatten(),
            };
            values
                .budgets
                .push(flips.budget.map(|k| k.min(i32::MAX as u32) as i32));
            values
                .payloads
                .push(notify_payload(&self.ring_id, epoch, removed, flips, added));
        }
        values.pinned = set.pins.pinned.iter().map(|(p, _)| *p as i32).collect();
        values.pinned_to = set.pins.pinned.iter().map(|(_, n)| n.clone()).collect();
        values.unpinned = set.pins.unpinned.iter().map(|p| *p as i32).collect();
        values.last = pg_i64(set.first_epoch + n as u64 - 1);
        values.payload = transaction_payload(&values.payloads);
        // Nothing to free (a join without expired members, an eligibility
        // change, a pin): no scan of the ring's claims (0.8 ms at 1024
        // partitions, measured with auto_explain; the parameter stays,
        // unused, typed).
        let free = if set.freeing.is_empty() {
            format!("lk AS (SELECT NULL::int AS p WHERE ${f}::int8[] IS NULL), freed AS (SELECT 1)")
        } else {
            format!(
                "lk AS (SELECT partition AS p FROM {s}.claims WHERE ring_id = $1 AND holder = ANY(${f})
                        ORDER BY partition FOR UPDATE),
                 freed AS (UPDATE {s}.claims c SET holder = NULL, released_at = now()
                           FROM lk WHERE c.ring_id = $1 AND c.partition = lk.p)"
            )
        };
        let sql = format!(
            "{free},
             bump AS (UPDATE {s}.rings SET epoch = ${last}, changed_at = now(),
                             placement_table = COALESCE(${tbl}, placement_table)
                      WHERE ring_id = $1),
             ins AS (INSERT INTO {s}.changes (ring_id, epoch, removed, added, positions, metadata,
                                              eligible, ineligible, added_eligible, added_attrs,
                                              pinned, pinned_to, unpinned, budget)
                     SELECT $1, c.e, CASE WHEN c.o = 1 THEN ${r} ELSE '{{}}'::text[] END, c.a,
                            COALESCE((${ps}::int4[])[c.f:c.t], '{{}}'), c.md,
                            CASE WHEN c.o = 1 THEN ${el} ELSE '{{}}'::text[] END,
                            CASE WHEN c.o = 1 THEN ${inel} ELSE '{{}}'::text[] END, c.ae, c.at,
                            CASE WHEN c.o = 1 THEN ${pp}::int4[] ELSE '{{}}'::int4[] END,
                            CASE WHEN c.o = 1 THEN ${pn}::text[] ELSE '{{}}'::text[] END,
                            CASE WHEN c.o = 1 THEN ${up}::int4[] ELSE '{{}}'::int4[] END, c.bg
                     FROM unnest(${es}::int8[], ${ads}::text[], ${fs}::int4[], ${ts}::int4[], ${mds}::text[],
                                 ${aes}::bool[], ${ats}::text[], ${bg}::int4[])
                          WITH ORDINALITY AS c(e, a, f, t, md, ae, at, bg, o)),
             trim AS (DELETE FROM {s}.changes WHERE ring_id = $1 AND epoch <= ${last} - ${k})
             SELECT (SELECT count(pg_notify(${c}, ${pls}::text)))"
        );
        let params: Vec<Param<'a>> = vec![
            (&set.freeing, Type::INT8_ARRAY),
            (&set.removed, Type::TEXT_ARRAY),
            (&values.epochs, Type::INT8_ARRAY),
            (&values.added, Type::TEXT_ARRAY),
            (&values.from, Type::INT4_ARRAY),
            (&values.to, Type::INT4_ARRAY),
            (&values.positions, Type::INT4_ARRAY),
            (&values.last, Type::INT8),
            (&CHANGES_KEPT, Type::INT8),
            (&self.channel, Type::TEXT),
            (&values.payload, Type::TEXT),
            (&values.metadata, Type::TEXT_ARRAY),
            (&set.table, Type::BYTEA),
            (&set.eligible, Type::TEXT_ARRAY),
            (&set.ineligible, Type::TEXT_ARRAY),
            (&values.added_eligible, Type::BOOL_ARRAY),
            (&values.attrs, Type::TEXT_ARRAY),
            (&values.pinned, Type::INT4_ARRAY),
            (&values.pinned_to, Type::TEXT_ARRAY),
            (&values.unpinned, Type::INT4_ARRAY),
            (&values.budgets, Type::INT4_ARRAY),
        ];
        (sql, params)
    }

    /// Records a change that removed members (leave, cleanup) in one
    /// statement.
    fn commit_removal(
        &self,
        tx: &mut Tx<'_>,
        epoch: u64,
        locked: &Locked,
        freeing: &[i64],
    ) -> Result<()> {
        let removed = &locked.removed;
        let mut budget = None;
        let table = match &locked.placement {
            StoredPlacement::Hashed => None,
            StoredPlacement::Balanced(table, _) => {
                let mut t = self.table_or_empty(table.as_deref())?;
                budget = self.allowance(tx, &locked.placement, &t)?;
                t.apply_change_within(removed, &[], &[], None, (&[], &[]), budget);
                Some(t.encode())
            }
        };
        let set = ChangeSet {
            first_epoch: epoch,
            removed,
            eligible: &[],
            ineligible: &[],
            freeing,
            added: &[],
            table,
            pins: Pins::default(),
            budgets: vec![budget],
        };
        let mut values = RecordValues::default();
        let (tail, mut params) = self.record_changes(&set, 2, &mut values);
        params.insert(0, (&self.ring_id, Type::TEXT));
        let rows = tx
            .query_typed(&format!("WITH {tail}"), &params)
            .map_err(|e| Error::db("record the change", e))?;
        super::notified(rows.first().map_or(0, |r| r.get(0)));
        Ok(())
    }

    /// Locks the ring row and deletes the members matching `which` (an SQL
    /// condition on `m`, with `$1` the ring id and `$2` this member's node
    /// id), in one statement. Returns the ring's epoch (`None`: no such
    /// ring), its placement, and the deleted members' node ids and
    /// incarnations.
    pub(super) fn lock_and_delete(&self, tx: &mut Tx<'_>, which: &str) -> Result<Locked> {
        self.lock_and_delete_with(tx, which, true)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Database,
                "remove members: the ring's lock was not taken",
            )
        })
    }

    /// [`Store::lock_and_delete`], waiting for the ring's lock or (`wait`
    /// false) only trying it: then `None` when someone else holds it, and
    /// nothing done.
    fn lock_and_delete_with(
        &self,
        tx: &mut Tx<'_>,
        which: &str,
        wait: bool,
    ) -> Result<Option<Locked>> {
        let s = &self.s;
        let got = if wait {
            "(SELECT true FROM (SELECT pg_advisory_xact_lock($3)) l)"
        } else {
            "pg_try_advisory_xact_lock($3)"
        };
        let rows = tx
            .query_typed(
                &format!(
                    "WITH adv AS (SELECT {got} AS got, set_config('idle_in_transaction_session_timeout', $4, true)),
                          lk AS (SELECT r.epoch, r.placement, r.placement_table FROM {s}.rings r, adv
                                 WHERE adv.got AND r.ring_id = $1 FOR NO KEY UPDATE OF r),
                          d AS (DELETE FROM {s}.members m USING lk WHERE m.ring_id = $1 AND {which}
                                RETURNING m.node_id, m.incarnation)
                     SELECT (SELECT epoch FROM lk), d.node_id, d.incarnation,
                            (SELECT placement FROM lk), (SELECT placement_table FROM lk),
                            (SELECT got FROM adv)
                     FROM (SELECT 1) one LEFT JOIN d ON true"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&self.node_id, Type::TEXT),
                    (&self.ring_lock, Type::INT8),
                    (&self.ring_lock_idle(), Type::TEXT),
                ],
            )
            .map_err(|e| Error::db("remove members", e))?;
        if !rows.first().is_some_and(|r| r.get::<_, bool>(5)) {
            return Ok(None);
        }
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
        let placement = match rows.first() {
            Some(r) => StoredPlacement::from_row(r.get(3), r.get(4))?,
            None => StoredPlacement::Hashed,
        };
        Ok(Some(Locked {
            epoch,
            removed,
            incarnations,
            placement,
        }))
    }

    /// The stored balanced table (or the empty one of a ring nobody has
    /// joined), checked against this ring's size.
    pub(super) fn table_or_empty(&self, stored: Option<&[u8]>) -> Result<Table> {
        let Some(bytes) = stored else {
            return Ok(Table::empty(self.ring_size));
        };
        let t = Table::decode(bytes)?;
        if t.ring_size() != self.ring_size {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "ring {:?}: its stored placement table has {} partitions, the ring {}",
                    self.ring_id,
                    t.ring_size(),
                    self.ring_size
                ),
            ));
        }
        Ok(t)
    }

    /// Graceful leave, in four round trips: begin; lock the ring and delete
    /// this member and its vnodes; free its claims, bump the epoch and
    /// notify; commit. Returns the new epoch, or `None` if the member was
    /// already gone.
    pub(crate) fn leave(&self, client: &mut Client) -> Result<Option<u64>> {
        self.remove_where(client, "m.node_id = $2", || {})
    }

    /// [`Store::leave`], calling `locked` once the ring's lock is held and
    /// before the claims are freed: a member that stops without a drain
    /// keeps its partitions until then, so that they are active nowhere
    /// only for the rest of this transaction — not for its wait on the
    /// ring's lock behind other joins and leaves (issue 17: in bursts of
    /// joins and leaves that wait was most of a leaver's partitions'
    /// uncovered time). `locked` is called on every path that gets the
    /// lock, also when nothing is left to delete.
    pub(crate) fn leave_releasing(
        &self,
        client: &mut Client,
        locked: impl FnOnce(),
    ) -> Result<Option<u64>> {
        self.remove_where(client, "m.node_id = $2", locked)
    }

    /// Withdraws the join of incarnation `incarnation` after a `start()`
    /// that failed (issue 17): its request, if it is still pending, and its
    /// member row, if an absorber inserted one after all (the answer was
    /// lost with the connection). Either would otherwise be absorbed or
    /// stay as a ghost member that nobody renews, holding its share of the
    /// ring for a TTL. Returns the epoch of the removal, if there was a row
    /// to remove.
    pub(crate) fn withdraw_join(
        &self,
        client: &mut Client,
        incarnation: i64,
    ) -> Result<Option<u64>> {
        // An absorber that read the request holds its row: this waits for
        // its commit, and then finds the request gone and the member in.
        let mut tx = self.begin(client)?;
        tx.query_typed(
            &format!(
                "DELETE FROM {}.join_requests WHERE incarnation = $1",
                self.s
            ),
            &[(&incarnation, Type::INT8)],
        )
        .map_err(|e| Error::db("withdraw the join request", e))?;
        tx.commit()
            .map_err(|e| Error::db("withdraw the join request", e))?;
        self.remove_where(client, &format!("m.incarnation = {incarnation}"), || {})
    }

    /// Removes the members matching `which` (see [`Store::lock_and_delete`])
    /// in one transaction under the ring's lock: frees their claims, bumps
    /// the epoch and notifies. `None`: nobody matched.
    fn remove_where(
        &self,
        client: &mut Client,
        which: &str,
        on_lock: impl FnOnce(),
    ) -> Result<Option<u64>> {
        let mut tx = self.begin(client)?;
        let locked = self.lock_and_delete(&mut tx, which)?;
        // The deletion is not visible to anyone before the commit below;
        // the claims are freed (and the ring told) by its second statement.
        on_lock();
        let Some(epoch) = locked.epoch.filter(|_| !locked.removed.is_empty()) else {
            return Ok(None);
        };
        self.commit_removal(&mut tx, epoch + 1, &locked, &locked.incarnations)?;
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
                    "SELECT (SELECT node_id FROM {s}.members WHERE ring_id = $1 AND expires_at <= now() LIMIT 1),
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
        if let Some(expired) = row.get::<_, Option<String>>(0) {
            // Without waiting for the ring's lock: its holder is a
            // membership transaction — a batch of joins removes expired
            // members itself — and a cleanup waiting behind joins (seconds,
            // at a cold start of hundreds) kept the connection its client's
            // takes needed. Busy: looked at again shortly.
            let Some(locked) =
                self.lock_and_delete_with(&mut tx, "m.expires_at <= now()", false)?
            else {
                out.next_expiry = Some((expired, CLEANUP_BUSY_RETRY_MS));
                return Ok(out);
            };
            if let (Some(epoch), false) = (locked.epoch, locked.removed.is_empty()) {
                self.commit_removal(&mut tx, epoch + 1, &locked, &locked.incarnations)?;
                out.epoch = Some(epoch + 1);
                out.removed = locked.removed;
            }
        }
        tx.commit()
            .map_err(|e| Error::db("commit the cleanup", e))?;
        Ok(out)
    }
}

/// What changes a member's eligibility (issue 19): its own readiness, or
/// an operator's cordon of its node id.
#[derive(Debug, Clone, Copy)]
enum EligibilitySource {
    Ready(bool),
    Cordon(bool),
}

impl Store {
    /// This member's readiness ([`RingNode::set_ready`](crate::RingNode::set_ready)):
    /// remembered (the next join, a rejoin after an eviction included, files
    /// it) and written under the ring's lock — to its member row, and to a
    /// join request still pending. Returns the epoch of the change if its
    /// eligibility changed (a cordoned member's readiness changes nothing).
    pub(crate) fn set_ready(&self, client: &mut Client, ready: bool) -> Result<Option<u64>> {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
        // No ring: nothing to write (the next join files the readiness).
        Ok(self
            .change_eligibility(client, EligibilitySource::Ready(ready))?
            .flatten())
    }

    /// Cordons (`yes`) or uncordons this store's node id, stored whether or
    /// not it is a member. Returns the epoch of the change if a member's
    /// eligibility changed; an error naming the ring if there is no such
    /// ring.
    pub(crate) fn set_cordon(&self, client: &mut Client, yes: bool) -> Result<Option<u64>> {
        self.change_eligibility(client, EligibilitySource::Cordon(yes))?
            .ok_or_else(|| {
                Error::invalid(
                    "ring_id",
                    format!(
                        "no ring {:?} in schema {}: cannot cordon node {:?}",
                        self.ring_id, self.schema, self.node_id
                    ),
                )
            })
    }

    /// Writes an eligibility source of `self.node_id` in one transaction
    /// under the ring's lock and, if the member's eligibility flipped,
    /// records it as a membership change: epoch bump, one change-log entry,
    /// the balanced table updated (an ineligible member leaves it, an
    /// eligible one joins), one NOTIFY — so that the member losing
    /// partitions drains them and the others take them, as after a join or
    /// a leave (the claim model's `note_eligibility`). `None`: no such
    /// ring; `Some(None)`: nothing flipped.
    fn change_eligibility(
        &self,
        client: &mut Client,
        source: EligibilitySource,
    ) -> Result<Option<Option<u64>>> {
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
        // The member's eligibility before (the snapshot's: it changes only
        // under the ring's lock, held) and after, and its weight.
        let tail = "SELECT (SELECT eligible FROM old), (SELECT eligible FROM up),
                           (SELECT count(*) FROM {s}.vnodes WHERE ring_id = $1 AND node_id = $2),
                           (SELECT attrs FROM {s}.members WHERE ring_id = $1 AND node_id = $2)";
        let old = format!(
            "old AS (SELECT eligible FROM {s}.members WHERE ring_id = $1 AND node_id = $2)"
        );
        let (sql, yes) = match source {
            EligibilitySource::Ready(yes) => (
                format!(
                    "WITH {old},
                          jr AS (UPDATE {s}.join_requests SET ready = $3
                                 WHERE ring_id = $1 AND node_id = $2 AND refused IS NULL),
                          up AS (UPDATE {s}.members m SET ready = $3,
                                        eligible = $3 AND NOT EXISTS (SELECT 1 FROM {s}.cordons c
                                                                      WHERE c.ring_id = $1 AND c.node_id = $2)
                                 WHERE m.ring_id = $1 AND m.node_id = $2 RETURNING m.eligible)
                     {}",
                    tail.replace("{s}", s)
                ),
                yes,
            ),
            EligibilitySource::Cordon(yes) => (
                format!(
                    "WITH {old},
                          ins AS (INSERT INTO {s}.cordons (ring_id, node_id) SELECT $1, $2 WHERE $3
                                  ON CONFLICT DO NOTHING),
                          del AS (DELETE FROM {s}.cordons WHERE ring_id = $1 AND node_id = $2 AND NOT $3),
                          up AS (UPDATE {s}.members m SET eligible = m.ready AND NOT $3
                                 WHERE m.ring_id = $1 AND m.node_id = $2 RETURNING m.eligible)
                     {}",
                    tail.replace("{s}", s)
                ),
                yes,
            ),
        };
        let rows = tx
            .query_typed(
                &sql,
                &[
                    (&self.ring_id, Type::TEXT),
                    (&self.node_id, Type::TEXT),
                    (&yes, Type::BOOL),
                ],
            )
            .map_err(|e| Error::db("write the member's eligibility", e))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Database, "write eligibility: no row"))?;
        let (before, after): (Option<bool>, Option<bool>) = (row.get(0), row.get(1));
        let weight = row.get::<_, i64>(2) as u32;
        let attrs = crate::attrs::decode(row.get::<_, Option<&str>>(3));
        let flipped = match (before, after) {
            (Some(b), Some(a)) if a != b => Some(a),
            _ => None,
        };
        let Some(now_eligible) = flipped else {
            tx.commit()
                .map_err(|e| Error::db("commit the eligibility", e))?;
            return Ok(Some(None));
        };
        let names = [self.node_id.clone()];
        let (eligible, ineligible): (&[String], &[String]) = if now_eligible {
            (&names, &[])
        } else {
            (&[], &names)
        };
        let mut budget = None;
        let table = match &placement {
            StoredPlacement::Hashed => None,
            StoredPlacement::Balanced(stored, _) => {
                let mut t = self.table_or_empty(stored.as_deref())?;
                budget = self.allowance(&mut tx, &placement, &t)?;
                let joining: Vec<(&str, u32, crate::attrs::MemberAttrs)> = eligible
                    .iter()
                    .map(|n| (n.as_str(), weight, attrs.clone()))
                    .collect();
                t.apply_change_within(&[], ineligible, &joining, None, (&[], &[]), budget);
                Some(t.encode())
            }
        };
        let set = ChangeSet {
            first_epoch: epoch + 1,
            removed: &[],
            eligible,
            ineligible,
            freeing: &[],
            added: &[],
            table,
            pins: Pins::default(),
            budgets: vec![budget],
        };
        let mut values = RecordValues::default();
        let (tail, mut params) = self.record_changes(&set, 2, &mut values);
        params.insert(0, (&self.ring_id, Type::TEXT));
        let rows = tx
            .query_typed(&format!("WITH {tail}"), &params)
            .map_err(|e| Error::db("record the eligibility change", e))?;
        super::notified(rows.first().map_or(0, |r| r.get(0)));
        tx.commit()
            .map_err(|e| Error::db("commit the eligibility change", e))?;
        log::info!(target: "leasering", ring = self.ring_id.as_str(), node = self.node_id.as_str();
            "ring {:?}: node {} is now {} (epoch {})", self.ring_id, self.node_id,
            if now_eligible { "eligible" } else { "ineligible" }, epoch + 1);
        Ok(Some(Some(epoch + 1)))
    }
}

/// When a cleanup found the ring's lock held: look again this many
/// milliseconds later.
const CLEANUP_BUSY_RETRY_MS: f64 = 100.0;

/// What [`Store::lock_and_delete`] found and did.
pub(super) struct Locked {
    /// The ring's epoch; `None`: no such ring.
    pub(super) epoch: Option<u64>,
    pub(super) removed: Vec<String>,
    pub(super) incarnations: Vec<i64>,
    pub(super) placement: StoredPlacement,
}

/// A ring's placement as stored: balanced with its table (`None` until
/// someone joins) and its move budget.
pub(super) enum StoredPlacement {
    Hashed,
    Balanced(Option<Vec<u8>>, Option<u32>),
}

/// The text of a ring's placement in `rings.placement` and
/// `join_requests.placement`: `hashed`, `balanced`, or
/// `balanced max_moving=<m>` (issue 19: the move budget is stored with the
/// placement, so that the join compares both in one and a mismatch is
/// refused like a placement's).
pub(crate) fn placement_text(p: crate::Placement, max_moving: Option<u32>) -> String {
    match max_moving {
        Some(m) if p == crate::Placement::Balanced => format!("{p} max_moving={m}"),
        _ => p.to_string(),
    }
}

/// The placement and move budget of a [`placement_text`]; `None` for a
/// text this version does not know.
pub(crate) fn parse_placement_text(text: &str) -> Option<(crate::Placement, Option<u32>)> {
    match text.split_once(' ') {
        None => text.parse().ok().map(|p| (p, None)),
        Some(("balanced", budget)) => {
            let m = budget.strip_prefix("max_moving=")?.parse::<u32>().ok()?;
            Some((crate::Placement::Balanced, Some(m)))
        }
        Some(_) => None,
    }
}

impl StoredPlacement {
    pub(super) fn from_row(
        name: Option<String>,
        table: Option<Vec<u8>>,
    ) -> Result<StoredPlacement> {
        let Some(name) = name else {
            return Ok(StoredPlacement::Hashed);
        };
        match parse_placement_text(&name) {
            Some((crate::Placement::Hashed, _)) => Ok(StoredPlacement::Hashed),
            Some((crate::Placement::Balanced, budget)) => {
                Ok(StoredPlacement::Balanced(table, budget))
            }
            None => Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "the ring's stored placement {name:?} is unknown to this version of leasering"
                ),
            )),
        }
    }

    /// As [`placement_text`] writes it.
    pub(super) fn text(&self) -> String {
        match self {
            StoredPlacement::Hashed => placement_text(crate::Placement::Hashed, None),
            StoredPlacement::Balanced(_, m) => placement_text(crate::Placement::Balanced, *m),
        }
    }

    /// The ring's move budget.
    pub(super) fn max_moving(&self) -> Option<u32> {
        match self {
            StoredPlacement::Hashed => None,
            StoredPlacement::Balanced(_, m) => *m,
        }
    }
}

/// The values [`Store::record_changes`] computes, kept alive for its
/// parameters.
#[derive(Default)]
pub(super) struct RecordValues {
    epochs: Vec<i64>,
    added: Vec<Option<String>>,
    from: Vec<i32>,
    to: Vec<i32>,
    positions: Vec<i32>,
    payloads: Vec<String>,
    payload: String,
    metadata: Vec<Option<String>>,
    added_eligible: Vec<bool>,
    attrs: Vec<Option<String>>,
    pinned: Vec<i32>,
    pinned_to: Vec<String>,
    unpinned: Vec<i32>,
    budgets: Vec<Option<i32>>,
    last: i64,
}
