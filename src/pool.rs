//! Type erasure of the user's `r2d2` pool, so that [`RingNode`](crate::RingNode)
//! does not carry the TLS connector type in its signature.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::{Client, Socket};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

/// A connection checked out of the pool; back to the pool on drop.
pub(crate) struct Conn(Box<dyn DerefMut<Target = Client> + Send>);

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0
    }
}

pub(crate) trait ConnSource: Send + Sync {
    /// A connection from the pool within `timeout`.
    fn get_raw(&self, timeout: Duration) -> Result<Conn, r2d2::Error>;
    fn max_size(&self) -> u32;
    /// (connections, idle) for diagnostics.
    fn state(&self) -> (u32, u32);
    /// The server's own reason for the last connection this pool failed
    /// to open (`sorry, too many clients already`, an authentication
    /// failure, …), when known: r2d2 keeps only the text of its last error,
    /// where a server's refusal reads "db error". Known for the pools
    /// [`Client::connect`](crate::Client::connect) builds, which keep it.
    fn diagnose(&self) -> Option<Refusal>;

    /// [`ConnSource::get_raw`], with a typed error for doing `context`
    /// that says why there is no connection.
    fn get(&self, timeout: Duration, context: &str) -> crate::Result<Conn> {
        self.get_raw(timeout)
            .map_err(|e| crate::error::Error::no_connection(self, context, timeout, e))
    }
}

struct Wrapper<T>(PooledConnection<PostgresConnectionManager<T>>)
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send;

impl<T> Deref for Wrapper<T>
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl<T> DerefMut for Wrapper<T>
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0
    }
}

impl<T> ConnSource for Pool<PostgresConnectionManager<T>>
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn get_raw(&self, timeout: Duration) -> Result<Conn, r2d2::Error> {
        let c = self.get_timeout(timeout)?;
        Ok(Conn(Box::new(Wrapper(c))))
    }
    fn diagnose(&self) -> Option<Refusal> {
        None
    }
    fn max_size(&self) -> u32 {
        Pool::max_size(self)
    }
    fn state(&self) -> (u32, u32) {
        let s = Pool::state(self);
        (s.connections, s.idle_connections)
    }
}

/// Why the server refused a connection: its message and its code.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) message: String,
    pub(crate) code: Option<postgres::error::SqlState>,
}

impl Refusal {
    fn of(e: &postgres::Error) -> Refusal {
        match e.as_db_error() {
            Some(db) => Refusal {
                message: db.message().to_string(),
                code: Some(db.code().clone()),
            },
            None => Refusal {
                message: std::error::Error::source(e)
                    .map(|s| format!("{e}: {s}"))
                    .unwrap_or_else(|| e.to_string()),
                code: None,
            },
        }
    }
}

/// The last connection error of a pool [`Client::connect`](crate::Client::connect)
/// built, kept whole (r2d2 keeps only its text).
#[derive(Debug, Default, Clone)]
pub(crate) struct LastRefusal(std::sync::Arc<parking_lot::Mutex<Option<Refusal>>>);

impl r2d2::HandleError<postgres::Error> for LastRefusal {
    fn handle_error(&self, error: postgres::Error) {
        log::warn!(target: "leasering", "the pool could not open a connection: {error}{}",
            error.as_db_error().map(|d| format!(": {}", d.message())).unwrap_or_default());
        *self.0.lock() = Some(Refusal::of(&error));
    }
}

/// A pool that keeps its last connection error.
pub(crate) struct OwnPool<T>
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    pub(crate) pool: Pool<PostgresConnectionManager<T>>,
    pub(crate) last: LastRefusal,
}

impl<T> ConnSource for OwnPool<T>
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn get_raw(&self, timeout: Duration) -> Result<Conn, r2d2::Error> {
        self.pool.get_raw(timeout)
    }
    fn max_size(&self) -> u32 {
        self.pool.max_size()
    }
    fn state(&self) -> (u32, u32) {
        ConnSource::state(&self.pool)
    }
    fn diagnose(&self) -> Option<Refusal> {
        self.last.0.lock().clone()
    }
}
