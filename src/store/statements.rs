//! The statements a member's threads run on the connections they keep
//! ([`HeldConn`]): the renewal (with the acknowledgement of the member's
//! view, for the lag bound, and the claims it holds, for reconciliation),
//! the take and the release of claims, the change-log catch-up and the
//! whole-ring read. Prepared once per connection, with generic plans — or,
//! behind a pooler in transaction mode (`Pooling::Transaction`),
//! sent unnamed and typed, each in a transaction of its own that sets its
//! timeouts locally (nothing outlives a transaction on a server connection).
//!
//! Every statement over a list of partitions drives its lookups from the
//! list — a lateral probe of the primary key per element, which is also
//! what fixes the order rows are locked in — and then writes the rows it
//! locked, found again by their key. Not by their `ctid`: a row another
//! transaction updated after this statement's snapshot (a take marking
//! its waiter, say) is locked in its *newest* version, whose `ctid` the
//! statement's snapshot cannot see, and an update by that `ctid` silently
//! skipped it (a release freed 61 of 143 claims; the other 82 waited for
//! the holder's next renewal, 10 s). By key, the update finds the version
//! its snapshot sees and follows the update chain to the one it locked.
//! (`= ANY($array)` is avoided for the same plans' sake: made once per
//! connection, often before the table has statistics, it became a filter
//! over every row of the ring.)
//!
//! How races are settled (docs/protocol.md §4): never by comparing `now()` — the
//! *transaction's* start time — read in two transactions, but by row locks
//! and by rows that are gone:
//!
//! * a take locks each free claim row it takes (`FOR UPDATE`) and re-reads
//!   its latest version, so two takes of one partition are serialised and
//!   only one finds it free; it skips rows another transaction holds
//!   locked (a release or take in flight, whose notification brings the
//!   taker back); it locks a row held by another member only to mark
//!   itself as its waiter, skipping it if locked, so a release waits for a
//!   take at most for that one update;
//! * a take key-share locks the taker's own member row first, and a
//!   member's deletion (cleanup after expiry, leave) takes that row's lock
//!   and then, in a second statement of its transaction, frees the claims
//!   of the deleted incarnation: a take either committed before the
//!   deletion (its claims are freed with the member) or finds the row gone
//!   (it takes nothing), so a claim never names a deleted member;
//! * releases and deletions lock claim rows in partition order, so they
//!   cannot deadlock with each other;
//! * a renewal updates only a row whose lease is live (`expires_at >
//!   now()`), under that row's lock: a concurrent cleanup either deleted it
//!   first (the renewal finds nothing: evicted) or waits and then finds the
//!   lease extended.

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Row, Statement};

use std::sync::Arc;

use super::membership::StoredPlacement;
use super::payload::{release_head, MAX_PAYLOAD};
use super::{pg_i64, Store};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::input::{CatchUp, Renewal, Took};
use crate::ring::{Change, RingView};

// The kinds of the take's result rows (its first column): a claim taken
// now, a claim that was this member's already (a repeated take), a claim
// another member holds (with its node id), the taker's lease is live (with
// the timeline), and the new timeline's grace still runs (with the
// milliseconds left).
pub(super) const TAKEN: i32 = 0;
pub(super) const MINE: i32 = 1;
pub(super) const HELD_BY: i32 = 2;
pub(super) const LIVE: i32 = 3;
pub(super) const GRACE: i32 = 4;

/// The server's current timeline, as SQL: the first eight hex digits of
/// the name of the WAL file being written. Readable by any role (unlike
/// `pg_control_checkpoint()`, which also lags until the first checkpoint
/// after a promotion).
pub(super) const TIMELINE: &str =
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8";

/// A pooled connection a thread keeps, with its prepared statements (by
/// statement and schema: one connection serves the members of every ring
/// of a [`Client`](crate::Client)).
pub(crate) struct HeldConn {
    pub(crate) client: crate::pool::Conn,
    prepared: std::collections::HashMap<(usize, String), Statement>,
    /// Statements run once unnamed on this connection, not prepared yet.
    used_once: std::collections::HashSet<(usize, String)>,
    /// The channels this connection LISTENs on.
    listening: std::collections::BTreeSet<String>,
    /// The statement timeout set for the session (ms), if any.
    timeout_ms: Option<u64>,
    /// Whether session state is kept (not behind a pooler in transaction
    /// mode).
    session_state: bool,
}

/// Holds `client` for a thread: with `session_state`, session timeouts of
/// `statement_timeout`, generic plans and the planner settings of the
/// repeated statements, in one round trip; behind a pooler in transaction
/// mode nothing (each statement then sets its own, in its transaction).
/// Statements are prepared on first use; LISTEN with
/// [`HeldConn::listen`].
pub(crate) fn hold(
    mut client: crate::pool::Conn,
    statement_timeout: std::time::Duration,
    session_state: bool,
) -> Result<HeldConn> {
    if session_state {
        client
            .batch_execute(&hold_setup(statement_timeout, &[]))
            .map_err(|e| Error::db("prepare the connection (timeouts, plans)", e))?;
    }
    Ok(HeldConn::adopt(
        client,
        statement_timeout,
        session_state,
        Default::default(),
    ))
}

/// The session setup of a held connection (with a session: not behind a
/// pooler in transaction mode): timeouts of `statement_timeout`, generic
/// plans — these statements run thousands of times with the same shape;
/// re-planning them was a tenth of the database's CPU with hundreds of
/// members — the planner settings of the repeated statements, and a
/// LISTEN on each of `listen`.
pub(crate) fn hold_setup(statement_timeout: std::time::Duration, listen: &[String]) -> String {
    let ms = statement_timeout.as_millis().max(1) as u64;
    let mut sql = format!(
        "{}; SET SESSION plan_cache_mode = force_generic_plan; {}",
        super::timeouts_sql("SESSION", ms),
        Store::planner_sql("SESSION")
    );
    for c in listen {
        sql.push_str(&format!("; LISTEN \"{c}\""));
    }
    sql
}

impl HeldConn {
    /// A connection already set up with [`hold_setup`] (when
    /// `session_state`) and LISTENing on `listening`.
    pub(crate) fn adopt(
        client: crate::pool::Conn,
        statement_timeout: std::time::Duration,
        session_state: bool,
        listening: std::collections::BTreeSet<String>,
    ) -> HeldConn {
        HeldConn {
            client,
            prepared: Default::default(),
            used_once: Default::default(),
            listening,
            timeout_ms: session_state.then_some(statement_timeout.as_millis().max(1) as u64),
            session_state,
        }
    }

    /// LISTENs on exactly `channels` from now on (one round trip, only if
    /// anything changes); returns the channels it listens on now and did
    /// not before. Does nothing behind a pooler in transaction mode.
    pub(crate) fn listen(
        &mut self,
        channels: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>> {
        if !self.session_state || *channels == self.listening {
            return Ok(Vec::new());
        }
        let added: Vec<String> = channels.difference(&self.listening).cloned().collect();
        let mut sql = String::new();
        for c in channels.difference(&self.listening) {
            sql.push_str(&format!("LISTEN \"{c}\"; "));
        }
        for c in self.listening.difference(channels) {
            sql.push_str(&format!("UNLISTEN \"{c}\"; "));
        }
        self.client
            .batch_execute(&sql)
            .map_err(|e| Error::db("LISTEN on the rings' channels", e))?;
        self.listening = channels.clone();
        Ok(added)
    }

    /// Sets the session's statement timeout to `t` if it is another.
    pub(crate) fn set_timeout(&mut self, t: std::time::Duration) -> Result<()> {
        let ms = t.as_millis().max(1) as u64;
        if !self.session_state || self.timeout_ms == Some(ms) {
            return Ok(());
        }
        self.client
            .batch_execute(&super::timeouts_sql("SESSION", ms))
            .map_err(|e| Error::db("set the statement timeout", e))?;
        self.timeout_ms = Some(ms);
        Ok(())
    }

    /// Waits up to `timeout` for notifications and returns every one that
    /// arrived (the first wait bounded, the rest already buffered), as
    /// (channel, payload).
    pub(crate) fn notifications(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut notes = self.client.notifications();
        let first = notes
            .timeout_iter(timeout)
            .next()
            .map_err(|e| Error::db("wait for notifications", e))?;
        if let Some(n) = first {
            out.push((n.channel().to_string(), n.payload().to_string()));
        }
        let mut rest = notes.iter();
        while let Some(n) = rest
            .next()
            .map_err(|e| Error::db("read notifications", e))?
        {
            out.push((n.channel().to_string(), n.payload().to_string()));
        }
        Ok(out)
    }

    /// Best-effort reset of what [`hold`] and [`HeldConn::listen`] changed,
    /// before the connection goes back to the pool.
    pub(crate) fn unhold(mut self) {
        if !self.session_state {
            return;
        }
        let _ = self.client.batch_execute(
            "UNLISTEN *; RESET statement_timeout; RESET lock_timeout; \
             RESET idle_in_transaction_session_timeout; RESET plan_cache_mode; \
             RESET enable_hashjoin; RESET enable_mergejoin; RESET enable_bitmapscan; \
             RESET enable_seqscan; DEALLOCATE ALL",
        );
    }
}

/// One membership's part of a batched renewal.
#[derive(Debug, Clone)]
pub(crate) struct RenewItem<'a> {
    pub(crate) store: &'a Store,
    pub(crate) incarnation: i64,
    pub(crate) ack: u64,
}

/// The statements a held connection prepares (index into `prepared`).
#[derive(Clone, Copy)]
enum Held {
    Renew = 0,
    Take = 1,
    Release = 2,
    Changes = 3,
    Full = 4,
    Timeline = 5,
}

impl Store {
    /// [`hold`] with this member's statement timeout, LISTENing on its
    /// ring's channel and its own (`listen`): for tests and one-member
    /// callers.
    #[cfg(test)]
    pub(crate) fn hold(&self, client: crate::pool::Conn, listen: bool) -> Result<HeldConn> {
        let mut held = hold(
            client,
            std::time::Duration::from_millis(self.statement_timeout_ms),
            self.session_state,
        )?;
        if listen {
            held.listen(&[self.channel.clone(), self.own_channel.clone()].into())?;
        }
        Ok(held)
    }

    /// The text of a statement a held connection prepares, and what it does.
    fn held_sql(&self, q: Held) -> (String, &'static str) {
        let s = &self.s;
        match q {
            // Only this member's row, only while its lease is live, not past
            // the lag bound: the member is behind since the first change it
            // has not acknowledged was committed.
            // Batched: one statement renews every membership of a client in
            // this schema (`$1..$5` arrays, one element each; `i` numbers
            // them). Each only updates its own row, only while its lease is
            // live, not past the lag bound: a member is behind since the
            // first change it has not acknowledged was committed, and the
            // clock restarts whenever it acknowledges a newer epoch (it is
            // slow, not stuck: see `Config::lag_limit`). Each row
            // of the answer is one membership's, from one snapshot: the
            // ring's epoch, whether it was renewed (NULL: no live row; false:
            // refused by the lag bound), the other member whose lease ends
            // first (for the crash cleanup), the claims it holds (for
            // reconciliation), and the server's timeline.
            Held::Renew => (
                format!(
                    "WITH q AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::float8[], $5::float8[])
                                WITH ORDINALITY AS q(ring, inc, ack, ttl, lag, i)),
                     b AS (SELECT q.i, m.incarnation AS inc, q.ttl, q.lag, GREATEST(m.acked_epoch, q.ack) AS ack,
                                  CASE WHEN GREATEST(m.acked_epoch, q.ack) >= r.epoch THEN NULL
                                       WHEN q.ack > m.acked_epoch AND m.behind_since IS NOT NULL THEN now()
                                  ELSE COALESCE(m.behind_since, (SELECT c.at FROM {s}.changes c
                                                 WHERE c.ring_id = q.ring AND c.epoch = GREATEST(m.acked_epoch, q.ack) + 1),
                                                now()) END AS since
                           FROM q JOIN {s}.rings r ON r.ring_id = q.ring
                                  JOIN {s}.members m ON m.ring_id = q.ring AND m.incarnation = q.inc),
                     u AS (UPDATE {s}.members m SET
                             acked_epoch = b.ack,
                             behind_since = b.since,
                             expires_at = CASE WHEN b.since IS NOT NULL AND b.since <= now() - b.lag * interval '1 second'
                                               THEN m.expires_at ELSE now() + b.ttl * interval '1 second' END,
                             renewed_at = now()
                           FROM b
                           WHERE m.incarnation = b.inc AND m.expires_at > now()
                           RETURNING b.i, m.expires_at = now() + b.ttl * interval '1 second' AS renewed)
                     SELECT q.i, r.epoch, u.renewed, o.node_id, o.ms, h.ps, h.ts, {TIMELINE}
                     FROM q LEFT JOIN {s}.rings r ON r.ring_id = q.ring
                            LEFT JOIN u ON u.i = q.i
                            LEFT JOIN LATERAL (SELECT x.node_id, (extract(epoch FROM x.expires_at - now()) * 1000)::float8 AS ms
                                               FROM {s}.members x WHERE x.ring_id = q.ring AND x.incarnation <> q.inc
                                               ORDER BY x.expires_at LIMIT 1) o ON true
                            LEFT JOIN LATERAL (SELECT array_agg(c.partition ORDER BY c.partition) AS ps,
                                                      array_agg(c.token ORDER BY c.partition) AS ts
                                               FROM {s}.claims c WHERE c.ring_id = q.ring AND c.holder = q.inc) h ON true
                     ORDER BY q.i"
                ),
                "prepare the renewal",
            ),
            // The take and the release are server-side functions
            // (`functions.rs`), whose plans outlive a pool borrow.
            Held::Take => (
                format!("SELECT * FROM {s}.take_claims($1, $2, $3, $4, $5, $6)"),
                "prepare the take",
            ),
            Held::Release => (
                format!("SELECT * FROM {s}.release_claims($1, $2, $3, $4, $5, $6, $7)"),
                "prepare the release",
            ),
            Held::Changes => (
                format!(
                    "SELECT r.epoch, c.epoch, c.removed, c.added, c.positions, c.metadata,
                        c.eligible, c.ineligible, c.added_eligible, c.added_attrs,
                        c.pinned, c.pinned_to, c.unpinned, c.budget
                 FROM {s}.rings r LEFT JOIN {s}.changes c ON c.ring_id = r.ring_id AND c.epoch > $2
                 WHERE r.ring_id = $1 ORDER BY c.epoch"
                ),
                "prepare the change read",
            ),
            Held::Timeline => (
                format!("SELECT {TIMELINE}"),
                "prepare the timeline read",
            ),
            Held::Full => (
                format!(
                    // One statement, so one snapshot: the vnodes, the
                    // members' metadata and the placement table all at
                    // the epoch of the first row (the ring's).
                    // Members are listed only when they have metadata or
                    // placement attributes, or are ineligible (the
                    // defaults otherwise).
                    "SELECT r.epoch, NULL::int4, r.placement, r.placement_table, NULL::text, NULL::bool, NULL::text
                 FROM {s}.rings r WHERE r.ring_id = $1
                 UNION ALL
                 SELECT NULL, v.position, v.node_id, NULL, NULL, NULL, NULL FROM {s}.vnodes v WHERE v.ring_id = $1
                 UNION ALL
                 SELECT NULL, NULL, m.node_id, NULL, m.metadata, m.eligible, m.attrs FROM {s}.members m
                  WHERE m.ring_id = $1 AND (m.metadata IS NOT NULL OR m.attrs IS NOT NULL OR NOT m.eligible)"
                ),
                "prepare the ring read",
            ),
        }
    }

    /// The parameter types of statement `q` (for sending it unnamed).
    fn held_types(q: Held) -> &'static [Type] {
        match q {
            Held::Renew => &[
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8_ARRAY,
                Type::FLOAT8_ARRAY,
                Type::FLOAT8_ARRAY,
            ],
            Held::Take => &[
                Type::TEXT,
                Type::INT8,
                Type::INT4_ARRAY,
                Type::TEXT,
                Type::FLOAT8,
                Type::TEXT,
            ],
            Held::Release => &[
                Type::TEXT,
                Type::INT8,
                Type::INT4_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT,
                Type::INT4,
                Type::TEXT,
            ],
            Held::Changes => &[Type::TEXT, Type::INT8],
            Held::Full => &[Type::TEXT],
            Held::Timeline => &[],
        }
    }

    /// Runs statement `q` on a held connection: prepared once (named, with
    /// the session's generic plans and timeouts), or — behind a pooler in
    /// transaction mode, where a named statement may be missing from the
    /// next server connection — sent unnamed and typed in a transaction of
    /// its own that sets the timeouts locally.
    fn held_query(
        &self,
        conn: &mut HeldConn,
        q: Held,
        params: &[&(dyn ToSql + Sync)],
        what: &'static str,
    ) -> Result<Vec<Row>> {
        let (sql, _) = self.held_sql(q);
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .zip(Self::held_types(q))
            .map(|(p, t)| (*p, t.clone()))
            .collect();
        if conn.session_state {
            // Sent unnamed the first time on a connection (one round trip;
            // a borrowed connection may run it only once before it goes
            // back), prepared the second (its generic plan reused).
            let key = (q as usize, self.s.clone());
            if !conn.prepared.contains_key(&key) && conn.used_once.insert(key) {
                return conn
                    .client
                    .query_typed(&sql, &typed)
                    .map_err(|e| Error::db(what, e));
            }
            let st = self.stmt(conn, q)?;
            return conn
                .client
                .query(&st, params)
                .map_err(|e| Error::db(what, e));
        }
        let mut tx = self.begin_planned(&mut conn.client)?;
        let rows = tx
            .query_typed(&sql, &typed)
            .map_err(|e| Error::db(what, e))?;
        tx.commit().map_err(|e| Error::db(what, e))?;
        Ok(rows)
    }

    /// A held connection's prepared statement `q`, prepared on first use.
    fn stmt(&self, conn: &mut HeldConn, q: Held) -> Result<Statement> {
        let key = (q as usize, self.s.clone());
        if let Some(st) = conn.prepared.get(&key) {
            return Ok(st.clone());
        }
        let (sql, what) = self.held_sql(q);
        let st = conn.client.prepare(&sql).map_err(|e| Error::db(what, e))?;
        conn.prepared.insert(key, st.clone());
        Ok(st)
    }

    /// The renewal of incarnation `incarnation`'s lease, acknowledging view
    /// epoch `ack`: [`Store::renew_batch`] of one.
    #[cfg(test)]
    pub(crate) fn renew(&self, conn: &mut HeldConn, incarnation: i64, ack: u64) -> Result<Renewal> {
        let item = RenewItem {
            store: self,
            incarnation,
            ack,
        };
        Ok(Store::renew_batch(conn, &[item])?.remove(0))
    }

    /// Renews the leases of `items` — memberships of rings of one schema —
    /// acknowledging their views' epochs (docs/protocol.md §4, "Leases"), in one
    /// statement; one answer per item, in order. Each only ever updates its
    /// own member's row, and only while that row's lease is live: an
    /// expired lease is never resurrected — the member rejoins.
    pub(crate) fn renew_batch(
        conn: &mut HeldConn,
        items: &[RenewItem<'_>],
    ) -> Result<Vec<Renewal>> {
        let Some(first) = items.first() else {
            return Ok(Vec::new());
        };
        let rings: Vec<&str> = items.iter().map(|m| m.store.ring_id.as_str()).collect();
        let incs: Vec<i64> = items.iter().map(|m| m.incarnation).collect();
        let acks: Vec<i64> = items.iter().map(|m| pg_i64(m.ack)).collect();
        let ttls: Vec<f64> = items.iter().map(|m| m.store.ttl_s).collect();
        let lags: Vec<f64> = items.iter().map(|m| m.store.lag_s).collect();
        let rows = first.store.held_query(
            conn,
            Held::Renew,
            &[&rings, &incs, &acks, &ttls, &lags],
            "renew the leases",
        )?;
        let mut out: Vec<Renewal> = items
            .iter()
            .map(|_| Renewal {
                epoch: 0,
                renewed: None,
                next_expiry: None,
                held: Vec::new(),
                timeline: None,
            })
            .collect();
        for row in rows {
            let i = row.get::<_, i64>(0) as usize;
            let Some(r) = i.checked_sub(1).and_then(|i| out.get_mut(i)) else {
                continue;
            };
            let Some(epoch) = row.get::<_, Option<i64>>(1) else {
                // The ring row itself is gone: nobody is a member.
                continue;
            };
            let name: Option<String> = row.get(3);
            let ms: Option<f64> = row.get(4);
            let ps: Option<Vec<i32>> = row.get(5);
            let ts: Option<Vec<i64>> = row.get(6);
            r.epoch = epoch as u64;
            r.renewed = row.get(2);
            r.next_expiry = name.zip(ms);
            r.held = ps
                .unwrap_or_default()
                .into_iter()
                .zip(ts.unwrap_or_default())
                .map(|(p, t)| (p as u32, t as u64))
                .collect();
            r.timeline = Some(row.get::<_, i64>(7) as u64);
        }
        Ok(out)
    }

    /// Takes the claims of `partitions` (ascending) for `incarnation`, in
    /// one statement.
    pub(crate) fn take(
        &self,
        conn: &mut HeldConn,
        incarnation: i64,
        partitions: &[u32],
    ) -> Result<Took> {
        let ps: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
        let rows = self.held_query(
            conn,
            Held::Take,
            &[
                &self.ring_id,
                &incarnation,
                &ps,
                &self.own_channel,
                &self.grace_s,
                &self.channel,
            ],
            "take claims",
        )?;
        let mut took = Took::default();
        let mut others = Vec::new();
        for r in &rows {
            let p = r.get::<_, i32>(1) as u32;
            match r.get::<_, i32>(0) {
                TAKEN | MINE => took.got.push((p, r.get::<_, i64>(2) as u64)),
                HELD_BY => others.push((p, r.get::<_, String>(3))),
                LIVE => {
                    took.live = true;
                    took.timeline = Some(r.get::<_, i64>(2) as u64);
                }
                _ => {
                    took.grace = Some(std::time::Duration::from_millis(
                        r.get::<_, i64>(2).max(1) as u64
                    ))
                }
            }
        }
        took.got.sort_unstable();
        others.sort_unstable();
        // A claim freed and taken while the statement ran shows as someone
        // else's in its snapshot: what was taken wins.
        took.held_by = others
            .into_iter()
            .filter(|(p, _)| took.got.binary_search_by_key(p, |(q, _)| *q).is_err())
            .collect();
        took.retry = took.got.len() + took.held_by.len() < partitions.len();
        Ok(took)
    }

    /// Gives back `claims` (`(partition, token)`) held by `incarnation`,
    /// telling each member of `notify` (its partitions) on its own channel;
    /// returns how many were freed.
    pub(crate) fn release_claims(
        &self,
        conn: &mut HeldConn,
        incarnation: i64,
        claims: &[(u32, u64)],
    ) -> Result<u64> {
        let ps: Vec<i32> = claims.iter().map(|(p, _)| *p as i32).collect();
        let ts: Vec<i64> = claims.iter().map(|(_, t)| pg_i64(*t)).collect();
        let head = release_head(&self.ring_id);
        let max = MAX_PAYLOAD as i32;
        let rows = self.held_query(
            conn,
            Held::Release,
            &[
                &self.ring_id,
                &incarnation,
                &ps,
                &ts,
                &head,
                &max,
                &self.channel,
            ],
            "release claims",
        )?;
        let row = rows
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Database, "release claims: no row"))?;
        super::notified(row.get::<_, i64>(1));
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Catches up from epoch `from`: the change log if it reaches back far
    /// enough, else the whole ring.
    pub(crate) fn catch_up(&self, conn: &mut HeldConn, from: u64) -> Result<CatchUp> {
        // Nothing to build on (a view being re-read after a timeline
        // change): the whole ring.
        if from == 0 {
            return self.read_ring(conn).map(CatchUp::Full);
        }
        let rows = self.held_query(
            conn,
            Held::Changes,
            &[&self.ring_id, &pg_i64(from)],
            "read the change log",
        )?;
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
            let attrs = crate::attrs::decode(r.get::<_, Option<&str>>(9));
            let pinned: Vec<i32> = r.get::<_, Option<Vec<i32>>>(10).unwrap_or_default();
            let pinned_to: Vec<String> = r.get::<_, Option<Vec<String>>>(11).unwrap_or_default();
            let unpinned: Vec<i32> = r.get::<_, Option<Vec<i32>>>(12).unwrap_or_default();
            changes.push(Change {
                pinned: pinned
                    .iter()
                    .zip(pinned_to)
                    .map(|(p, n)| (*p as u32, n))
                    .collect(),
                unpinned: unpinned.iter().map(|p| *p as u32).collect(),
                move_budget: r.get::<_, Option<i32>>(13).map(|k| k.max(0) as u32),
                added_capacity: attrs.capacity,
                added_zone: attrs.zone.map(|z| z.to_string()),
                epoch: e,
                removed: r.get(2),
                added: added.map(|n| (n, positions.iter().map(|p| *p as u32).collect())),
                added_metadata: r.get(5),
                eligible: r.get(6),
                ineligible: r.get(7),
                added_ineligible: !r.get::<_, bool>(8),
            });
        }
        if contiguous && expect == ring_epoch + 1 {
            return Ok(CatchUp::Changes(changes));
        }
        self.read_ring(conn).map(CatchUp::Full)
    }

    /// The server's current timeline (see "Failover and timelines" in
    /// `docs/protocol.md`): an observer re-reads the whole ring when it changes.
    pub(crate) fn timeline(&self, conn: &mut HeldConn) -> Result<u64> {
        let rows = self.held_query(conn, Held::Timeline, &[], "read the timeline")?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// The whole ring, consistently (one statement).
    pub(crate) fn read_ring(&self, conn: &mut HeldConn) -> Result<RingView> {
        let rows = self.held_query(conn, Held::Full, &[&self.ring_id], "read the ring")?;
        self.view_of_rows(&rows)
    }

    /// [`read_ring`](Store::read_ring) on any client, without keeping a
    /// prepared statement: for one-off reads ([`crate::read_ring`]).
    pub(crate) fn read_ring_once(&self, client: &mut impl GenericClient) -> Result<RingView> {
        let (sql, _) = self.held_sql(Held::Full);
        let rows = client
            .query_typed(&sql, &[(&self.ring_id, Type::TEXT)])
            .map_err(|e| Error::db("read the ring", e))?;
        self.view_of_rows(&rows)
    }

    /// The view from the rows of [`Held::Full`].
    fn view_of_rows(&self, rows: &[postgres::Row]) -> Result<RingView> {
        let mut epoch = 0;
        let mut placement = StoredPlacement::Hashed;
        let mut pairs: Vec<(u32, String)> = Vec::with_capacity(rows.len());
        let mut metadata: fnv::FnvHashMap<String, Arc<str>> = Default::default();
        let mut ineligible: fnv::FnvHashSet<String> = Default::default();
        let mut attrs: fnv::FnvHashMap<String, crate::attrs::MemberAttrs> = Default::default();
        for r in rows {
            let name: Option<String> = r.get(2);
            if let Some(e) = r.get::<_, Option<i64>>(0) {
                epoch = e as u64;
                placement = StoredPlacement::from_row(name, r.get(3))?;
            } else if let Some(p) = r.get::<_, Option<i32>>(1) {
                pairs.extend(name.map(|n| (p as u32, n)));
            } else if let Some(n) = name {
                if r.get::<_, Option<bool>>(5) == Some(false) {
                    ineligible.insert(n.clone());
                }
                if let Some(a) = r.get::<_, Option<&str>>(6) {
                    attrs.insert(n.clone(), crate::attrs::decode(Some(a)));
                }
                if let Some(md) = r.get::<_, Option<String>>(4) {
                    metadata.insert(n, Arc::from(md));
                }
            }
        }
        let table = match placement {
            StoredPlacement::Hashed => None,
            StoredPlacement::Balanced(t, _) => Some(Arc::new(self.table_or_empty(t.as_deref())?)),
        };
        Ok(RingView::build_with(
            epoch,
            self.ring_size,
            pairs.iter().map(|(p, n)| (*p, n.as_str())),
            table,
            |n| metadata.get(n).cloned(),
            |n| !ineligible.contains(n),
            |n| attrs.get(n).cloned().unwrap_or_default(),
        ))
    }
}
