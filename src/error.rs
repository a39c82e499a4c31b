//! The one error type of the crate: [`Error`], a kind to match on, a message
//! that names the offending value, the underlying cause where there is one,
//! and accessors for the structured facts of some kinds.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, as a value a caller can match on.
///
/// `#[non_exhaustive]`: new kinds may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is out of range or malformed (ring id, schema
    /// name, ring size, vnode count, TTL, intervals, pool size). The message
    /// names the value; [`Error::setting`] names the setting.
    InvalidConfig,
    /// The ring exists in the database with another `ring_size` than this
    /// node was configured with. [`Error::ring_sizes`] gives both.
    RingSizeMismatch,
    /// The ring exists in the database with another
    /// [`Placement`](crate::Placement) than this node was configured with.
    /// [`Error::placements`] gives both.
    PlacementMismatch,
    /// Another live member of the ring already uses this `node_id`
    /// ([`Error::node_id`]).
    NodeIdInUse,
    /// The ring has no free position left for this node's vnodes.
    RingFull,
    /// The database could not be reached, or a statement failed; the
    /// cause is the [`source`](std::error::Error::source).
    Database,
    /// The database role lacks a privilege leasering needs (creating the
    /// schema, or reading/writing its tables).
    Privileges,
    /// The schema in the database was created by a newer, incompatible
    /// version of leasering, or is missing while creation is disabled.
    Schema,
    /// An operation did not finish within its time bound (start timeout,
    /// stop timeout, a statement or lock timeout in the database).
    Timeout,
    /// The operating system refused to start one of the member's threads.
    Thread,
    /// The ring has live members of another protocol version that this one
    /// cannot share it with safely (version-1 members, which use the
    /// ring-wide barrier, and version-2 members, which use claims). The
    /// message names them.
    ProtocolMismatch,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::RingSizeMismatch => "ring size mismatch",
            ErrorKind::PlacementMismatch => "placement mismatch",
            ErrorKind::NodeIdInUse => "node id in use",
            ErrorKind::RingFull => "ring full",
            ErrorKind::Database => "database error",
            ErrorKind::Privileges => "insufficient privileges",
            ErrorKind::Schema => "schema error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Thread => "could not start a thread",
            ErrorKind::ProtocolMismatch => "protocol version mismatch",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Structured facts of some kinds, for the accessors.
#[derive(Debug)]
enum Detail {
    None,
    Setting(&'static str),
    RingSizes {
        stored: u32,
        configured: u32,
    },
    Placements {
        stored: crate::Placement,
        configured: crate::Placement,
    },
    NodeId(String),
}

struct Inner {
    kind: ErrorKind,
    message: String,
    detail: Detail,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

/// The error type of every fallible leasering call.
///
/// Like `postgres::Error`, it is one boxed pointer (so `Result`s stay
/// small), carries a [`kind`](Error::kind) to match on, a
/// [`message`](Error::message) that says what leasering was doing and names
/// the offending value, and its cause, kept once: as the
/// [`source`](std::error::Error::source) (a `postgres::Error`, an
/// `r2d2::Error`, an `io::Error`), which [`Display`](fmt::Display) appends
/// on the same line, as `postgres::Error` does.
///
/// ```
/// use leasering::{ErrorKind, RingNode};
/// use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};
///
/// // A pool that never connects: `check()` only looks at the settings.
/// let manager = PostgresConnectionManager::new(postgres::Config::new(), NoTls);
/// let pool = r2d2::Pool::builder().build_unchecked(manager);
/// let err = RingNode::builder(pool, "orders").ring_size(0).check().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidConfig);
/// assert_eq!(err.setting(), Some("ring_size"));
/// assert!(err.to_string().contains("ring_size 0"));
/// ```
pub struct Error(Box<Inner>);

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            detail: Detail::None,
            source: None,
        }))
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Error {
        let mut e = Error::new(kind, message);
        e.0.source = Some(source.into());
        e
    }

    /// A bad value of `setting`; the message names the value.
    pub(crate) fn invalid(setting: &'static str, message: impl Into<String>) -> Error {
        let mut e = Error::new(ErrorKind::InvalidConfig, message);
        e.0.detail = Detail::Setting(setting);
        e
    }

    pub(crate) fn ring_size_mismatch(ring_id: &str, stored: u32, configured: u32) -> Error {
        let mut e = Error::new(
            ErrorKind::RingSizeMismatch,
            format!(
                "ring {ring_id:?} has ring_size {stored} in the database, but this node was configured with ring_size {configured}"
            ),
        );
        e.0.detail = Detail::RingSizes { stored, configured };
        e
    }

    pub(crate) fn placement_mismatch(
        ring_id: &str,
        stored: crate::Placement,
        configured: crate::Placement,
    ) -> Error {
        let mut e = Error::new(
            ErrorKind::PlacementMismatch,
            format!(
                "ring {ring_id:?} has placement {stored} in the database, but this node was configured with placement {configured}"
            ),
        );
        e.0.detail = Detail::Placements { stored, configured };
        e
    }

    pub(crate) fn max_moving_mismatch(
        ring_id: &str,
        stored: Option<u32>,
        configured: Option<u32>,
    ) -> Error {
        let show = |m: Option<u32>| m.map_or_else(|| "none".to_string(), |m| m.to_string());
        let mut e = Error::new(
            ErrorKind::PlacementMismatch,
            format!(
                "ring {ring_id:?} has max_moving {} in the database, but this node was configured with max_moving {}",
                show(stored),
                show(configured)
            ),
        );
        e.0.detail = Detail::Setting("max_moving");
        e
    }

    pub(crate) fn node_id_in_use(node_id: &str, ring_id: &str) -> Error {
        let mut e = Error::new(
            ErrorKind::NodeIdInUse,
            format!("node id {node_id:?} is held by a live member of ring {ring_id:?}"),
        );
        e.0.detail = Detail::NodeId(node_id.to_string());
        e
    }

    /// Live members of protocol version 1 in the ring (see
    /// [`ErrorKind::ProtocolMismatch`]).
    pub(crate) fn protocol_mismatch(ring_id: &str, v1_members: Vec<String>) -> Error {
        Error::new(
            ErrorKind::ProtocolMismatch,
            format!(
                "ring {ring_id:?} has live members of protocol version 1 ({}): this version (2, claims) cannot share a ring with them; \
                 stop them first (after the schema migration they cannot rejoin) or wait for their leases to end",
                v1_members.join(", ")
            ),
        )
    }

    /// A thread the member needs could not be started.
    pub(crate) fn spawn(what: &str, err: std::io::Error) -> Error {
        Error::with_source(ErrorKind::Thread, format!("start the {what} thread"), err)
    }

    /// Wraps a database error from doing `context`, classifying it:
    /// privilege errors (SQLSTATE 42501) as [`ErrorKind::Privileges`],
    /// statement and lock timeouts as [`ErrorKind::Timeout`].
    pub(crate) fn db(context: impl Into<String>, err: postgres::Error) -> Error {
        use postgres::error::SqlState;
        let kind = match err.code() {
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => ErrorKind::Privileges,
            Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => {
                ErrorKind::Timeout
            }
            _ => ErrorKind::Database,
        };
        Error::with_source(kind, context, err)
    }

    /// No connection from `pool` within `timeout` for doing `context`: the
    /// server's own reason when it refuses connections (with what to do
    /// about the usual one, `too many clients`), else that every
    /// connection of the pool is in use.
    pub(crate) fn no_connection(
        pool: &(impl crate::pool::ConnSource + ?Sized),
        context: &str,
        timeout: std::time::Duration,
        err: r2d2::Error,
    ) -> Error {
        let (all, idle) = pool.state();
        let refused_text = err.to_string();
        let why = match pool.diagnose() {
            Some(r) => {
                let too_many = r.code == Some(postgres::error::SqlState::TOO_MANY_CONNECTIONS);
                let mut why = format!("the server refused the connection: {}", r.message);
                if too_many {
                    why.push_str(TOO_MANY_ADVICE);
                }
                why
            }
            // r2d2 keeps "db error" for any refusal by the server.
            None if refused_text.ends_with("db error") => format!(
                "the server refused the connection (the pool keeps no more than \"{refused_text}\": \
                 the server's log says why; the usual reason is max_connections{TOO_MANY_ADVICE}; \
                 leasering::Client::connect builds a pool that keeps the server's reason)"
            ),
            None if idle == 0 && all >= pool.max_size() => format!(
                "all {all} connections of the pool are in use: size it for the application and \
                 the library (see MIN_POOL_SIZE)"
            ),
            None => format!("the pool has no connection to give ({refused_text})"),
        };
        Error::with_source(
            ErrorKind::Database,
            format!(
                "{context}: no connection within {timeout:?} (pool: {all} connections, {idle} idle): {why}"
            ),
            err,
        )
    }

    /// The same error with advice after its message.
    pub(crate) fn hint(mut self, hint: impl fmt::Display) -> Error {
        self.0.message = format!("{}; {hint}", self.0.message);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, naming the offending value where there is one (without
    /// the cause: see [`source`](std::error::Error::source)).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// For [`ErrorKind::InvalidConfig`]: the setting whose value is bad, as
    /// named by the builder (`"ring_size"`, `"lease_ttl"`, `"pool"`, …).
    pub fn setting(&self) -> Option<&'static str> {
        match self.0.detail {
            Detail::Setting(s) => Some(s),
            _ => None,
        }
    }

    /// For [`ErrorKind::RingSizeMismatch`]: `(stored, configured)`, the ring
    /// size in the database and the one this node was started with.
    pub fn ring_sizes(&self) -> Option<(u32, u32)> {
        match self.0.detail {
            Detail::RingSizes { stored, configured } => Some((stored, configured)),
            _ => None,
        }
    }

    /// For [`ErrorKind::PlacementMismatch`]: `(stored, configured)`, the
    /// ring's placement in the database and the one this node was started
    /// with.
    pub fn placements(&self) -> Option<(crate::Placement, crate::Placement)> {
        match self.0.detail {
            Detail::Placements { stored, configured } => Some((stored, configured)),
            _ => None,
        }
    }

    /// For [`ErrorKind::NodeIdInUse`]: the node id a live member holds.
    pub fn node_id(&self) -> Option<&str> {
        match &self.0.detail {
            Detail::NodeId(n) => Some(n),
            _ => None,
        }
    }

    /// The underlying PostgreSQL error, if this error came from the database.
    pub fn as_postgres(&self) -> Option<&postgres::Error> {
        self.0.source.as_ref()?.downcast_ref::<postgres::Error>()
    }

    /// The SQLSTATE of the database's answer, if it gave one.
    pub fn code(&self) -> Option<&postgres::error::SqlState> {
        self.as_postgres()?.code()
    }

    /// Whether the connection was lost while (or before) the statement ran:
    /// closed, a socket error, or the server ending the session (shutdown,
    /// an idle-in-transaction timeout, a terminated backend). The statement
    /// may or may not have taken effect.
    /// Whether this is the pool's answer that it had no connection to
    /// lend in time ([`Error::no_connection`]).
    pub(crate) fn no_pooled_connection(&self) -> bool {
        self.0
            .source
            .as_ref()
            .is_some_and(|s| s.downcast_ref::<r2d2::Error>().is_some())
    }

    pub(crate) fn connection_lost(&self) -> bool {
        use postgres::error::SqlState;
        let Some(pg) = self.as_postgres() else {
            return false;
        };
        if pg.is_closed() {
            return true;
        }
        match pg.code() {
            Some(c) => {
                c.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    ]
                    .contains(c)
            }
            None => std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if !matches!(self.0.detail, Detail::None) {
            d.field("detail", &self.0.detail);
        }
        if let Some(source) = &self.0.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// `kind: message: cause`, on one line: a database error shows the
/// server's message (its detail and hint lines are in the source).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.kind, self.0.message)?;
        let Some(source) = &self.0.source else {
            return Ok(());
        };
        match source
            .downcast_ref::<postgres::Error>()
            .and_then(|e| e.as_db_error())
        {
            Some(db) => write!(f, ": {}", db.message()),
            None => write!(f, ": {source}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|s| &**s as &(dyn StdError + 'static))
    }
}

/// What to do about `sorry, too many clients already`.
const TOO_MANY_ADVICE: &str =
    " (max_connections is reached: share one leasering::Client per process, \
     which holds one connection at rest; keep the pools' min_idle at 0; raise max_connections; \
     or put PgBouncer in front)";

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<Result<()>>() <= 2 * std::mem::size_of::<usize>());
    }

    #[test]
    fn the_cause_is_kept_once() {
        let io = std::io::Error::other("no more threads");
        let e = Error::spawn("heartbeat", io);
        assert_eq!(e.kind(), ErrorKind::Thread);
        assert_eq!(
            e.message(),
            "start the heartbeat thread",
            "not in the message"
        );
        assert_eq!(
            e.source().unwrap().to_string(),
            "no more threads",
            "but the source"
        );
        assert_eq!(
            e.to_string(),
            "could not start a thread: start the heartbeat thread: no more threads"
        );
    }

    #[test]
    fn accessors_give_the_structured_facts() {
        let e = Error::ring_size_mismatch("orders", 64, 128);
        assert_eq!(e.ring_sizes(), Some((64, 128)));
        assert!(e.message().contains("64") && e.message().contains("128"));
        assert_eq!(e.node_id(), None);
        let e = Error::node_id_in_use("worker-7", "orders");
        assert_eq!(e.node_id(), Some("worker-7"));
        assert_eq!(e.kind(), ErrorKind::NodeIdInUse);
    }
}
