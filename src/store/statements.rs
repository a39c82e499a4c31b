//! The statements a member's threads run on the connections they keep
//! ([`HeldConn`]): renewal with acknowledgement (and the barrier snapshot),
//! the one-row acknowledgement, the barrier read, the change-log catch-up
//! and the whole-ring read. Prepared once per connection, with generic
//! plans.

use postgres::fallible_iterator::FallibleIterator;
use postgres::Statement;

use super::payload::parse_payload;
use super::{pg_i64, Store};
use crate::error::{Error, Result};
use crate::protocol::input::{CatchUp, Notice, Renewal};
use crate::ring::{Change, RingView};

/// A pooled connection a thread keeps, with its prepared statements.
pub(crate) struct HeldConn {
    pub(crate) client: crate::pool::Conn,
    prepared: [Option<Statement>; 5],
}

/// The statements a held connection prepares (index into `prepared`).
#[derive(Clone, Copy)]
enum Held {
    Sync = 0,
    Ack = 1,
    Barrier = 2,
    Changes = 3,
    Full = 4,
}

impl Store {
    /// Prepares a connection a thread will keep: session timeouts, LISTEN
    /// (if wanted) and the prepared statements.
    pub(crate) fn hold(&self, mut client: crate::pool::Conn, listen: bool) -> Result<HeldConn> {
        // One round trip: session timeouts, generic plans (these statements
        // run thousands of times with the same shape; re-planning them was a
        // tenth of the database's CPU with hundreds of members) and LISTEN.
        // Statements are prepared on first use.
        let mut setup = format!(
            "{}; SET SESSION plan_cache_mode = force_generic_plan",
            self.timeouts_sql("SESSION")
        );
        if listen {
            setup.push_str(&format!("; LISTEN \"{}\"", self.channel));
        }
        client
            .batch_execute(&setup)
            .map_err(|e| Error::db("prepare the connection (timeouts, LISTEN)", e))?;
        Ok(HeldConn {
            client,
            prepared: Default::default(),
        })
    }

    /// The text of a statement a held connection prepares, and what it does.
    fn held_sql(&self, q: Held) -> (String, &'static str) {
        let s = &self.s;
        // The renewal and acknowledgement, shared by Sync and Ack: only this
        // member's row, only while its lease is live, not past the lag bound.
        let renew = format!(
            "u AS (
                   UPDATE {s}.members m SET
                     acked_epoch = GREATEST(m.acked_epoch, $3),
                     behind_since = CASE WHEN GREATEST(m.acked_epoch, $3) >= r.epoch THEN NULL
                                         ELSE COALESCE(m.behind_since, now()) END,
                     expires_at = CASE WHEN GREATEST(m.acked_epoch, $3) < r.epoch
                                        AND m.behind_since IS NOT NULL
                                        AND m.behind_since <= now() - $5 * interval '1 second'
                                       THEN m.expires_at
                                       ELSE now() + $4 * interval '1 second' END,
                     renewed_at = now()
                   FROM r
                   WHERE m.ring_id = $1 AND m.node_id = $2 AND m.expires_at > now()
                   RETURNING m.expires_at = now() + $4 * interval '1 second' AS renewed)"
        );
        match q {
            Held::Sync => (
                format!(
                    "WITH r AS (SELECT epoch FROM {s}.rings WHERE ring_id = $1),
                 {renew},
                 o AS (SELECT min(acked_epoch) FILTER (WHERE expires_at > now()) AS min_ack,
                              (array_agg(node_id ORDER BY expires_at))[1] AS next_node,
                              (extract(epoch FROM min(expires_at) - now()) * 1000)::float8 AS next_ms
                       FROM {s}.members WHERE ring_id = $1 AND node_id <> $2)
                 SELECT r.epoch, (SELECT renewed FROM u), o.min_ack, o.next_node, o.next_ms
                 FROM r CROSS JOIN o"
                ),
                "prepare the renewal",
            ),
            Held::Ack => (
                format!(
                    "WITH r AS (SELECT epoch FROM {s}.rings WHERE ring_id = $1),
                 {renew}
                 SELECT r.epoch, (SELECT renewed FROM u) FROM r"
                ),
                "prepare the acknowledgement",
            ),
            Held::Barrier => (
                format!(
                    "SELECT r.epoch,
                        (SELECT min(acked_epoch) FROM {s}.members
                          WHERE ring_id = $1 AND node_id <> $2 AND expires_at > now())
                 FROM {s}.rings r WHERE r.ring_id = $1"
                ),
                "prepare the barrier read",
            ),
            Held::Changes => (
                format!(
                    "SELECT r.epoch, c.epoch, c.removed, c.added, c.positions
                 FROM {s}.rings r LEFT JOIN {s}.changes c ON c.ring_id = r.ring_id AND c.epoch > $2
                 WHERE r.ring_id = $1 ORDER BY c.epoch"
                ),
                "prepare the change read",
            ),
            Held::Full => (
                format!(
                    "SELECT r.epoch, v.position, v.node_id
                 FROM {s}.rings r LEFT JOIN {s}.vnodes v ON v.ring_id = r.ring_id
                 WHERE r.ring_id = $1"
                ),
                "prepare the ring read",
            ),
        }
    }

    /// A held connection's prepared statement `q`, prepared on first use.
    fn stmt(&self, conn: &mut HeldConn, q: Held) -> Result<Statement> {
        if let Some(st) = &conn.prepared[q as usize] {
            return Ok(st.clone());
        }
        let (sql, what) = self.held_sql(q);
        let st = conn.client.prepare(&sql).map_err(|e| Error::db(what, e))?;
        conn.prepared[q as usize] = Some(st.clone());
        Ok(st)
    }

    /// Renewal + acknowledgement of `ack` + barrier snapshot, in one
    /// statement (DESIGN §4 "Heartbeat"). It only ever updates this
    /// member's own row, and only while that row's lease is live: an expired
    /// lease is never resurrected — the member rejoins instead.
    pub(crate) fn sync(&self, conn: &mut HeldConn, ack: u64) -> Result<Renewal> {
        let st = self.stmt(conn, Held::Sync)?;
        let row = conn
            .client
            .query_opt(
                &st,
                &[
                    &self.ring_id,
                    &self.node_id,
                    &pg_i64(ack),
                    &self.ttl_s,
                    &self.lag_s,
                ],
            )
            .map_err(|e| Error::db("renew the lease", e))?;
        let Some(row) = row else {
            // The ring row itself is gone: nobody is a member.
            return Ok(Renewal {
                epoch: 0,
                renewed: None,
                barrier: None,
                next_expiry: None,
            });
        };
        let name: Option<String> = row.get(3);
        let ms: Option<f64> = row.get(4);
        Ok(Renewal {
            epoch: row.get::<_, i64>(0) as u64,
            renewed: row.get(1),
            barrier: Some(row.get::<_, Option<i64>>(2).map(|v| v as u64)),
            next_expiry: name.zip(ms),
        })
    }

    /// The acknowledgement of a member with nothing pending: the renewal and
    /// `acked_epoch` of [`Store::sync`] without its reads of the other
    /// members (the barrier snapshot, the next expiry). It touches one row,
    /// so that every member acknowledging an epoch costs the database O(1)
    /// instead of O(members) — with hundreds of members, the difference
    /// between a handoff in milliseconds and one in seconds.
    pub(crate) fn ack(&self, conn: &mut HeldConn, ack: u64) -> Result<Renewal> {
        let st = self.stmt(conn, Held::Ack)?;
        let row = conn
            .client
            .query_opt(
                &st,
                &[
                    &self.ring_id,
                    &self.node_id,
                    &pg_i64(ack),
                    &self.ttl_s,
                    &self.lag_s,
                ],
            )
            .map_err(|e| Error::db("acknowledge the epoch", e))?;
        Ok(Renewal {
            epoch: row.as_ref().map_or(0, |r| r.get::<_, i64>(0) as u64),
            renewed: row.and_then(|r| r.get(1)),
            barrier: None,
            next_expiry: None,
        })
    }

    /// Read-only barrier snapshot: the ring's epoch and the smallest ack of
    /// the other live members.
    pub(crate) fn barrier(&self, conn: &mut HeldConn) -> Result<(u64, Option<u64>)> {
        let st = self.stmt(conn, Held::Barrier)?;
        let row = conn
            .client
            .query_opt(&st, &[&self.ring_id, &self.node_id])
            .map_err(|e| Error::db("read the barrier", e))?;
        Ok(match row {
            Some(r) => (
                r.get::<_, i64>(0) as u64,
                r.get::<_, Option<i64>>(1).map(|v| v as u64),
            ),
            None => (0, None),
        })
    }

    /// Catches up from epoch `from`: the change log if it reaches back far
    /// enough, else the whole ring.
    pub(crate) fn catch_up(&self, conn: &mut HeldConn, from: u64) -> Result<CatchUp> {
        let st = self.stmt(conn, Held::Changes)?;
        let rows = conn
            .client
            .query(&st, &[&self.ring_id, &pg_i64(from)])
            .map_err(|e| Error::db("read the change log", e))?;
        let ring_epoch = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
        let mut changes = Vec::with_capacity(rows.len());
        let mut expect = from + 1;
        let mut contiguous = true;
        for r in &rows {
            let Some(e) = r.get::<_, Option<i64>>(1) else {
                continue;
            };
            let e = e as u64;
            if e != expect {
                contiguous = false;
                break;
            }
            expect += 1;
            let added: Option<String> = r.get(3);
            let positions: Vec<i32> = r.get(4);
            changes.push(Change {
                epoch: e,
                removed: r.get(2),
                added: added.map(|n| (n, positions.iter().map(|p| *p as u32).collect())),
            });
        }
        if contiguous && expect == ring_epoch + 1 {
            return Ok(CatchUp::Changes(changes));
        }
        self.read_ring(conn).map(CatchUp::Full)
    }

    /// The whole ring, consistently (one statement).
    pub(crate) fn read_ring(&self, conn: &mut HeldConn) -> Result<RingView> {
        let st = self.stmt(conn, Held::Full)?;
        let rows = conn
            .client
            .query(&st, &[&self.ring_id])
            .map_err(|e| Error::db("read the ring", e))?;
        let epoch = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
        let pairs: Vec<(u32, String)> = rows
            .iter()
            .filter_map(|r| {
                let p: Option<i32> = r.get(1);
                let n: Option<String> = r.get(2);
                p.zip(n).map(|(p, n)| (p as u32, n))
            })
            .collect();
        Ok(RingView::build(
            epoch,
            self.ring_size,
            pairs.iter().map(|(p, n)| (*p, n.as_str())),
        ))
    }

    /// Waits up to `timeout` for notifications on a listening connection
    /// and returns every one that arrived (the first wait bounded, the rest
    /// already buffered), decoded; payloads of other rings are dropped.
    pub(crate) fn notices(
        &self,
        conn: &mut HeldConn,
        timeout: std::time::Duration,
    ) -> Result<Vec<Notice>> {
        let mut out = Vec::new();
        let mut notes = conn.client.notifications();
        let mut keep = |n: postgres::Notification| {
            if let Some((epoch, change)) = parse_payload(&self.ring_id, n.payload()) {
                out.push(Notice { epoch, change });
            }
        };
        let first = notes
            .timeout_iter(timeout)
            .next()
            .map_err(|e| Error::db("wait for notifications", e))?;
        if let Some(n) = first {
            keep(n);
        }
        let mut rest = notes.iter();
        while let Some(n) = rest
            .next()
            .map_err(|e| Error::db("read notifications", e))?
        {
            keep(n);
        }
        Ok(out)
    }

    /// Best-effort reset of what [`Store::hold`] changed, before a held
    /// connection goes back to the pool.
    pub(crate) fn release(&self, mut conn: HeldConn) {
        let _ = conn
            .client
            .batch_execute("UNLISTEN *; RESET statement_timeout; RESET lock_timeout; RESET idle_in_transaction_session_timeout; RESET plan_cache_mode");
    }
}
