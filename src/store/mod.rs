//! The PostgreSQL side (docs/protocol.md §3): each protocol step as one statement or
//! one short transaction, returning the core's input types
//! ([`crate::protocol::input`]). All lease times are computed by the
//! database (`now()`); every call runs under a statement and lock timeout.
//!
//! * [`schema`] — the schema-level handle ([`Schema`]): creating and
//!   migrating the tables, checking their version, looking up a ring's size
//!   and making a ring's [`Store`] for readers and operators;
//! * [`join`] — the join: a request that the holder of the ring's lock
//!   absorbs with every other pending one (group commit);
//! * [`membership`] — the other transactions under the ring's lock: leave,
//!   removal of expired members, and the change recording all share;
//! * [`statements`] — the statements a member's threads run on the
//!   connections they keep: renewal (with the claims held, for
//!   reconciliation), take and release of claims, catch-up;
//! * [`payload`] — the NOTIFY payload codec (pure).
//!
//! Nothing here holds state between calls except prepared statements on a
//! connection a thread keeps ([`HeldConn`]).

mod budget;
mod functions;
pub(crate) use schema::Schema;
mod join;
mod membership;
pub(crate) mod payload;
mod pins;
mod schema;
mod statements;
#[cfg(test)]
mod tests;

use postgres::Client;

use crate::config::validate_schema;
use crate::error::{Error, Result};
use crate::placement::{fmix64, fnv1a64};

pub(crate) use join::JoinAttempt;
pub(crate) use statements::{hold, hold_setup, HeldConn, RenewItem};

/// Version of the schema this build creates and understands (2: claims;
/// 3: placement and member metadata; 4: eligibility — readiness and
/// cordons; 5: placement attributes — capacity and zone; 6: the take and
/// the release as server-side functions, whose plans outlive a pool
/// borrow; 7: members indexed by lease end, for the renewal's and the
/// cleanup's reads of the next expiry). Older schemas are migrated in
/// place; see [`migrate`](crate::migrate).
pub const SCHEMA_VERSION: i32 = 7;

/// NOTIFYs this process's statements sent (each counted when its
/// statement returns): see [`crate::telemetry::notifications_sent`].
pub(crate) static NOTIFIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts `n` NOTIFYs sent.
pub(crate) fn notified(n: i64) {
    if n > 0 {
        NOTIFIES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

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
    placement: crate::Placement,
    /// The ring's move budget this member was configured with (stored
    /// with the placement: [`membership::placement_text`]).
    pub(crate) max_moving: Option<u32>,
    metadata: Option<String>,
    /// The member's placement attributes, stored form
    /// ([`crate::attrs::encode`]).
    attrs: Option<String>,
    ttl_s: f64,
    /// The grace period of a new timeline (by default a lease TTL and the
    /// margin, for the clock difference of the old and the new primary): no
    /// claim is taken before it has passed since the first take on the
    /// timeline.
    grace_s: f64,
    lag_s: f64,
    statement_timeout_ms: u64,
    /// The NOTIFY channel of this ring (membership changes: everyone).
    pub(crate) channel: String,
    /// This member's own channel (releases of partitions it waits for).
    pub(crate) own_channel: String,
    /// The advisory lock key that serialises this ring's membership changes.
    pub(crate) ring_lock: i64,
    /// Whether anything may outlive a transaction on a connection (named
    /// prepared statements, session settings, LISTEN): not behind a pooler
    /// in transaction mode ([`Pooling::Transaction`](crate::Pooling::Transaction)).
    pub(crate) session_state: bool,
    /// This member's readiness (issue 19), shared by every clone of its
    /// store: a join (and a rejoin after an eviction) files it, and
    /// [`Store::set_ready`] changes it.
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub(super) fn pg_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Store {
    pub(crate) fn new(cfg: &crate::Config, node_id: &str) -> Result<Store> {
        validate_schema(&cfg.schema)?;
        Ok(Store {
            s: format!("\"{}\"", cfg.schema),
            schema: cfg.schema.clone(),
            ring_id: cfg.ring_id.clone(),
            node_id: node_id.to_string(),
            ring_size: cfg.ring_size,
            vnode_count: cfg.vnode_count,
            placement: cfg.placement,
            max_moving: cfg.max_moving,
            metadata: cfg.metadata.clone(),
            attrs: crate::attrs::of_config(cfg),
            ttl_s: cfg.lease_ttl.as_secs_f64(),
            grace_s: cfg.effective_failover_grace().as_secs_f64(),
            lag_s: cfg.lag_limit().as_secs_f64(),
            statement_timeout_ms: cfg.effective_statement_timeout().as_millis().max(1) as u64,
            channel: Store::ring_channel(&cfg.schema, &cfg.ring_id),
            own_channel: node_channel(&cfg.schema, &cfg.ring_id, node_id),
            ring_lock: fnv1a64(&[
                b"leasering ring ",
                cfg.schema.as_bytes(),
                &[0],
                cfg.ring_id.as_bytes(),
            ]) as i64,
            session_state: !cfg.pooling.transaction_pooling(),
            ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(cfg.start_ready)),
        })
    }

    /// The NOTIFY channel of ring `ring_id` in `schema` (membership
    /// changes, and releases of claims two members wait for): everyone
    /// following the ring listens on it.
    pub(crate) fn ring_channel(schema: &str, ring_id: &str) -> String {
        let h = fmix64(fnv1a64(&[schema.as_bytes(), &[0], ring_id.as_bytes()]));
        format!("leasering_{h:016x}")
    }

    /// The ring's placement as this member files it and a new ring stores
    /// it: `hashed`, `balanced`, or `balanced max_moving=<m>`.
    pub(crate) fn placement_text(&self) -> String {
        membership::placement_text(self.placement, self.max_moving)
    }

    /// Wakes this member's client's listening connection with an empty
    /// NOTIFY on the member's own channel (it waits on its socket for up to
    /// a second before it LISTENs on a channel new to it).
    pub(crate) fn wake_listener(&self, client: &mut Client) -> Result<()> {
        client
            .execute("SELECT pg_notify($1, '')", &[&self.own_channel])
            .map(|_| ())
            .map_err(|e| Error::db("wake the client's connection", e))
    }

    /// Whether this member is ready (what its next join files).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The schema's name (unquoted).
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// This ring's schema-level handle (migration, version check), with
    /// this member's statement timeout.
    pub(crate) fn schema_handle(&self) -> Result<Schema> {
        let pooling = if self.session_state {
            crate::Pooling::Session
        } else {
            crate::Pooling::Transaction
        };
        Schema::new(
            &self.schema,
            std::time::Duration::from_millis(self.statement_timeout_ms),
            pooling,
        )
    }

    pub(super) fn timeouts_sql(&self, scope: &str) -> String {
        timeouts_sql(scope, self.statement_timeout_ms)
    }

    /// The planner settings of the statements a member runs over and over
    /// (renewal, take, release, catch-up): index probes, never a scan of a
    /// ring's rows. Their generic plans are made once per connection,
    /// often before the tables have statistics (a ring just created); the
    /// planner then guessed a ring's claims at a dozen rows and chose to
    /// read them all and filter or hash-join — every take and release
    /// touched every claim of the ring (measured on a ring of 1024: a
    /// take of 64 claims 1.1–2.3 ms, a release 1.9 ms; with these 0.2–0.3
    /// ms; a ring of 16384 scanned 16k rows per statement). Only where an
    /// index exists does this change a plan, and every lookup of these
    /// statements has one.
    pub(super) fn planner_sql(scope: &str) -> String {
        format!(
            "SET {scope} enable_hashjoin = off; SET {scope} enable_mergejoin = off; \
             SET {scope} enable_bitmapscan = off; SET {scope} enable_seqscan = off"
        )
    }

    /// Opens a transaction with its timeouts in one round trip (`BEGIN` and
    /// the `SET LOCAL`s in one simple-query message).
    pub(super) fn begin<'a>(&self, client: &'a mut Client) -> Result<Tx<'a>> {
        self.begin_with(client, "")
    }

    /// [`Store::begin`], with `before` (statements outside the transaction,
    /// such as `LISTEN`) in the same round trip.
    pub(super) fn begin_with<'a>(&self, client: &'a mut Client, before: &str) -> Result<Tx<'a>> {
        let sep = if before.is_empty() { "" } else { "; " };
        client
            .batch_execute(&format!(
                "{before}{sep}BEGIN; {}",
                self.timeouts_sql("LOCAL")
            ))
            .map_err(|e| Error::db("begin transaction", e))?;
        Ok(Tx { client, open: true })
    }

    /// [`Store::begin`] with the [planner settings](Store::planner_sql) of
    /// the member's repeated statements, still in one round trip (behind a
    /// pooler in transaction mode, where nothing is set for a session).
    pub(super) fn begin_planned<'a>(&self, client: &'a mut Client) -> Result<Tx<'a>> {
        client
            .batch_execute(&format!(
                "BEGIN; {}; {}",
                self.timeouts_sql("LOCAL"),
                Store::planner_sql("LOCAL")
            ))
            .map_err(|e| Error::db("begin transaction", e))?;
        Ok(Tx { client, open: true })
    }

    /// The `idle_in_transaction_session_timeout` (ms, as text for
    /// `set_config`) of a transaction once it holds the ring's lock (joins,
    /// leaves, cleanups): one statement timeout (`lease_ttl / 3` by
    /// default), set by the statement that takes the lock, so that a member
    /// frozen between two statements of such a transaction holds up
    /// everyone's joins, leaves and crash cleanups for less than a TTL, not
    /// for the usual idle bound of four statement timeouts (40 s by
    /// default). Not shorter: an absorber descheduled for two seconds on a
    /// machine running 1024 members lost its connection, and its start
    /// failed. Only the holder gets it: a joiner that merely filed its
    /// request must not lose its connection either.
    pub(super) fn ring_lock_idle(&self) -> String {
        self.statement_timeout_ms.to_string()
    }

    // ---- schema ---------------------------------------------------------
}

/// The timeouts of a session or transaction (`scope`): statements and lock
/// waits `ms`, idle in a transaction four times that.
pub(super) fn timeouts_sql(scope: &str, ms: u64) -> String {
    format!(
        "SET {scope} statement_timeout = {ms}; SET {scope} lock_timeout = {ms}; \
         SET {scope} idle_in_transaction_session_timeout = {idle}",
        idle = ms * 4,
    )
}

/// A transaction opened by [`Store::begin`]: rolled back on drop unless
/// committed (like `postgres::Transaction`, which cannot be opened
/// together with its `SET LOCAL`s in one round trip).
pub(crate) struct Tx<'a> {
    client: &'a mut Client,
    open: bool,
}

impl Tx<'_> {
    pub(crate) fn commit(self) -> std::result::Result<(), postgres::Error> {
        self.commit_with("")
    }

    /// Commits, with `after` (statements outside the transaction, such as
    /// `UNLISTEN`) in the same round trip.
    pub(crate) fn commit_with(mut self, after: &str) -> std::result::Result<(), postgres::Error> {
        self.open = false;
        if after.is_empty() {
            self.client.batch_execute("COMMIT")
        } else {
            self.client.batch_execute(&format!("COMMIT; {after}"))
        }
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

/// The NOTIFY channel of member `node_id` of ring `ring_id` in `schema`:
/// releases of the partitions it is to own are told there, so that a
/// release wakes the one member waiting for it rather than the whole ring
/// (with hundreds of members, broadcasting releases meant millions of
/// deliveries during a cold start).
pub(crate) fn node_channel(schema: &str, ring_id: &str, node_id: &str) -> String {
    let h = fmix64(fnv1a64(&[
        schema.as_bytes(),
        &[0],
        ring_id.as_bytes(),
        &[0],
        node_id.as_bytes(),
    ]));
    format!("leasering_n{h:016x}")
}

/// Stops listening to every channel on `client` (a connection going back to
/// the pool after a join that nobody waits for any more).
pub(crate) fn unlisten_all(client: &mut Client) -> Result<()> {
    client
        .batch_execute("UNLISTEN *")
        .map_err(|e| Error::db("unlisten", e))
}
