//! Configuration values and their validation. Pure: no I/O, so every bad
//! input is caught, with a typed error naming the value, before a
//! connection is touched.

use std::time::Duration;

use crate::error::{Error, Result};

/// Largest accepted `ring_size`.
///
/// Every member keeps O(`ring_size`) state (a bitset for the lock-free hot
/// path, an owner table for O(1) `owner_of`, a token per partition), so the
/// ring size is capped at 2^20 partitions — far more units of work than any
/// fleet can use, and it keeps a view rebuild in the milliseconds. Sizes
/// above it (including everything above 2^31−1) are rejected with
/// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig).
pub const MAX_RING_SIZE: u32 = 1 << 20;

/// Smallest accepted lease TTL: below it the renewal interval and the safety
/// margin become comparable to scheduling noise.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(500);

/// Longest accepted lease TTL (one day).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest accepted ring id and node id, in bytes.
pub const MAX_ID_LEN: usize = 200;

/// Longest accepted member metadata, in bytes: it travels in every
/// notification of the member's join (PostgreSQL caps a payload at 8000
/// bytes) and in every view.
pub const MAX_METADATA_LEN: usize = 1024;

/// The settings of one ring member, as [`NodeBuilder`](crate::NodeBuilder)
/// collects them (its setters are the one public way to configure, and
/// document the defaults; [`NodeBuilder::check`](crate::NodeBuilder::check)
/// validates without a database).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The ring's name: any UTF-8 string of 1..=200 bytes without NUL. Data,
    /// never spliced into SQL.
    pub ring_id: String,
    /// This member's id; `None` draws `node_` + 16 random hex digits.
    pub node_id: Option<String>,
    /// Positions this member holds on the ring (its weight). Default 8.
    pub vnode_count: u32,
    /// Number of partitions, `1..=MAX_RING_SIZE`. Default 1024. Must match
    /// the ring stored in the database.
    pub ring_size: u32,
    /// Lease time-to-live. Default 30 s.
    pub lease_ttl: Duration,
    /// How often the lease is renewed. `None`: `lease_ttl / 3`.
    pub heartbeat_interval: Option<Duration>,
    /// Safety margin by which the local lease ends before the database's.
    /// `None`: `lease_ttl / 10`.
    pub margin: Option<Duration>,
    /// Schema holding the tables. Default `leasering`.
    pub schema: String,
    /// Create (or migrate) the schema at start. Default `true`; turn off to
    /// run with a role that has only DML rights after [`migrate`](crate::migrate).
    pub create_schema: bool,
    /// How the pool reaches PostgreSQL, and so how changes are heard.
    /// Default [`Pooling::Session`]. See
    /// [`NodeBuilder::pooling`](crate::NodeBuilder::pooling).
    pub pooling: Pooling,
    /// How long `start()` may take before it fails. Default 10 s.
    pub start_timeout: Duration,
    /// How long `stop()` may take before it fails. Default 5 s.
    pub stop_timeout: Duration,
    /// Server-side bound on each statement leasering runs. `None`:
    /// `lease_ttl / 3`, clamped to 1..=10 s.
    pub statement_timeout: Option<Duration>,
    /// With `Some(d)`, a handed-off partition's claim is kept until the
    /// user's work on it has stopped (every copy of the `Released` event's
    /// drain guard dropped), at most `d`. `None` (the default): released at
    /// once.
    pub drain_timeout: Option<Duration>,
    /// How partitions are placed on members. Default
    /// [`Placement::Hashed`](crate::Placement::Hashed). Must match the ring
    /// stored in the database.
    pub placement: crate::Placement,
    /// A small string stored with the member's row and shown to every
    /// member and observer (in [`MemberInfo::metadata`](crate::MemberInfo::metadata)):
    /// typically the address where the member serves its partitions. At
    /// most [`MAX_METADATA_LEN`] bytes, no NUL. Default `None`.
    pub metadata: Option<String>,
    /// How long after a promotion (the first take the database serves on a
    /// new timeline) nothing is taken. `None`: `lease_ttl` plus the margin,
    /// which keeps guarantees 1 and 3 through a failover that loses
    /// commits. `Some(Duration::ZERO)` is safe only if **every promotion
    /// loses nothing** (a synchronous standby, e.g. Patroni's
    /// `synchronous_mode_strict`): then handoffs right after a failover do
    /// not wait. See "Failover and timelines" in `docs/protocol.md`.
    pub failover_grace: Option<Duration>,
    /// Whether the member joins ready (eligible for partitions, unless
    /// cordoned). Default `true`; `false` is
    /// [`NodeBuilder::start_unready`](crate::NodeBuilder::start_unready): it joins
    /// holding nothing until [`RingNode::set_ready`](crate::RingNode::set_ready).
    pub start_ready: bool,
    /// At most this many partitions for this member (balanced placement
    /// only). Default `None`: no limit. See
    /// [`NodeBuilder::capacity`](crate::NodeBuilder::capacity).
    pub capacity: Option<u32>,
    /// The member's zone (failure domain: a rack, an availability zone),
    /// for balanced placement only. Default `None`. See
    /// [`NodeBuilder::zone`](crate::NodeBuilder::zone).
    pub zone: Option<String>,
    /// The ring's move budget: at most this many partitions in motion
    /// between live members at once (balanced placement only; stored with
    /// the ring). Default `None`: no budget. See
    /// [`NodeBuilder::max_moving`](crate::NodeBuilder::max_moving).
    pub max_moving: Option<u32>,
}

impl Config {
    /// The defaults for a ring named `ring_id`.
    pub fn new(ring_id: impl Into<String>) -> Config {
        Config {
            ring_id: ring_id.into(),
            node_id: None,
            vnode_count: 8,
            ring_size: 1024,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: None,
            margin: None,
            schema: "leasering".to_string(),
            create_schema: true,
            pooling: Pooling::Session,
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            statement_timeout: None,
            drain_timeout: None,
            placement: crate::Placement::Hashed,
            metadata: None,
            failover_grace: None,
            start_ready: true,
            capacity: None,
            max_moving: None,
            zone: None,
        }
    }

    /// The renewal interval in force.
    pub fn effective_heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.lease_ttl / 3)
    }

    /// The safety margin in force.
    pub fn effective_margin(&self) -> Duration {
        self.margin.unwrap_or(self.lease_ttl / 10)
    }

    /// The grace period of a new timeline in force: `lease_ttl` plus the
    /// margin unless [`failover_grace`](Config::failover_grace) is set.
    pub fn effective_failover_grace(&self) -> Duration {
        self.failover_grace
            .unwrap_or(self.lease_ttl + self.effective_margin())
    }

    /// The per-statement bound in force.
    pub fn effective_statement_timeout(&self) -> Duration {
        self.statement_timeout.unwrap_or_else(|| {
            (self.lease_ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
        })
    }

    /// How long a member may trail the ring's epoch without adopting a
    /// newer one before its renewals are refused (docs/protocol.md §4,
    /// "Leases"): half the TTL. A member that acknowledges a newer epoch
    /// than at its previous renewal, even one still behind, starts the
    /// bound again: it is slow, not stuck, and evicting it would only add
    /// two changes (its removal and its rejoin) for every member to apply.
    /// At 1,024 members starting at once on two cores, the bound on the
    /// oldest unseen change alone refused 2,048 renewals a minute and the
    /// ring never settled (issue 18).
    pub fn lag_limit(&self) -> Duration {
        self.lease_ttl / 2
    }

    /// Checks every value; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        validate_id("ring_id", "ring id", &self.ring_id)?;
        if let Some(node_id) = &self.node_id {
            validate_id("node_id", "node id", node_id)?;
        }
        validate_schema(&self.schema)?;
        if let Some(m) = &self.metadata {
            validate_metadata(m)?;
        }
        if let Some(z) = &self.zone {
            validate_zone(z)?;
        }
        if self.capacity == Some(0) {
            return Err(Error::invalid(
                "capacity",
                "capacity 0 is out of range: it must be at least 1 (to hold nothing, \
                 start unready or cordon the member)",
            ));
        }
        if self.max_moving == Some(0) {
            return Err(Error::invalid(
                "max_moving",
                "max_moving 0 is out of range: it must be at least 1 (a ring that may move \
                 nothing between live members could never take in a new member)",
            ));
        }
        if self.placement == crate::Placement::Hashed {
            if let Some(m) = self.max_moving {
                return Err(Error::invalid(
                    "max_moving",
                    format!(
                        "max_moving {m} needs Placement::Balanced: hashed placement is a function \
                         of the positions alone, so a change moves all it moves at once"
                    ),
                ));
            }
            if let Some(c) = self.capacity {
                return Err(Error::invalid(
                    "capacity",
                    format!(
                        "capacity {c} needs Placement::Balanced: hashed placement is a function \
                         of the positions alone and cannot honour a limit"
                    ),
                ));
            }
            if let Some(z) = &self.zone {
                return Err(Error::invalid(
                    "zone",
                    format!(
                        "zone {z:?} needs Placement::Balanced: hashed placement is a function \
                         of the positions alone and cannot spread by zone"
                    ),
                ));
            }
        }
        if self.ring_size == 0 || self.ring_size > MAX_RING_SIZE {
            return Err(Error::invalid(
                "ring_size",
                format!(
                    "ring_size {} is out of range: it must be 1..={MAX_RING_SIZE}",
                    self.ring_size
                ),
            ));
        }
        if self.vnode_count == 0 || self.vnode_count > self.ring_size {
            return Err(Error::invalid(
                "vnode_count",
                format!(
                    "vnode_count {} is out of range: it must be 1..={} (the ring size)",
                    self.vnode_count, self.ring_size
                ),
            ));
        }
        let ttl = self.lease_ttl;
        if ttl < MIN_LEASE_TTL || ttl > MAX_LEASE_TTL {
            return Err(Error::invalid("lease_ttl", format!(
                "lease_ttl {ttl:?} is out of range: it must be {MIN_LEASE_TTL:?}..={MAX_LEASE_TTL:?}"
            )));
        }
        let margin = self.effective_margin();
        if margin.is_zero() || margin >= ttl / 2 {
            return Err(Error::invalid("margin", format!(
                "margin {margin:?} does not fit lease_ttl {ttl:?}: it must be above zero and below half the TTL"
            )));
        }
        let hb = self.effective_heartbeat_interval();
        // At least two renewals must fit into the local lease, so that one
        // lost renewal does not fence a healthy member.
        if hb.is_zero() || hb * 2 > ttl - margin {
            return Err(Error::invalid(
                "heartbeat_interval",
                format!(
                "heartbeat_interval {hb:?} does not fit lease_ttl {ttl:?} with margin {margin:?}: \
                 two intervals must fit in TTL minus margin"
            ),
            ));
        }
        let st = self.effective_statement_timeout();
        if st < Duration::from_millis(10) {
            return Err(Error::invalid(
                "statement_timeout",
                format!("statement_timeout {st:?} is too small: it must be at least 10ms"),
            ));
        }
        if self.start_timeout.is_zero() {
            return Err(Error::invalid(
                "start_timeout",
                "start_timeout must be above zero",
            ));
        }
        let grace = self.effective_failover_grace();
        let most = (ttl + margin) * 10;
        if grace > most {
            return Err(Error::invalid(
                "failover_grace",
                format!(
                    "failover_grace {grace:?} is out of range: it must be at most ten times \
                     lease_ttl plus margin ({most:?}); nothing is taken during it"
                ),
            ));
        }
        if self.drain_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                "drain_timeout",
                "drain_timeout 0ns is out of range: it must be above zero (or unset for no drain)",
            ));
        }
        if self.stop_timeout.is_zero() {
            return Err(Error::invalid(
                "stop_timeout",
                "stop_timeout must be above zero",
            ));
        }
        Ok(())
    }
}

fn validate_id(setting: &'static str, what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(
            setting,
            format!("{what} is empty: it must be 1..={MAX_ID_LEN} bytes"),
        ));
    }
    if id.len() > MAX_ID_LEN {
        let shown: String = id.chars().take(40).collect();
        return Err(Error::invalid(
            setting,
            format!(
                "{what} {shown:?}… is {} bytes long: it must be 1..={MAX_ID_LEN} bytes",
                id.len()
            ),
        ));
    }
    if id.contains('\0') {
        return Err(Error::invalid(
            setting,
            format!("{what} {id:?} contains a NUL byte, which PostgreSQL text cannot store"),
        ));
    }
    Ok(())
}

fn validate_metadata(m: &str) -> Result<()> {
    if m.len() > MAX_METADATA_LEN {
        let shown: String = m.chars().take(40).collect();
        return Err(Error::invalid(
            "metadata",
            format!(
                "metadata {shown:?}… is {} bytes long: it must be at most {MAX_METADATA_LEN} bytes",
                m.len()
            ),
        ));
    }
    if m.contains('\0') {
        return Err(Error::invalid(
            "metadata",
            format!("metadata {m:?} contains a NUL byte, which PostgreSQL text cannot store"),
        ));
    }
    Ok(())
}

/// Longest accepted zone name, in bytes.
pub const MAX_ZONE_LEN: usize = 63;

/// A zone is a short name of letters, digits, `.`, `_`, `-` and `:` (an
/// availability zone such as `eu-west-1a`, a rack such as `dc1:r12`).
pub(crate) fn validate_zone(z: &str) -> Result<()> {
    let ok = !z.is_empty()
        && z.len() <= MAX_ZONE_LEN
        && z.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "zone",
            format!(
                "zone {z:?} is not a zone name: 1 to {MAX_ZONE_LEN} letters, digits, '.', '_', '-' or ':'"
            ),
        ))
    }
}

/// A schema name must be a plain lowercase identifier: it is the only name
/// ever formatted into SQL (and then quoted as well).
pub(crate) fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok && !schema.starts_with("pg_") {
        Ok(())
    } else {
        Err(Error::invalid("schema", format!(
            "schema name {schema:?} is invalid: it must match [a-z_][a-z0-9_]{{0,62}} and not start with pg_"
        )))
    }
}

/// 8 random bytes from the kernel's random source (falling back to time,
/// pid and a counter, mixed).
fn random_bytes() -> [u8; 8] {
    use std::io::Read;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut buf = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !random {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mixed =
            crate::placement::fmix64(t ^ ((std::process::id() as u64) << 32) ^ n.rotate_left(17));
        buf = mixed.to_be_bytes();
    }
    buf
}

/// `node_` + 16 random hex digits (unique enough for an id that is also
/// checked against the live members at join).
pub(crate) fn random_node_id() -> String {
    let mut s = String::from("node_");
    for b in random_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A member row's incarnation: a random positive 63-bit number, unique in
/// practice (a unique index makes a collision a failed join, tried again).
/// Random rather than from a sequence, so that a role with only
/// `SELECT, INSERT, UPDATE, DELETE` on the tables can join.
pub(crate) fn random_incarnation() -> i64 {
    (u64::from_be_bytes(random_bytes()) >> 1).max(1) as i64
}

/// A random 64-bit number (a client's id).
pub(crate) fn random_u64() -> u64 {
    u64::from_be_bytes(random_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn bad(cfg: Config, needle: &str) {
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        assert!(err.message().contains(needle), "{err} should name {needle}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::new("orders").validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        bad(Config::new(""), "ring id");
        bad(Config::new("x".repeat(201)), "201 bytes");
        Config::new("é".repeat(100)).validate().unwrap();
        bad(Config::new("a\0b"), "NUL");
        let mut c = Config::new("r");
        c.ring_size = 0;
        bad(c, "ring_size 0");
        let mut c = Config::new("r");
        c.lease_ttl = Duration::from_secs(10);
        c.failover_grace = Some(Duration::from_secs(111));
        bad(c, "failover_grace 111s");
        let mut c = Config::new("r");
        c.failover_grace = Some(Duration::ZERO);
        c.validate().unwrap();
        assert_eq!(c.effective_failover_grace(), Duration::ZERO);
        assert_eq!(
            Config::new("r").effective_failover_grace(),
            Duration::from_secs(33)
        );
        let mut m = Config::new("r");
        m.metadata = Some("x".repeat(MAX_METADATA_LEN + 1));
        bad(m, "metadata \"xxxx");
        let mut m = Config::new("r");
        m.metadata = Some("10.0.0.1\0:80".into());
        bad(m, "NUL");
        let mut c = Config::new("r");
        c.ring_size = u32::MAX;
        bad(c, "ring_size 4294967295");
        let mut c = Config::new("r");
        c.vnode_count = 0;
        bad(c, "vnode_count 0");
        let mut c = Config::new("r");
        c.ring_size = 16;
        c.vnode_count = 17;
        bad(c, "vnode_count 17");
        let mut c = Config::new("r");
        c.lease_ttl = Duration::from_millis(100);
        bad(c, "lease_ttl 100ms");
        let mut c = Config::new("r");
        c.heartbeat_interval = Some(Duration::from_secs(20));
        bad(c, "heartbeat_interval 20s");
        let mut c = Config::new("r");
        c.margin = Some(Duration::from_secs(20));
        bad(c, "margin 20s");
        let mut c = Config::new("r");
        c.schema = "Robert'); DROP TABLE x;--".into();
        bad(c, "schema name");
        let mut c = Config::new("r");
        c.schema = "pg_catalog".into();
        bad(c, "pg_catalog");
        let mut c = Config::new("r");
        c.node_id = Some(String::new());
        bad(c, "node id");
    }

    #[test]
    fn random_ids_look_right() {
        let a = random_node_id();
        let b = random_node_id();
        assert_eq!(a.len(), 21);
        assert!(a.starts_with("node_"));
        assert_ne!(a, b);
    }
}

/// How a pool reaches PostgreSQL, and so how members and observers hear of
/// changes ([`NodeBuilder::pooling`](crate::NodeBuilder::pooling),
/// [`ObserverBuilder::pooling`](crate::ObserverBuilder::pooling)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// Direct connections, or a pooler in *session* mode: `LISTEN`/`NOTIFY`
    /// tells every change and release at once, so handoffs take
    /// milliseconds. The default.
    #[default]
    Session,
    /// The same connections, without `LISTEN`: changes and releases are
    /// found by polling (the renewal, every `lease_ttl / 3`, and the take's
    /// safety net), so handoffs take that long. For a database where
    /// listeners are unwelcome.
    SessionPolling,
    /// A pooler in *transaction* mode (PgBouncer `pool_mode = transaction`):
    /// nothing may outlive a transaction on a server connection, so no
    /// statement is prepared by name (each is sent unnamed and typed), no
    /// session setting is made (each statement of a kept connection runs in
    /// a transaction of its own with `SET LOCAL` timeouts) and nothing is
    /// `LISTEN`ed to: changes are found by polling, as with
    /// [`SessionPolling`](Pooling::SessionPolling).
    Transaction,
}

impl Pooling {
    /// Whether it `LISTEN`s for notifications.
    pub(crate) fn notifications(self) -> bool {
        self == Pooling::Session
    }

    /// Whether nothing may outlive a transaction.
    pub(crate) fn transaction_pooling(self) -> bool {
        self == Pooling::Transaction
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Session => "session",
            Pooling::SessionPolling => "session polling",
            Pooling::Transaction => "transaction",
        })
    }
}
