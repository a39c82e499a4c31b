//! Every bad input (docs/protocol.md §11, guarantee "typed errors") gets a typed error naming the value —
//! never a panic.

use std::time::{Duration, Instant};

use crate::common::*;
use leasering::{ErrorKind, RingNode};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

fn expect(kind: ErrorKind, needle: &str, b: leasering::NodeBuilder) {
    match b.start() {
        Ok(n) => {
            let _ = n.stop();
            panic!("expected {kind:?} naming {needle:?}, the node started");
        }
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains(needle), "{e} should name {needle:?}");
        }
    }
}

#[test]
fn configuration_errors_name_the_value() {
    let ring = ring_name("bad");
    expect(
        ErrorKind::InvalidConfig,
        "ring id is empty",
        RingNode::builder(pool(4), ""),
    );
    expect(
        ErrorKind::InvalidConfig,
        "201 bytes",
        RingNode::builder(pool(4), "r".repeat(201)),
    );
    expect(
        ErrorKind::InvalidConfig,
        "schema name \"Bad-Name\"",
        builder(pool(4), &ring, "n").schema("Bad-Name"),
    );
    expect(
        ErrorKind::InvalidConfig,
        "ring_size 0",
        builder(pool(4), &ring, "n").ring_size(0),
    );
    expect(
        ErrorKind::InvalidConfig,
        "ring_size 2147483648",
        builder(pool(4), &ring, "n").ring_size(1 << 31),
    );
    expect(
        ErrorKind::InvalidConfig,
        "vnode_count 0",
        builder(pool(4), &ring, "n").vnode_count(0),
    );
    expect(
        ErrorKind::InvalidConfig,
        "vnode_count 65",
        builder(pool(4), &ring, "n").ring_size(64).vnode_count(65),
    );
    expect(
        ErrorKind::InvalidConfig,
        "lease_ttl 10ms",
        builder(pool(4), &ring, "n").lease_ttl(Duration::from_millis(10)),
    );
    expect(
        ErrorKind::InvalidConfig,
        "heartbeat_interval 1.5s",
        builder(pool(4), &ring, "n")
            .lease_ttl(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(1500)),
    );
    expect(
        ErrorKind::InvalidConfig,
        "node id is empty",
        builder(pool(4), &ring, ""),
    );
    expect(
        ErrorKind::InvalidConfig,
        "pool max_size 1 is too small",
        builder(pool(1), &ring, "n"),
    );
}

#[test]
fn an_unreachable_database_fails_within_the_start_timeout() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg: r2d2_postgres::postgres::Config =
        format!("host=127.0.0.1 port={port} user=postgres connect_timeout=1")
            .parse()
            .unwrap();
    let pool = r2d2::Pool::builder()
        .max_size(4)
        .build_unchecked(PostgresConnectionManager::new(cfg, NoTls));
    let start_timeout = Duration::from_millis(1500);
    let t = Instant::now();
    let err = RingNode::builder(pool, "r")
        .start_timeout(start_timeout)
        .start()
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.kind(), ErrorKind::Database, "{err}");
    assert!(err.to_string().contains("start_timeout"), "{err}");
    // A bound on behaviour (it gives up), not a speed measurement.
    assert!(
        took < start_timeout + Duration::from_secs(5),
        "start took {took:?}"
    );
}

#[test]
fn missing_privileges_and_missing_schema_are_typed() {
    let db = db();
    let role = ring_name("weak");
    let mut admin = db.client().unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; REVOKE CREATE ON DATABASE postgres FROM PUBLIC; REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
        ))
        .unwrap();
    let mut cfg = db.config();
    cfg.user(&role);
    let weak = r2d2::Pool::builder()
        .max_size(4)
        .build_unchecked(PostgresConnectionManager::new(cfg, NoTls));
    let schema = ring_name("noaccess");
    expect(
        ErrorKind::Privileges,
        "create_schema(false)",
        builder(weak.clone(), "r", "n").schema(schema.clone()),
    );
    expect(
        ErrorKind::Schema,
        "does not exist",
        builder(weak.clone(), "r", "n")
            .schema(schema.clone())
            .create_schema(false),
    );
    // An administrator migrates once; then the DML-only role can run.
    leasering::migrate(&mut admin, &schema).unwrap();
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};"
        ))
        .unwrap();
    let n = builder(weak.clone(), "r", "n")
        .schema(schema.clone())
        .create_schema(false)
        .start()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the DML-only member to own the ring",
        || n.owned_partitions().len() == 1024,
    );
    n.stop().unwrap();
    // Without table rights: a typed privilege error.
    let other = ring_name("noaccess2");
    leasering::migrate(&mut admin, &other).unwrap();
    admin
        .batch_execute(&format!("GRANT USAGE ON SCHEMA {other} TO {role};"))
        .unwrap();
    expect(
        ErrorKind::Privileges,
        "permission denied",
        builder(weak, "r", "n").schema(other).create_schema(false),
    );
}
