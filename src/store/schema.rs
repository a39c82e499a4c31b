//! Creating and migrating the tables (docs/protocol.md §3). Idempotent, and safe when
//! many members start at once on an empty database: the DDL runs under a
//! transaction-scoped advisory lock (concurrent `CREATE TABLE IF NOT
//! EXISTS` fails in PostgreSQL).

use postgres::types::Type;
use postgres::{Client, GenericClient};

use super::{Store, SCHEMA_VERSION};
use crate::config::validate_schema;
use crate::error::{Error, ErrorKind, Result};
use crate::placement::fnv1a64;

/// The schema-level handle: what needs a schema and no ring — creating
/// and migrating it, checking its version, and looking up a ring's size
/// (the one statement needed before a ring's [`Store`] can be made, since a
/// store knows its ring's size). Operators' functions, observers and a
/// member's start use it; everything about one ring or member is the
/// [`Store`]'s.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    /// The quoted name, the only identifier formatted into SQL.
    s: String,
    schema: String,
    statement_timeout_ms: u64,
    pooling: crate::Pooling,
}

impl Schema {
    /// The handle of schema `schema` (its name checked: it is formatted
    /// into SQL), whose statements run under `statement_timeout`, reached
    /// through connections `pooling` describes.
    pub(crate) fn new(
        schema: &str,
        statement_timeout: std::time::Duration,
        pooling: crate::Pooling,
    ) -> Result<Schema> {
        validate_schema(schema)?;
        Ok(Schema {
            s: format!("\"{schema}\""),
            schema: schema.to_string(),
            statement_timeout_ms: statement_timeout.as_millis().max(1) as u64,
            pooling,
        })
    }

    /// The handle of schema `schema` with the default statement timeout,
    /// for operators' one-off calls (which keep nothing on a connection).
    pub(crate) fn named(schema: &str) -> Result<Schema> {
        let defaults = crate::Config::new("");
        Schema::new(
            schema,
            defaults.effective_statement_timeout(),
            defaults.pooling,
        )
    }

    /// The size of ring `ring_id`, read with any client (a transaction
    /// included); `None` when there is no such ring, or no schema or tables
    /// yet.
    pub(crate) fn ring_size(
        &self,
        client: &mut impl GenericClient,
        ring_id: &str,
    ) -> Result<Option<u32>> {
        use postgres::error::SqlState;
        match client.query_typed(
            &format!("SELECT ring_size FROM {}.rings WHERE ring_id = $1", self.s),
            &[(&ring_id, Type::TEXT)],
        ) {
            Ok(rows) => Ok(rows.first().map(|r| r.get::<_, i32>(0) as u32)),
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::UNDEFINED_TABLE | &SqlState::INVALID_SCHEMA_NAME)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::db(format!("read ring {ring_id:?}"), e)),
        }
    }

    /// The [`Store`] of ring `ring_id` (of `ring_size` partitions) for
    /// reads and operators' writes that need no member: `node_id` is whom
    /// a write names (a cordon's or a pin's member), or a label. Checks the
    /// names (typed errors naming the value).
    pub(crate) fn ring(
        &self,
        ring_id: &str,
        ring_size: u32,
        node_id: Option<&str>,
    ) -> Result<Store> {
        let mut cfg = crate::Config::new(ring_id);
        cfg.schema = self.schema.clone();
        cfg.node_id = node_id.map(str::to_string);
        cfg.statement_timeout = Some(std::time::Duration::from_millis(self.statement_timeout_ms));
        cfg.pooling = self.pooling;
        cfg.validate()?;
        // The ring's size is the database's (and a member's vnode count
        // does not matter to a reader): set after the check of the names.
        cfg.ring_size = ring_size;
        cfg.vnode_count = 1;
        Store::new(&cfg, node_id.unwrap_or("operator"))
    }

    fn begin<'a>(&self, client: &'a mut Client) -> Result<super::Tx<'a>> {
        client
            .batch_execute(&format!(
                "BEGIN; {}",
                super::timeouts_sql("LOCAL", self.statement_timeout_ms)
            ))
            .map_err(|e| Error::db("begin transaction", e))?;
        Ok(super::Tx { client, open: true })
    }
}

impl Schema {
    /// The installed schema version, if the schema exists.
    fn installed_version(&self, client: &mut impl GenericClient) -> Result<Option<i32>> {
        // A scan of pg_class under the statement's snapshot, not
        // `to_regclass`: name lookups go through the backend's catalog
        // cache, which a backend that just waited on the advisory lock has
        // not refreshed — it would miss tables another migrator committed
        // meanwhile and run the DDL again, under running members.
        let rows = client
            .query_typed(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname = $1 AND c.relname = 'schema_version')",
                &[(&self.schema, Type::TEXT)],
            )
            .map_err(|e| Error::db("look for the schema", e))?;
        if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(None);
        }
        let rows = client
            .query_typed(
                &format!("SELECT max(version) FROM {}.schema_version", self.s),
                &[],
            )
            .map_err(|e| Error::db(format!("read {}.schema_version", self.schema), e))?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<i32>>(0)))
    }

    /// Whether the schema is installed at this build's version, by the
    /// cheap way: one read of `schema_version`, which fails (harmlessly,
    /// outside a transaction) where the schema is missing. Only a match is
    /// trusted; anything else goes the careful way
    /// ([`installed_version`](Store::installed_version)), whose catalog
    /// scan cost about a millisecond of planning on every start.
    fn is_current(&self, client: &mut Client) -> bool {
        client
            .query_typed(
                &format!("SELECT max(version) FROM {}.schema_version", self.s),
                &[],
            )
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.get::<_, Option<i32>>(0)))
            == Some(SCHEMA_VERSION)
    }

    /// Creates or migrates the schema; idempotent, and safe when many nodes
    /// start at once (the DDL runs under a transaction-scoped advisory lock).
    pub(crate) fn migrate(&self, client: &mut Client) -> Result<()> {
        if self.is_current(client) || self.installed_version(client)? == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        let lock_key = fnv1a64(&[b"leasering schema ", self.schema.as_bytes()]) as i64;
        let mut tx = loop {
            let mut tx = self.begin(client)?;
            // One migrator gets the lock; the others wait for it in *shared*
            // mode, which PostgreSQL grants to all of them at once when it
            // commits. Waiting in exclusive mode, as before, let them through
            // one at a time: 70 members starting on an empty database queued
            // for up to 3.4 s behind each other's (empty) re-checks.
            let got: bool = tx
                .query_typed(
                    "SELECT pg_try_advisory_xact_lock($1)",
                    &[(&lock_key, Type::INT8)],
                )
                .map_err(|e| Error::db("take the schema advisory lock", e))?[0]
                .get(0);
            if got {
                break tx;
            }
            tx.query_typed(
                "SELECT pg_advisory_xact_lock_shared($1)",
                &[(&lock_key, Type::INT8)],
            )
            .map_err(|e| Error::db("wait for the schema's migrator", e))?;
            if self.installed_version(&mut *tx)? == Some(SCHEMA_VERSION) {
                return Ok(());
            }
            // The migrator failed (or had not begun): try again.
            drop(tx);
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let from = self.installed_version(&mut *tx)?;
        match from {
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
        let ddl = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.v1_ddl(),
            self.v2_ddl(),
            self.v3_ddl(),
            self.v4_ddl(),
            self.v5_ddl(),
            self.v6_ddl(),
            self.v7_ddl()
        );
        tx.batch_execute(&ddl).map_err(|e| {
            let err = Error::db(format!("create schema {}", self.schema), e);
            if err.kind() == ErrorKind::Privileges {
                err.hint(format!(
                    "run leasering::migrate as a role that may create schema {}, then start nodes with create_schema(false)",
                    self.schema
                ))
            } else {
                err
            }
        })?;
        let s = &self.s;
        // The timeline the schema is created on (or upgraded to version 3
        // on) needs no grace period: nothing was taken before. Recorded
        // here, with the schema, not by the first take: a take that found
        // the table empty could not tell a fresh database from a standby
        // promoted before that first take's row reached it — and handed
        // out claims still in use on the lost timeline (found by the claim
        // model's cold_failover mode).
        tx.batch_execute(&format!(
            "INSERT INTO {s}.timelines (timeline, first_served)
             SELECT {}, '-infinity' WHERE NOT EXISTS (SELECT 1 FROM {s}.timelines)",
            super::statements::TIMELINE
        ))
        .map_err(|e| Error::db("record the schema's timeline", e))?;
        tx.query_typed(
            &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[(&SCHEMA_VERSION, Type::INT4)],
        )
        .map_err(|e| Error::db("record the schema version", e))?;
        tx.commit().map_err(|e| Error::db("commit the schema", e))?;
        match from {
            None => {
                log::info!(target: "leasering", "created schema {} (version {SCHEMA_VERSION})", self.schema)
            }
            Some(v) => {
                log::info!(target: "leasering", "migrated schema {} from version {v} to {SCHEMA_VERSION}", self.schema)
            }
        }
        Ok(())
    }

    /// Version 1: rings, members (lease rows), vnodes, the change log.
    fn v1_ddl(&self) -> String {
        let s = &self.s;
        format!(
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
        )
    }

    /// Version 2 (per-partition claims), on top of version 1 — also the
    /// migration of a version-1 schema, rows and all:
    ///
    /// * `members.incarnation`: a random number per member row (rows of
    ///   version 1 get negative ones), unique, which claims name — so a
    ///   member restarted under the same node id never inherits its
    ///   predecessor's claims. `NOT NULL` without a default, so a version-1
    ///   member (which does not set it) can no longer join: it fails instead
    ///   of sharing the ring unsafely.
    /// * `members.protocol`: 1 for rows that were there before the
    ///   migration, 2 for members of this version; a version-2 member does
    ///   not join a ring with live version-1 members.
    /// * `claims`: who may use a partition now, and its token — a row per
    ///   partition from the ring's creation (or this migration) on. The holder
    ///   (an incarnation) is cleared in the transaction that deletes the
    ///   holder's member row — a crashed member's claims free themselves
    ///   when it is removed at the end of its lease. Explicitly rather than
    ///   by a foreign key `ON DELETE SET NULL`: the key's check on every
    ///   claim a take writes cost a query per row (a take of 300 claims
    ///   took 9 ms), where one key-share lock on the taker's own member row
    ///   serialises a take against that row's deletion just as well.
    /// * `claims.waiter`: the NOTIFY channel of the member whose take found
    ///   the claim held by another, so that the release tells it — the
    ///   ring's channel once a second member waits too, so that the release
    ///   tells them all — and nobody when nobody waits (with hundreds of
    ///   members, releases that always notified were most of the
    ///   database's CPU at a cold start).
    /// * `join_requests`: joins waiting for the holder of the ring's lock to
    ///   absorb them (see the store's `join`), and refusals for their
    ///   requesters to read.
    fn v2_ddl(&self) -> String {
        let s = &self.s;
        format!(
            "ALTER TABLE {s}.members ADD COLUMN IF NOT EXISTS incarnation bigint;
             ALTER TABLE {s}.members ADD COLUMN IF NOT EXISTS protocol int NOT NULL DEFAULT 1;
             UPDATE {s}.members m SET incarnation = -n.i
               FROM (SELECT ring_id, node_id, row_number() OVER () AS i FROM {s}.members WHERE incarnation IS NULL) n
              WHERE m.ring_id = n.ring_id AND m.node_id = n.node_id;
             ALTER TABLE {s}.members ALTER COLUMN incarnation SET NOT NULL;
             CREATE UNIQUE INDEX IF NOT EXISTS members_incarnation ON {s}.members (incarnation);
             CREATE TABLE IF NOT EXISTS {s}.claims (
                 ring_id text NOT NULL,
                 partition int NOT NULL,
                 holder bigint,
                 token bigint NOT NULL,
                 claimed_at timestamptz,
                 released_at timestamptz,
                 waiter text,
                 PRIMARY KEY (ring_id, partition));
             CREATE INDEX IF NOT EXISTS claims_by_holder ON {s}.claims (holder) WHERE holder IS NOT NULL;
             INSERT INTO {s}.claims (ring_id, partition, token)
               SELECT r.ring_id, g, 0 FROM {s}.rings r, generate_series(0, r.ring_size - 1) g
               ON CONFLICT (ring_id, partition) DO NOTHING;
             CREATE TABLE IF NOT EXISTS {s}.join_requests (
                 incarnation bigint PRIMARY KEY,
                 ring_id text NOT NULL,
                 node_id text NOT NULL,
                 vnode_count int NOT NULL,
                 ring_size int NOT NULL,
                 ttl_ms float8 NOT NULL,
                 requested_at timestamptz NOT NULL DEFAULT now(),
                 expires_at timestamptz NOT NULL,
                 refused text);
             CREATE INDEX IF NOT EXISTS join_requests_by_ring ON {s}.join_requests (ring_id);"
        )
    }

    /// Version 3, on top of version 2 (existing rings stay hashed):
    ///
    /// * `rings.placement`: `hashed` or `balanced`, fixed when the ring is
    ///   created; `join_requests.placement` carries a joiner's, for the
    ///   absorber to refuse a mismatch.
    /// * `rings.placement_table`: the balanced placement's owner table at
    ///   the ring's epoch (see `balanced.rs` for its encoding), written by
    ///   every change in the transaction that bumps the epoch; `NULL` for a
    ///   hashed ring, and for a balanced ring nobody has joined yet.
    /// * `members.metadata`, `join_requests.metadata`, `changes.metadata`:
    ///   a member's metadata, and the added member's in its change.
    fn v3_ddl(&self) -> String {
        let s = &self.s;
        format!(
            "ALTER TABLE {s}.rings ADD COLUMN IF NOT EXISTS placement text NOT NULL DEFAULT 'hashed';
             ALTER TABLE {s}.rings ADD COLUMN IF NOT EXISTS placement_table bytea;
             ALTER TABLE {s}.members ADD COLUMN IF NOT EXISTS metadata text;
             ALTER TABLE {s}.join_requests ADD COLUMN IF NOT EXISTS placement text NOT NULL DEFAULT 'hashed';
             ALTER TABLE {s}.join_requests ADD COLUMN IF NOT EXISTS metadata text;
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS metadata text;
             CREATE TABLE IF NOT EXISTS {s}.timelines (
                 timeline bigint PRIMARY KEY,
                 first_served timestamptz NOT NULL
             );"
        )
    }

    /// Version 4, on top of version 3 (issue 19: eligibility; existing
    /// members stay ready and eligible):
    ///
    /// * `members.ready`: the member's own readiness
    ///   ([`RingNode::set_ready`](crate::RingNode::set_ready)), and
    ///   `join_requests.ready` a joiner's;
    /// * `cordons`: node ids an operator cordoned ([`cordon`](crate::cordon)),
    ///   by node id, so that a cordon outlives the member's restarts and may
    ///   exist while it is absent;
    /// * `members.eligible`: ready and not cordoned — kept with the row (in
    ///   the transaction that changes either source) so that a view reads it
    ///   with the vnodes, at one epoch;
    /// * `changes.eligible`, `changes.ineligible`: the members whose
    ///   eligibility a change flipped; `changes.added_eligible`: the added
    ///   member's.
    fn v4_ddl(&self) -> String {
        let s = &self.s;
        format!(
            "ALTER TABLE {s}.members ADD COLUMN IF NOT EXISTS ready boolean NOT NULL DEFAULT true;
             ALTER TABLE {s}.members ADD COLUMN IF NOT EXISTS eligible boolean NOT NULL DEFAULT true;
             ALTER TABLE {s}.join_requests ADD COLUMN IF NOT EXISTS ready boolean NOT NULL DEFAULT true;
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS eligible text[] NOT NULL DEFAULT '{{}}';
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS ineligible text[] NOT NULL DEFAULT '{{}}';
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS added_eligible boolean NOT NULL DEFAULT true;
             CREATE TABLE IF NOT EXISTS {s}.cordons (
                 ring_id text NOT NULL,
                 node_id text NOT NULL,
                 cordoned_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (ring_id, node_id));"
        )
    }

    /// Version 5, on top of version 4 (issue 19: capacity and zones;
    /// existing members have neither): `members.attrs`,
    /// `join_requests.attrs` and `changes.added_attrs` hold a member's
    /// placement attributes in their text form (`zone=<z> capacity=<n>`,
    /// `NULL` for none), which balanced placement reads; `pins`: the
    /// partitions an operator pinned to a node id (`leasering::pin`), kept
    /// while the node is away, and `changes.pinned`, `pinned_to`,
    /// `unpinned`: the pins a change set and removed; `changes.budget`: on
    /// a ring with a move budget (stored in `rings.placement` as
    /// `balanced max_moving=<m>`), the moves between live members the
    /// change was allowed.
    fn v5_ddl(&self) -> String {
        let s = &self.s;
        format!(
            "ALTER TABLE {s}.members ADD COLUMN IF NOT EXISTS attrs text;
             ALTER TABLE {s}.join_requests ADD COLUMN IF NOT EXISTS attrs text;
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS added_attrs text;
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS pinned int[] NOT NULL DEFAULT '{{}}';
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS pinned_to text[] NOT NULL DEFAULT '{{}}';
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS unpinned int[] NOT NULL DEFAULT '{{}}';
             ALTER TABLE {s}.changes ADD COLUMN IF NOT EXISTS budget int;
             CREATE TABLE IF NOT EXISTS {s}.pins (
                 ring_id text NOT NULL,
                 partition int NOT NULL,
                 node_id text NOT NULL,
                 pinned_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (ring_id, partition));"
        )
    }

    /// Version 6, on top of version 5 (issue 18: plans that outlive a pool
    /// borrow): the take and the release of claims as PL/pgSQL functions
    /// (see `functions.rs`); no table changes.
    fn v6_ddl(&self) -> String {
        super::functions::functions_ddl(&self.s)
    }

    /// Version 7, on top of version 6 (issue 18: what a member costs at
    /// rest): members by lease end. Every renewal reads the other member
    /// whose lease ends first (the crash cleanup's plan) and every cleanup
    /// looks for an expired one; without this index each read scanned
    /// the ring's members, so a ring's renewals cost O(n²) per heartbeat:
    /// at 512 members, 2.3 ms per renewal and most of the database's CPU
    /// at rest. With it a renewal is no longer a HOT update (its
    /// `expires_at` is indexed): three index entries per renewal, against
    /// a scan of every member.
    fn v7_ddl(&self) -> String {
        let s = &self.s;
        format!(
            "CREATE INDEX IF NOT EXISTS members_by_expiry ON {s}.members (ring_id, expires_at);"
        )
    }

    /// With `create_schema` off: the schema must exist at our version.
    pub(crate) fn check(&self, client: &mut Client) -> Result<()> {
        if self.is_current(client) {
            return Ok(());
        }
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
}
