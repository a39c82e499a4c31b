//! Fixtures of the integration tests, benches and examples: the shared
//! throwaway PostgreSQL of the process, pools, a builder with test settings,
//! waiting for a condition, and the checks of a settled, covered ring. The
//! two independent overlap checks ([`Recorder`] for events, [`Sampler`] for
//! `owned_partitions()`) are re-exported here for the same tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasering::{NodeBuilder, RingNode};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

pub use crate::{unique_name, Recorder, Sampler, TestPostgres};

/// The pool the fixtures build (plain TCP to the test server).
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The process's shared server ([`TestPostgres::shared`]: started once,
/// torn down at exit); panics, saying what to install, without PostgreSQL.
pub fn db() -> &'static TestPostgres {
    match TestPostgres::shared() {
        Ok(db) => db,
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

/// A pool of at most `max` connections to `db`.
pub fn pool_of(db: &TestPostgres, max: u32) -> Pool {
    db.pool(max).unwrap_or_else(|e| panic!("pool: {e}"))
}

/// A pool of at most `max` connections to the shared server.
pub fn pool(max: u32) -> Pool {
    pool_of(db(), max)
}

/// A pool whose connections carry `application_name` (so the database can
/// tell members apart) and never block long.
pub fn named_pool(db: &TestPostgres, app: &str, max: u32) -> Pool {
    db.named_pool(app, max, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("pool: {e}"))
}

/// A ring id no other test of the process uses.
pub fn ring_name(prefix: &str) -> String {
    unique_name(prefix)
}

/// env_logger as `RUST_LOG` says, in the form tests want (captured per
/// test); the first call installs it, later ones do nothing.
pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Polls `cond` every millisecond until it holds, or panics after
/// `timeout` with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Checks that the members' active sets are disjoint and cover the ring.
pub fn covered_exactly_once(nodes: &[RingNode], ring_size: u32) -> bool {
    let mut seen = vec![0u8; ring_size as usize];
    for n in nodes {
        for p in n.owned_partitions().iter() {
            seen[p as usize] += 1;
        }
    }
    seen.iter().all(|c| *c == 1)
}

/// Whether the ring has settled: every member's view at one epoch with all
/// of them in it, and each member holding exactly its share. (Coverage alone
/// can hold mid-handoff, while a joiner's partitions are still active on
/// their former owners.)
pub fn settled(nodes: &[RingNode]) -> bool {
    let Some(first) = nodes.first() else {
        return true;
    };
    let e = first.view().epoch();
    nodes.iter().all(|n| {
        let view = n.view();
        view.epoch() == e
            && view.members().len() == nodes.len()
            && n.owned_partitions().to_vec() == view.partitions_of(n.node_id())
    })
}

/// Samples the members in `nodes` every millisecond until
/// [`Sampler::finish`] (the second, independent overlap check).
pub fn start_sampler(nodes: Arc<Mutex<Vec<RingNode>>>) -> Sampler {
    Sampler::start(Duration::from_millis(1), move || {
        nodes
            .lock()
            .unwrap()
            .iter()
            .map(|n| (n.node_id().to_string(), n.clone()))
            .collect()
    })
}

/// A builder with test settings. The TTL is 10 s: membership tests do not
/// depend on it (joins and leaves are driven by notifications), and a
/// loaded machine must not make members fence themselves by accident.
/// Fault tests set a short TTL themselves.
pub fn builder(pool: Pool, ring: &str, node: &str) -> NodeBuilder {
    RingNode::builder(pool, ring)
        .node_id(node)
        .lease_ttl(Duration::from_secs(10))
        .start_timeout(Duration::from_secs(20))
}

/// Rows of `node` left in the tables of `schema`.
pub fn rows_of(db: &TestPostgres, schema: &str, ring: &str, node: &str) -> i64 {
    let mut c = db.client().expect("client");
    let members: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.members WHERE ring_id = $1 AND node_id = $2"),
            &[&ring, &node],
        )
        .unwrap()
        .get(0);
    let vnodes: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.vnodes WHERE ring_id = $1 AND node_id = $2"),
            &[&ring, &node],
        )
        .unwrap()
        .get(0);
    members + vnodes
}
