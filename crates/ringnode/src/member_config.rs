//! The settings of a member that the demo and `ringnode node` start: the
//! flags' values, kept as data (each demo member is started from a copy
//! with its own node id and zone) and turned into a
//! `NodeBuilder` at each start. The library's
//! defaults are the builder's; only what a flag sets is passed on.

use std::time::Duration;

use leasering::{NodeBuilder, Placement, RingNode};
use r2d2_postgres::postgres::{Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;

/// What the flags set for a member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub ring_id: String,
    pub node_id: Option<String>,
    pub ring_size: u32,
    pub vnode_count: u32,
    pub placement: Placement,
    pub max_moving: Option<u32>,
    pub lease_ttl: Duration,
    pub failover_grace: Option<Duration>,
    pub schema: String,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub drain_timeout: Option<Duration>,
    pub metadata: Option<String>,
    pub zone: Option<String>,
    pub capacity: Option<u32>,
}

impl MemberConfig {
    /// The library's defaults for ring `ring_id`.
    pub fn new(ring_id: impl Into<String>) -> MemberConfig {
        MemberConfig {
            ring_id: ring_id.into(),
            node_id: None,
            ring_size: 1024,
            vnode_count: 8,
            placement: Placement::Hashed,
            max_moving: None,
            lease_ttl: Duration::from_secs(30),
            failover_grace: None,
            schema: "leasering".into(),
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            drain_timeout: None,
            metadata: None,
            zone: None,
            capacity: None,
        }
    }

    /// A builder for a member with these settings on `pool`.
    pub fn builder(&self, pool: r2d2::Pool<PostgresConnectionManager<NoTls>>) -> NodeBuilder {
        let mut b = RingNode::builder(pool, self.ring_id.clone())
            .vnode_count(self.vnode_count)
            .ring_size(self.ring_size)
            .placement(self.placement)
            .lease_ttl(self.lease_ttl)
            .schema(self.schema.clone())
            .start_timeout(self.start_timeout)
            .stop_timeout(self.stop_timeout);
        if let Some(id) = &self.node_id {
            b = b.node_id(id.clone());
        }
        if let Some(md) = &self.metadata {
            b = b.metadata(md.clone());
        }
        if let Some(z) = &self.zone {
            b = b.zone(z.clone());
        }
        if let Some(c) = self.capacity {
            b = b.capacity(c);
        }
        if let Some(m) = self.max_moving {
            b = b.max_moving(m);
        }
        if let Some(d) = self.drain_timeout {
            b = b.drain_timeout(d);
        }
        if let Some(g) = self.failover_grace {
            b = b.failover_grace(g);
        }
        b
    }

    /// The typed error `start()` would fail with for a bad value, before
    /// anything connects (a pool that never opens a connection).
    pub fn validate(&self) -> leasering::Result<()> {
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .build_unchecked(PostgresConnectionManager::new(Config::new(), NoTls));
        self.builder(pool).check()
    }
}
