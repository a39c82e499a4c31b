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
    fn get(&self, timeout: Duration) -> Result<Conn, r2d2::Error>;
    fn max_size(&self) -> u32;
    /// (connections, idle) for diagnostics.
    fn state(&self) -> (u32, u32);
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
    fn get(&self, timeout: Duration) -> Result<Conn, r2d2::Error> {
        let c = self.get_timeout(timeout)?;
        Ok(Conn(Box::new(Wrapper(c))))
    }
    fn max_size(&self) -> u32 {
        Pool::max_size(self)
    }
    fn state(&self) -> (u32, u32) {
        let s = Pool::state(self);
        (s.connections, s.idle_connections)
    }
}
