//! The child process of the testkit's own process tests
//! (`tests/testkit.rs`, which find it as
//! `env!("CARGO_BIN_EXE_testkit-helper")`): a program, not a test, so that
//! the suite has nothing to skip.
//!
//! * `testkit-helper exit`: starts the shared cluster, prints
//!   `POSTMASTER <pid> <cluster dir>` and exits normally (its exit hook must
//!   remove the cluster).
//! * `testkit-helper kill`: the same, then waits (at most a minute) to be
//!   killed (the orphaned postmaster must follow it).
//! * `testkit-helper external`: with `LEASERING_TEST_DATABASE_URL` set,
//!   checks that an external server is wrapped, not managed; exits 0 when
//!   every check holds (a failed check panics: exit status 101).

use std::net::ToSocketAddrs;
use std::time::Duration;

use leasering_testkit::{TcpProxy, TestPostgres};
use postgres::GenericClient;

fn select_int(client: &mut impl GenericClient, value: i32) -> i32 {
    client
        .query_one("SELECT $1::int4", &[&value])
        .expect("query")
        .get(0)
}

fn external() {
    let url = std::env::var("LEASERING_TEST_DATABASE_URL").expect("LEASERING_TEST_DATABASE_URL");
    let pg = TestPostgres::from_env()
        .unwrap()
        .expect("an external server");
    assert!(pg.is_external());
    assert_eq!(pg.url(), url);
    assert_eq!(pg.pid(), None);
    assert!(pg.is_running());
    for result in [
        pg.stop_fast(),
        pg.stop_immediate(),
        pg.kill(),
        pg.start_again(),
    ] {
        let err = result.unwrap_err();
        assert!(err.message().contains("external"), "{err}");
    }
    let mut conn = pg.pool(1).unwrap().get().unwrap();
    assert_eq!(select_int(&mut *conn, 4), 4);
    let shared = TestPostgres::shared().unwrap();
    assert!(shared.is_external());
    assert_eq!(select_int(&mut shared.client().unwrap(), 5), 5);
    let target = (shared.host().as_str(), shared.port())
        .to_socket_addrs()
        .expect("resolve server address")
        .next()
        .expect("server address");
    let proxy = TcpProxy::start(target).unwrap();
    let mut via = shared.pool_via(proxy.port(), 1).unwrap().get().unwrap();
    assert_eq!(select_int(&mut *via, 6), 6);
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "external" => external(),
        "exit" | "kill" => {
            let pg = TestPostgres::shared().unwrap();
            pg.client().unwrap().simple_query("SELECT 1").unwrap();
            let pid = pg.pid().unwrap();
            // The cluster's directory is the parent of the postmaster's
            // working directory (its data directory).
            let data = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("postmaster cwd");
            let dir = data.parent().expect("cluster dir");
            println!("POSTMASTER {pid} {}", dir.display());
            if mode == "kill" {
                // Wait to be killed (bounded, should the parent be gone).
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        other => {
            eprintln!("testkit-helper: unknown mode {other:?} (exit, kill or external)");
            std::process::exit(2);
        }
    }
}
