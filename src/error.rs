//! The one error type of the crate: [`Error`], a kind plus a message that
//! names the offending value, plus the underlying cause where there is one.

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
    /// names the value.
    InvalidConfig,
    /// The ring exists in the database with another `ring_size` than this
    /// node was configured with. The message names both numbers.
    RingSizeMismatch,
    /// Another live member of the ring already uses this `node_id`.
    NodeIdInUse,
    /// The ring has no free position left for this node's vnodes.
    RingFull,
    /// The database could not be reached, or a statement failed.
    Database,
    /// The database role lacks a privilege leasering needs (creating the
    /// schema, or reading/writing its tables).
    Privileges,
    /// The schema in the database was created by a newer, incompatible
    /// version of leasering, or is missing while creation is disabled.
    Schema,
    /// An operation did not finish within its time bound (start timeout,
    /// stop timeout).
    Timeout,
    /// The node is stopped; the operation needs a running node.
    Stopped,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::RingSizeMismatch => "ring size mismatch",
            ErrorKind::NodeIdInUse => "node id in use",
            ErrorKind::RingFull => "ring full",
            ErrorKind::Database => "database error",
            ErrorKind::Privileges => "insufficient privileges",
            ErrorKind::Schema => "schema error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Stopped => "node stopped",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every fallible leasering call.
///
/// It carries a [`kind`](Error::kind) to match on, a human message that names
/// the offending value, and, for database failures, the underlying
/// [`source`](std::error::Error::source).
///
/// ```
/// use leasering::{Config, ErrorKind};
///
/// let err = Config::new("").validate().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidConfig);
/// assert!(err.to_string().contains("ring id"));
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidConfig, message)
    }

    /// Wraps a database error, classifying privilege errors (SQLSTATE 42501)
    /// as [`ErrorKind::Privileges`].
    pub(crate) fn db(context: impl Into<String>, err: postgres::Error) -> Error {
        let kind = match err.code() {
            Some(code) if *code == postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
                ErrorKind::Privileges
            }
            Some(code) if *code == postgres::error::SqlState::QUERY_CANCELED => ErrorKind::Timeout,
            Some(code) if *code == postgres::error::SqlState::LOCK_NOT_AVAILABLE => {
                ErrorKind::Timeout
            }
            _ => ErrorKind::Database,
        };
        let context = context.into();
        let message = match err.as_db_error() {
            Some(db) => format!("{context}: {}", db.message()),
            None => format!("{context}: {err}"),
        };
        Error::with_source(kind, message, err)
    }

    pub(crate) fn pool(context: impl Into<String>, err: r2d2::Error) -> Error {
        let context = context.into();
        Error::with_source(
            ErrorKind::Database,
            format!("{context}: no connection from the pool: {err}"),
            err,
        )
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, naming the offending value where there is one.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying PostgreSQL error, if this error came from the database.
    pub fn as_postgres(&self) -> Option<&postgres::Error> {
        self.source.as_ref()?.downcast_ref::<postgres::Error>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| &**s as &(dyn StdError + 'static))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
