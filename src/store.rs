//! The PostgreSQL side (DESIGN §3): schema creation and migration, and each
//! protocol step as one statement or one short transaction. All lease times
//! are computed by the database (`now()`); every call runs under a
//! statement and lock timeout.
//!
//! Nothing here holds state between calls except prepared statements on a
//! connection a thread keeps ([`HeldConn`]).

use std::time::{Duration, Instant};

use postgres::{Client, GenericClient, Statement};

use crate::config::validate_schema;
use crate::error::{Error, ErrorKind, Result};
use crate::placement::{choose_positions, fmix64, fnv1a64};
use crate::ring::{Change, RingView};

/// Version of the schema this build creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// How many change-log entries a ring keeps: members further behind re-read
/// the whole ring instead.
const CHANGES_KEPT: i64 = 1000;

/// Everything needed to talk about one member of one ring.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    /// The quoted schema name, the only identifier formatted into SQL.
    s: String,
    schema: String,
    pub(crate) ring_id: String,
    pub(crate) node_id: String,
    ring_size: u32,
    vnode_count: u32,
    ttl_s: f64,
    lag_s: f64,
    statement_timeout_ms: u64,
    /// The NOTIFY channel of this ring.
    pub(crate) channel: String,
}

/// The answer to a renewal/acknowledgement ([`Store::sync`]) — also the
/// barrier snapshot: every field comes from one statement, so one snapshot.
#[derive(Debug, Clone)]
pub(crate) struct SyncReply {
    /// The ring's epoch.
    pub epoch: u64,
    /// `None`: this member has no live lease row (removed or expired) — it
    /// must rejoin. `Some(false)`: the row is there but the renewal was
    /// refused by the lag bound.
    pub renewed: Option<bool>,
    /// The barrier snapshot, when the statement read one: the smallest
    /// `acked_epoch` among the other live members (`Some(None)`: there are
    /// none). `None`: no snapshot was read ([`Store::ack`]) — the reply
    /// must not be used for the barrier.
    pub barrier: Option<Option<u64>>,
    /// The other member whose lease ends first, and in how long (database
    /// time; negative if already expired).
    pub next_expiry: Option<(String, f64)>,
}

/// A read of the change log (or, on a gap, of the whole ring).
#[derive(Debug)]
pub(crate) enum Catchup {
    /// Changes `from+1..=epoch`, in order.
    Changes(Vec<Change>),
    /// The whole ring at its epoch (a jump).
    Full(RingView),
}

/// What a join committed.
#[derive(Debug)]
pub(crate) struct Joined {
    pub view: RingView,
    pub positions: Vec<u32>,
    pub removed: Vec<String>,
}

/// Result of a cleanup pass.
#[derive(Debug, Default)]
pub(crate) struct Cleaned {
    pub removed: Vec<String>,
    pub epoch: Option<u64>,
    pub next_expiry: Option<(String, f64)>,
}

/// A pooled connection a thread keeps, with its prepared statements.
pub(crate) struct HeldConn {
    pub client: crate::pool::Conn,
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

fn pg_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Store {
    pub(crate) fn new(cfg: &crate::Config, node_id: &str) -> Result<Store> {
        validate_schema(&cfg.schema)?;
        let h = fmix64(fnv1a64(&[
            cfg.schema.as_bytes(),
            &[0],
            cfg.ring_id.as_bytes(),
        ]));
        Ok(Store {
            s: format!("\"{}\"", cfg.schema),
            schema: cfg.schema.clone(),
            ring_id: cfg.ring_id.clone(),
            node_id: node_id.to_string(),
            ring_size: cfg.ring_size,
            vnode_count: cfg.vnode_count,
            ttl_s: cfg.lease_ttl.as_secs_f64(),
            lag_s: cfg.lag_limit().as_secs_f64(),
            statement_timeout_ms: cfg.effective_statement_timeout().as_millis().max(1) as u64,
            channel: format!("leasering_{h:016x}"),
        })
    }

    fn timeouts_sql(&self, scope: &str) -> String {
        format!(
            "SET {scope} statement_timeout = {ms}; SET {scope} lock_timeout = {ms}; \
             SET {scope} idle_in_transaction_session_timeout = {idle}",
            ms = self.statement_timeout_ms,
            idle = self.statement_timeout_ms * 4,
        )
    }

    /// Opens a transaction with its timeouts in one round trip (`BEGIN` and
    /// the `SET LOCAL`s in one simple-query message).
    fn begin<'a>(&self, client: &'a mut Client) -> Result<Tx<'a>> {
        client
            .batch_execute(&format!("BEGIN; {}", self.timeouts_sql("LOCAL")))
            .map_err(|e| Error::db("begin transaction", e))?;
        Ok(Tx { client, open: true })
    }

    // ---- schema ---------------------------------------------------------

    /// The installed schema version, if the schema exists.
    fn installed_version(&self, client: &mut impl GenericClient) -> Result<Option<i32>> {
        let row = client
            .query_one(
                "SELECT to_regclass(format('%I.schema_version', $1::text)) IS NOT NULL",
                &[&self.schema],
            )
            .map_err(|e| Error::db("look for the schema", e))?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let row = client
            .query_one(
                &format!("SELECT max(version) FROM {}.schema_version", self.s),
                &[],
            )
            .map_err(|e| Error::db(format!("read {}.schema_version", self.schema), e))?;
        Ok(row.get::<_, Option<i32>>(0))
    }

    /// Creates or migrates the schema; idempotent, and safe when many nodes
    /// start at once (the DDL runs under a transaction-scoped advisory lock).
    pub(crate) fn migrate(&self, client: &mut Client) -> Result<()> {
        if self.installed_version(client)? == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        let lock_key = fnv1a64(&[b"leasering schema ", self.schema.as_bytes()]) as i64;
        let mut tx = self.begin(client)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
            .map_err(|e| Error::db("take the schema advisory lock", e))?;
        match self.installed_version(&mut *tx)? {
            Some(v) if v == SCHEMA_VERSION => return Ok(()),
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::new(
                    ErrorKind::Schema,
                    format!(
                        "schema {} has version {v}, newer than this build's {SCHEMA_VERSION}: upgrade leasering",
                        self.schema
                    ),
                ))
            }
            _ => {}
        }
        let s = &self.s;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (
                 version int NOT NULL,
                 installed_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {s}.rings (
                 ring_id text PRIMARY KEY,
                 ring_size int NOT NULL CHECK (ring_size > 0),
                 epoch bigint NOT NULL DEFAULT 0,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 changed_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {s}.members (
                 ring_id text NOT NULL REFERENCES {s}.rings ON DELETE CASCADE,
                 node_id text NOT NULL,
                 vnode_count int NOT NULL,
                 acked_epoch bigint NOT NULL,
                 expires_at timestamptz NOT NULL,
                 behind_since timestamptz,
                 joined_at timestamptz NOT NULL DEFAULT now(),
                 renewed_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (ring_id, node_id));
             CREATE TABLE IF NOT EXISTS {s}.vnodes (
                 ring_id text NOT NULL,
                 position int NOT NULL,
                 node_id text NOT NULL,
                 vnode_idx int NOT NULL,
                 PRIMARY KEY (ring_id, position),
                 FOREIGN KEY (ring_id, node_id) REFERENCES {s}.members ON DELETE CASCADE);
             CREATE INDEX IF NOT EXISTS vnodes_by_member ON {s}.vnodes (ring_id, node_id);
             CREATE TABLE IF NOT EXISTS {s}.changes (
                 ring_id text NOT NULL REFERENCES {s}.rings ON DELETE CASCADE,
                 epoch bigint NOT NULL,
                 removed text[] NOT NULL,
                 added text,
                 positions int[] NOT NULL,
                 at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (ring_id, epoch));"
        );
        tx.batch_execute(&ddl).map_err(|e| {
            let err = Error::db(format!("create schema {}", self.schema), e);
            if err.kind() == ErrorKind::Privileges {
                Error::new(
                    ErrorKind::Privileges,
                    format!(
                        "{}; run leasering::migrate as a role that may create schema {}, then start nodes with create_schema(false)",
                        err.message(),
                        self.schema
                    ),
                )
            } else {
                err
            }
        })?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[&SCHEMA_VERSION],
        )
        .map_err(|e| Error::db("record the schema version", e))?;
        tx.commit().map_err(|e| Error::db("commit the schema", e))?;
        log::info!(target: "leasering", "created schema {} (version {SCHEMA_VERSION})", self.schema);
        Ok(())
    }

    /// With `create_schema` off: the schema must exist at our version.
    pub(crate) fn check_schema(&self, client: &mut Client) -> Result<()> {
        match self.installed_version(client)? {
            Some(v) if v == SCHEMA_VERSION => Ok(()),
            Some(v) => Err(Error::new(
                ErrorKind::Schema,
                format!("schema {} has version {v}; this build needs {SCHEMA_VERSION}", self.schema),
            )),
            None => Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "schema {} does not exist (or this role cannot see it) and create_schema is off: run leasering::migrate first",
                    self.schema
                ),
            )),
        }
    }

    // ---- membership changes (under the ring row lock) -------------------

    /// Records a change: epoch bump, change log (trimmed to the last
    /// `CHANGES_KEPT` entries), NOTIFY carrying the change itself — one
    /// statement, inside the transaction that made the change.
    fn commit_change(
        &self,
        tx: &mut Tx<'_>,
        epoch: u64,
        removed: &[String],
        added: Option<(&str, &[u32])>,
    ) -> Result<()> {
        let s = &self.s;
        let e = pg_i64(epoch);
        let positions: Vec<i32> = added
            .map(|(_, ps)| ps.iter().map(|p| *p as i32).collect())
            .unwrap_or_default();
        let payload = notify_payload(&self.ring_id, epoch, removed, added);
        tx.execute(
            &format!(
                "WITH bump AS (UPDATE {s}.rings SET epoch = $2, changed_at = now() WHERE ring_id = $1),
                      ins AS (INSERT INTO {s}.changes (ring_id, epoch, removed, added, positions)
                              VALUES ($1, $2, $3, $4, $5)),
                      trim AS (DELETE FROM {s}.changes WHERE ring_id = $1 AND epoch <= $2 - $6)
                 SELECT pg_notify($7, $8)"
            ),
            &[
                &self.ring_id,
                &e,
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

    fn delete_expired(&self, tx: &mut Tx<'_>) -> Result<Vec<String>> {
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM {}.members WHERE ring_id = $1 AND expires_at <= now() RETURNING node_id",
                    self.s
                ),
                &[&self.ring_id],
            )
            .map_err(|e| Error::db("remove expired members", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The join transaction (DESIGN §4 "Join"), in five round trips: begin
    /// (with its timeouts); create-or-lock the ring row; remove expired
    /// members, check the node id and read the ring (one snapshot, taken
    /// after the lock); insert the member, its vnodes and the change, bump
    /// the epoch and notify (one statement); commit. The ring row stays
    /// locked for the last three only.
    pub(crate) fn join(&self, client: &mut Client) -> Result<Joined> {
        let s = &self.s;
        let mut tx = self.begin(client)?;
        // DO UPDATE (a no-op) rather than DO NOTHING: it locks the row and
        // returns it, so creating and locking the ring is one statement.
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
            return Err(Error::new(
                ErrorKind::RingSizeMismatch,
                format!(
                    "ring {:?} has ring_size {stored_size} in the database, but this node was configured with ring_size {}",
                    self.ring_id, self.ring_size
                ),
            ));
        }
        // One snapshot, taken after the lock: the expired members it
        // deletes (their deletion is not visible to the rest of the
        // statement, hence `expires_at > now()` and the filter below), a
        // live member with our node id, and every vnode.
        let rows = tx
            .query(
                &format!(
                    "WITH gone AS (DELETE FROM {s}.members WHERE ring_id = $1 AND expires_at <= now() RETURNING node_id)
                     SELECT 0, node_id, 0 FROM gone
                     UNION ALL
                     SELECT 1, node_id, 0 FROM {s}.members WHERE ring_id = $1 AND node_id = $2 AND expires_at > now()
                     UNION ALL
                     SELECT 2, node_id, position FROM {s}.vnodes WHERE ring_id = $1"
                ),
                &[&self.ring_id, &self.node_id],
            )
            .map_err(|e| Error::db("read the ring", e))?;
        let mut removed: Vec<String> = Vec::new();
        let mut in_use = false;
        let mut vnode_rows: Vec<(u32, String)> = Vec::with_capacity(rows.len() + 8);
        for r in &rows {
            match r.get::<_, i32>(0) {
                0 => removed.push(r.get(1)),
                1 => in_use = true,
                _ => vnode_rows.push((r.get::<_, i32>(2) as u32, r.get(1))),
            }
        }
        if in_use {
            return Err(Error::new(
                ErrorKind::NodeIdInUse,
                format!(
                    "node id {:?} is held by a live member of ring {:?}",
                    self.node_id, self.ring_id
                ),
            ));
        }
        // The removed members' vnodes go with them (ON DELETE CASCADE).
        let mut taken = vec![false; self.ring_size as usize];
        let mut pairs: Vec<(u32, String)> = Vec::with_capacity(vnode_rows.len() + 8);
        for (p, n) in vnode_rows {
            if removed.contains(&n) {
                continue;
            }
            if let Some(t) = taken.get_mut(p as usize) {
                *t = true;
            }
            pairs.push((p, n));
        }
        let positions = choose_positions(&self.node_id, self.vnode_count, self.ring_size, |p| {
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
        })?;
        let new_epoch = epoch + 1;
        let pos_i32: Vec<i32> = positions.iter().map(|p| *p as i32).collect();
        let idx_i32: Vec<i32> = (0..positions.len() as i32).collect();
        let payload = notify_payload(
            &self.ring_id,
            new_epoch,
            &removed,
            Some((&self.node_id, &positions)),
        );
        tx.execute(
            &format!(
                "WITH mem AS (INSERT INTO {s}.members (ring_id, node_id, vnode_count, acked_epoch, expires_at)
                              VALUES ($1, $2, $3, $4, now() + $5 * interval '1 second') RETURNING node_id),
                      vn AS (INSERT INTO {s}.vnodes (ring_id, position, node_id, vnode_idx)
                             SELECT $1, t.p, mem.node_id, t.i FROM mem, unnest($6::int[], $7::int[]) AS t(p, i)),
                      bump AS (UPDATE {s}.rings SET epoch = $4, changed_at = now() WHERE ring_id = $1),
                      ins AS (INSERT INTO {s}.changes (ring_id, epoch, removed, added, positions)
                              VALUES ($1, $4, $8, $2, $6)),
                      trim AS (DELETE FROM {s}.changes WHERE ring_id = $1 AND epoch <= $4 - $9)
                 SELECT pg_notify($10, $11)"
            ),
            &[
                &self.ring_id,
                &self.node_id,
                &(self.vnode_count as i32),
                &pg_i64(new_epoch),
                &self.ttl_s,
                &pos_i32,
                &idx_i32,
                &removed,
                &CHANGES_KEPT,
                &self.channel,
                &payload,
            ],
        )
        .map_err(|e| Error::db("insert the member", e))?;
        tx.commit().map_err(|e| Error::db("commit the join", e))?;
        pairs.extend(positions.iter().map(|p| (*p, self.node_id.clone())));
        let view = RingView::build(
            new_epoch,
            self.ring_size,
            pairs.iter().map(|(p, n)| (*p, n.as_str())),
        );
        Ok(Joined {
            view,
            positions,
            removed,
        })
    }

    /// Graceful leave: removes this member and its vnodes, bumps the epoch
    /// and notifies. Returns the new epoch, or `None` if the member was
    /// already gone.
    pub(crate) fn leave(&self, client: &mut Client) -> Result<Option<u64>> {
        let mut tx = self.begin(client)?;
        let Some((_, epoch)) = self.lock_ring(&mut tx)? else {
            return Ok(None);
        };
        let n = tx
            .execute(
                &format!(
                    "DELETE FROM {}.members WHERE ring_id = $1 AND node_id = $2",
                    self.s
                ),
                &[&self.ring_id, &self.node_id],
            )
            .map_err(|e| Error::db("delete the member", e))?;
        if n == 0 {
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
    pub(crate) fn sync(&self, conn: &mut HeldConn, ack: u64) -> Result<SyncReply> {
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
            return Ok(SyncReply {
                epoch: 0,
                renewed: None,
                barrier: None,
                next_expiry: None,
            });
        };
        let name: Option<String> = row.get(3);
        let ms: Option<f64> = row.get(4);
        Ok(SyncReply {
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
    pub(crate) fn ack(&self, conn: &mut HeldConn, ack: u64) -> Result<SyncReply> {
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
        Ok(SyncReply {
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
    pub(crate) fn catch_up(&self, conn: &mut HeldConn, from: u64) -> Result<Catchup> {
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
            return Ok(Catchup::Changes(changes));
        }
        self.read_ring(conn).map(Catchup::Full)
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

    /// Best-effort reset of what [`Store::hold`] changed, before a held
    /// connection goes back to the pool.
    pub(crate) fn release(&self, mut conn: HeldConn) {
        let _ = conn
            .client
            .batch_execute("UNLISTEN *; RESET statement_timeout; RESET lock_timeout; RESET idle_in_transaction_session_timeout; RESET plan_cache_mode");
    }
}

/// A transaction opened by [`Store::begin`]: rolled back on drop unless
/// committed (like `postgres::Transaction`, which cannot be opened
/// together with its `SET LOCAL`s in one round trip).
pub(crate) struct Tx<'a> {
    client: &'a mut Client,
    open: bool,
}

impl Tx<'_> {
    pub(crate) fn commit(mut self) -> std::result::Result<(), postgres::Error> {
        self.open = false;
        self.client.batch_execute("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7900;

/// The NOTIFY payload of a change: `<epoch>` followed, when it fits, by the
/// change itself, so that members apply it without reading the change log:
/// ` r<len>:<ring id>` then `-<len>:<node>` per removed member, then
/// `+<len>:<node>@<p>,<p>,…` for an added one (`len` in bytes).
pub(crate) fn notify_payload(
    ring_id: &str,
    epoch: u64,
    removed: &[String],
    added: Option<(&str, &[u32])>,
) -> String {
    use std::fmt::Write;
    let mut out = format!("{epoch} r{}:{ring_id}", ring_id.len());
    for n in removed {
        let _ = write!(out, "-{}:{n}", n.len());
    }
    if let Some((n, ps)) = added {
        let _ = write!(out, "+{}:{n}@", n.len());
        for (i, p) in ps.iter().enumerate() {
            let _ = write!(out, "{}{p}", if i == 0 { "" } else { "," });
        }
    }
    if out.len() > MAX_PAYLOAD {
        return epoch.to_string();
    }
    out
}

/// A NOTIFY payload, parsed: the epoch, and the change if it carries one.
/// `None` for a payload of another ring (a channel-name collision) or one
/// that does not parse.
pub(crate) fn parse_payload(ring_id: &str, payload: &str) -> Option<(u64, Option<Change>)> {
    let (epoch, rest) = match payload.split_once(' ') {
        Some((e, rest)) => (e.parse::<u64>().ok()?, rest),
        None => return Some((payload.parse::<u64>().ok()?, None)),
    };
    // A length-prefixed field: `<len>:<bytes>`.
    fn field(s: &str) -> Option<(&str, &str)> {
        let (len, rest) = s.split_once(':')?;
        let len: usize = len.parse().ok()?;
        Some((rest.get(..len)?, rest.get(len..)?))
    }
    let (ring, mut rest) = field(rest.strip_prefix('r')?)?;
    if ring != ring_id {
        return None;
    }
    let mut change = Change {
        epoch,
        removed: Vec::new(),
        added: None,
    };
    while let Some(tail) = rest.strip_prefix('-') {
        let (n, r) = field(tail)?;
        change.removed.push(n.to_string());
        rest = r;
    }
    if let Some(tail) = rest.strip_prefix('+') {
        let (n, r) = field(tail)?;
        let ps = r.strip_prefix('@')?;
        let positions = if ps.is_empty() {
            Vec::new()
        } else {
            ps.split(',')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?
        };
        change.added = Some((n.to_string(), positions));
    } else if !rest.is_empty() {
        return None;
    }
    Some((epoch, Some(change)))
}

/// Converts a database-relative "in `ms` milliseconds" read at `read_at`
/// into a local instant.
pub(crate) fn local_instant(read_at: Instant, ms: f64) -> Instant {
    if ms <= 0.0 {
        read_at
    } else {
        read_at + Duration::from_secs_f64(ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn payloads_round_trip_and_name_their_ring() {
        let p = notify_payload(
            "orders",
            42,
            &["a b".into(), "c:d-e".into()],
            Some(("x+y@z,", &[3, 1, 7])),
        );
        let (e, ch) = parse_payload("orders", &p).unwrap();
        assert_eq!(e, 42);
        let ch = ch.unwrap();
        assert_eq!(ch.epoch, 42);
        assert_eq!(ch.removed, vec!["a b".to_string(), "c:d-e".to_string()]);
        assert_eq!(ch.added, Some(("x+y@z,".to_string(), vec![3, 1, 7])));
        assert!(
            parse_payload("other", &p).is_none(),
            "a payload of another ring is ignored"
        );
        assert_eq!(parse_payload("orders", "17").unwrap(), (17, None));
        assert!(parse_payload("orders", "junk").is_none());
        let big: Vec<String> = (0..100).map(|i| format!("{i:0>100}")).collect();
        assert_eq!(
            notify_payload("orders", 9, &big, None),
            "9",
            "too big: the epoch only"
        );
    }

    proptest! {
        #[test]
        fn any_change_survives_the_payload(
            ring in "\\PC{1,30}",
            epoch in any::<u64>(),
            removed in proptest::collection::vec("\\PC{1,20}", 0..4),
            added in proptest::option::of(("\\PC{1,20}", proptest::collection::vec(any::<u32>(), 0..10))),
        ) {
            let p = notify_payload(&ring, epoch, &removed, added.as_ref().map(|(n, ps)| (n.as_str(), ps.as_slice())));
            let (e, ch) = parse_payload(&ring, &p).unwrap();
            prop_assert_eq!(e, epoch);
            let ch = ch.unwrap();
            prop_assert_eq!(ch.removed, removed);
            prop_assert_eq!(ch.added, added);
        }
    }
}

#[cfg(test)]
mod db_tests {
    //! The statements against a real PostgreSQL (the shared throwaway one).
    use super::*;
    use leasering_testkit::{unique_name, TestPostgres};
    use crate::Config;

    fn setup(node: &str) -> (Store, HeldConn, Client, String) {
        let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
        let schema = unique_name("store");
        let mut cfg = Config::new(unique_name("ring"));
        cfg.schema = schema.clone();
        cfg.lease_ttl = Duration::from_secs(10);
        let store = Store::new(&cfg, node).unwrap();
        let pool = db.pool(2).unwrap();
        let mut admin = db.client().unwrap();
        store.migrate(&mut admin).unwrap();
        let held = store
            .hold(
                crate::pool::ConnSource::get(&pool, Duration::from_secs(5)).unwrap(),
                false,
            )
            .unwrap();
        (store, held, admin, schema)
    }

    #[test]
    fn migrate_is_idempotent() {
        let (store, _held, mut admin, _) = setup("a");
        store.migrate(&mut admin).unwrap();
        store.check_schema(&mut admin).unwrap();
    }

    #[test]
    fn renewal_never_resurrects_an_expired_lease() {
        let (store, mut held, mut admin, schema) = setup("a");
        let joined = store.join(&mut admin).unwrap();
        let e = joined.view.epoch();
        assert_eq!(store.sync(&mut held, e).unwrap().renewed, Some(true));
        admin
            .execute(
                &format!("UPDATE {schema}.members SET expires_at = now() - interval '1 second'"),
                &[],
            )
            .unwrap();
        let reply = store.sync(&mut held, e).unwrap();
        assert_eq!(reply.renewed, None, "an expired lease must not be renewed");
        // A rejoin removes the expired row and inserts a fresh one.
        let again = store.join(&mut admin).unwrap();
        assert_eq!(again.removed, vec!["a".to_string()]);
        assert_eq!(
            store.sync(&mut held, again.view.epoch()).unwrap().renewed,
            Some(true)
        );
    }

    #[test]
    fn renewal_is_refused_to_a_member_trailing_the_epoch_too_long() {
        let (store, mut held, mut admin, schema) = setup("a");
        let e = store.join(&mut admin).unwrap().view.epoch();
        // The ring moves on; the member keeps acknowledging the old epoch.
        admin
            .execute(&format!("UPDATE {schema}.rings SET epoch = epoch + 1"), &[])
            .unwrap();
        assert_eq!(
            store.sync(&mut held, e).unwrap().renewed,
            Some(true),
            "within the lag bound"
        );
        admin
            .execute(
                &format!("UPDATE {schema}.members SET behind_since = now() - interval '1 hour'"),
                &[],
            )
            .unwrap();
        assert_eq!(
            store.sync(&mut held, e).unwrap().renewed,
            Some(false),
            "past the lag bound"
        );
        // Catching up lifts the refusal.
        assert_eq!(store.sync(&mut held, e + 1).unwrap().renewed, Some(true));
    }

    #[test]
    fn change_log_replays_and_gaps_fall_back_to_a_full_read() {
        let (a, mut held, mut admin, schema) = setup("a");
        let e1 = a.join(&mut admin).unwrap().view.epoch();
        let mut b = a.clone();
        b.node_id = "b".into();
        let e2 = b.join(&mut admin).unwrap().view.epoch();
        assert_eq!(e2, e1 + 1);
        match a.catch_up(&mut held, e1).unwrap() {
            Catchup::Changes(chs) => {
                assert_eq!(chs.len(), 1);
                assert_eq!(chs[0].added.as_ref().unwrap().0, "b");
            }
            other => panic!("expected changes, got {other:?}"),
        }
        admin
            .execute(&format!("DELETE FROM {schema}.changes"), &[])
            .unwrap();
        match a.catch_up(&mut held, e1).unwrap() {
            Catchup::Full(view) => {
                assert_eq!(view.epoch(), e2);
                assert_eq!(view.members().len(), 2);
            }
            other => panic!("expected a full read, got {other:?}"),
        }
        assert_eq!(b.leave(&mut admin).unwrap(), Some(e2 + 1));
        assert_eq!(b.leave(&mut admin).unwrap(), None, "leave is idempotent");
    }
}
